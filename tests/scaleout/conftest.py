"""Real engines on loopback for the scale-out group (`pytest -m scaleout`): a throwaway PostgreSQL server, free ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from servers import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))  # its helpers: real `colorbench run` processes, the slow loss


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH or in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.skip(f"PostgreSQL server programs not installed ({name}); .ci/run installs Debian's postgresql package")
    return str(found)


def as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the `postgres` user then (from /, a folder it can enter)."""
    if os.geteuid() != 0:
        return args
    runuser = shutil.which("runuser", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))  # sbin: not always on PATH
    return [runuser or "runuser", "-u", "postgres", "--", "env", "-C", "/", *args]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[str], str]]:
    """A PostgreSQL server on 127.0.0.1 (trust auth, a fresh data folder); yields `database name -> URL`, creating it."""
    folder = Path(tempfile.mkdtemp(prefix="colorbench-pg-"))
    folder.chmod(0o777)
    data, port = folder / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    subprocess.run(as_postgres([postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]), check=True, capture_output=True)
    options = f"-h 127.0.0.1 -p {port} -k {folder}"
    pg_ctl = postgres_bin("pg_ctl")
    subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"]), check=True, capture_output=True)

    def database(name: str) -> str:
        subprocess.run(as_postgres([postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name]), check=True)
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    try:
        yield database
    finally:
        subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

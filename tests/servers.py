"""Helpers for tests that start real servers on loopback: a free port, waiting until one answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answering(url: str, server: subprocess.Popen, timeout: float, what: str) -> None:
    """Poll `url` until it answers 200; fail if `server` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        assert server.poll() is None, f"{what} exited before answering {url}"
        assert time.monotonic() < deadline, f"{what} did not answer {url} within {timeout:.0f} s"
        time.sleep(1)


@contextmanager
def mlflow_server(backend: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow server` on `backend` with artifacts proxied through it (`mlflow-artifacts:` URIs, stored in `artifacts`), on a free
    port of 127.0.0.1; yields its URL and stops it afterwards."""
    port = free_port()
    with open(log, "w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination", artifacts.as_uri(),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/health", server, 180, "mlflow server")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)

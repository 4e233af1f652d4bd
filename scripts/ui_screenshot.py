"""The MLflow UI's training-runs view of a grid, nested by cell, checked and photographed in a real headless Chromium.

    python scripts/ui_screenshot.py                     # trains a small demo grid on a temporary SQLite store -> docs/mlflow-ui-runs.png
    python scripts/ui_screenshot.py --store sqlite:///mlflow.db --experiment loss-vs-depth --out runs.png

It starts `mlflow server` on a free port of 127.0.0.1 and Chromium (`--chromium`, default /usr/bin/chromium; Debian's
`chromium` package) with its DevTools port, opens the address `colorbench run` prints,
`http://127.0.0.1:PORT/#/experiments/<id>/runs?workflowType=machine_learning`, and drives the page over the DevTools protocol
(aiohttp's websocket client; aiohttp comes with MLflow). It waits until every cell run's name is in the page's text (not the
loading skeleton), checks the UI is in its "Model training" mode, closes the assistant panel, expands each cell run (the expander in its Run Name
cell), checks that every fold run's name is shown too, widens the Run Name column (as dragging its edge would) and saves a
PNG. Exit status 1, with one line, when the page never shows them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from mlflow.tracking import MlflowClient

from colorbench.tracking import runs_url

ROOT = Path(__file__).resolve().parents[1]
DEMO_GRID = {
    "experiment": "ui-demo",
    "data": {"source": "builtin", "image_size": 32, "crops_per_photo": 3},
    "train": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "seed": 0},
    "test_fraction": 0.25,
    "grid": {"backbone": ["resnet18-6"], "loss": ["mse", "ce-rebalanced"], "splitter": [{"name": "holdout", "val_fraction": 0.3}, {"name": "kfold", "k": 2}]},
}
EXPANDER = '.ag-row button[data-component-id$="runnamecellrenderer.tsx_46"]'  # MLflow 3's expander of a parent run's row
GENAI_ONLY = "\nEvaluation runs\n"  # in the sidebar of the UI's GenAI mode only (Model training mode has Runs, Models, Model registry)
CLOSE_ASSISTANT = 'button[data-component-id="mlflow.assistant.chat_panel.close"]'
WIDEN = """(() => {
  const name = 'attributes.`Run Name`', extra = %d, header = document.querySelector('.ag-pinned-left-header');
  const cells = [...header.querySelectorAll('.ag-header-cell')], own = cells.find(c => c.getAttribute('col-id') === name);
  const rules = [`[col-id="${name}"] {width: ${own.offsetWidth + extra}px !important}`];
  for (const c of cells.filter(c => c.offsetLeft > own.offsetLeft)) {
    const id = c.getAttribute('col-id');
    rules.push(`.ag-pinned-left-header [col-id="${id}"], .ag-pinned-left-cols-container [col-id="${id}"] {left: ${c.offsetLeft + extra}px !important}`);
  }
  const width = header.offsetWidth + extra;
  rules.push(`.ag-pinned-left-header, .ag-pinned-left-cols-container, .ag-horizontal-left-spacer {width: ${width}px !important; min-width: ${width}px !important; max-width: ${width}px !important}`);
  const style = document.createElement('style');
  style.textContent = rules.join('\\n');
  document.head.appendChild(style);
  return rules.length;
})()"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float, what: str) -> bytes:
    """The body of `url` once it answers; SystemExit if `process` ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return reply.read()
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"error: {what} did not answer {url}")
        time.sleep(0.5)


def train_demo(folder: Path) -> str:
    """Train the demo grid (4 cells, 6 fold runs, 1 epoch each) into a SQLite store in `folder`; return its URI."""
    (folder / "grid.yaml").write_text(yaml.safe_dump(DEMO_GRID))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    subprocess.run([sys.executable, "-m", "colorbench.cli", "run", "grid.yaml", "--tracking-uri", uri], cwd=folder, check=True)
    return uri


def run_names(uri: str, experiment: str) -> tuple[str, list[str], list[str]]:
    """The experiment's id, its cell (parent) run names and its fold (child) run names."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"error: no experiment {experiment!r} in {uri}; pass --experiment")
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r.info.run_name for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags]
    return found.experiment_id, parents, children


@contextmanager
def mlflow_ui(uri: str, log: Path) -> Iterator[str]:
    """`mlflow server` on `uri`, on a free port of 127.0.0.1; yields its address."""
    port = free_port()
    with open(log, "w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/health", server, 180, "mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextmanager
def headless_chromium(binary: str, profile: Path) -> Iterator[str]:
    """Headless Chromium with its DevTools port open; yields the websocket address of its page."""
    port = free_port()
    browser = subprocess.Popen(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--remote-debugging-port={port}",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        targets = json.loads(wait_for(f"http://127.0.0.1:{port}/json/list", browser, 60, "chromium"))
        yield next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    finally:
        browser.terminate()
        browser.wait(timeout=30)


class DevTools:
    """Commands to one page over the Chrome DevTools protocol; the events it sends meanwhile are kept in `events`."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket, self.ids = socket, itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        async for message in self.socket:
            reply = json.loads(message.data)
            if "method" in reply:
                self.events.append(reply)
            if reply.get("id") == number:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"{method}: the browser closed the connection")

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return reply["result"].get("value")

    async def wait_for_text(self, names: list[str], timeout: float) -> str:
        """The page's text once every one of `names` is in it; SystemExit naming the missing ones after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            text = await self.evaluate("document.body ? document.body.innerText : ''") or ""
            missing = [n for n in names if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                sys.exit(f"error: after {timeout:.0f} s the runs view still does not show {len(missing)} run name(s), e.g. {missing[0]!r}")
            await asyncio.sleep(0.5)


async def photograph(
    page: str, url: str, parents: list[str], children: list[str], out: Path, size: tuple[int, int], widen: int, timeout: float
) -> None:
    """Open `url` in a viewport of `size`, check the cell runs are shown, expand them, check the fold runs are shown, save a PNG
    to `out`."""
    async with aiohttp.ClientSession() as session, session.ws_connect(page, max_msg_size=0) as socket:
        tools = DevTools(socket)
        await tools.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
        await tools.call("Page.enable")
        await tools.call("Page.navigate", url=url)
        text = await tools.wait_for_text(parents, timeout)
        if GENAI_ONLY in text:
            sys.exit(f"error: {url} opened the UI's GenAI mode, not Model training")
        await tools.evaluate(f"document.querySelector('{CLOSE_ASSISTANT}')?.click()")
        expanded = await tools.evaluate(f"(() => {{ const b = [...document.querySelectorAll('{EXPANDER}')]; b.forEach(x => x.click()); return b.length; }})()")
        await tools.wait_for_text(children, timeout)
        if widen:
            await tools.evaluate(WIDEN % widen)
        await asyncio.sleep(1)  # let the table settle after the last layout change
        shot = await tools.call("Page.captureScreenshot", format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    print(f"checked: {len(parents)} cell runs and, after expanding {expanded} of them, {len(children)} fold runs shown by name")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="MLflow tracking URI to show (default: train the demo grid on a temporary SQLite store)")
    parser.add_argument("--experiment", default=DEMO_GRID["experiment"], help="experiment to open (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-ui-runs.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary (default: %(default)s)")
    parser.add_argument("--size", default="1400x700", help="viewport WIDTHxHEIGHT in pixels (default: %(default)s)")
    parser.add_argument("--widen", type=int, default=250, help="pixels added to the Run Name column (0: as MLflow draws it)")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for the page (default: %(default)s)")
    args = parser.parse_args(argv)
    if shutil.which(args.chromium) is None:
        sys.exit(f"error: no Chromium at {args.chromium}; install Debian's chromium package or pass --chromium")
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="colorbench-ui-") as tmp:
        folder = Path(tmp)
        uri = args.store or train_demo(folder)
        experiment_id, parents, children = run_names(uri, args.experiment)
        with mlflow_ui(uri, folder / "server.log") as address, headless_chromium(args.chromium, folder / "profile") as page:
            url = runs_url(experiment_id, address)  # the address `colorbench run` prints, on this server
            asyncio.run(photograph(page, url, parents, children, args.out.resolve(), size, args.widen, args.timeout))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) of {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

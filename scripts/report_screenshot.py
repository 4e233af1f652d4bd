"""A report's report.html in a real headless Chromium, opened from its file, checked and photographed.

    python scripts/report_screenshot.py results/builtin-depth-vs-validation/report.html --out docs/report-html.png

It starts Chromium (`--chromium`, default /usr/bin/chromium; Debian's `chromium` package) with its DevTools port, as
ui_screenshot.py does, opens the page's file:// address and records every request the page makes (DevTools Network events).
Once the page has loaded it saves a PNG of the viewport and reads back what the page shows: the ranking table's cells, and the
photo comparison's visible rows after its script ran (test photo, A's advantage, the images' data), again after switching its
metric, and with one row from each end. It exits 1 with one line when the page requested anything but its own file and data:
URIs, has no ranking, or shows the photo rows out of the order of A's advantage; `--facts FILE` keeps what it read as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from ui_screenshot import DevTools, headless_chromium

ROOT = Path(__file__).resolve().parents[1]
FACTS = """(() => {
  const table = document.getElementById('photo-rows');
  const rows = table ? [...table.tBodies[0].rows].filter(r => r.dataset.index !== undefined && !r.hidden).map(r => {
    const delta = r.querySelector('td.delta');
    return {index: Number(r.dataset.index), advantage: delta.dataset.advantage === '' ? null : Number(delta.dataset.advantage),
            delta: delta.textContent, gray: r.cells[1].querySelector('img').src, a: r.querySelector('td.a img').src,
            b: r.querySelector('td.b img').src, truth: r.cells[4].querySelector('img').src};
  }) : [];
  const select = document.getElementById('photo-metric');
  return {ranking: [...document.querySelectorAll('#ranking-table tbody tr')].map(r => r.dataset.cell), rows,
          metric: select ? select.value : null, metrics: select ? [...select.options].map(o => o.value) : [],
          gap: document.querySelector('#photo-rows tr.gap')?.textContent ?? null};
})()"""
CHOOSE = """(() => {
  const select = document.getElementById('photo-metric'), count = document.getElementById('photo-count');
  select.value = %s; select.dispatchEvent(new Event('change'));
  count.value = %s; count.dispatchEvent(new Event('input'));
})()"""


def in_order(rows: list[dict[str, Any]]) -> bool:
    """Whether the rows run from A's largest advantage to its smallest (missing values last)."""
    values = [-float("inf") if r["advantage"] is None else r["advantage"] for r in rows]
    return all(x >= y for x, y in itertools.pairwise(values))


async def inspect(page: str, url: str, out: Path, size: tuple[int, int], timeout: float) -> dict[str, Any]:
    """Open `url`, save a screenshot to `out`, and read the page back (see the module's docstring)."""
    async with aiohttp.ClientSession() as session, session.ws_connect(page, max_msg_size=0) as socket:
        tools = DevTools(socket)
        await tools.call("Network.enable")
        await tools.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1, mobile=False)
        await tools.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while await tools.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                sys.exit(f"error: {url} did not finish loading in {timeout:.0f} s")
            await asyncio.sleep(0.2)
        shot = await tools.call("Page.captureScreenshot", format="png")
        facts = await tools.evaluate(FACTS)
        facts["switched"] = []
        for metric in facts["metrics"]:
            await tools.evaluate(CHOOSE % (json.dumps(metric), len(facts["rows"])))
            facts["switched"].append({"metric": metric, "rows": (await tools.evaluate(FACTS))["rows"]})
        if facts["metric"] is not None:
            await tools.evaluate(CHOOSE % (json.dumps(facts["metric"]), 1))
            facts["one_each_end"] = await tools.evaluate(FACTS)
        await tools.evaluate("1")  # one more exchange: the events the page sent meanwhile are in
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    facts["requests"] = [e["params"]["request"]["url"] for e in tools.events if e["method"] == "Network.requestWillBeSent"]
    return facts


def check(facts: dict[str, Any]) -> str:
    """What is wrong with the page (empty when nothing is)."""
    outside = [url for url in facts["requests"] if not url.startswith(("file://", "data:"))]
    if outside:
        return f"the page requested {len(outside)} address(es) beyond its file, e.g. {outside[0]}"
    if not facts["ranking"]:
        return "the page shows no ranking table"
    for view in [{"metric": facts["metric"], "rows": facts["rows"]}, *facts["switched"]]:
        if not in_order(view["rows"]):
            return f"the photo comparison's rows are not in order of A's advantage on {view['metric']}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the report.html to open")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report-html.png", help="PNG to write (default: %(default)s)")
    parser.add_argument("--facts", type=Path, help="also write what the page showed, as JSON")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary (default: %(default)s)")
    parser.add_argument("--size", default="1400x1100", help="viewport WIDTHxHEIGHT in pixels (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the page (default: %(default)s)")
    args = parser.parse_args(argv)
    if shutil.which(args.chromium) is None:
        sys.exit(f"error: no Chromium at {args.chromium}; install Debian's chromium package or pass --chromium")
    if not args.report.is_file():
        sys.exit(f"error: no report at {args.report}; write one with `colorbench report --experiment NAME`")
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="colorbench-report-") as tmp, headless_chromium(args.chromium, Path(tmp) / "profile") as page:
        facts = asyncio.run(inspect(page, args.report.resolve().as_uri(), args.out.resolve(), size, args.timeout))
    if args.facts:
        args.facts.write_text(json.dumps(facts))
    problem = check(facts)
    if problem:
        sys.exit(f"error: {problem}")
    print(f"checked: {len(facts['ranking'])} ranked cells, {len(facts['rows'])} photo rows in order of A's advantage on each of "
          f"{len(facts['metrics'])} metrics, {len(facts['requests'])} request(s), none beyond the page's file")  # fmt: skip
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

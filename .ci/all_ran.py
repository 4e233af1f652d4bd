"""Fail unless a pytest group really ran: `python .ci/all_ran.py GROUP JUNIT_XML HINT`.

A missing package or program turns a group's tests into skips, and pytest counts skips (and an empty selection) as a pass;
CI runs the optional groups to check them, so here either counts as a failure, with HINT saying what to install.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def counts(junit_xml: str) -> tuple[int, int]:
    """(tests, skipped) over every test suite of a pytest --junitxml report."""
    root = ET.parse(junit_xml).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    tests, skipped = (sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "skipped"))
    return tests, skipped


def main(group: str, junit_xml: str, hint: str) -> None:
    tests, skipped = counts(junit_xml)
    if tests == 0 or skipped:
        sys.exit(f"{group} group: {tests} tests, {skipped} skipped; every one must run ({hint})")
    print(f"{group} group: all {tests} tests ran")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""`colorbench report`: an experiment's runs read through `colorbench.tracking` (`runs`), ranked and compared with a baseline
(`table`, `comparisons`), the validation schemes judged (`validation`), written as text (`render`), figures (`figures`) and one
page (`html`, with the test photos of `photos`) by `build.build_report`, and logged on the experiment's report run (`publish`);
`multi` ranks several experiments in one table.

Importing it loads neither torch nor Optuna: the registries (to label rows), the search (for a study's figures), the images
(for samples.png) and the data and models (for report.html's photos) are imported inside the functions that need them.
"""

from __future__ import annotations

from colorbench.report.build import build_report, parse_ropes
from colorbench.report.figures import FIGURES
from colorbench.report.multi import MultiReport, build_multi_report
from colorbench.report.render import caption, components_text, decodings_table, terminal_rows
from colorbench.report.table import GRAY, Report

__all__ = ["FIGURES", "GRAY", "MultiReport", "Report", "build_multi_report", "build_report", "caption", "components_text", "decodings_table", "parse_ropes", "terminal_rows"]

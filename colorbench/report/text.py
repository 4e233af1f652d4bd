"""How the report writes numbers: table cells, p-values and intervals."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd


def markdown_rows(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per row of cells."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]


def fmt_value(value: object) -> str:
    """A table cell: floats to 3 decimals, missing as empty."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def fmt_p(p: float) -> str:
    """A p-value for people: `-` when not computed."""
    if pd.isna(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(row: Mapping[str, object], key: str, ci: str, spec: str = ".2f") -> str:
    """`value [low, high]` of column `key` and its interval's columns `<ci>_low`, `<ci>_high`, each as `spec`; `-` when missing."""
    value = row.get(key)
    if value is None or pd.isna(value):
        return "-"
    return f"{value:{spec}} [{row[ci + '_low']:{spec}}, {row[ci + '_high']:{spec}}]"


def p_is(name: str, p: float) -> str:
    """`name = 0.012`, or `name < 0.001`."""
    shown = fmt_p(p)
    return f"{name} {shown.replace('<', '< ')}" if shown.startswith("<") else f"{name} = {shown}"

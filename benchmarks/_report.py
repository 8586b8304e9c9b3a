"""What the benchmark scripts share: result rows and the markdown tables they print."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Row", "log", "markdown_table", "rows_table"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Row:
    scenario: str
    casync: str
    git: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None
    values: dict[str, Any] = field(default_factory=dict)


def markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(b) for b in body)]


def rows_table(rows: Sequence[Row], other: str = "git") -> list[str]:
    """The rows as a markdown table; ``other`` names the column of what casync is set against."""
    met = {True: "yes", False: "NO", None: "-"}
    return markdown_table(["scenario", "casync", other, "ratio", "target", "met?"],
                          [[r.scenario, r.casync, r.git, r.ratio, r.target, met[r.met]] for r in rows])

"""Markdown tables: the one writer behind every results, trials and benchmark table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A GitHub markdown table; cells are `str()`-ed and any `|` inside them escaped."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + " --- |" * len(header),
                      *(line(row) for row in rows)]) + "\n"

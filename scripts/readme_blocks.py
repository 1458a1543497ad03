"""The README's generated blocks: each rendered from figures/ alone, between its markers.

A block NAME lies between `<!-- make-figures:NAME -->` and `<!-- /make-figures:NAME -->`;
BLOCKS maps each name to its renderer (the "What it finds" section and the Quick tour's two
outputs).
"""

from __future__ import annotations

from pathlib import Path

from layerpolicy.errors import LayerpolicyError

from .findings import render_findings
from .tour import render_compare_tour, render_entropy_tour

BLOCKS = {  # README block -> its renderer, from the figures directory alone
    "findings": render_findings,
    "tour-entropy": render_entropy_tour,
    "tour-compare": render_compare_tour,
}


class ReadmeBlockError(LayerpolicyError):
    """README.md lacks the markers of a generated block."""


def replace_block(text: str, name: str, block: str) -> str:
    """`text` with the lines between block `name`'s markers replaced by `block`."""
    start, end = f"<!-- make-figures:{name} -->", f"<!-- /make-figures:{name} -->"
    found = (text.count(start), text.count(end))
    if found != (1, 1) or text.index(start) > text.index(end):
        raise ReadmeBlockError(
            f"README.md needs one `{start}` line and, after it, one `{end}` line around the "
            f"generated {name} block (found {found[0]} and {found[1]}); put them back"
        )
    head, rest = text.split(start)
    return f"{head}{start}\n{block.strip(chr(10))}\n{end}{rest.split(end)[1]}"


def check_markers(text: str) -> None:
    """Raise unless README text `text` holds the markers of every block once."""
    for name in BLOCKS:
        replace_block(text, name, "")


def update_readme(text: str, figures_dir: Path) -> str:
    """README text with every generated block rendered from `figures_dir`."""
    for name, render in BLOCKS.items():
        text = replace_block(text, name, render(figures_dir))
    return text

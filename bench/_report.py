"""Writing a benchmark's latest result into its own section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; the
rest of the file is left as it is, so benchmarks can run in any order and alone.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def record(name: str, description: str, columns: list[str], row: list[str]) -> None:
    """Replace (or append) the section ``name`` with a description and a one-row table."""
    body = (
        f"<!-- bench:{name} -->\n## {name}\n\n{description}\n\n"
        f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n| {' | '.join(row)} |\n"
        f"<!-- /bench:{name} -->"
    )
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nRun with `make bench`.\n"
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S
    )
    text = (
        pattern.sub(lambda _: body, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + body + "\n"
    )
    DOC.write_text(text)

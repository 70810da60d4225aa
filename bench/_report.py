"""Writing a benchmark's latest result into its own section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; the
rest of the file is left as it is, so benchmarks can run in any order and alone. A section keeps
every row recorded under the same columns, newest last (a history, as ``evaluate fleet`` keeps
its own), so a regression shows beside the results before it.
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def record(
    name: str, description: str, columns: list[str], row: list[str], *, doc: Path = DOC
) -> None:
    """Write the section ``name`` (appended to ``doc`` when new): the description and a table of
    the rows recorded before under the same ``columns``, then ``row``. Rows under other columns
    (the benchmark measures something else now) are not carried over: they would not fit."""
    header = f"| {' | '.join(columns)} |"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nRun with `make bench`.\n"
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->(.*?)<!-- /bench:{re.escape(name)} -->", re.S
    )
    found = pattern.search(text)
    rows = _rows(found.group(1), header) if found else []
    body = (
        f"<!-- bench:{name} -->\n## {name}\n\n{description}\n\n"
        f"{header}\n|{'---|' * len(columns)}\n"
        + "".join(f"{earlier}\n" for earlier in rows)
        + f"| {' | '.join(row)} |\n<!-- /bench:{name} -->"
    )
    text = pattern.sub(lambda _: body, text) if found else text.rstrip() + "\n\n" + body + "\n"
    doc.write_text(text)


def _rows(section: str, header: str) -> list[str]:
    """The table rows under ``header`` in a section (none when its table has other columns)."""
    lines = section.splitlines()
    if header not in lines:
        return []
    after = lines[lines.index(header) + 2 :]  # past the header and its |---| rule
    rows = []
    for line in after:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows

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


EARLIER = "Earlier rows, measured under other columns:"


def record(
    name: str, description: str, columns: list[str], row: list[str], *, doc: Path = DOC
) -> None:
    """Write the section ``name`` (appended to ``doc`` when new): the description and a table of
    the rows recorded before under the same ``columns``, then ``row``. Tables under other columns
    (the benchmark measures something else now) are kept below it as they were, never merged:
    their rows would not fit, and they are the record of what was measured then."""
    header = f"| {' | '.join(columns)} |"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\nRun with `make bench`.\n"
    pattern = re.compile(
        rf"<!-- bench:{re.escape(name)} -->(.*?)<!-- /bench:{re.escape(name)} -->", re.S
    )
    found = pattern.search(text)
    tables = _tables(found.group(1)) if found else []
    rows = next((table[2:] for table in tables if table[0] == header), [])
    others = [table for table in tables if table[0] != header]
    body = (
        f"<!-- bench:{name} -->\n## {name}\n\n{description}\n\n"
        f"{header}\n|{'---|' * len(columns)}\n"
        + "".join(f"{earlier}\n" for earlier in rows)
        + f"| {' | '.join(row)} |\n"
        + (f"\n{EARLIER}\n\n" + "\n".join("\n".join(t) + "\n" for t in others) if others else "")
        + f"<!-- /bench:{name} -->"
    )
    text = pattern.sub(lambda _: body, text) if found else text.rstrip() + "\n\n" + body + "\n"
    doc.write_text(text)


def _tables(section: str) -> list[list[str]]:
    """Each table of a section: its header, its rule and its rows, in order."""
    tables: list[list[str]] = []
    previous = ""
    for line in section.splitlines():
        if line.startswith("|") and previous.startswith("|"):
            tables[-1].append(line)
        elif line.startswith("|"):
            tables.append([line])
        previous = line
    return [table for table in tables if len(table) >= 2]

"""docs/benchmarks.md as the benchmarks write it (``bench/_report.record``): each run adds its
row to its own section, after the rows of the runs before, and leaves the other sections alone."""

from __future__ import annotations

from pathlib import Path

from bench._report import record

COLUMNS = ["date", "wall (s)", "result"]


def _table(doc: Path, name: str) -> list[str]:
    section = doc.read_text().split(f"<!-- bench:{name} -->")[1].split(f"<!-- /bench:{name} -->")[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_each_run_appends_its_row_newest_last_and_other_sections_stay(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    record("planning", "Plans a fleet.", COLUMNS, ["2026-11-28", "1.4", "PASS"], doc=doc)
    record("scan", "Scans a root.", ["date", "ms"], ["2026-11-28", "167"], doc=doc)
    record("planning", "Plans a bigger fleet.", COLUMNS, ["2026-12-07", "1.9", "PASS"], doc=doc)

    assert _table(doc, "planning") == [
        "| date | wall (s) | result |",
        "| 2026-11-28 | 1.4 | PASS |",
        "| 2026-12-07 | 1.9 | PASS |",
    ]
    text = doc.read_text()
    assert "Plans a bigger fleet." in text and "Plans a fleet." not in text
    assert _table(doc, "scan") == ["| date | ms |", "| 2026-11-28 | 167 |"]
    assert text.index("bench:planning") < text.index("bench:scan")  # each keeps its place


def test_rows_under_other_columns_stay_below_the_new_table_as_they_were(tmp_path: Path) -> None:
    """A benchmark that measures something else now starts a new table; what was measured
    before is kept, never merged into it (its rows would not fit) nor dropped (it is the
    record), and stays through later runs."""
    doc = tmp_path / "benchmarks.md"
    record("planning", "Plans a fleet.", ["date", "ms"], ["2026-11-28", "261"], doc=doc)
    record("planning", "Plans a fleet.", ["date", "ms"], ["2026-11-29", "250"], doc=doc)
    record("planning", "Plans a fleet.", COLUMNS, ["2026-12-07", "0.3", "PASS"], doc=doc)
    record("planning", "Plans a fleet.", COLUMNS, ["2026-12-08", "0.2", "PASS"], doc=doc)
    assert _table(doc, "planning") == [
        "| date | wall (s) | result |",
        "| 2026-12-07 | 0.3 | PASS |",
        "| 2026-12-08 | 0.2 | PASS |",
        "| date | ms |",
        "| 2026-11-28 | 261 |",
        "| 2026-11-29 | 250 |",
    ]
    assert doc.read_text().count("Earlier rows, measured under other columns:") == 1

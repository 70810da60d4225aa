"""Stage: report — views. Compliance reports as CSV with exactly the columns of SSM's reports
(reference §7.7): the all-instances summary, and per instance a summary and a detail (one row per
patch).

Pure: rows from the store's scan records; writing them is the caller's business. Values keep the
API's spelling (NON_COMPLIANT, MISSING, CRITICAL). Facts SSM has and Patchwarden does not (the
instance's IP, a logs URL) are left empty rather than invented.

:func:`write_csv` is the one CSV writer of Patchwarden (these reports and every ``-o csv``): it
defuses formula injection, because host names, package names and CVE fields come from managed
machines, which may be hostile.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from reconciler.state import ScanRecord

SUMMARY_COLUMNS = (
    "Index",
    "Instance ID",
    "Instance name",
    "Instance IP",
    "Platform name",
    "Platform version",
    "SSM Agent version",
    "Patch baseline",
    "Patch group",
    "Compliance status",
    "Compliance severity",
    "Noncompliant Critical severity patch count",
    "Noncompliant High severity patch count",
    "Noncompliant Medium severity patch count",
    "Noncompliant Low severity patch count",
    "Noncompliant Informational severity patch count",
    "Noncompliant Unspecified severity patch count",
)
DETAIL_COLUMNS = (
    "Index",
    "Instance ID",
    "Instance name",
    "Patch name",
    "KB ID/Patch ID",
    "Patch state",
    "Last report time",
    "Compliance level",
    "Patch severity",
    "Patch classification",
    "CVE ID",
    "Patch baseline",
    "Logs URL",
    "Instance IP",
    "Platform name",
    "Platform version",
    "SSM Agent version",
)
NON_COMPLIANT = frozenset({"MISSING", "FAILED", "INSTALLED_REJECTED", "INSTALLED_PENDING_REBOOT"})
LEVELS = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED")


def summary_rows(scans: Mapping[str, ScanRecord]) -> list[dict[str, Any]]:
    """The all-instances summary (also the single-instance summary, with one scan)."""
    return [_summary(index, scans[name]) for index, name in enumerate(sorted(scans), 1)]


def detail_rows(scan: ScanRecord) -> list[dict[str, Any]]:
    """One row per patch of one instance."""
    platform = _platform(scan)
    rows = []
    for index, patch in enumerate(scan.patches, 1):
        rows.append(
            {
                "Index": index,
                "Instance ID": scan.instance,
                "Instance name": _hostname(scan),
                "Patch name": patch["name"],
                "KB ID/Patch ID": _patch_id(patch),
                "Patch state": patch["state"],
                "Last report time": scan.finished_at.isoformat(timespec="seconds"),
                "Compliance level": patch.get("complianceLevel") or "UNSPECIFIED",
                "Patch severity": patch.get("severity") or "",
                "Patch classification": patch.get("classification") or "",
                "CVE ID": ",".join(patch.get("cves") or []),
                "Patch baseline": scan.baseline,
                "Logs URL": "",
                "Instance IP": "",
                **platform,
            }
        )
    return rows


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP, CSV Injection)."""


def to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    write_csv(rows, columns, out)
    return out.getvalue()


def write_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], out: IO[str]) -> None:
    """A header and one line per row, every cell through :func:`neutralised`. Text is always
    quoted (numbers are not): the csv module quotes a bare carriage return only when it is in
    the line terminator, and an unquoted one starts a new row in a spreadsheet."""
    writer = csv.DictWriter(
        out, fieldnames=list(columns), lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC
    )
    writer.writeheader()
    writer.writerows({key: neutralised(value) for key, value in row.items()} for row in rows)


def neutralised(value: object) -> object:
    """``value`` as a spreadsheet shows it and never runs it: text starting with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return gets a leading single quote, as OWASP recommends;
    the rest of the text is kept. Every text is treated so, ``-1`` included: a version or a name
    is text, and which text is safe is the spreadsheet's guess, not ours. Numbers Patchwarden
    computed (counts, indexes) and empty cells are written as they are."""
    if value is None or isinstance(value, int | float):
        return value
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _summary(index: int, scan: ScanRecord) -> dict[str, Any]:
    summary = scan.summary
    levels = dict.fromkeys(LEVELS, 0)
    for patch in scan.patches:
        if patch.get("state") in NON_COMPLIANT:
            levels[patch.get("complianceLevel") or "UNSPECIFIED"] += 1
    return {
        "Index": index,
        "Instance ID": scan.instance,
        "Instance name": _hostname(scan),
        "Instance IP": "",
        **_platform(scan),
        "Patch baseline": scan.baseline,
        "Patch group": scan.patch_group or "",
        "Compliance status": summary.get("complianceStatus") or "",
        "Compliance severity": summary.get("complianceSeverity") or "",
        **{
            f"Noncompliant {level.capitalize()} severity patch count": levels[level]
            for level in LEVELS
        },
    }


def _platform(scan: ScanRecord) -> dict[str, Any]:
    facts = scan.facts
    return {
        "Platform name": facts.get("osId", ""),
        "Platform version": facts.get("osVersion", ""),
        "SSM Agent version": scan.agent_version,
    }


def _hostname(scan: ScanRecord) -> str:
    return str(scan.facts.get("hostname") or scan.instance)


def _patch_id(patch: Mapping[str, Any]) -> str:
    arch = patch.get("arch")
    return f"{patch['name']}.{arch}" if arch else str(patch["name"])

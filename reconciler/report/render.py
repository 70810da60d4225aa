"""Stage: report. Rendering evaluations for people (rich tables) and machines (JSON, YAML).

The JSON/YAML shape is the CONTRACT of DESIGN §4: one object per instance, a list when several
instances are reported. Tables show the counts, then the patches that need attention. Writes only
to the stream it is given.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import IO, Any

import yaml
from rich.console import Console
from rich.table import Table

from reconciler.api.enums import PatchState
from reconciler.evaluation.resolve import Resolution
from reconciler.evaluation.results import InstanceEvaluation, PatchResult

QUIET_STATES = frozenset({PatchState.INSTALLED, PatchState.INSTALLED_OTHER})
_STATE_STYLE = {
    PatchState.MISSING: "bold red",
    PatchState.FAILED: "bold red",
    PatchState.INSTALLED_REJECTED: "red",
    PatchState.INSTALLED_PENDING_REBOOT: "yellow",
    PatchState.AVAILABLE_SECURITY_UPDATE: "yellow",
    PatchState.INSTALLED: "green",
}


def _console(out: IO[str]) -> Console:
    probe = Console(file=out)
    # Piped tables are read in files and CI logs: give them room instead of 80 columns.
    return probe if probe.is_terminal else Console(file=out, width=180)


def dump(data: Any, fmt: str, out: IO[str]) -> None:
    """Write ``data`` as JSON or YAML."""
    if fmt == "json":
        json.dump(data, out, indent=2, sort_keys=False)
        out.write("\n")
    else:
        yaml.safe_dump(data, out, sort_keys=False, allow_unicode=True)


def evaluations(
    results: Sequence[InstanceEvaluation], fmt: str, out: IO[str], *, show_all: bool = False
) -> None:
    """Render evaluation results in ``fmt`` (table, json or yaml)."""
    if fmt != "table":
        data = [r.to_dict() for r in results]
        dump(data[0] if len(data) == 1 else data, fmt, out)
        return
    console = _console(out)
    console.print(_summary_table(results))
    for result in results:
        rows = [p for p in result.patches if show_all or p.state not in QUIET_STATES]
        if rows:
            console.print(_patch_table(result, rows))


def _summary_table(results: Sequence[InstanceEvaluation]) -> Table:
    table = Table(title="Patch compliance", title_justify="left")
    for column in (
        "Instance",
        "OS",
        "Group",
        "Baseline",
        "Status",
        "Severity",
        "Missing",
        "Failed",
        "Pending reboot",
        "Rejected",
        "Installed",
        "Other",
        "N/A",
    ):
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for r in results:
        s = r.summary
        status = str(s.compliance_status)
        table.add_row(
            r.instance_id,
            r.operating_system,
            r.patch_group or "-",
            r.baseline,
            f"[green]{status}[/]" if status == "COMPLIANT" else f"[bold red]{status}[/]",
            str(s.compliance_severity or "-"),
            str(s.missing_count),
            str(s.failed_count),
            str(s.installed_pending_reboot_count),
            str(s.installed_rejected_count),
            str(s.installed_count),
            str(s.installed_other_count),
            str(s.not_applicable_count),
        )
    return table


_NUMERIC = {"Missing", "Failed", "Pending reboot", "Rejected", "Installed", "Other", "N/A"}


def _patch_table(result: InstanceEvaluation, rows: Sequence[PatchResult]) -> Table:
    table = Table(title=f"{result.instance_id} — baseline {result.baseline}", title_justify="left")
    for column in (
        "Patch",
        "Installed",
        "Version",
        "State",
        "Classification",
        "Severity",
        "Compliance level",
        "CVEs",
        "Reason",
    ):
        table.add_column(column, overflow="fold")
    for p in rows:
        style = _STATE_STYLE.get(p.state, "")
        table.add_row(
            f"{p.name}.{p.arch}" if p.arch else p.name,
            p.installed_version or "-",
            p.version,
            f"[{style}]{p.state}[/]" if style else str(p.state),
            p.classification or "-",
            p.severity or "-",
            str(p.compliance_level),
            ", ".join(p.cves) or "-",
            p.reason,
        )
    return table


def explanation(
    result: InstanceEvaluation, resolution: Resolution, patch: str | None, fmt: str, out: IO[str]
) -> None:
    """Why a group and baseline apply to an instance, and the reason behind each patch's state."""
    patches = [p for p in result.patches if patch is None or p.name == patch]
    skipped = [n for n in result.not_approved if patch is None or n.name == patch]
    if fmt != "table":
        data = result.to_dict(explain=True)
        data["patches"] = [p.to_dict() for p in patches]
        data["notApproved"] = [n.to_dict() for n in skipped]
        data["patchGroupReason"] = resolution.group_reason
        data["baselineReason"] = resolution.baseline_reason
        dump(data, fmt, out)
        return
    console = _console(out)
    console.print(f"[bold]{result.instance_id}[/] ({result.operating_system})")
    console.print(f"  patch group: {result.patch_group or '-'} — {resolution.group_reason}")
    console.print(f"  baseline:    {result.baseline} — {resolution.baseline_reason}")
    console.print(f"  status:      {result.summary.compliance_status}")
    if patches:
        console.print(_patch_table(result, patches))
    if skipped:
        table = Table(title="Available but not approved", title_justify="left")
        for column in ("Patch", "Version", "Reason"):
            table.add_column(column, overflow="fold")
        for n in skipped:
            table.add_row(f"{n.name}.{n.arch}" if n.arch else n.name, n.version, n.reason)
        console.print(table)
    if not patches and not skipped:
        console.print(f"  no patch named {patch!r} on this instance")


@contextlib.contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on stderr while long work runs, only when stderr is a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def installation(
    result: InstanceEvaluation, outcome: dict[str, Any], fmt: str, out: IO[str]
) -> None:
    """The evaluation after an Install, with what the install did."""
    install = {
        "simulate": outcome.get("simulate", False),
        "changed": outcome.get("changed", False),
        "patches": outcome.get("patches", []),
        "dependencies": outcome.get("dependencies", []),
        "recovery": outcome.get("recovery", []),
        "reboot": outcome.get("reboot", {"required": False, "performed": False}),
    }
    if fmt != "table":
        data = result.to_dict()
        data["install"] = install
        dump(data, fmt, out)
        return
    console = _console(out)
    table = Table(title="Install", title_justify="left")
    for column in ("Patch", "Version", "Result", "Message"):
        table.add_column(column, overflow="fold")
    for p in install["patches"]:
        table.add_row(
            p.get("name", ""), p.get("version", ""), p.get("result", ""), p.get("message", "")
        )
    for d in install["dependencies"]:
        table.add_row(
            d.get("name", ""),
            d.get("version", ""),
            "DEPENDENCY",
            f"pulled in (from {d.get('from')})",
        )
    if install["patches"]:
        console.print(table)
    else:
        console.print("Nothing to install: no approved patch is missing.")
    reboot = install["reboot"]
    if reboot.get("required"):
        console.print(f"Reboot: {reboot.get('reason') or 'required'}")
    evaluations([result], fmt, out)

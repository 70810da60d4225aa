"""Stage: report — views. Rendering evaluations for people (rich tables) and machines (JSON, YAML).

The JSON/YAML shape is the evaluation document of docs/ssm-semantics.md: one object per instance,
a list when several
instances are reported. Tables show the counts, then the patches that need attention. Writes only
to the stream it is given.

Every value shown is text, never markup: names, host names and reasons come from managed machines
and commits, so rich reads no ``[...]`` markup or ``:emoji:`` code in them and control characters
(a terminal's escape sequences) are shown as ``\\xNN``. :class:`PlainConsole` does this for every
string it renders; styles are applied only by :func:`styled`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import yaml
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from reconciler.api.enums import PatchState
from reconciler.evaluation.resolve import Resolution
from reconciler.evaluation.results import InstanceEvaluation, NotApproved, PatchResult
from reconciler.plan import OneOffProgress, Plan, RolloutGate, Wait
from reconciler.report.views import csvreport
from reconciler.rollout import RolloutDecision, RolloutRecord

QUIET_STATES = frozenset({PatchState.INSTALLED, PatchState.INSTALLED_OTHER})
_STATE_STYLE = {
    PatchState.MISSING: "bold red",
    PatchState.FAILED: "bold red",
    PatchState.INSTALLED_REJECTED: "red",
    PatchState.INSTALLED_PENDING_REBOOT: "yellow",
    PatchState.AVAILABLE_SECURITY_UPDATE: "yellow",
    PatchState.INSTALLED: "green",
}


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 and C1 control characters but tab and newline: ESC starts a terminal's escape sequences."""


def visible(text: str) -> str:
    """``text`` with each control character written as ``\\xNN``, so a terminal shows it."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def styled(text: str, style: str) -> Text:
    """``text`` as it is, in ``style``: the one way a style reaches a rendered value."""
    return Text(visible(text), style=style)


class PlainConsole(Console):
    """A rich console that renders every string (cells, titles, printed lines) as plain text:
    no markup, no emoji codes, control characters made visible."""

    def __init__(self, **options: Any) -> None:
        super().__init__(markup=False, emoji=False, **options)

    def render_str(self, text: str, **options: Any) -> Text:
        return super().render_str(visible(text), **{**options, "markup": False, "emoji": False})


def _console(out: IO[str]) -> Console:
    probe = PlainConsole(file=out)
    # Piped tables are read in files and CI logs: give them room instead of 80 columns.
    return probe if probe.is_terminal else PlainConsole(file=out, width=180)


def _status(status: str) -> Text:
    return styled(status, "green" if status == "COMPLIANT" else "bold red")


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
        if result.last_no_reboot_install_time is not None:
            console.print(
                f"{result.instance_id}: last Install with NoReboot at "
                f"{result.last_no_reboot_install_time.isoformat()}"
            )
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
            _status(status),
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


_NUMERIC = {"Missing", "Failed", "Pending reboot", "Rejected", "Installed", "Other", "N/A", "Held"}


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
            styled(str(p.state), style),
            p.classification or "-",
            p.severity or "-",
            str(p.compliance_level),
            ", ".join(p.cves) or "-",
            p.reason,
        )
    return table


def explanation(
    result: InstanceEvaluation,
    resolution: Resolution,
    patch: str | None,
    fmt: str,
    out: IO[str],
    origin: str | None = None,
    place: RolloutPlace | None = None,
    gates: Sequence[GateShown] = (),
    calendars: Sequence[CalendarShown] = (),
) -> None:
    """Why a group and baseline apply to an instance, and the reason behind each patch's state;
    ``origin``: where a generated instance comes from; ``place``: its rollout stage, if any;
    ``gates``: the safety gates guarding its installs, as read now; ``calendars``: the change
    calendars guarding it, as read now."""
    patches = [p for p in result.patches if patch is None or p.name == patch]
    skipped = [n for n in result.not_approved if patch is None or n.name == patch]
    held = [h for h in result.held if patch is None or h.name == patch]
    if fmt != "table":
        data = result.to_dict(explain=True)
        data["patches"] = [p.to_dict() for p in patches]
        data["notApproved"] = [n.to_dict() for n in skipped]
        data.pop("held", None)  # only the named patch's holds, and no empty list without any
        if held:
            data["held"] = [h.to_dict() for h in held]
        data["patchGroupReason"] = resolution.group_reason
        data["baselineReason"] = resolution.baseline_reason
        if origin is not None:
            data["enrolled"] = origin
        if place is not None:
            data["rollout"] = place.document()
        data["gates"] = [gate.document() for gate in gates]
        data["calendars"] = [calendar.document() for calendar in calendars]
        dump(data, fmt, out)
        return
    console = _console(out)
    console.print(styled(result.instance_id, "bold"), f"({result.operating_system})")
    if origin is not None:
        console.print(f"  enrolled:    {origin}")
    console.print(f"  patch group: {result.patch_group or '-'} — {resolution.group_reason}")
    console.print(f"  baseline:    {result.baseline} — {resolution.baseline_reason}")
    console.print(f"  status:      {result.summary.compliance_status}")
    if place is not None:
        console.print(f"  rollout:     {place}")
    for gate in gates:
        console.print(f"  gate:        {gate}")
    for calendar in calendars:
        console.print(f"  calendar:    {calendar}")
    if patches:
        console.print(_patch_table(result, patches))
    for title, rows in (("Available but not approved", skipped), ("Held: never installed", held)):
        if rows:
            console.print(_reasons_table(title, rows))
    if not patches and not skipped and not held:
        console.print(f"  no patch named {patch!r} on this instance")


def _reasons_table(title: str, rows: Sequence[NotApproved]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("Patch", "Version", "Reason"):
        table.add_column(column, overflow="fold")
    for n in rows:
        table.add_row(f"{n.name}.{n.arch}" if n.arch else n.name, n.version, n.reason)
    return table


@contextlib.contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on stderr while long work runs, only when stderr is a terminal."""
    console = PlainConsole(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(styled(message, "")):
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


def plan(current: Plan, fmt: str, out: IO[str], origins: Mapping[str, str] | None = None) -> None:
    """What the next reconcile would do now, and why every other instance waits; ``origins``
    says where generated instances come from (``from InstanceSource S, host H``)."""
    origins = origins or {}
    actions = [
        {
            "instance": a.instance,
            **({"enrolled": origins[a.instance]} if a.instance in origins else {}),
            "operation": a.operation,
            "reason": a.reason,
            "window": a.window,
            "task": a.task,
            "baseline": a.baseline,
            "pins": list(a.pins),
            **_rollout_of(current.gates, a.instance),
        }
        for a in current.actions
    ]
    waits = [_wait_row(w, origins, current.gates) for w in current.waits]
    if fmt != "table":
        dump(
            {
                "revision": current.revision,
                "now": current.now.isoformat(),
                "actions": actions,
                "waits": waits,
                "oneOffs": [_one_off_row(p) for p in current.one_offs],
            },
            fmt,
            out,
        )
        return
    console = _console(out)
    console.print(
        "Plan for revision", styled(current.revision, "bold"), f"at {current.now.isoformat()}"
    )
    table = Table(title="Would start now", title_justify="left")
    for column in ("Instance", "Operation", "Window / task", "Patches", "Why"):
        table.add_column(column, overflow="fold")
    for a in current.actions:
        table.add_row(
            _with_origin(a.instance, origins),
            a.operation,
            f"{a.window}/{a.task}" if a.window else a.opening or "-",  # one-off: its id
            str(len(a.pins)) if a.pins else "-",
            a.reason,
        )
    console.print(table if current.actions else "Nothing to start now.")
    if current.waits:
        table = Table(title="Waiting", title_justify="left")
        for column in ("Instance", "Why", "Until"):
            table.add_column(column, overflow="fold")
        for w in current.waits:
            until = w.until.isoformat() if w.until else "-"
            table.add_row(_with_origin(w.instance, origins), w.reason, until)
        console.print(table)
    _plan_rollouts(current, out)
    if current.one_offs:
        rows([_one_off_row(p) for p in current.one_offs], fmt, out, title="Patch now")


def _plan_rollouts(current: Plan, out: IO[str]) -> None:
    """The plan's table of each rollout member's rollout, stage and snapshot digest."""
    if current.gates:
        gates = [
            {"instance": name, **_rollout_of(current.gates, name)["rollout"]}
            for name in sorted(current.gates)
        ]
        rows(gates, "table", out, title="Rollouts")


def rollout_status(
    found: Sequence[tuple[RolloutDecision, RolloutRecord]], fmt: str, out: IO[str]
) -> None:
    """``patchctl rollout status``: each Rollout's cycle and snapshot, each stage's verdict."""
    documents = [_rollout_document(decision, record) for decision, record in found]
    if fmt != "table":
        dump(documents, fmt, out)
        return
    console = _console(out)
    for document in documents:
        frozen = document["frozenAt"] or "not frozen yet"
        console.print(
            f"Rollout {document['rollout']}: cycle {document['cycle']}, "
            f"snapshot {document['snapshot'] or '-'} ({frozen})"
        )
        table = Table()
        for column in ("Stage", "Verdict", "Machines", "Why"):
            table.add_column(column, overflow="fold")
        for stage in document["stages"]:
            machines = ", ".join(stage["members"]) or "-"
            table.add_row(stage["stage"], stage["verdict"], machines, stage["reason"])
        console.print(table)


def _rollout_document(decision: RolloutDecision, record: RolloutRecord) -> dict[str, Any]:
    frozen = record.snapshot
    return {
        "rollout": decision.rollout,
        "cycle": record.cycle,
        "snapshot": frozen.digest if frozen else None,
        "frozenAt": frozen.frozen_at.isoformat() if frozen else None,
        "halted": record.halted,
        "stages": [
            {
                "stage": stage.stage,
                "verdict": str(stage.verdict),
                "reason": stage.reason,
                "members": list(stage.members),
                "toInstall": list(stage.to_install),
            }
            for stage in decision.stages
        ],
    }


@dataclass(frozen=True)
class GateShown:
    """A safety gate guarding an instance's installs, as ``explain`` read it."""

    gate: str
    of: str
    """Whose gate it is: "task T of W" or "stage S of rollout R"."""
    blocking: bool
    reason: str

    def document(self) -> dict[str, Any]:
        return {"gate": self.gate, "of": self.of, "blocking": self.blocking, "reason": self.reason}

    def __str__(self) -> str:
        verdict = "blocks" if self.blocking else "open"
        return f"{self.gate} of {self.of} — {verdict}: {self.reason}"


@dataclass(frozen=True)
class CalendarShown(GateShown):
    """A change calendar guarding an instance, as ``explain`` read it: ``gate`` is its name,
    ``of`` "window W" or "rollout R", ``blocking`` whether it is closed."""

    def document(self) -> dict[str, Any]:
        return {
            "calendar": self.gate,
            "of": self.of,
            "closed": self.blocking,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        return f"{self.gate} of {self.of} — {'closed' if self.blocking else 'open'}: {self.reason}"


@dataclass(frozen=True)
class RolloutPlace:
    """An instance's place in a rollout, as ``explain`` shows it."""

    rollout: str
    stage: str
    snapshot: str | None
    """The current cycle's snapshot digest (None: not frozen yet, or no state read)."""

    def document(self) -> dict[str, Any]:
        return {"name": self.rollout, "stage": self.stage, "snapshot": self.snapshot}

    def __str__(self) -> str:
        return f"{self.rollout}, stage {self.stage}, snapshot {self.snapshot or '-'}"


def _rollout_of(gates: Mapping[str, RolloutGate], instance: str) -> dict[str, Any]:
    """An instance's rollout, stage and snapshot digest (docs/rollouts.md); {} outside one."""
    gate = gates.get(instance)
    if gate is None:
        return {}
    return {"rollout": {"name": gate.rollout, "stage": gate.stage, "snapshot": gate.digest or None}}


def _one_off_row(progress: OneOffProgress) -> dict[str, Any]:
    """A one-off opening pending or running, as ``patchctl plan`` shows it."""
    return {
        "id": progress.id,
        "targets": len(progress.targets),
        "running": progress.running,
        "done": progress.done,
        "failed": progress.failed,
        "ends": str(progress.outcome) if progress.outcome else None,
        "why": progress.reason,
    }


def _wait_row(
    wait: Wait, origins: Mapping[str, str], gates: Mapping[str, RolloutGate]
) -> dict[str, Any]:
    return {
        "instance": wait.instance,
        **({"enrolled": origins[wait.instance]} if wait.instance in origins else {}),
        "reason": wait.reason,
        "until": wait.until.isoformat() if wait.until else None,
        **_rollout_of(gates, wait.instance),
    }


def _with_origin(instance: str, origins: Mapping[str, str]) -> str:
    return f"{instance} ({origins[instance]})" if instance in origins else instance


@contextlib.contextmanager
def job_progress() -> Iterator[Callable[[Any], None]]:
    """A live count of finished jobs on stderr (terminals only); yields the per-job callback."""
    console = PlainConsole(stderr=True)
    if not console.is_terminal:
        yield lambda job: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("reconciling", total=None)
        done: dict[str, int] = {}

        def update(job: Any) -> None:
            key = f"{job.operation} {job.status}"
            done[key] = done.get(key, 0) + 1
            bar.update(
                task,
                description="reconciling: "
                + ", ".join(f"{v} {k}" for k, v in sorted(done.items())),
            )

        yield update


def reconcile_summary(summary: Any, scans: Mapping[str, Any], fmt: str, out: IO[str]) -> None:
    """The end of ``patchctl reconcile``: jobs run, waits, refusals, and compliance per instance."""
    rows = [_compliance_row(name, record) for name, record in sorted(scans.items())]
    data = {
        "revision": summary.revision,
        "converged": summary.converged,
        "refused": summary.refused,
        "jobs": summary.jobs,
        "waits": [{"instance": i, "reason": r} for i, r in summary.waits],
        "instances": rows,
    }
    if fmt != "table":
        dump(data, fmt, out)
        return
    console = _console(out)
    jobs = ", ".join(f"{count} {key}" for key, count in sorted(summary.jobs.items())) or "no jobs"
    console.print(f"Revision {summary.revision or '(none accepted)'}: {jobs}.")
    for refused in summary.refused:
        console.print(
            styled("Refused", "bold red"), f"{refused}: kept acting on the last good revision."
        )
    table = Table(title="Compliance", title_justify="left")
    for column in (
        "Instance",
        "Baseline",
        "Status",
        "Severity",
        "Missing",
        "Failed",
        "Pending reboot",
        "Installed",
        "Held",
        "Last operation",
        "Revision",
    ):
        table.add_column(column, justify="right" if column in _NUMERIC else "left", overflow="fold")
    for row in rows:
        status = row["complianceStatus"]
        table.add_row(
            row["instance"],
            row["baseline"],
            _status(status),
            row["complianceSeverity"] or "-",
            str(row["missingCount"]),
            str(row["failedCount"]),
            str(row["installedPendingRebootCount"]),
            str(row["installedCount"]),
            str(row["heldCount"]),
            f"{row['operation']} {row['finishedAt']}",
            short_revision(row["revision"]),
        )
    console.print(table)
    waiting = [(i, r) for i, r in summary.waits if not r.startswith("compliant")]
    if waiting:
        console.print("Waiting: " + "; ".join(f"{i}: {r}" for i, r in waiting))
    elif summary.converged:
        console.print(styled("Converged:", "green"), "every instance is compliant.")


def short_revision(revision: str) -> str:
    """main@sha1:0123456789ab (12 hex digits are plenty for people)."""
    head, sep, digest = revision.rpartition(":")
    return f"{head}{sep}{digest[:12]}" if sep else revision


def _compliance_row(name: str, record: Any) -> dict[str, Any]:
    summary = record.summary
    return {
        "instance": name,
        "baseline": record.baseline,
        "operation": record.operation,
        "finishedAt": record.finished_at.isoformat(timespec="seconds"),
        "revision": record.revision,
        **{
            k: summary.get(k)
            for k in (
                "complianceStatus",
                "complianceSeverity",
                "missingCount",
                "failedCount",
                "installedPendingRebootCount",
                "installedCount",
            )
        },
        # As `patchctl compliance`: packages a hold keeps off (docs/guardrails.md).
        "heldCount": len(record.held),
    }


def windows(rows: Sequence[Mapping[str, str]], fmt: str, out: IO[str]) -> None:
    """Upcoming window openings."""
    if fmt != "table":
        dump(list(rows), fmt, out)
        return
    table = Table(title="Upcoming window openings (UTC)", title_justify="left")
    for column in ("Window", "Targets", "Opens", "No new task after", "Closes", "Tasks"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["window"], row["targets"], row["start"], row["cutoff"], row["end"], row["tasks"]
        )
    _console(out).print(table if rows else "No window opens.")


def rows(data: Sequence[Mapping[str, Any]], fmt: str, out: IO[str], *, title: str) -> None:
    """Flat rows for people (a table), spreadsheets (CSV) or machines (JSON, YAML)."""
    if fmt == "csv":
        csvreport.write_csv(data, list(data[0]) if data else [], out)
        return
    if fmt != "table":
        dump(list(data), fmt, out)
        return
    table = Table(title=title, title_justify="left")
    columns = list(data[0]) if data else []
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in data:
        table.add_row(*("-" if row.get(c) is None else str(row.get(c)) for c in columns))
    _console(out).print(table if data else f"{title}: nothing recorded yet.")

"""Stage: api (the schema). Patch now's one-off opening as a document: which instances (patch
groups, instances by name, or a label selector), the task to run on them, who asked, and until
when it may start; the label-selector text ``patchctl patch-now --selector`` takes; and which
instances an opening targets in a snapshot.

The task is a :class:`~reconciler.api.resources.WindowTask`, so whatever a window's task carries
(its budgets, reboot option, hooks and health checks) is stored and run the same way for a
one-off opening. Values and pure functions only: no I/O, no clock; may not import anything
outside ``reconciler.api``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, ValidationError, model_validator

from reconciler.api._base import Model
from reconciler.api.enums import Operation
from reconciler.api.resources import (
    PATTERN_HELP,
    LabelSelector,
    ManagedInstance,
    Name,
    WindowTask,
)
from reconciler.api.selectors import LabelSelectorRequirement
from reconciler.api.snapshot import Snapshot, group_selects

TASK_NAME = "patch-now"
"""The task name of a one-off opening's jobs (their ``window`` is empty, their ``opening`` the
opening's id)."""

HOOK_FIELDS = ("hooks", "health_checks")
"""The WindowTask fields ``--hooks-from`` copies, those of them the schema has."""


class OneOffStatus(StrEnum):
    """A one-off opening's life: PENDING until its first job starts; IN_PROGRESS; then SUCCESS,
    FAILED (a job failed, or maxErrors halted it), CANCELLED (by ``--cancel``) or EXPIRED (no
    job started before ``expiresAt``)."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


ACTIVE = frozenset({OneOffStatus.PENDING, OneOffStatus.IN_PROGRESS})
"""The statuses in which the loop may still start jobs of an opening."""


class OneOffTargets(Model):
    """Which instances: members of these patch groups, these instances, or those whose labels
    match the selector (exactly one of the three)."""

    patch_groups: list[Name] = Field(default_factory=list)
    instances: list[Name] = Field(default_factory=list)
    selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> OneOffTargets:
        given = [bool(self.patch_groups), bool(self.instances), self.selector is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of patchGroups, instances or selector")
        return self

    def describe(self) -> str:
        """For people: ``group web``, ``instance db-1``, ``selector env=prod``."""
        if self.patch_groups:
            return "group " + ", ".join(self.patch_groups)
        if self.instances:
            return "instance " + ", ".join(self.instances)
        assert self.selector is not None
        return "selector " + selector_text(self.selector)


class EmergencyFix(Model):
    """What makes a one-off opening an emergency CVE run (``patchctl emergency``): the CVE, why,
    and the versions that fix it, frozen when it was asked as a rollout's snapshot is (per
    baseline, content-addressed: ``digest`` is ``reconciler.rollout.RolloutSnapshot.digest``)."""

    cve: str = Field(pattern=r"^CVE-\d{4}-\d{4,}$")
    reason: str | None = None
    groups: list[Name] = Field(default_factory=list)
    """The patch groups asked for (none: the whole fleet); the targets are those of their
    machines whose scan offered a fix."""
    frozen_at: datetime
    versions: dict[str, list[str]]
    """Baseline name -> the ``name[:arch]=version`` pins that fix the CVE there."""
    digest: str


class OneOffOpening(Model):
    """A one-off opening recorded by ``patchctl patch-now``: a task-like document the loop runs
    through the same planner and budgets as a window's task."""

    id: str
    targets: OneOffTargets
    task: WindowTask
    hooks_from: str | None = None
    """``WINDOW/TASK`` whose hooks and health checks the task carries (provenance)."""
    gates_from: str | None = None
    """``WINDOW/TASK`` whose safety gates guard the opening's installs (``--gates-from``): the
    task's gates in the revision in force at each plan, never a copy (docs/patch-now.md)."""
    requested_by: str
    """Who asked: ``--requested-by``, else the operating-system user."""
    os_user: str
    """The operating-system user that ran patchctl (kept even when ``requestedBy`` differs)."""
    note: str | None = None
    created_at: datetime
    expires_at: datetime
    """No job starts at or after this instant; an opening that started none by then EXPIRES."""
    emergency: EmergencyFix | None = None
    """Set for an emergency CVE run: its installs are confined to these fixes."""
    override_halt: str | None = None
    """Why its installs go on machines of a halted rollout (``--override-halt REASON`` of
    ``patch-now`` or ``emergency``, audited); without it such a machine waits until the
    rollout is resumed."""

    @model_validator(mode="before")
    @classmethod
    def _override_halt_on_the_fix(cls, data: Any) -> Any:
        """Emergency runs recorded before patch-now took ``--override-halt`` kept the reason on
        their fix (``emergency.overrideHalt``): read it where it is now kept. Given in both
        places, the fix's stays and is refused as an unknown field."""
        if not isinstance(data, dict) or "overrideHalt" in data:
            return data
        fix = data.get("emergency")
        if not isinstance(fix, dict) or "overrideHalt" not in fix:
            return data
        fix = dict(fix)
        return {**data, "emergency": fix, "overrideHalt": fix.pop("overrideHalt")}


def check_budget(field: str, value: str) -> str:
    """``value`` if a WindowTask takes it as ``field`` (``max_concurrency``, ``max_errors``),
    else ValueError saying what it takes."""
    try:
        WindowTask.model_validate({"name": TASK_NAME, "operation": Operation.SCAN, field: value})
    except ValidationError as exc:
        error = exc.errors()[0]
        pattern = str(error.get("ctx", {}).get("pattern", ""))
        raise ValueError(PATTERN_HELP.get(pattern, error["msg"])) from None
    return value


def targeted(targets: OneOffTargets, snapshot: Snapshot) -> list[str]:
    """The instances of ``snapshot`` an opening's ``targets`` select, sorted (resolved at each
    plan, as a window's targets are: an instance that left the snapshot is no longer one)."""
    return sorted(
        name
        for name, instance in snapshot.instances.items()
        if _selects(targets, snapshot, instance)
    )


def _selects(targets: OneOffTargets, snapshot: Snapshot, instance: ManagedInstance) -> bool:
    labels = instance.metadata.labels
    if targets.instances:
        return instance.metadata.name in targets.instances
    if targets.patch_groups:
        return any(
            group_selects(group, labels)
            for name, group in snapshot.groups.items()
            if name in targets.patch_groups
        )
    return targets.selector is not None and targets.selector.matches(dict(labels))


def refused_targets(targets: OneOffTargets, snapshot: Snapshot) -> str | None:
    """Why ``targets`` cannot be requested in ``snapshot`` (names unknown, or nothing matches),
    listing what is known; None when they select at least one instance."""
    for what, wanted, known in (
        ("patch group", targets.patch_groups, snapshot.groups),
        ("instance", targets.instances, snapshot.instances),
    ):
        unknown = [name for name in wanted if name not in known]
        if unknown:
            return f"unknown {what} {', '.join(unknown)}; known: {_listing(known)}"
    if not targeted(targets, snapshot):
        return (
            f"{targets.describe()} selects no instance; instances: {_listing(snapshot.instances)}"
        )
    return None


def _listing(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def window_task(snapshot: Snapshot, reference: str) -> tuple[str, WindowTask]:
    """The window task ``WINDOW[/TASK]`` names, and its ``WINDOW/TASK``. ValueError says what
    is wrong: an unknown window or task, or a window with several tasks and no TASK."""
    window_name, _, task_name = reference.partition("/")
    window = snapshot.windows.get(window_name)
    if window is None:
        raise ValueError(f"unknown window {window_name!r}; windows: {_listing(snapshot.windows)}")
    tasks = {task.name: task for task in window.spec.tasks}
    if not task_name and len(tasks) != 1:
        raise ValueError(f"window {window_name} has several tasks: name one ({_listing(tasks)})")
    task = tasks.get(task_name) if task_name else next(iter(tasks.values()))
    if task is None:
        raise ValueError(f"window {window_name} has no task {task_name!r}; {_listing(tasks)}")
    return f"{window_name}/{task.name}", task


def hook_fields(snapshot: Snapshot, reference: str) -> tuple[str, dict[str, Any]]:
    """The hook and health-check fields (wire names) of the window task ``WINDOW[/TASK]``, and
    the task's ``WINDOW/TASK``. ValueError says what is wrong (:func:`window_task`, or a task
    with nothing to copy)."""
    named, task = window_task(snapshot, reference)
    copied = task_hooks(task)
    if not copied:
        window_name = named.partition("/")[0]
        raise ValueError(
            f"task {task.name} of window {window_name} has no hooks or health checks to copy"
        )
    return named, copied


def gating_task(snapshot: Snapshot, reference: str) -> tuple[str, WindowTask]:
    """The window task ``WINDOW[/TASK]`` whose gates ``--gates-from`` names, and its
    ``WINDOW/TASK``; ValueError also when it has no gates (nothing would guard the opening)."""
    named, task = window_task(snapshot, reference)
    if not task.gates:
        raise ValueError(f"task {task.name} of window {named.partition('/')[0]} has no gates")
    return named, task


def task_hooks(task: WindowTask) -> dict[str, Any]:
    """The hook and health-check fields ``task`` sets, by wire name (empty when none)."""
    wire = task.model_dump(mode="json", by_alias=True, exclude_none=True)
    aliases = {name: info.alias or name for name, info in WindowTask.model_fields.items()}
    return {
        aliases[name]: wire[aliases[name]]
        for name in HOOK_FIELDS
        if name in aliases and wire.get(aliases[name])
    }


def checked_task(opening: OneOffOpening, snapshot: Snapshot) -> WindowTask:
    """The task a job of ``opening`` may run in ``snapshot``: its hooks and health checks must
    still be those of the window task named by ``hooksFrom`` (none without it). The commands a
    machine runs come from the reviewed configuration, never from the state database alone.
    ValueError says why not."""
    stored = task_hooks(opening.task)
    if opening.hooks_from is None:
        if stored:
            raise ValueError("it carries hooks or health checks that no window task gave it")
        return opening.task
    try:
        _, current = hook_fields(snapshot, opening.hooks_from)
    except ValueError as exc:
        raise ValueError(f"--hooks-from {opening.hooks_from}: {exc}") from None
    if current != stored:
        raise ValueError(
            f"the hooks and health checks of {opening.hooks_from} changed since it was "
            "requested: request it again"
        )
    return opening.task


# -- label selectors as text (kubectl's syntax) ---------------------------------------------------

_SET = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_EQUALITY = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(?P<not>!?)\s*(?P<key>[^\s!=(),]+)\s*$")


def parse_selector(text: str) -> LabelSelector:
    """Kubernetes' label-selector text (``kubectl -l``): ``key=value``, ``key!=value``,
    ``key in (a,b)``, ``key notin (a)``, ``key``, ``!key``, joined by commas (all must hold), as
    the LabelSelector a window's ``targets.selector`` holds. ValueError says which part is wrong."""
    labels: dict[str, str] = {}
    expressions: list[LabelSelectorRequirement] = []
    for part in _split(text):
        if match := _SET.match(part):
            values = [v.strip() for v in match["values"].split(",") if v.strip()]
            operator = "In" if match["op"] == "in" else "NotIn"
            expressions.append(_requirement(match["key"], operator, values, part))
        elif match := _EQUALITY.match(part):
            if match["op"] == "!=":
                expressions.append(_requirement(match["key"], "NotIn", [match["value"]], part))
            else:
                labels[match["key"]] = match["value"]
        elif match := _EXISTS.match(part):
            operator = "DoesNotExist" if match["not"] else "Exists"
            expressions.append(_requirement(match["key"], operator, [], part))
        else:
            raise ValueError(f"{part.strip()!r} is not key=value, key!=value, key in (a,b), key")
    return LabelSelector(match_labels=labels, match_expressions=expressions)


def _split(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses; an empty part is an error."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    if any(not part.strip() for part in parts):
        raise ValueError("an empty requirement (give key=value, key in (a,b), ... joined by ',')")
    return parts


def _requirement(key: str, operator: str, values: list[str], part: str) -> LabelSelectorRequirement:
    try:
        return LabelSelectorRequirement(key=key, operator=operator, values=values)
    except ValueError as exc:
        raise ValueError(f"{part.strip()!r}: {_first_error(exc)}") from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return str(errors()[0].get("msg", exc))
    return str(exc)


def selector_text(selector: LabelSelector) -> str:
    """A LabelSelector in kubectl's syntax (the inverse of :func:`parse_selector`)."""
    parts = [f"{key}={value}" for key, value in selector.match_labels.items()]
    for req in selector.match_expressions:
        values = ",".join(req.values)
        parts.append(
            {
                "In": f"{req.key} in ({values})",
                "NotIn": f"{req.key} notin ({values})",
                "Exists": req.key,
                "DoesNotExist": f"!{req.key}",
            }[req.operator]
        )
    return ",".join(parts)

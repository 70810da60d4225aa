"""Stage: sources (SSM import), the pure part. SSM's API response shapes (GetPatchBaseline,
DescribePatchGroups, GetMaintenanceWindow, DescribeMaintenanceWindowTargets,
DescribeMaintenanceWindowTasks, as the AWS CLI saves them) in, our documents out, each validated
by its model; whatever has no place in them is listed as :class:`NotCarried` with the reason.

Pure: no I/O, no clock, no boto3 (the client module reads AWS); may not write anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.api.ec2 import PATCH_GROUP_TAGS, check_label_key
from reconciler.api.resources import (
    API_VERSION,
    GROUP_LABEL,
    MaintenanceWindow,
    PatchBaseline,
    PatchGroup,
    WindowTask,
)

SSM_NAME = "patchwarden.io/ssm-name"
"""The annotation holding the SSM name a resource came from (as the predefined baselines')."""
RUN_PATCH_BASELINE = "AWS-RunPatchBaseline"
# AWS-RunPatchBaseline parameters that point at S3 objects or SSM state we cannot follow.
_UNCARRIED_PARAMETERS = ("InstallOverrideList", "BaselineOverride", "SnapshotId", "AssociationId")
_BASELINE_FIELDS = {
    "Description": "description",
    "ApprovedPatches": "approvedPatches",
    "ApprovedPatchesComplianceLevel": "approvedPatchesComplianceLevel",
    "ApprovedPatchesEnableNonSecurity": "approvedPatchesEnableNonSecurity",
    "RejectedPatches": "rejectedPatches",
    "RejectedPatchesAction": "rejectedPatchesAction",
    "AvailableSecurityUpdatesComplianceStatus": "availableSecurityUpdatesComplianceStatus",
}
_WINDOW_FIELDS = {
    "Schedule": "schedule",
    "ScheduleTimezone": "scheduleTimezone",
    "ScheduleOffset": "scheduleOffset",
    "StartDate": "startDate",
    "EndDate": "endDate",
    "Duration": "duration",
    "Cutoff": "cutoff",
    "Enabled": "enabled",
    "Description": "description",
}


@dataclass(frozen=True)
class SsmWindow:
    """One maintenance window as SSM describes it: the window, its targets, its tasks."""

    window: Mapping[str, Any]
    targets: Sequence[Mapping[str, Any]] = ()
    tasks: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class SsmAccount:
    """What was read from one account and region (or from saved files)."""

    baselines: Sequence[Mapping[str, Any]] = ()
    """GetPatchBaseline responses of the custom baselines."""
    patch_groups: Sequence[Mapping[str, Any]] = ()
    """DescribePatchGroups' Mappings."""
    windows: Sequence[SsmWindow] = ()


@dataclass(frozen=True)
class NotCarried:
    """An SSM object or setting that has no place in the imported resources, and why."""

    kind: str
    name: str
    reason: str


@dataclass(frozen=True)
class Imported:
    """The documents (wire form, validated one by one) and what was left behind."""

    documents: tuple[dict[str, Any], ...]
    not_carried: tuple[NotCarried, ...]


@dataclass
class _Work:
    predefined: Mapping[str, str]
    """SSM name of a predefined baseline -> ours."""
    baselines: dict[str, str] = field(default_factory=dict)
    """SSM baseline id and name -> our name."""
    groups: dict[str, str] = field(default_factory=dict)
    """SSM patch group -> our name."""
    taken: set[tuple[str, str]] = field(default_factory=set)
    documents: list[dict[str, Any]] = field(default_factory=list)
    notes: list[NotCarried] = field(default_factory=list)

    def note(self, kind: str, name: str, reason: str) -> None:
        self.notes.append(NotCarried(kind, name, reason))


def convert(account: SsmAccount, predefined: Mapping[str, str]) -> Imported:
    """``account`` as our resources; ``predefined`` maps SSM's predefined baseline names (such as
    AWS-UbuntuDefaultPatchBaseline) to ours, so groups registered with them keep them."""
    work = _Work(predefined)
    # A custom baseline may not take a predefined one's name (patchctl validate refuses it).
    work.taken.update(("PatchBaseline", name) for name in predefined.values())
    for raw in account.baselines:
        _baseline(raw, work)
    _groups(account.patch_groups, work)
    for window in account.windows:
        _window(window, work)
    return Imported(tuple(work.documents), tuple(work.notes))


def resource_name(ssm_name: str) -> str:
    """An SSM name as a Kubernetes object name: lowercase, runs of other characters as '-'."""
    name = re.sub(r"[^a-z0-9.]+", "-", ssm_name.lower())
    return re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", name)[:253]


def _document(kind: str, ssm_name: str, spec: dict[str, Any], work: _Work) -> dict[str, Any] | None:
    """The document for ``spec`` validated as ``kind``, or None with the reason noted."""
    name = resource_name(ssm_name)
    if not name or (kind, name) in work.taken:
        why = "is already taken" if name else "has no letter or digit"
        work.note(kind, ssm_name, f"the resource name {name!r} {why}: rename it in SSM")
        return None
    metadata = {"name": name, "annotations": {SSM_NAME: ssm_name}}
    doc = {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}
    problem = _invalid(_MODELS[kind], doc)
    if problem is not None:
        work.note(kind, ssm_name, problem)
        return None
    work.taken.add((kind, name))
    work.documents.append(doc)
    return doc


_MODELS: dict[str, type[BaseModel]] = {
    "PatchBaseline": PatchBaseline,
    "PatchGroup": PatchGroup,
    "MaintenanceWindow": MaintenanceWindow,
}


def _invalid(model: type[BaseModel], data: Mapping[str, Any]) -> str | None:
    """None if ``data`` is a valid ``model``, else its first problem in one line."""
    try:
        model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {first['msg']}" if where else str(first["msg"])
    return None


# -- baselines ---------------------------------------------------------------------------------


def _baseline(raw: Mapping[str, Any], work: _Work) -> None:
    spec: dict[str, Any] = {"operatingSystem": raw.get("OperatingSystem", "WINDOWS")}
    spec.update({ours: raw[theirs] for theirs, ours in _BASELINE_FIELDS.items() if theirs in raw})
    if raw.get("GlobalFilters", {}).get("PatchFilters"):
        spec["globalFilters"] = _filter_group(raw["GlobalFilters"])
    rules = raw.get("ApprovalRules", {}).get("PatchRules", [])
    if rules:
        spec["approvalRules"] = [_rule(rule) for rule in rules]
    if raw.get("Sources"):
        spec["sources"] = [
            {"name": s["Name"], "products": s["Products"], "configuration": s["Configuration"]}
            for s in raw["Sources"]
        ]
    doc = _document("PatchBaseline", str(raw.get("Name", "")), spec, work)
    if doc is not None:
        for key in (raw.get("BaselineId"), raw.get("Name")):
            if key:
                work.baselines[str(key)] = doc["metadata"]["name"]


def _filter_group(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "patchFilters": [
            {"key": f["Key"], "values": list(f["Values"])} for f in raw.get("PatchFilters", [])
        ]
    }


def _rule(raw: Mapping[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = {"patchFilterGroup": _filter_group(raw.get("PatchFilterGroup", {}))}
    for theirs, ours in (
        ("ApproveAfterDays", "approveAfterDays"),
        ("ApproveUntilDate", "approveUntilDate"),
        ("ComplianceLevel", "complianceLevel"),
        ("EnableNonSecurity", "enableNonSecurity"),
    ):
        if theirs in raw:
            rule[ours] = raw[theirs]
    return rule


# -- patch groups ------------------------------------------------------------------------------


def _groups(mappings: Sequence[Mapping[str, Any]], work: _Work) -> None:
    registered: dict[str, dict[str, str]] = {}
    for mapping in mappings:
        group = str(mapping.get("PatchGroup", ""))
        identity = mapping.get("BaselineIdentity", {})
        ours = _baseline_ref(identity, work)
        if ours is None:
            work.note(
                "PatchGroup",
                group,
                f"its baseline {identity.get('BaselineName') or identity.get('BaselineId')} "
                "was not imported (see its own line), so the group keeps no baseline for "
                f"{identity.get('OperatingSystem', 'WINDOWS')}",
            )
        registered.setdefault(group, {})
        if ours is not None:
            registered[group][str(identity.get("OperatingSystem", "WINDOWS"))] = ours
    for group, baselines in registered.items():
        spec: dict[str, Any] = {"baselines": baselines}
        if resource_name(group) != group:
            # Our default selector is the label named after the group: keep SSM's name there.
            spec["selector"] = {"matchLabels": {GROUP_LABEL: group}}
        doc = _document("PatchGroup", group, spec, work)
        if doc is not None:
            work.groups[group] = doc["metadata"]["name"]


def _baseline_ref(identity: Mapping[str, Any], work: _Work) -> str | None:
    name = str(identity.get("BaselineName", ""))
    if name in work.predefined:
        return work.predefined[name]
    return work.baselines.get(str(identity.get("BaselineId", ""))) or work.baselines.get(name)


# -- maintenance windows -----------------------------------------------------------------------


def _window(raw: SsmWindow, work: _Work) -> None:
    window = raw.window
    label = str(window.get("Name") or window.get("WindowId", ""))
    spec: dict[str, Any] = {
        ours: window[theirs] for theirs, ours in _WINDOW_FIELDS.items() if theirs in window
    }
    if window.get("AllowUnassociatedTargets"):
        work.note(
            "MaintenanceWindow",
            label,
            "AllowUnassociatedTargets: our tasks run on the window's registered targets only",
        )
    targets = _window_targets(label, raw.targets, work)
    tasks = [task for task in (_task(label, t, work) for t in raw.tasks) if task is not None]
    if targets is None or not tasks:
        missing = "targets it can carry" if targets is None else "AWS-RunPatchBaseline task"
        work.note("MaintenanceWindow", label, f"not imported: it has no {missing}")
        return
    spec.update(targets=targets, tasks=tasks)
    _document("MaintenanceWindow", label, spec, work)


def _window_targets(
    window: str, registered: Sequence[Mapping[str, Any]], work: _Work
) -> dict[str, Any] | None:
    """The union of the window's registered targets as our WindowTargets (one selector at
    most: a union of two selectors has no form in ours), or None when none can be carried."""
    groups: list[str] = []
    selector: dict[str, Any] | None = None
    for target in registered:
        label = f"{window}/{target.get('Name') or target.get('WindowTargetId', '')}"
        converted = _target(label, target, work)
        if converted is None:
            continue
        if isinstance(converted, list):
            groups.extend(g for g in converted if g not in groups)
        elif selector is None:
            selector = converted
        else:
            work.note(
                "WindowTarget", label, "a window takes one tag selector here; this is a second"
            )
    if not groups and selector is None:
        return None
    return {
        **({"patchGroups": groups} if groups else {}),
        **({"selector": selector} if selector else {}),
    }


def _target(
    label: str, target: Mapping[str, Any], work: _Work
) -> list[str] | dict[str, Any] | None:
    """One registered target: our group names, a label selector (its tags, all of which must
    hold, as SSM's), or None with the reason noted."""
    if target.get("ResourceType", "INSTANCE") != "INSTANCE":
        work.note("WindowTarget", label, f"ResourceType {target['ResourceType']}: not carried over")
        return None
    pairs = [(str(t.get("Key", "")), list(t.get("Values", []))) for t in target.get("Targets", [])]
    by_group = len(pairs) == 1 and pairs[0][0].removeprefix("tag:") in PATCH_GROUP_TAGS
    # Groups not imported stay a label selector below, so the same instances are targeted.
    if by_group and all(value in work.groups for value in pairs[0][1]):
        return [work.groups[value] for value in pairs[0][1]]
    expressions = []
    for key, values in pairs:
        expression = _expression(key, values)
        if isinstance(expression, str):
            work.note("WindowTarget", label, expression)
            return None
        expressions.append(expression)
    return {"matchExpressions": expressions} if expressions else None


def _expression(key: str, values: list[str]) -> dict[str, Any] | str:
    """The selector requirement for one SSM target pair, or why there is none."""
    if key == "tag-key" and len(values) == 1:
        return _requirement(values[0], {"operator": "Exists"})
    if not key.startswith("tag:"):
        return f"{key}: only tag:KEY and tag-key targets carry over"
    tag = key.removeprefix("tag:")
    # Instances carry their Patch Group tag as our group label (docs/enrolment.md).
    label = GROUP_LABEL if tag in PATCH_GROUP_TAGS else tag
    return _requirement(label, {"operator": "In", "values": values})


def _requirement(label: str, rest: dict[str, Any]) -> dict[str, Any] | str:
    try:
        check_label_key(label, label)
    except ValueError as exc:
        # No instance can carry it as a label: the target would select nothing.
        return f"{exc}; map the tag to a label in the InstanceSource and add the target by hand"
    return {"key": label, **rest}


def _task(window: str, raw: Mapping[str, Any], work: _Work) -> dict[str, Any] | None:
    label = f"{window}/{raw.get('Name') or raw.get('WindowTaskId', '')}"
    kind = raw.get("Type") or raw.get("TaskType") or "RUN_COMMAND"  # Describe* / Get*
    if raw.get("TaskArn") != RUN_PATCH_BASELINE or kind != "RUN_COMMAND":
        work.note(
            "WindowTask", label, f"{raw.get('TaskArn')}: only AWS-RunPatchBaseline tasks carry over"
        )
        return None
    parameters = _parameters(raw)
    for name in _UNCARRIED_PARAMETERS:
        if any(parameters.get(name, [])):
            work.note("WindowTask", label, f"parameter {name} (S3 or SSM state): not carried over")
    task: dict[str, Any] = {
        "name": raw.get("Name") or raw.get("WindowTaskId"),
        "operation": (parameters.get("Operation") or ["Scan"])[0],
        "rebootOption": (parameters.get("RebootOption") or ["RebootIfNeeded"])[0],
        "priority": raw.get("Priority", 1),
    }
    for theirs, ours in (
        ("MaxConcurrency", "maxConcurrency"),
        ("MaxErrors", "maxErrors"),
        ("CutoffBehavior", "cutoffBehavior"),
    ):
        if theirs in raw:
            task[ours] = raw[theirs]
    problem = _invalid(WindowTask, task)
    if problem is not None:
        work.note("WindowTask", label, problem)
        return None
    return task


def _parameters(raw: Mapping[str, Any]) -> dict[str, list[str]]:
    """The task's document parameters, from TaskInvocationParameters (GetMaintenanceWindowTask)
    or the older TaskParameters (DescribeMaintenanceWindowTasks)."""
    invocation = raw.get("TaskInvocationParameters", {}).get("RunCommand", {})
    if invocation.get("Parameters"):
        return {k: list(v) for k, v in invocation["Parameters"].items()}
    legacy = raw.get("TaskParameters", {})
    return {k: list(v.get("Values", [])) for k, v in legacy.items()}

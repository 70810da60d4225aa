"""Stage: sources (SSM export), the pure part. A validated snapshot's baselines, groups and windows
as the requests that create them in SSM (CreatePatchBaseline, RegisterPatchBaselineForPatchGroup,
CreateMaintenanceWindow, RegisterTargetWithMaintenanceWindow, RegisterTaskWithMaintenanceWindow),
the inverse of :mod:`.convert`. What we accept but SSM cannot hold is refused, each problem at the
resource's file and line, and nothing is sent.

Pure: no I/O, no boto3 (the client module sends); may not decide create or update.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from reconciler.api.ec2 import PATCH_GROUP_TAGS
from reconciler.api.resources import (
    GROUP_LABEL,
    SSM_MAX_SCHEDULE_OFFSET,
    LabelSelector,
    MaintenanceWindow,
    PatchBaseline,
    PatchFilterGroup,
    PatchGroup,
    WindowTask,
)
from reconciler.api.snapshot import Problem, Snapshot, SnapshotInvalid
from reconciler.sources.ssm.convert import RUN_PATCH_BASELINE, SSM_NAME

_SELF = "self"  # a WindowTargetIds placeholder: the client puts the registered ids there


@dataclass(frozen=True)
class SsmWindowRequests:
    window: dict[str, Any]
    """CreateMaintenanceWindow's parameters (which has no Enabled: UpdateMaintenanceWindow's)."""
    enabled: bool
    targets: tuple[dict[str, Any], ...]
    tasks: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Outbound:
    """What to send, by SSM name; registrations as (patch group, baseline SSM name, OS)."""

    baselines: tuple[dict[str, Any], ...]
    registrations: tuple[tuple[str, str, str], ...]
    windows: tuple[SsmWindowRequests, ...]


def ssm_name(resource: PatchBaseline | PatchGroup | MaintenanceWindow) -> str:
    return resource.metadata.annotations.get(SSM_NAME, resource.metadata.name)


def to_ssm(snapshot: Snapshot) -> Outbound:
    """The snapshot's own resources as SSM requests; SnapshotInvalid lists what SSM cannot hold."""
    problems: list[Problem] = []
    baselines = tuple(_baseline(b) for b in snapshot.baselines.values())
    problems.extend(_baseline_problems(snapshot))
    registrations: list[tuple[str, str, str]] = []
    for group in snapshot.groups.values():
        problems.extend(_group_problems(snapshot, group))
        for system, name in group.spec.baselines.items():
            known = snapshot.baselines.get(name) or snapshot.predefined[name]
            registrations.append((group_tag(group), ssm_name(known), system.value))
    windows = []
    for window in snapshot.windows.values():
        problems.extend(_window_problems(snapshot, window))
        windows.append(_window(snapshot, window))
    if problems:
        raise SnapshotInvalid(problems)
    return Outbound(baselines, tuple(registrations), tuple(windows))


def group_tag(group: PatchGroup) -> str:
    """The Patch Group tag value of the group's instances in SSM."""
    selector = group.spec.selector
    if selector is not None and GROUP_LABEL in selector.match_labels:
        return selector.match_labels[GROUP_LABEL]
    return ssm_name(group)


def _at(snapshot: Snapshot, kind: str, name: str, field: str, message: str) -> Problem:
    where = snapshot.locations.get((kind, name))
    return Problem(where.file if where else kind, where.line if where else 0, field, message)


# -- baselines ---------------------------------------------------------------------------------


def _baseline(baseline: PatchBaseline) -> dict[str, Any]:
    spec = baseline.spec
    request: dict[str, Any] = {
        "Name": ssm_name(baseline),
        "OperatingSystem": spec.operating_system.value,
        "ApprovedPatches": list(spec.approved_patches),
        "ApprovedPatchesComplianceLevel": spec.approved_patches_compliance_level.value,
        "ApprovedPatchesEnableNonSecurity": spec.approved_patches_enable_non_security,
        "RejectedPatches": list(spec.rejected_patches),
        "RejectedPatchesAction": spec.rejected_patches_action.value,
    }
    if spec.description is not None:
        request["Description"] = spec.description
    if spec.global_filters is not None and spec.global_filters.patch_filters:
        request["GlobalFilters"] = _filters(spec.global_filters)
    if spec.approval_rules:
        request["ApprovalRules"] = {"PatchRules": [_rule(rule) for rule in spec.approval_rules]}
    if spec.sources:
        request["Sources"] = [
            {"Name": s.name, "Products": list(s.products), "Configuration": s.configuration}
            for s in spec.sources
        ]
    status = spec.available_security_updates_compliance_status
    if status is not None:
        request["AvailableSecurityUpdatesComplianceStatus"] = status.value
    return request


def _filters(group: PatchFilterGroup) -> dict[str, Any]:
    return {
        "PatchFilters": [
            {"Key": f.key.value, "Values": list(f.values)} for f in group.patch_filters
        ]
    }


def _rule(rule: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "PatchFilterGroup": _filters(rule.patch_filter_group),
        "ComplianceLevel": rule.compliance_level.value,
        "EnableNonSecurity": rule.enable_non_security,
    }
    if rule.approve_after_days is not None:
        request["ApproveAfterDays"] = rule.approve_after_days
    if rule.approve_until_date is not None:
        request["ApproveUntilDate"] = rule.approve_until_date.isoformat()
    return request


def _baseline_problems(snapshot: Snapshot) -> Iterator[Problem]:
    for name, baseline in snapshot.baselines.items():
        if baseline.spec.approve_after_days_from is not None:
            yield _at(
                snapshot,
                "PatchBaseline",
                name,
                "spec.approveAfterDaysFrom",
                "SSM has no approveAfterDaysFrom (a Patchwarden extension): remove it to export",
            )
        if baseline.spec.default_baseline:
            yield _at(
                snapshot,
                "PatchBaseline",
                name,
                "spec.defaultBaseline",
                "export does not change the account's default baseline: remove it, then "
                "register it in SSM (aws ssm register-default-patch-baseline)",
            )


# -- groups and windows ------------------------------------------------------------------------


def _group_problems(snapshot: Snapshot, group: PatchGroup) -> Iterator[Problem]:
    if group.spec.holds:
        yield _at(
            snapshot,
            "PatchGroup",
            group.metadata.name,
            "spec.holds",
            "SSM has no package holds (a Patchwarden extension): remove them to export, or list "
            "the packages in the baselines' rejectedPatches (counted alike with "
            "ALLOW_AS_DEPENDENCY)",
        )
    selector = group.spec.selector
    if selector is None or (
        not selector.match_expressions and set(selector.match_labels) == {GROUP_LABEL}
    ):
        return
    yield _at(
        snapshot,
        "PatchGroup",
        group.metadata.name,
        "spec.selector",
        f"SSM selects a patch group's instances by their Patch Group tag only: use matchLabels "
        f"{GROUP_LABEL} alone, or no selector",
    )


def _window(snapshot: Snapshot, window: MaintenanceWindow) -> SsmWindowRequests:
    spec = window.spec
    request: dict[str, Any] = {
        "Name": ssm_name(window),
        "Schedule": spec.schedule,
        "ScheduleTimezone": spec.schedule_timezone,
        "Duration": spec.duration,
        "Cutoff": spec.cutoff,
        "AllowUnassociatedTargets": False,
    }
    optional = {
        "ScheduleOffset": spec.schedule_offset,
        "StartDate": spec.start_date.isoformat() if spec.start_date else None,
        "EndDate": spec.end_date.isoformat() if spec.end_date else None,
        "Description": spec.description,
    }
    request.update({k: v for k, v in optional.items() if v is not None})
    targets = []
    groups = [group_tag(snapshot.groups[name]) for name in spec.targets.patch_groups]
    if groups:
        targets.append(
            {
                "Name": "patch-groups",
                "ResourceType": "INSTANCE",
                "Targets": [{"Key": f"tag:{PATCH_GROUP_TAGS[0]}", "Values": groups}],
            }
        )
    if spec.targets.selector is not None:
        pairs = list(_tag_targets(spec.targets.selector))
        targets.append({"Name": "selector", "ResourceType": "INSTANCE", "Targets": pairs})
    tasks = tuple(_task(t) for t in spec.tasks)
    return SsmWindowRequests(request, spec.enabled, tuple(targets), tasks)


def _tag_targets(selector: LabelSelector) -> Iterator[dict[str, Any]]:
    for key, value in selector.match_labels.items():
        yield {"Key": f"tag:{_tag(key)}", "Values": [value]}
    for requirement in selector.match_expressions:
        if requirement.operator == "In":
            yield {"Key": f"tag:{_tag(requirement.key)}", "Values": list(requirement.values)}
        elif requirement.operator == "Exists":
            yield {"Key": "tag-key", "Values": [requirement.key]}


def _tag(label: str) -> str:
    return PATCH_GROUP_TAGS[0] if label == GROUP_LABEL else label


def _task(task: WindowTask) -> dict[str, Any]:
    parameters = {"Operation": [task.operation.value], "RebootOption": [task.reboot_option.value]}
    return {
        "Name": task.name,
        "TaskArn": RUN_PATCH_BASELINE,
        "TaskType": "RUN_COMMAND",
        "Targets": [{"Key": "WindowTargetIds", "Values": [_SELF]}],
        "Priority": task.priority,
        "MaxConcurrency": task.max_concurrency,
        "MaxErrors": task.max_errors,
        "CutoffBehavior": task.cutoff_behavior,
        "TaskInvocationParameters": {"RunCommand": {"Parameters": parameters}},
    }


def _window_problems(snapshot: Snapshot, window: MaintenanceWindow) -> Iterator[Problem]:
    name = window.metadata.name
    selector = window.spec.targets.selector
    if selector is not None:
        for i, requirement in enumerate(selector.match_expressions):
            if requirement.operator in ("NotIn", "DoesNotExist"):
                yield _at(
                    snapshot,
                    "MaintenanceWindow",
                    name,
                    f"spec.targets.selector.matchExpressions.{i}.operator",
                    f"SSM targets tags that are present: {requirement.operator} has no form there",
                )
    offset = window.spec.schedule_offset
    if offset is not None and offset > SSM_MAX_SCHEDULE_OFFSET:
        yield _at(
            snapshot,
            "MaintenanceWindow",
            name,
            "spec.scheduleOffset",
            f"SSM allows 1-{SSM_MAX_SCHEDULE_OFFSET} days (got {offset}, a Patchwarden "
            "extension): lower it or move the cron expression to export",
        )
    if window.spec.change_calendars:
        # SSM's windows have no calendar field (only associations and Automation read one).
        yield _at(
            snapshot,
            "MaintenanceWindow",
            name,
            "spec.changeCalendars",
            "SSM maintenance windows take no change calendar (SSM checks one only in State "
            "Manager associations and Automation runbooks): remove changeCalendars to export",
        )
    for i, task in enumerate(window.spec.tasks):
        for field, given in (
            ("hooks", task.hooks is not None),
            ("gates", bool(task.gates)),
            ("healthChecks", bool(task.health_checks)),
            ("installOverrideList", task.install_override_list is not None),
            ("baselineOverride", task.baseline_override is not None),
        ):
            if given:
                yield _at(
                    snapshot,
                    "MaintenanceWindow",
                    name,
                    f"spec.tasks.{i}.{field}",
                    f"{field} has no AWS-RunPatchBaseline parameter of this form: remove it "
                    "to export",
                )

"""Stage: api. A snapshot: every resource of one revision, validated together or refused whole.

``build_snapshot`` takes the files of one directory or Git revision as (relative path, bytes) and
returns a :class:`Snapshot`, or raises :class:`SnapshotInvalid` carrying *every* problem found, each
as ``file:line: field.path: message``. Checks run in order: YAML, each document against its schema,
OS-specific baseline checks, then references across documents. Pure: reading the files is the
sources' job.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from reconciler.api.checks import baseline_issues, did_you_mean
from reconciler.api.enums import OperatingSystem, Operation
from reconciler.api.resources import (
    API_VERSION,
    GROUP_LABEL,
    HOST_ANNOTATION,
    KINDS,
    MAX_ICALENDAR_BYTES,
    PATTERN_HELP,
    SOURCE_ANNOTATION,
    ChangeCalendar,
    ComplianceReport,
    InstanceSource,
    LabelSelector,
    MaintenanceWindow,
    ManagedInstance,
    PatchBaseline,
    PatchGroup,
    Resource,
    Rollout,
    SshConnection,
    WindowTargets,
    WindowTask,
)
from reconciler.api.yamldocs import Document, Path, YamlError, decode, documents
from reconciler.errors import RefusedInput

MAX_DOCUMENTS = 100_000
ICALENDAR_SUFFIX = ".ics"
"""Files of a revision that are not resources but iCalendar files a ChangeCalendar may name."""


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input, located precisely."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SnapshotInvalid(RefusedInput):
    """The snapshot was refused; nothing of it may be applied."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def reasons(self) -> list[str]:
        return [str(p) for p in self.problems]


@dataclass(frozen=True)
class Located:
    """Where a resource was written."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Snapshot:
    """The validated desired state of one revision."""

    baselines: Mapping[str, PatchBaseline] = field(default_factory=dict)
    groups: Mapping[str, PatchGroup] = field(default_factory=dict)
    windows: Mapping[str, MaintenanceWindow] = field(default_factory=dict)
    instances: Mapping[str, ManagedInstance] = field(default_factory=dict)
    reports: Mapping[str, ComplianceReport] = field(default_factory=dict)
    instance_sources: Mapping[str, InstanceSource] = field(default_factory=dict)
    """Enrolment: where machines are listed (their ManagedInstances join ``instances`` once
    discovered, see :mod:`reconciler.api.enrolment`)."""
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)
    """Progressive rollouts (docs/rollouts.md): the loop steers installs by them."""
    calendars: Mapping[str, ChangeCalendar] = field(default_factory=dict)
    """Change calendars (docs/guardrails.md): windows and rollouts name them."""
    icalendar_files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    """The revision's ``.ics`` files by relative path, for calendars naming one."""
    predefined: Mapping[str, PatchBaseline] = field(default_factory=dict)
    """The shipped default baselines, available by name to every group."""
    locations: Mapping[tuple[str, str], Located] = field(default_factory=dict)
    """(kind, name) -> where the resource's metadata.name was written."""
    documents: Mapping[tuple[str, str], Document] = field(default_factory=dict, repr=False)
    """(kind, name) -> the parsed document, to locate any field of it."""

    def baseline(self, name: str) -> PatchBaseline | None:
        """A user baseline by name, else a predefined one."""
        return self.baselines.get(name) or self.predefined.get(name)

    def default_baseline(self, os: OperatingSystem) -> PatchBaseline | None:
        """The baseline for instances whose group names none for ``os``: a user document marked
        defaultBaseline, else the predefined one."""
        for baseline in self.baselines.values():
            if baseline.spec.operating_system is os and baseline.spec.default_baseline:
                return baseline
        for baseline in self.predefined.values():
            if baseline.spec.operating_system is os and baseline.spec.default_baseline:
                return baseline
        return None

    def calendar_file(self, name: str) -> str | None:
        """The relative path of the iCalendar file calendar ``name`` reads (relative to its
        YAML file's folder), or None when it names none."""
        calendar = self.calendars.get(name)
        source = calendar.spec.icalendar if calendar is not None else None
        if source is None or source.file is None:
            return None
        where = self.locations.get(("ChangeCalendar", name))
        folder = posixpath.dirname(where.file) if where is not None else ""
        return posixpath.normpath(posixpath.join(folder, source.file))

    def groups_of(self, labels: Mapping[str, str]) -> list[PatchGroup]:
        """Every group whose selector matches ``labels`` (valid snapshots give at most one)."""
        return [g for g in self.groups.values() if group_selects(g, labels)]

    def selected_by(
        self, patch_groups: Iterable[str], selector: LabelSelector | None, labels: Mapping[str, str]
    ) -> bool:
        """Whether targets written as ``patchGroups`` and/or ``selector`` (a rollout stage's)
        select an instance with ``labels``: a member of one of the groups, or matching."""
        if selector is not None and selector.matches(dict(labels)):
            return True
        return any(g.metadata.name in set(patch_groups) for g in self.groups_of(labels))


def group_selects(group: PatchGroup, labels: Mapping[str, str]) -> bool:
    """Whether ``group`` selects an instance with ``labels``."""
    if group.spec.selector is None:
        return labels.get(GROUP_LABEL) == group.metadata.name
    return group.spec.selector.matches(dict(labels))


def build_snapshot(
    files: Iterable[tuple[str, bytes]],
    predefined: Mapping[str, PatchBaseline] | None = None,
) -> Snapshot:
    """Parse and validate ``files`` as one snapshot; raise SnapshotInvalid with every problem."""
    problems: list[Problem] = []
    parsed: list[tuple[str, Document, Resource]] = []
    invalid: set[tuple[str, str]] = set()
    count = 0
    files = list(files)
    ansible = ansible_files(files)
    icalendars = {path: raw for path, raw in files if path.endswith(ICALENDAR_SUFFIX)}
    for relpath, raw in files:
        if relpath in ansible or relpath in icalendars:
            continue
        try:
            docs = list(documents(decode(raw)))
        except YamlError as exc:
            problems.append(Problem(relpath, exc.line, "", exc.message))
            continue
        for doc in docs:
            count += 1
            if count > MAX_DOCUMENTS:
                problems.append(
                    Problem(relpath, doc.line, "", f"more than {MAX_DOCUMENTS} documents")
                )
                raise SnapshotInvalid(problems)
            resource = _validate_document(relpath, doc, problems)
            if resource is not None:
                parsed.append((relpath, doc, resource))
            elif (named := _kind_and_name(doc.data)) is not None:
                invalid.add(named)
    snapshot = replace(
        _assemble(parsed, dict(predefined or {}), problems), icalendar_files=icalendars
    )
    _check_references(snapshot, invalid, problems)
    if problems:
        raise SnapshotInvalid(problems)
    return snapshot


def ansible_files(files: Iterable[tuple[str, bytes]]) -> frozenset[str]:
    """The YAML files that are an InstanceSource's Ansible inventory or its group_vars/host_vars:
    Ansible's files, read by enrolment, not resources (a YAML inventory has no apiVersion)."""
    paths: set[str] = set()
    for _, raw in files:
        if b"ansibleInventory" not in raw:
            continue
        try:
            docs = list(documents(decode(raw)))
        except YamlError:
            continue  # reported when the file is read as resources
        for doc in docs:
            data = doc.data
            if not isinstance(data, dict) or data.get("kind") != "InstanceSource":
                continue
            spec = data.get("spec")
            given = spec.get("ansibleInventory") if isinstance(spec, dict) else None
            path = given.get("path") if isinstance(given, dict) else None
            if isinstance(path, str):
                paths.add(path)
    return frozenset(
        relpath
        for relpath, _ in files
        if relpath in paths or any(_in_vars(relpath, path) for path in paths)
    )


def _in_vars(relpath: str, inventory: str) -> bool:
    folder = inventory.rpartition("/")[0]
    prefix = f"{folder}/" if folder else ""
    return relpath.startswith((f"{prefix}group_vars/", f"{prefix}host_vars/"))


def _validate_document(relpath: str, doc: Document, problems: list[Problem]) -> Resource | None:
    def problem(path: Path, message: str) -> None:
        problems.append(Problem(relpath, doc.line_of(path), format_path(path), message))

    data = doc.data
    if not isinstance(data, dict):
        problem(
            (),
            f"expected a resource (a mapping with apiVersion and kind), got {type(data).__name__}",
        )
        return None
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if api_version != API_VERSION:
        if api_version is None:
            problem(("apiVersion",), f"missing; set apiVersion: {API_VERSION}")
        else:
            problem(("apiVersion",), f"{api_version!r} is not supported; use {API_VERSION}")
        return None
    if not isinstance(kind, str) or kind not in KINDS:
        hint = did_you_mean(str(kind), list(KINDS)) if isinstance(kind, str) else ""
        label = "missing" if kind is None else f"unknown kind {kind!r}"
        problem(("kind",), f"{label}; one of {', '.join(KINDS)}{hint}")
        return None
    model = KINDS[kind]
    try:
        resource = model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            path = _clean_loc(data, error["loc"])
            at_field = error.get("ctx", {}).get("field") if error["type"] == "conflict" else None
            if isinstance(at_field, str):
                path = (*path, at_field)  # a model-level check that belongs to one field
            problem(path, _message(model, data, path, error))
        return None
    if isinstance(resource, PatchBaseline):
        for path, message in baseline_issues(resource.spec):
            problem(path, message)
    return resource


def _assemble(
    parsed: list[tuple[str, Document, Resource]],
    predefined: dict[str, PatchBaseline],
    problems: list[Problem],
) -> Snapshot:
    tables: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    locations: dict[tuple[str, str], Located] = {}
    docs: dict[tuple[str, str], Document] = {}
    for relpath, doc, resource in parsed:
        key = (resource.kind, resource.metadata.name)
        line = doc.line_of(("metadata", "name"))
        if key in locations:
            problems.append(
                Problem(
                    relpath,
                    line,
                    "metadata.name",
                    f"{resource.kind} {key[1]!r} is already defined at {locations[key]}",
                )
            )
            continue
        locations[key] = Located(relpath, line)
        docs[key] = doc
        tables[resource.kind][key[1]] = resource
    return Snapshot(
        baselines=tables["PatchBaseline"],
        groups=tables["PatchGroup"],
        windows=tables["MaintenanceWindow"],
        instances=tables["ManagedInstance"],
        reports=tables["ComplianceReport"],
        instance_sources=tables["InstanceSource"],
        rollouts=tables["Rollout"],
        calendars=tables["ChangeCalendar"],
        predefined=predefined,
        locations=locations,
        documents=docs,
    )


def _kind_and_name(data: Any) -> tuple[str, str] | None:
    """(kind, metadata.name) of a document that was refused, when it says them."""
    if not isinstance(data, dict):
        return None
    kind, metadata = data.get("kind"), data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return (kind, name) if isinstance(kind, str) and isinstance(name, str) else None


@dataclass(frozen=True)
class _Finding:
    """A problem across documents, in the document (kind, name) at ``path``."""

    kind: str
    name: str
    path: Path
    message: str


Refused = AbstractSet[tuple[str, str]]  # (kind, name) of the documents that were refused


def _check_references(snap: Snapshot, invalid: Refused, problems: list[Problem]) -> None:
    """Checks across documents, one rule at a time (_REFERENCE_RULES, in order). A reference to a
    document that exists but was refused (``invalid``) is not reported again: that document's own
    errors say what to fix."""
    for rule in _REFERENCE_RULES:
        for found in rule(snap, invalid):
            key = (found.kind, found.name)
            where, doc = snap.locations[key], snap.documents[key]
            problems.append(
                Problem(where.file, doc.line_of(found.path), format_path(found.path), found.message)
            )


def _no_predefined_baseline_name(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    for bname in snap.baselines:
        if bname in snap.predefined:
            yield _Finding(
                "PatchBaseline",
                bname,
                ("metadata", "name"),
                f"{bname!r} is the name of a predefined baseline; choose another name (set "
                "spec.defaultBaseline: true to replace the default for an operating system)",
            )


def _group_baselines_exist_for_their_os(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    known_baselines = sorted({*snap.baselines, *snap.predefined})
    for gname, group in snap.groups.items():
        for os, bname in group.spec.baselines.items():
            path: Path = ("spec", "baselines", str(os))
            baseline = snap.baseline(bname)
            if baseline is None and ("PatchBaseline", bname) in invalid:
                continue
            if baseline is None:
                yield _Finding(
                    "PatchGroup",
                    gname,
                    path,
                    f"no PatchBaseline named {bname!r}" + did_you_mean(bname, known_baselines),
                )
            elif baseline.spec.operating_system is not os:
                yield _Finding(
                    "PatchGroup",
                    gname,
                    path,
                    f"baseline {bname!r} is for {baseline.spec.operating_system}, not {os}",
                )


def _instance_in_one_group_at_most(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    for iname, instance in snap.instances.items():
        member_of = [g.metadata.name for g in snap.groups_of(instance.metadata.labels)]
        if len(member_of) > 1:
            yield _Finding(
                "ManagedInstance",
                iname,
                ("metadata", "labels"),
                f"selected by patch groups {', '.join(member_of)}; an instance belongs to at "
                "most one group: change its labels or the groups' selectors",
            )


def _window_target_groups_exist(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    for wname, window in snap.windows.items():
        path: Path = ("spec", "targets", "patchGroups")
        yield from _groups_exist(
            snap, invalid, "MaintenanceWindow", wname, path, window.spec.targets.patch_groups
        )


def _baseline_overrides_exist(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    known = sorted({*snap.baselines, *snap.predefined})
    for wname, window in snap.windows.items():
        for index, task in enumerate(window.spec.tasks):
            bname = task.baseline_override
            if bname is None or bname in known or ("PatchBaseline", bname) in invalid:
                continue
            yield _Finding(
                "MaintenanceWindow",
                wname,
                ("spec", "tasks", index, "baselineOverride"),
                f"no PatchBaseline named {bname!r}" + did_you_mean(bname, known),
            )


def _report_scope_groups_exist(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    for rname, report in snap.reports.items():
        path: Path = ("spec", "scope", "patchGroups")
        yield from _groups_exist(
            snap, invalid, "ComplianceReport", rname, path, report.spec.scope.patch_groups
        )


def _rollout_stage_groups_exist(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    for rname, rollout in snap.rollouts.items():
        for index, stage in enumerate(rollout.spec.stages):
            path: Path = ("spec", "stages", index, "patchGroups")
            yield from _groups_exist(snap, invalid, "Rollout", rname, path, stage.patch_groups)


def _instance_in_one_stage_at_most(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    # One stage per machine: a stage that selects a machine an earlier stage took would be
    # accepted and ignored for it.
    for rname, rollout in snap.rollouts.items():
        for iname, instance in sorted(snap.instances.items()):
            labels = instance.metadata.labels
            stages = [
                (index, stage.name)
                for index, stage in enumerate(rollout.spec.stages)
                if snap.selected_by(stage.patch_groups, stage.selector, labels)
            ]
            if len(stages) > 1:
                yield _Finding(
                    "Rollout",
                    rname,
                    ("spec", "stages", stages[1][0], "name"),
                    f"instance {iname!r} is selected by stages {', '.join(n for _, n in stages)}; "
                    "a machine belongs to one stage: change the stages' patch groups or selectors",
                )


def _no_override_on_rollout_members(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    # Refused rather than confined: an override installs versions no frozen baseline approved
    # (installOverrideList: each named package's newest update, whatever it is then), so a
    # stage would install what its predecessor never baked. Accepting it would ignore either
    # the override or the rollout.
    for wname, window in sorted(snap.windows.items()):
        for index, task in enumerate(window.spec.tasks):
            override = _override_field(task)
            member = _rollout_member(snap, window.spec.targets) if override else None
            if override is None or member is None:
                continue
            yield _Finding(
                "MaintenanceWindow",
                wname,
                ("spec", "tasks", index, override),
                f"targets {member}, whose stages install only the snapshot frozen from their "
                f"baselines; remove {override}, or move the task to a window that targets no "
                "rollout stage",
            )


def _override_field(task: WindowTask) -> str | None:
    """The override an Install task carries (``installOverrideList``, ``baselineOverride``)."""
    if task.operation != Operation.INSTALL:
        return None
    if task.install_override_list is not None:
        return "installOverrideList"
    return "baselineOverride" if task.baseline_override is not None else None


def _rollout_member(snap: Snapshot, targets: WindowTargets) -> str | None:
    """``instance 'prod-1' of Rollout 'web' (stage prod)``: the first instance ``targets``
    select that a rollout stage selects too; None when there is none."""
    for iname, instance in sorted(snap.instances.items()):
        labels = instance.metadata.labels
        if not snap.selected_by(targets.patch_groups, targets.selector, labels):
            continue
        for rname, rollout in sorted(snap.rollouts.items()):
            for stage in rollout.spec.stages:
                if snap.selected_by(stage.patch_groups, stage.selector, labels):
                    return f"instance {iname!r} of Rollout {rname!r} (stage {stage.name})"
    return None


def _calendars_exist(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    named: list[tuple[str, str, list[str]]] = [
        ("MaintenanceWindow", name, w.spec.change_calendars) for name, w in snap.windows.items()
    ]
    named += [("Rollout", name, r.spec.change_calendars) for name, r in snap.rollouts.items()]
    known = list(snap.calendars)
    for kind, name, calendars in named:
        for index, cname in enumerate(calendars):
            if cname not in snap.calendars and ("ChangeCalendar", cname) not in invalid:
                yield _Finding(
                    kind,
                    name,
                    ("spec", "changeCalendars", index),
                    f"no ChangeCalendar named {cname!r}" + did_you_mean(cname, known),
                )


def _calendar_files_exist(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    for cname in sorted(snap.calendars):
        path = snap.calendar_file(cname)
        raw = snap.icalendar_files.get(path) if path is not None else None
        message = ""
        if path is not None and (path == ".." or path.startswith("../")):
            message = "climbs out of the repository; name a file inside it"
        elif path is not None and raw is None:
            message = f"no file {path} in this revision (the path is relative to this YAML file)"
        elif raw is not None and len(raw) > MAX_ICALENDAR_BYTES:
            message = f"{path} is larger than {MAX_ICALENDAR_BYTES} bytes"
        if message:
            path_to: Path = ("spec", "icalendar", "file")
            yield _Finding("ChangeCalendar", cname, path_to, message)


def _groups_exist(
    snap: Snapshot, invalid: Refused, kind: str, name: str, path: Path, groups: Iterable[str]
) -> Iterator[_Finding]:
    """The entries of the list ``groups`` (at ``path``) that name no PatchGroup."""
    for index, gname in enumerate(groups):
        if gname not in snap.groups and ("PatchGroup", gname) not in invalid:
            yield _Finding(
                kind,
                name,
                (*path, index),
                f"no PatchGroup named {gname!r}" + did_you_mean(gname, list(snap.groups)),
            )


def _one_default_baseline_per_os(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    defaults: dict[OperatingSystem, str] = {}
    for bname, baseline in snap.baselines.items():
        if not baseline.spec.default_baseline:
            continue
        os = baseline.spec.operating_system
        if os in defaults:
            yield _Finding(
                "PatchBaseline",
                bname,
                ("spec", "defaultBaseline"),
                f"{defaults[os]!r} is already the default baseline for {os}",
            )
        defaults[os] = bname


def _installs_run_as_root(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    """An SSH instance an Install task targets must run the agent as root: as written, a
    non-root login without ``become`` (or a non-root ``becomeUser``) would fail every install
    (InstallNeedsRoot), so say it now rather than in the window. A User that only the
    controller's SSH configuration gives is checked when the job starts."""
    for iname, instance in snap.instances.items():
        connection = instance.spec.connection
        if not isinstance(connection, SshConnection):
            continue
        runs_as = (connection.become_user or "root") if connection.become else connection.user
        labels = dict(instance.metadata.labels)
        groups = {g.metadata.name for g in snap.groups_of(labels)}
        for wname, window in sorted(snap.windows.items()):
            targets = window.spec.targets
            selected = targets.selector is not None and targets.selector.matches(labels)
            installs = [t.name for t in window.spec.tasks if t.operation is Operation.INSTALL]
            if runs_as == "root" or not window.spec.enabled or not installs:
                continue
            if selected or groups & set(targets.patch_groups):
                field, fix = (
                    ("becomeUser", "remove becomeUser (sudo's default is root)")
                    if connection.become
                    else (
                        "user",
                        f"add become: sudo (and a sudoers rule for {runs_as} on the "
                        "machine), or log in as root",
                    )
                )
                yield _Finding(
                    "ManagedInstance",
                    iname,
                    ("spec", "connection", field),
                    f"window {wname} installs here (task {installs[0]}) and an Install needs "
                    f"root, but the agent would run as {runs_as}: {fix}",
                )
                break


def _provenance_only_on_generated(snap: Snapshot, invalid: Refused) -> Iterator[_Finding]:
    """Every instance here is written by hand (generated ones join after validation), so a
    provenance annotation would only fake an origin in plan, explain and compliance."""
    for iname, instance in snap.instances.items():
        for key in (SOURCE_ANNOTATION, HOST_ANNOTATION):
            if key in instance.metadata.annotations:
                yield _Finding(
                    "ManagedInstance",
                    iname,
                    ("metadata", "annotations", key),
                    "only an InstanceSource sets this annotation, on the instances it "
                    "generates; remove it from this hand-written instance",
                )


_REFERENCE_RULES: tuple[Callable[[Snapshot, Refused], Iterable[_Finding]], ...] = (
    _no_predefined_baseline_name,
    _group_baselines_exist_for_their_os,
    _instance_in_one_group_at_most,
    _window_target_groups_exist,
    _baseline_overrides_exist,
    _report_scope_groups_exist,
    _one_default_baseline_per_os,
    _installs_run_as_root,
    _provenance_only_on_generated,
    _rollout_stage_groups_exist,
    _instance_in_one_stage_at_most,
    _no_override_on_rollout_members,
    _calendars_exist,
    _calendar_files_exist,
)


def format_path(path: Path) -> str:
    """``spec.approvalRules[0].approveAfterDays`` from a path tuple."""
    out = ""
    for element in path:
        if isinstance(element, int):
            out += f"[{element}]"
        else:
            out += f".{element}" if out else str(element)
    return out


def _clean_loc(data: Any, loc: tuple[int | str, ...]) -> Path:
    """The path of an error inside the data, without pydantic's union-member and key markers."""
    path: list[str | int] = []
    current = data
    for position, element in enumerate(loc):
        if _has(current, element):
            path.append(element)
            current = current[element]
        elif position == len(loc) - 1 and element != "[key]":
            path.append(element)  # a missing or unknown field: name it
    return tuple(path)


def _has(container: Any, element: int | str) -> bool:
    if isinstance(container, dict):
        return element in container
    return (
        isinstance(container, list) and isinstance(element, int) and 0 <= element < len(container)
    )


def _message(model: type[Resource], data: Any, path: Path, error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    value = error.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else ""
        return f"unknown field {name!r}" + did_you_mean(name, _fields_at(model, path[:-1]))
    if kind in ("enum", "literal_error"):
        choices = _choices(ctx.get("expected", ""))
        return f"{value!r} is not one of {', '.join(choices)}" + did_you_mean(str(value), choices)
    if kind == "less_than_equal":
        return f"must be ≤ {ctx['le']} (got {value!r})"
    if kind == "greater_than_equal":
        return f"must be ≥ {ctx['ge']} (got {value!r})"
    if kind == "too_long":
        return f"at most {ctx['max_length']} allowed (got {ctx.get('actual_length')})"
    if kind == "too_short":
        return f"at least {ctx['min_length']} required"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx["pattern"])
        meaning = PATTERN_HELP.get(pattern)
        if meaning is None:
            return f"{value!r} does not match {pattern}"
        hint = ""
        if isinstance(value, str) and value != value.lower():
            lowered = value.lower()
            if re.fullmatch(pattern, lowered):
                hint = f" (did you mean {lowered!r}?)"
        return f"{value!r} is not valid: {meaning}{hint}"
    if kind == "conflict":
        return str(ctx.get("message", error["msg"]))
    if kind == "string_too_long":
        return f"at most {ctx['max_length']} characters"
    if kind == "string_too_short":
        return f"at least {ctx['min_length']} character(s)"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of fields, got {_describe(value)}"
    if kind == "list_type":
        return f"must be a list, got {_describe(value)}"
    if kind == "int_type":
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            return f"must be a number, got the text {value!r}: write it without quotes"
        return f"must be a whole number, got {_describe(value)}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"]) + (f" (got {value!r})" if not isinstance(value, dict | list) else "")


def _describe(value: Any) -> str:
    """What a YAML value is, in a user's words."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _choices(expected: str) -> list[str]:
    # pydantic writes "'A', 'B' or 'C'"
    return [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",") if c.strip()]


@functools.cache
def _schema(model: type[Resource]) -> dict[str, Any]:
    return model.model_json_schema(by_alias=True)


def _fields_at(model: type[Resource], path: Path) -> list[str]:
    """Field names the schema allows at ``path`` (for 'did you mean')."""
    root = _schema(model)
    defs = root.get("$defs", {})

    def resolve(node: dict[str, Any]) -> list[dict[str, Any]]:
        if "$ref" in node:
            return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
        options = node.get("anyOf") or node.get("oneOf")
        if options:
            return [r for option in options for r in resolve(option)]
        return [node]

    nodes = resolve(root)
    for element in path:
        nxt: list[dict[str, Any]] = []
        for node in nodes:
            if isinstance(element, int) and "items" in node:
                nxt += resolve(node["items"])
            elif isinstance(element, str) and element in node.get("properties", {}):
                nxt += resolve(node["properties"][element])
            elif isinstance(element, str) and isinstance(node.get("additionalProperties"), dict):
                nxt += resolve(node["additionalProperties"])
        nodes = nxt
    return sorted({name for node in nodes for name in node.get("properties", {})})

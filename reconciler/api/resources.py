"""Stage: api (the schema). The eight resource kinds users write, once for Git and Kubernetes alike.

Documents are Kubernetes-shaped (``apiVersion``, ``kind``, ``metadata``, ``spec``, ``status``) and
their ``spec`` uses SSM's field names in camelCase with SSM's enums and limits
(docs/ssm-semantics.md §1). These
models check one document's shape and limits; checks that need the operating system's vocabulary
live in :mod:`reconciler.api.checks`, and checks across documents in :mod:`reconciler.api.snapshot`.
May not import anything outside ``reconciler.api``.
"""

from __future__ import annotations

import difflib
import functools
import re
from datetime import date, datetime
from string import Formatter
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, available_timezones

from dateutil.rrule import rrulestr
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema
from pydantic_core import PydanticCustomError

from reconciler.api._base import Model
from reconciler.api.durations import DURATION, DURATION_HELP, duration_seconds
from reconciler.api.ec2 import DEFAULT_STATES, PATCH_GROUP_TAGS, check_filter, check_label_key
from reconciler.api.enums import (
    ApproveAfterDaysFrom,
    ComplianceLevel,
    ComplianceStatus,
    OperatingSystem,
    Operation,
    PatchFilterKey,
    RebootOption,
    RejectedPatchesAction,
)
from reconciler.api.gates import Gates
from reconciler.api.hooks import HOST, HealthCheck, Hooks, check_url
from reconciler.api.selectors import LabelSelector as LabelSelector  # re-exported: it lived here
from reconciler.api.selectors import LabelValue
from reconciler.paths import climbs, control_character

API_VERSION = "patchwarden.io/v1alpha1"
GROUP = "patchwarden.io"
VERSION = "v1alpha1"

# Kubernetes object names (DNS-1123 subdomain), so one file works in Git and with kubectl apply.
_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=_K8S_NAME)]
# SSM's names for patch sources and window tasks.
_SOURCE_NAME = r"^[a-zA-Z0-9_\-.]{3,50}$"
_TASK_NAME = r"^[a-zA-Z0-9_\-.]{3,128}$"
# Bugzilla ids are numbers (1234567), which YAML reads as integers: take them as text.
PatchId = Annotated[
    str,
    BeforeValidator(lambda v: _as_text(v)),
    StringConstraints(min_length=1, max_length=100),
]
FilterValue = Annotated[str, StringConstraints(min_length=1, max_length=64)]
CalendarNames = Annotated[list[Name], Field(default_factory=list, max_length=10)]
"""ChangeCalendars guarding a window or a rollout (SSM's association ``CalendarNames``)."""
# A package-name pattern (shell wildcards * ? [..]) a hold names: the characters Debian and RPM
# package names use, plus the wildcards, so a typo such as a space or a comma is refused.
_HOLD = re.compile(r"[A-Za-z0-9*?\[][A-Za-z0-9.+_~*?\[\]-]*")


def _hold_pattern(value: str) -> str:
    if not _HOLD.fullmatch(value):
        raise PydanticCustomError(
            "hold_pattern",
            "{value} is not a package-name pattern: use letters, digits, . + _ ~ - and the "
            "wildcards * ? [ ], starting with a letter, a digit or a wildcard",
            {"value": repr(value)},
        )
    return value


HoldPattern = Annotated[
    str, StringConstraints(min_length=1, max_length=128), AfterValidator(_hold_pattern)
]


class ObjectMeta(Model):
    """Standard Kubernetes object metadata (the fields Patchwarden reads, plus server-set ones)."""

    name: Name
    """Object name: lowercase letters, digits, '-' and '.' (Kubernetes DNS-1123 subdomain)."""
    namespace: str | None = None
    """Kubernetes namespace; ignored for Git and directory sources."""
    labels: dict[str, LabelValue] = Field(default_factory=dict)
    """Labels. On a ManagedInstance these are its tags, which patch groups and windows select."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Free-form annotations."""
    # Set by the Kubernetes API server; accepted so that `kubectl get -o yaml` output validates.
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    managed_fields: list[dict[str, Any]] | None = None
    finalizers: list[str] | None = None
    owner_references: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------------------------------
# PatchBaseline


class PatchFilter(Model):
    """One filter: the patch matches when its property equals any of the values (OR)."""

    key: PatchFilterKey
    """The patch property; which keys are valid depends on the baseline's operatingSystem."""
    values: list[FilterValue] = Field(min_length=1, max_length=20)
    """1-20 values, matched case-insensitively; '*' matches every value."""


class PatchFilterGroup(Model):
    """Up to four filters, all of which must match (AND)."""

    patch_filters: list[PatchFilter] = Field(default_factory=list, max_length=4)
    """0-4 filters; a patch must match every one of them."""


class PatchRule(Model):
    """An approval rule: patches matching its filters are approved after a delay or up to a date."""

    patch_filter_group: PatchFilterGroup
    """Which patches the rule approves."""
    approve_after_days: int | None = Field(default=None, ge=0, le=360, strict=True)
    """Approve this many days (0-360) after the patch's release date, counted in UTC days."""
    approve_until_date: date | None = None
    """Approve patches released on or before this UTC date (YYYY-MM-DD)."""
    compliance_level: ComplianceLevel = ComplianceLevel.UNSPECIFIED
    """Severity reported when a patch approved by this rule is missing."""
    enable_non_security: bool = False
    """Linux only: also approve updates that come from non-security repositories."""

    @field_validator("approve_until_date", mode="before")
    @classmethod
    def _strict_date(cls, value: object) -> object:
        if isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError("must be a date written YYYY-MM-DD")
        return value


class PatchSource(Model):
    """An alternative repository used instead of the machine's configured ones (Linux only)."""

    name: Annotated[str, StringConstraints(pattern=_SOURCE_NAME)]
    """3-50 letters, digits, '_', '-' or '.'."""
    products: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=20
    )
    """1-20 products (for example Ubuntu22.04) the source applies to; '*' for all."""
    configuration: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    """The repository definition: a yum/dnf ini block, or one-line 'deb ...' entries for apt."""


class PatchBaselineSpec(Model):
    """Which patches are approved for one operating system (SSM's CreatePatchBaseline fields)."""

    operating_system: OperatingSystem
    """The operating system the baseline applies to (one of SSM's 15 values)."""
    description: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    """Free text."""
    global_filters: PatchFilterGroup | None = None
    """Filters every patch must pass before approval rules are considered."""
    approval_rules: list[PatchRule] = Field(default_factory=list, max_length=10)
    """Up to 10 rules; a patch matched by any one rule is approved."""
    approve_after_days_from: ApproveAfterDaysFrom | None = None
    """Patchwarden extension, DEBIAN/UBUNTU/RASPBIAN only: ``FirstSeen`` lets approval rules give
    approveAfterDays, counted from the first time any instance's scan saw the version (apt
    archives carry no release dates, so SSM refuses approveAfterDays there)."""
    approved_patches: list[PatchId] = Field(default_factory=list, max_length=50)
    """Up to 50 patch ids approved even when filters and rules would not approve them."""
    approved_patches_compliance_level: ComplianceLevel = ComplianceLevel.UNSPECIFIED
    """Severity reported when an explicitly approved patch is missing."""
    approved_patches_enable_non_security: bool = False
    """Linux only: approvedPatches may name updates from non-security repositories."""
    rejected_patches: list[PatchId] = Field(default_factory=list, max_length=50)
    """Up to 50 patch ids never approved; rejection wins over any approval."""
    rejected_patches_action: RejectedPatchesAction = RejectedPatchesAction.ALLOW_AS_DEPENDENCY
    """ALLOW_AS_DEPENDENCY installs a rejected package only as a dependency; BLOCK never installs
    it nor anything that needs it."""
    sources: list[PatchSource] = Field(default_factory=list, max_length=20)
    """Linux only: alternative repositories used instead of the configured ones."""
    available_security_updates_compliance_status: ComplianceStatus | None = None
    """Windows only: the status of security updates that are available but not approved."""
    default_baseline: bool = False
    """Use this baseline for instances whose group names no baseline for their OS, replacing the
    predefined default (at most one per operatingSystem)."""

    def blocked(self) -> tuple[str, ...]:
        """The rejected patches an install must not bring in, not even as a dependency (SSM's
        BLOCK); none under ALLOW_AS_DEPENDENCY."""
        if self.rejected_patches_action is RejectedPatchesAction.BLOCK:
            return tuple(self.rejected_patches)
        return ()


class PatchBaseline(Model):
    """A patch baseline (SSM PatchBaseline): approval rules and lists for one operating system."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["PatchBaseline"]
    metadata: ObjectMeta
    spec: PatchBaselineSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# PatchGroup


class PatchGroupSpec(Model):
    """Which instances belong together and which baseline each of their OSes uses."""

    selector: LabelSelector | None = None
    """Instances whose labels match; when omitted, those labelled
    patchwarden.io/patch-group=<group name>."""
    baselines: dict[OperatingSystem, Name] = Field(default_factory=dict)
    """operatingSystem -> PatchBaseline name; one baseline per operating system."""
    holds: list[HoldPattern] = Field(default_factory=list, max_length=100)
    """Package-name patterns (shell wildcards) never installed on the group's instances: their
    updates are reported as held, not missing (docs/guardrails.md)."""
    description: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    """Free text."""


class PatchGroup(Model):
    """A patch group: instances selected by labels, and the baseline per OS that applies to them."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["PatchGroup"]
    metadata: ObjectMeta
    spec: PatchGroupSpec = Field(default_factory=PatchGroupSpec)
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# MaintenanceWindow

_CONCURRENCY = r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$"
_ERRORS = r"^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$"

PATTERN_HELP: dict[str, str] = {
    _K8S_NAME: "use lowercase letters, digits, '-' and '.', starting and ending with a letter or "
    "digit (a Kubernetes object name)",
    _SOURCE_NAME: "use 3-50 letters, digits, '_', '-' or '.'",
    _TASK_NAME: "use 3-128 letters, digits, '_', '-' or '.'",
    _CONCURRENCY: 'give a number of targets of at least 1 ("10") or a percentage from 1% to 100% '
    '("10%")',
    _ERRORS: 'give a number of errors ("0", "3") or a percentage from 0% to 100% ("10%")',
}
"""Regular expression -> what it means in words, for error messages."""


def conflict(field: str, message: str) -> PydanticCustomError:
    """A validation error of a model that belongs to one of its fields (``field`` is the wire
    name); snapshot errors then point at that field's line instead of the model's."""
    return PydanticCustomError("conflict", "{message}", {"message": message, "field": field})


def _as_text(value: object) -> object:
    # SSM writes these as strings ("10", "10%"); integers are accepted for convenience.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class WindowTargets(Model):
    """Which instances a window's tasks run on: members of these groups, or matching labels."""

    patch_groups: list[Name] = Field(default_factory=list)
    """Names of PatchGroups whose members are targeted."""
    selector: LabelSelector | None = None
    """Instances whose labels match this selector are targeted too."""

    @model_validator(mode="after")
    def _not_empty(self) -> WindowTargets:
        if not self.patch_groups and self.selector is None:
            raise ValueError("name at least one patch group or give a selector")
        return self


class WindowTask(Model):
    """A patching task run in the window (SSM: AWS-RunPatchBaseline registered as a task)."""

    name: Annotated[str, StringConstraints(pattern=_TASK_NAME)]
    """3-128 letters, digits, '_', '-' or '.'."""
    operation: Operation
    """Scan reports compliance only; Install installs approved missing patches."""
    reboot_option: RebootOption = RebootOption.REBOOT_IF_NEEDED
    """RebootIfNeeded reboots when the machine needs it after installing; NoReboot never does."""
    # SSM's limit: at most 7 characters, so a count is at most 9,999,999.
    max_concurrency: Annotated[str, StringConstraints(pattern=_CONCURRENCY, max_length=7)] = "1"
    """How many targets run at once: a count ("10", at most 7 digits) or a percentage ("10%")."""
    max_errors: Annotated[str, StringConstraints(pattern=_ERRORS, max_length=7)] = "1"
    """Failed targets after which no new target starts: a count or a percentage."""
    priority: int = Field(default=1, ge=0, strict=True)
    """Lower runs first; tasks of equal priority run in parallel."""
    cutoff_behavior: Literal["CONTINUE_TASK", "CANCEL_TASK"] = "CONTINUE_TASK"
    """At the cutoff no new job starts and running ones finish, either way; CANCEL_TASK also
    cancels the installs not started (the execution ends CANCELLED)."""
    install_override_list: list[PatchId] | None = Field(default=None, min_length=1, max_length=50)
    """SSM's InstallOverrideList (Install tasks only): install the newest update of each package
    named here (approvedPatches forms) instead of the baseline's approvals; compliance is still
    judged by the baseline, so patches it does not approve are reported INSTALLED_OTHER."""
    baseline_override: Name | None = None
    """SSM's BaselineOverride (Install tasks only): the PatchBaseline whose approvals this task
    installs on targets running its operating system, instead of their patch group's; compliance
    is still recorded against the patch group's baseline."""
    hooks: Hooks | None = None
    """Install tasks only: commands the agent runs on each target before the install
    (preInstall), after it and before a reboot (postInstall) and at the end (onExit), as SSM's
    AWS-RunPatchBaselineWithHooks (docs/hooks.md)."""
    health_checks: list[HealthCheck] = Field(default_factory=list, max_length=10)
    """Install tasks only: up to 10 checks run after the install and again after a reboot; a
    failed one fails the job, which counts against maxErrors (docs/hooks.md)."""
    gates: Gates
    """Install tasks only: up to 10 safety gates (Prometheus, Alertmanager, Kubernetes); while
    one blocks or cannot be read, the task starts no install and no reboot
    (docs/guardrails.md)."""

    @field_validator("max_concurrency", "max_errors", mode="before")
    @classmethod
    def _integers_as_text(cls, value: object) -> object:
        return _as_text(value)

    @model_validator(mode="after")
    def _overrides(self) -> WindowTask:
        for field, value in (
            ("installOverrideList", self.install_override_list),
            ("baselineOverride", self.baseline_override),
        ):
            if value is not None and self.operation is not Operation.INSTALL:
                raise conflict(
                    field, f"{field} applies to Install tasks only; remove it from this Scan task"
                )
        if self.install_override_list is not None and self.baseline_override is not None:
            raise conflict(
                "baselineOverride",
                "give installOverrideList or baselineOverride, not both (SSM fails a task "
                "given both)",
            )
        return self

    @model_validator(mode="after")
    def _hooks_on_install(self) -> WindowTask:
        given = (
            ("hooks", self.hooks is not None),
            ("healthChecks", bool(self.health_checks)),
            ("gates", bool(self.gates)),
        )
        for field, present in given:
            if present and self.operation is not Operation.INSTALL:
                raise conflict(
                    field, f"{field} apply to Install tasks only; remove them from this Scan task"
                )
        names = [check.name for check in self.health_checks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise conflict("healthChecks", f"health check names must be unique: {', '.join(twice)}")
        return self


_SCHEDULE = re.compile(
    r"^(cron\((?P<cron>[^)]*)\)|rate\((?P<rate>[^)]*)\)|at\((?P<at>[^)]*)\)|(?P<plain>[^()]+))$"
)
_RATE = re.compile(r"^(?P<n>[1-9][0-9]*) (?P<unit>minute|minutes|hour|hours|day|days)$")


def check_schedule(value: str) -> str:
    """``value`` if it is a schedule expression SSM accepts, else ValueError saying why."""
    match = _SCHEDULE.match(value.strip())
    if match is None:
        raise ValueError("must be cron(...), rate(...), at(...) or a 5-field cron expression")
    if match["cron"] is not None and len(match["cron"].split()) not in (6, 7):
        raise ValueError(
            "cron(...) takes 6 fields (7 with seconds), for example cron(0 2 ? * TUE *)"
        )
    if match["plain"] is not None and len(match["plain"].split()) != 5:
        raise ValueError("a plain cron expression has 5 fields, for example '0 2 * * 2'")
    if match["rate"] is not None:
        rate = _RATE.match(match["rate"].strip())
        if rate is None:
            raise ValueError("rate(...) takes 'N minutes|hours|days', for example rate(7 days)")
        singular = rate["unit"] in ("minute", "hour", "day")
        if singular != (rate["n"] == "1"):
            raise ValueError(
                "use a singular unit for 1, a plural one otherwise: rate(1 day), rate(2 days)"
            )
    if match["at"] is not None:
        try:
            datetime.fromisoformat(match["at"])
        except ValueError:
            raise ValueError("at(...) takes a time YYYY-MM-DDThh:mm:ss") from None
    return value


@functools.cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(value: str) -> str:
    """``value`` if it is an IANA time zone name, else ValueError (with a close match)."""
    known = _timezones()
    if value not in known:
        lowered = {name.lower(): name for name in known}
        close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
        hint = f" (did you mean {lowered[close[0]]!r}?)" if close else ""
        raise ValueError(
            f"unknown IANA time zone {value!r}, for example Europe/Berlin or UTC{hint}"
        )
    return value


SSM_MAX_SCHEDULE_OFFSET = 6
"""SSM's largest ScheduleOffset (CreateMaintenanceWindow)."""
MAX_SCHEDULE_OFFSET = 27
"""Ours: any offset keeps a monthly cron's openings in order (28 days is February's length)."""


class MaintenanceWindowSpec(Model):
    """When patching may happen (SSM CreateMaintenanceWindow fields) and what runs then."""

    schedule: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """cron(...) in AWS's 6-field form (optional leading seconds), plain 5-field cron,
    rate(N unit) or at(YYYY-MM-DDThh:mm:ss)."""
    schedule_timezone: str = "UTC"
    """IANA time zone the schedule is read in, for example America/Los_Angeles."""
    schedule_offset: int | None = Field(default=None, ge=1, le=MAX_SCHEDULE_OFFSET, strict=True)
    """Days (1-27) to wait after each cron match, for example Patch Tuesday + 3. SSM allows
    1-6; 7-27 ("Patch Tuesday + 2 weeks") is a Patchwarden extension that export to SSM
    refuses."""
    start_date: datetime | None = None
    """The window does not run before this ISO-8601 time."""
    end_date: datetime | None = None
    """The window does not run after this ISO-8601 time."""
    duration: int = Field(ge=1, le=24, strict=True)
    """Window length in hours (1-24)."""
    cutoff: int = Field(ge=0, le=23, strict=True)
    """No new task starts when fewer than this many hours (0-23) remain."""
    enabled: bool = True
    """A disabled window never opens."""
    description: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    """Free text."""
    targets: WindowTargets
    """Which instances the tasks run on."""
    tasks: list[WindowTask] = Field(min_length=1)
    """What runs in the window."""
    change_calendars: CalendarNames
    """Up to 10 ChangeCalendars: while any of them is closed, an opening starts no task (scan,
    install or reboot); jobs already running finish (docs/guardrails.md)."""

    @field_validator("schedule")
    @classmethod
    def _schedule_syntax(cls, value: str) -> str:
        return check_schedule(value)

    @field_validator("schedule_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _coherent(self) -> MaintenanceWindowSpec:
        if self.cutoff >= self.duration:
            raise conflict(
                "cutoff",
                f"cutoff ({self.cutoff} h) must be less than duration ({self.duration} h): no task "
                "could start in the window",
            )
        if self.schedule_offset is not None and not self.schedule.strip().startswith("cron("):
            raise conflict("scheduleOffset", "scheduleOffset applies to cron(...) schedules only")
        if self.start_date and self.end_date and self.end_date <= self.start_date:
            raise conflict("endDate", "endDate must be after startDate")
        return self


class MaintenanceWindow(Model):
    """A maintenance window: a schedule, its targets and the patching tasks run inside it."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["MaintenanceWindow"]
    metadata: ObjectMeta
    spec: MaintenanceWindowSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# ManagedInstance


def _plain(value: str) -> str:
    """``value`` unless it holds a control character: one in a host, user or path would reach a
    shell, a log line or an SSH command line as something else than it looks."""
    found = control_character(value)
    if found is not None:
        raise ValueError(f"must not contain control characters (found {found})")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


def _named_file(value: str) -> str:
    """A file a resource names is read inside a directory the operator configures (--ssh-dir,
    --report-dir; docs/loop.md): a ``..`` could leave it, whichever directory that is."""
    if climbs(value):
        raise ValueError(
            "must not contain '..': name the file by its path inside the directory the "
            "controller is configured with (--ssh-dir for SSH files, --report-dir for reports)"
        )
    return value


_JUMP = re.compile(
    r"(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@\s:\[\],/]+)(?::(?P<port>\d{1,5}))?"
)


def parse_jump(value: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (OpenSSH's ProxyJump, one bastion) as user, host and port
    (``[...]`` around an IPv6 address is removed); ValueError saying the form otherwise."""
    match = _JUMP.fullmatch(value)
    port = int(match["port"]) if match and match["port"] else None
    if match is None or (port is not None and not 1 <= port <= 65535):
        raise ValueError(
            "must be one bastion as [user@]host[:port] (a port from 1 to 65535; no list of hops)"
        )
    return match["user"], match["host"].strip("[]"), port


def _jump(value: str) -> str:
    parse_jump(value)
    return value


PlainText = Annotated[str, AfterValidator(_plain)]
JumpSpec = Annotated[str, AfterValidator(_plain), AfterValidator(_jump)]
"""OpenSSH's ProxyJump for one bastion: ``[user@]host[:port]``."""
RootPath = Annotated[str, AfterValidator(_plain), AfterValidator(_absolute)]
"""An absolute directory path holding a whole system."""
NamedFile = Annotated[str, AfterValidator(_plain), AfterValidator(_named_file)]
"""A file or directory resolved inside a directory the operator configures."""


class LocalConnection(Model):
    """This host, or a system whose filesystem is rooted at a directory (docs/agent.md, --root)."""

    type: Literal["local"]
    root: RootPath | None = None
    """Absolute path of a directory holding a whole system; omitted for the machine itself."""


class SshConnection(Model):
    """A machine reached over SSH; the agent is copied and run there."""

    type: Literal["ssh"]
    host: Annotated[PlainText, StringConstraints(min_length=1, max_length=253)]
    """Host name or address, or a Host alias of the controller's SSH client configuration
    (config in --ssh-dir), which may give its HostName, Port, User, IdentityFile, ProxyJump."""
    port: int = Field(default=22, ge=1, le=65535, strict=True)
    """SSH port (not written: the SSH configuration's Port, else 22)."""
    user: PlainText = "root"
    """Login user: root, or a user allowed to run the agent with sudo (become). Not written:
    the SSH configuration's User, else root."""
    identity_file: NamedFile | None = None
    """Private key file, inside the controller's SSH directory (--ssh-dir): relative to it, or
    an absolute path within it (not written: the SSH configuration's IdentityFile entries)."""
    known_hosts_file: NamedFile | None = None
    """known_hosts file used for strict host-key checking, inside the controller's SSH directory
    (--ssh-dir): relative to it, or an absolute path within it."""
    root: RootPath | None = None
    """Absolute path of a directory holding a whole system; omitted for the machine itself."""
    become: Literal["sudo"] | None = None
    """How a non-root login runs the agent as root: ``sudo`` (non-interactive, ``sudo -n``, so
    a rule that asks for a password fails at once instead of hanging). An Install for a
    non-root user without it is refused before connecting."""
    become_user: PlainText | None = None
    """The user sudo runs the agent as (default root); only with ``become``."""
    proxy_jump: Annotated[JumpSpec, StringConstraints(min_length=1, max_length=512)] | None = None
    """A bastion to connect through, as OpenSSH's ProxyJump: ``[user@]host[:port]``; its host
    key is checked against the same known_hosts file and it is authenticated with the same key
    (not written: the SSH configuration's ProxyJump)."""

    @model_validator(mode="after")
    def _become_user_needs_become(self) -> SshConnection:
        if self.become_user is not None and self.become is None:
            raise conflict("becomeUser", "becomeUser needs become: sudo")
        return self


class KubernetesConnection(Model):
    """A Kubernetes Node: the agent runs in a Job pinned to it; an install cordons and drains the
    node first, reboots it when needed and uncordons it (docs/nodes.md)."""

    type: Literal["kubernetes"]
    node: Name
    """The Node's name (metadata.name)."""


class ManagedInstanceSpec(Model):
    """How to reach one machine."""

    connection: LocalConnection | SshConnection | KubernetesConnection = Field(discriminator="type")
    """How the agent reaches the machine: {type: local[, root]}, {type: ssh, host, ...} or
    {type: kubernetes, node}."""
    holds: list[HoldPattern] = Field(default_factory=list, max_length=100)
    """Package-name patterns (shell wildcards) never installed on this machine, besides its
    group's holds (docs/guardrails.md)."""
    description: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    """Free text."""


class ManagedInstance(Model):
    """One managed machine; its labels are its tags."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["ManagedInstance"]
    metadata: ObjectMeta
    spec: ManagedInstanceSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# InstanceSource (enrolment: docs/enrolment.md). Each kind of source is one spec model below,
# a subclass of DiscoverySpec, plus one optional field of InstanceSourceSpec named after it, plus
# one discovery function registered in reconciler/sources/enrol/ (DISCOVERERS).


class DiscoverySpec(Model):
    """The base of each kind's spec: InstanceSourceSpec takes exactly one field of this type."""


class StaticHost(Model):
    """One machine of a static list."""

    name: Annotated[PlainText, StringConstraints(min_length=1, max_length=253)]
    """The machine's id in this source; the generated ManagedInstance's name comes from it
    (spec.nameTemplate)."""
    address: Annotated[PlainText, StringConstraints(min_length=1, max_length=253)]
    """Host name or address to connect to."""
    port: int | None = Field(default=None, ge=1, le=65535, strict=True)
    """SSH port, instead of the connection template's."""
    user: PlainText | None = None
    """Login user, instead of the connection template's."""
    labels: dict[str, LabelValue] = Field(default_factory=dict)
    """Labels of this machine, added to the source's."""


class StaticHosts(DiscoverySpec):
    """A plain list of hosts."""

    hosts: list[StaticHost] = Field(min_length=1, max_length=10_000)
    """The machines, each with a name and an address."""


class AnsibleInventory(DiscoverySpec):
    """An Ansible inventory (INI or YAML) in the same repository, read with ansible-core's own
    inventory code (the optional extra ``patchwarden[ansible]``)."""

    path: Annotated[NamedFile, StringConstraints(min_length=1, max_length=1024)]
    """The inventory file's path relative to the repository (or directory) root."""

    groups: list[Annotated[str, StringConstraints(min_length=1, max_length=255)]] = Field(
        default_factory=list
    )
    """Only the hosts of these groups (directly or through children); every host when empty."""

    ignore_variables: list[
        Literal[
            "ansible_ssh_common_args",
            "ansible_ssh_extra_args",
            "ansible_ssh_args",
            "ansible_become_flags",
        ]
    ] = Field(default_factory=list)
    """Inventory variables that enrolment cannot carry over, to ignore instead of refuse (an
    inventory Ansible also uses keeps its OpenSSH options for Ansible's own runs); passwords are
    always refused."""

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if value.startswith("/"):
            raise ValueError("must be a path relative to the repository root, without a leading /")
        return value


Ec2Region = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")]
"""An AWS region name, for example eu-west-1 or us-gov-west-1."""
Ec2FilterValues = list[Annotated[str, StringConstraints(min_length=1, max_length=255)]]


class Ec2Instances(DiscoverySpec):
    """EC2 instances: those DescribeInstances lists in these regions with these filters.
    Credentials and endpoint come from the standard AWS configuration, never from here."""

    regions: list[Ec2Region] = Field(min_length=1, max_length=40)
    """The AWS regions to list instances in, for example [eu-west-1, us-east-1]."""
    filters: dict[str, Ec2FilterValues] = Field(default_factory=dict)
    """DescribeInstances filters, all of which must hold (each matches any of its values, EC2's
    wildcards * and ? allowed): ``tag:<Key>: [values]``, ``vpcId: [vpc-...]`` and
    ``instanceState: [states]`` (default [running])."""
    address: Literal["privateIp", "publicIp", "privateDns", "publicDns"] = "privateIp"
    """Which address SSH connects to; an instance without one is left out and reported."""
    tag_labels: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], str] = Field(
        default_factory=dict
    )
    """EC2 tag -> label of the generated ManagedInstance. SSM's ``Patch Group`` (or
    ``PatchGroup``) tag becomes patchwarden.io/patch-group unless named here."""

    @field_validator("regions")
    @classmethod
    def _once_each(cls, regions: list[str]) -> list[str]:
        twice = sorted({r for r in regions if regions.count(r) > 1})
        if twice:
            raise ValueError(f"{twice[0]} is listed twice: name each region once")
        return regions

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, filters: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in filters.items():
            check_filter(name, values)
        return filters

    @field_validator("tag_labels")
    @classmethod
    def _label_keys(cls, mapping: dict[str, str]) -> dict[str, str]:
        for tag, label in mapping.items():
            check_label_key(tag, label)
        return mapping

    def label_of_tag(self) -> dict[str, str]:
        """Every tag that becomes a label, in the order they are read: ``tagLabels`` first, then
        SSM's patch-group tags unless ``tagLabels`` names them."""
        defaults = {t: GROUP_LABEL for t in PATCH_GROUP_TAGS if t not in self.tag_labels}
        return {**self.tag_labels, **defaults}

    def states(self) -> tuple[str, ...]:
        """The instance states enrolled."""
        return tuple(self.filters.get("instanceState", DEFAULT_STATES))


class ConnectionTemplate(SshConnection):
    """How every machine of the source is reached: an SSH connection without ``host`` (each
    machine's address comes from the source). A host's own port, user, key or become (a static
    host's fields, Ansible's host variables) override the template's."""

    type: Literal["ssh"] = "ssh"
    """Always ``ssh``; may be left out."""
    # Each machine's address comes from the source; a template that names one is refused below.
    host: SkipJsonSchema[None] = None  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _no_host(cls, data: Any) -> Any:
        if isinstance(data, dict) and "host" in data:
            raise conflict(
                "host",
                "a connection template has no host: each machine's address comes from the source",
            )
        return data


NAME_FIELDS = ("source", "name")
"""What spec.nameTemplate may use: the InstanceSource's name and the machine's id in it."""


def _name_template(value: str) -> str:
    try:
        fields = [f for _, f, spec, conv in Formatter().parse(value) if f is not None]
        bad = [f for f in fields if f not in NAME_FIELDS]
    except ValueError as exc:
        raise ValueError(f"not a name template: {exc}") from None
    if bad or "{name}" not in value:
        raise ValueError(
            "use {name} (the machine's id in the source) and optionally {source} (this "
            f"InstanceSource's name), as in '{{source}}-{{name}}'; got {value!r}"
        )
    return value


class InstanceSourceSpec(Model):
    """Where machines are listed, and how the ManagedInstances generated for them look."""

    static: StaticHosts | None = None
    """A plain list of hosts."""
    ansible_inventory: AnsibleInventory | None = None
    """An Ansible inventory file in the repository."""
    ec2: Ec2Instances | None = None
    """EC2 instances, by region and filters."""
    connection: ConnectionTemplate = Field(default_factory=lambda: ConnectionTemplate())
    """The SSH connection of every machine, without host (SshConnection's other fields)."""
    labels: dict[str, LabelValue] = Field(default_factory=dict)
    """Labels added to every generated ManagedInstance (a machine's own labels win)."""
    refresh_minutes: int = Field(default=5, ge=1, le=1440, strict=True)
    """How often the list is read again (1-1440 minutes)."""
    name_template: Annotated[
        str, StringConstraints(min_length=1, max_length=253), AfterValidator(_name_template)
    ] = "{name}"
    """The generated ManagedInstance's name: {name} is the machine's id in the source, {source}
    this InstanceSource's name. Lowercased, and any character a resource name cannot hold
    becomes '-' (web_01 -> web-01)."""

    def discovery(self) -> tuple[str, DiscoverySpec]:
        """(field name on the wire, spec) of the one kind given."""
        given = self._kinds()
        return given[0]

    def _kinds(self) -> list[tuple[str, DiscoverySpec]]:
        return [
            (type(self).model_fields[name].alias or name, value)
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), DiscoverySpec)
        ]

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> InstanceSourceSpec:
        kinds = [
            info.alias or name
            for name, info in type(self).model_fields.items()
            if _is_discovery(info.annotation)
        ]
        given = [name for name, _ in self._kinds()]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(kinds)} (got "
                f"{', '.join(given) if given else 'none'})"
            )
        return self


def _is_discovery(annotation: Any) -> bool:
    args = getattr(annotation, "__args__", (annotation,))
    return any(isinstance(a, type) and issubclass(a, DiscoverySpec) for a in args)


class InstanceSource(Model):
    """Enrolment: generates one ManagedInstance per machine listed by a source (a static list,
    an Ansible inventory, EC2), refreshed on an interval."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["InstanceSource"]
    metadata: ObjectMeta
    spec: InstanceSourceSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# ComplianceReport


class ReportScope(Model):
    """Which instances a report covers; everything when empty."""

    patch_groups: list[Name] = Field(default_factory=list)
    """Only members of these groups."""
    selector: LabelSelector | None = None
    """Only instances whose labels match."""


class ComplianceReportSpec(Model):
    """A compliance report exported on a schedule."""

    schedule: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """When to export: cron(...), rate(...) or a 5-field cron expression."""
    schedule_timezone: str = "UTC"
    """IANA time zone of the schedule."""
    destination: Annotated[NamedFile, StringConstraints(min_length=1, max_length=1024)]
    """A directory inside the controller's report directory (--report-dir: relative to it, or an
    absolute path within it), or s3://bucket/prefix."""
    format: Literal["csv", "json", "html"] = "csv"
    """csv has SSM's columns; json is for machines; html is a self-contained dashboard."""
    scope: ReportScope = Field(default_factory=ReportScope)
    """Which instances the report covers."""

    @field_validator("schedule")
    @classmethod
    def _schedule_syntax(cls, value: str) -> str:
        return check_schedule(value)

    @field_validator("schedule_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str) -> str:
        if value.startswith("s3://"):
            if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?", value):
                raise ValueError(
                    "an S3 destination is s3://bucket[/prefix] with a valid bucket name"
                )
        elif "://" in value:
            raise ValueError("must be a directory path or s3://bucket/prefix")
        return value


class ComplianceReport(Model):
    """Scheduled export of compliance data to a directory or S3."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["ComplianceReport"]
    metadata: ObjectMeta
    spec: ComplianceReportSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# Rollout (issue 15, groundwork: validated here and planned by reconciler.rollout; the loop does
# not apply it yet, so validation refuses every Rollout rather than accept and ignore it)

_BAKE_TIME = DURATION
PATTERN_HELP[_BAKE_TIME] = DURATION_HELP
MAX_BAKE_SECONDS = 90 * 86400
_SNAPSHOT_PREFIX = r"^(sha256:)?[0-9a-f]{7,64}$"
PATTERN_HELP[_SNAPSHOT_PREFIX] = "give a snapshot's digest (sha256:…) or its first 7+ hex digits"
_TOKEN = r"^[A-Za-z0-9._:-]{1,64}$"
PATTERN_HELP[_TOKEN] = "give 1 to 64 letters, digits, '.', '_', ':' or '-'"


def bake_seconds(value: str) -> int:
    """Seconds in a bakeTime such as ``48h`` (the pattern was checked by the model)."""
    return duration_seconds(value)


class RolloutStage(Model):
    """One ring of a rollout: its machines install the rollout's snapshot, then bake."""

    name: Name
    """The stage's name, used in reasons ("stage prod waits: stage dev baked 31 h of 48 h")."""
    patch_groups: list[Name] = Field(default_factory=list)
    """Members of these PatchGroups are in the stage."""
    selector: LabelSelector | None = None
    """Instances whose labels match are in the stage too."""
    bake_time: Annotated[str, StringConstraints(pattern=_BAKE_TIME)] = "0m"
    """How long every machine of the stage must run the snapshot healthy before the next stage
    may install it: minutes, hours or days ("30m", "48h", "2d"), at most 90 days."""
    max_failed_percent: int = Field(default=0, ge=0, le=100, strict=True)
    """The rollout halts once more than this percentage of the stage's machines failed (an
    install FAILED, or a health check failed: HealthCheckFailed)."""
    requires_approval: bool = False
    """A person approves each cycle's snapshot for this stage before it installs it: by
    ``approvedSnapshot`` in Git or ``patchctl rollout approve`` (docs/rollouts.md)."""
    approved_snapshot: Annotated[str, StringConstraints(pattern=_SNAPSHOT_PREFIX)] | None = None
    """The snapshot approved for this stage by a commit: its digest (``sha256:…``) or a prefix of
    at least 7 hex digits; only with ``requiresApproval``."""
    gates: Gates
    """Up to 10 safety gates (Prometheus, Alertmanager, Kubernetes); while one blocks or cannot
    be read, no member of the stage starts an install (docs/guardrails.md)."""

    @model_validator(mode="after")
    def _members_and_limits(self) -> RolloutStage:
        if not self.patch_groups and self.selector is None:
            raise ValueError("name at least one patch group or give a selector")
        if bake_seconds(self.bake_time) > MAX_BAKE_SECONDS:
            raise conflict("bakeTime", "at most 90 days (90d)")
        if self.approved_snapshot is not None and not self.requires_approval:
            # An approval of a stage that needs none would be accepted and ignored.
            raise conflict(
                "approvedSnapshot", "only a stage with requiresApproval: true takes an approval"
            )
        return self


class RolloutSpec(Model):
    """Stages in order: each installs the same frozen snapshot after its predecessor baked it."""

    stages: list[RolloutStage] = Field(min_length=1, max_length=10)
    """The rings, first to last (at most 10)."""
    change_calendars: CalendarNames
    """Up to 10 ChangeCalendars: while any of them is closed, no stage's member starts an
    install, so no stage completes or promotes the next (docs/guardrails.md)."""
    resume_token: Annotated[str, StringConstraints(pattern=_TOKEN)] | None = None
    """Resume by a commit: a halted rollout continues once this differs from its value when
    the rollout halted (set or change it, e.g. to the ticket that fixed the cause)."""

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[RolloutStage]) -> list[RolloutStage]:
        names = [stage.name for stage in stages]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(twice)}")
        return stages


class Rollout(Model):
    """A progressive rollout: the approved versions frozen when the first stage's window opens
    move stage by stage, after bake time and health (docs/rollouts.md)."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["Rollout"]
    metadata: ObjectMeta
    spec: RolloutSpec
    status: dict[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# ChangeCalendar (docs/guardrails.md "Change calendars"): SSM Change Calendar's open and closed
# periods, as events written here (one-off, or recurring by an iCalendar RRULE) and an optional
# iCalendar file of the repository or https URL; windows and rollouts name the calendars that
# guard them in ``changeCalendars``. Periods at an instant: reconciler.schedule.calendar.

CalendarType = Literal["DEFAULT_OPEN", "DEFAULT_CLOSED"]
MAX_ICALENDAR_BYTES = 1024 * 1024
"""An iCalendar file or URL larger than this is refused (a file) or cannot be read (a URL)."""
# Recurrences finer than a day would make a horizon's expansion huge and are not what a change
# freeze looks like; SSM's own calendars take daily, weekly, monthly and yearly recurrences.
_FREQUENCIES = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
_RRULE_FREQ = re.compile(r"(?:^|;)FREQ=([A-Z]+)(?:;|$)")


def _calendar_url(value: str) -> str:
    check_url(value)
    if not value.startswith("https://"):
        raise ValueError("an iCalendar URL must be https:// (the calendar decides what may patch)")
    if HOST in value:
        raise ValueError("an iCalendar URL takes no {host}: it is read once, not per machine")
    return value


def _repository_file(value: str) -> str:
    bad = control_character(value)
    if bad is not None:
        raise ValueError(f"must not contain control characters (found {bad})")
    if value.startswith("/") or climbs(value):
        raise ValueError(
            "give a path relative to this YAML file, inside the repository (no leading / and no ..)"
        )
    if not value.endswith(".ics"):
        raise ValueError("an iCalendar file's name ends in .ics (the sources read only those)")
    return value


class ICalendarSource(Model):
    """Where more events come from: exactly one of a file of the repository or an https URL."""

    file: (
        Annotated[
            str, StringConstraints(min_length=5, max_length=1024), AfterValidator(_repository_file)
        ]
        | None
    ) = None
    """An ``.ics`` file of the same repository, relative to this YAML file (for example
    ``holidays.ics`` or ``calendars/freeze.ics``); it may not climb out with ``..``."""
    url: (
        Annotated[
            str, StringConstraints(min_length=9, max_length=2048), AfterValidator(_calendar_url)
        ]
        | None
    ) = None
    """An https URL the controller reads on each pass (at most 1 MiB, no credentials in it,
    redirects not followed); a calendar that cannot be read counts as closed."""
    timeout_seconds: Annotated[int, Field(ge=1, le=60, strict=True)] | None = None
    """With ``url``: seconds (1-60, default 10) for the request."""

    @model_validator(mode="after")
    def _one_source(self) -> ICalendarSource:
        if (self.file is None) == (self.url is None):
            raise ValueError("give exactly one of file or url")
        if self.timeout_seconds is not None and self.url is None:
            raise ValueError("timeoutSeconds applies to url only")
        return self


TimeZone = Annotated[str, AfterValidator(check_timezone)]


_EVENT_TIME = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$"
# Text in the CRD and the editor schemas: a wall-clock time without an offset is not an RFC 3339
# date-time, which Kubernetes would refuse under format: date-time.
EventTime = Annotated[datetime, WithJsonSchema({"type": "string", "pattern": _EVENT_TIME})]


class CalendarEvent(Model):
    """One event: a closed period of a DEFAULT_OPEN calendar, an open one of a DEFAULT_CLOSED
    calendar. ``start`` and ``end`` are half-open, ``[start, end)``."""

    summary: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    """What the period is ("year-end freeze"); ``plan`` and ``explain`` give it as the reason."""
    start: EventTime
    """ISO 8601. With a UTC offset (``2026-12-20T00:00:00+00:00``) it is that instant; without
    one it is a wall-clock time in ``timeZone``. With ``rrule``: the first occurrence."""
    end: EventTime
    """ISO 8601, after ``start``, written like it; with ``rrule`` each occurrence lasts
    ``end - start``."""
    time_zone: TimeZone | None = None
    """IANA time zone of ``start`` and ``end`` written without an offset (default: the
    calendar's ``timeZone``)."""
    rrule: Annotated[str, StringConstraints(min_length=6, max_length=512)] | None = None
    """An iCalendar (RFC 5545) recurrence rule without ``RRULE:``, for example
    ``FREQ=WEEKLY;BYDAY=SA`` or ``FREQ=MONTHLY;BYDAY=-1FR;COUNT=12``; DAILY or coarser."""

    @field_validator("start", "end", mode="before")
    @classmethod
    def _iso_text(cls, value: Any) -> Any:
        # YAML reads an unquoted timestamp itself; a date alone would be midnight, say so.
        if isinstance(value, str) and not re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", value):
            raise ValueError("write a date and time, YYYY-MM-DDThh:mm[:ss][+hh:mm]")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> CalendarEvent:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise conflict("end", "write start and end alike: both with a UTC offset or neither")
        if self.time_zone is not None and self.start.tzinfo is not None:
            raise conflict("timeZone", "start and end carry a UTC offset; remove timeZone")
        if self.end <= self.start:
            raise conflict("end", f"must be after start ({self.start.isoformat()})")
        if self.rrule is not None:
            problem = rrule_problem(self.rrule, self.start)
            if problem:
                raise conflict("rrule", problem)
        return self


def rrule_problem(text: str, start: datetime) -> str:
    """Why ``text`` is not a recurrence rule a calendar event takes ("" when it is)."""
    upper = text.upper()
    if upper.startswith(("RRULE:", "DTSTART")) or "\n" in text:
        return "give the rule alone, without RRULE: or DTSTART (start is the first occurrence)"
    freq = _RRULE_FREQ.search(upper)
    if freq is None or freq.group(1) not in _FREQUENCIES:
        return f"give FREQ={', FREQ='.join(_FREQUENCIES)} (for example FREQ=WEEKLY;BYDAY=SA)"
    try:
        rrulestr(text, dtstart=start)
    except (ValueError, TypeError) as exc:
        return f"not an iCalendar RRULE: {exc}"
    return ""


class ChangeCalendarSpec(Model):
    """SSM Change Calendar: a DEFAULT_OPEN calendar is closed inside its events, a
    DEFAULT_CLOSED one is open only inside them."""

    type: CalendarType
    """DEFAULT_OPEN (events are closed periods, such as freezes) or DEFAULT_CLOSED (events are
    the only open periods; without any event the calendar is always closed)."""
    description: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    """Free text."""
    time_zone: TimeZone = "UTC"
    """IANA time zone of events written without a UTC offset, for example Europe/Berlin."""
    events: list[CalendarEvent] = Field(default_factory=list, max_length=500)
    """Up to 500 events written here."""
    icalendar: ICalendarSource | None = None
    """More events from an iCalendar file or URL (their recurrences and time zones included)."""

    def zone(self, event: CalendarEvent) -> ZoneInfo:
        """The time zone ``event``'s wall-clock times are read in."""
        return ZoneInfo(event.time_zone or self.time_zone)


class ChangeCalendar(Model):
    """Open and closed periods that guard the windows and rollouts naming the calendar in
    ``changeCalendars`` (docs/guardrails.md)."""

    api_version: Literal["patchwarden.io/v1alpha1"]
    kind: Literal["ChangeCalendar"]
    metadata: ObjectMeta
    spec: ChangeCalendarSpec
    status: dict[str, Any] | None = None


Resource = (
    PatchBaseline
    | PatchGroup
    | MaintenanceWindow
    | ManagedInstance
    | ComplianceReport
    | InstanceSource
    | Rollout
    | ChangeCalendar
)

KINDS: dict[str, type[Resource]] = {
    "PatchBaseline": PatchBaseline,
    "PatchGroup": PatchGroup,
    "MaintenanceWindow": MaintenanceWindow,
    "ManagedInstance": ManagedInstance,
    "ComplianceReport": ComplianceReport,
    "InstanceSource": InstanceSource,
    "Rollout": Rollout,
    "ChangeCalendar": ChangeCalendar,
}

# Plural and short names, used for the CRDs and by kubectl.
NAMES: dict[str, tuple[str, list[str]]] = {
    "PatchBaseline": ("patchbaselines", ["pb"]),
    "PatchGroup": ("patchgroups", ["pg"]),
    "MaintenanceWindow": ("maintenancewindows", ["mw"]),
    "ManagedInstance": ("managedinstances", ["mi"]),
    "ComplianceReport": ("compliancereports", ["creport"]),
    "InstanceSource": ("instancesources", ["isrc"]),
    "Rollout": ("rollouts", ["ro"]),
    "ChangeCalendar": ("changecalendars", ["ccal"]),
}

GROUP_LABEL = "patchwarden.io/patch-group"
"""The label that puts an instance in a group whose selector is omitted."""
SOURCE_ANNOTATION = "patchwarden.io/instance-source"
"""On a generated ManagedInstance only (validation refuses it on one written by hand): the
InstanceSource that listed the machine."""
HOST_ANNOTATION = "patchwarden.io/instance-source-host"
"""On a generated ManagedInstance: the machine's id in that source (a static host's name, an
Ansible inventory hostname, an EC2 instance id)."""

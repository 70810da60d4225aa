"""Stage: dispatch. The one protocol every transport implements (local, ssh, Kubernetes Jobs;
later SSM): run the agent's scan or install where the machine is and return its documents, read
into the schema's models here, at the edge (an unreadable one is an AgentFailed, the job's
failure). What to install is one value, :class:`InstallRequest`, the same for every transport.
Decides nothing about patches."""

from __future__ import annotations

import base64
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from reconciler.api.enums import LINUX_SYSTEMS, OperatingSystem
from reconciler.api.hooks import HookCommand, StageRun
from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory
from reconciler.api.resources import PatchSource
from reconciler.api.snapshot import Snapshot
from reconciler.errors import PermanentError
from reconciler.evaluation import resolve

M = TypeVar("M", bound=BaseModel)


class AgentFailed(PermanentError):
    """The agent reported an error (or its output could not be read)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


def option(name: str, value: str) -> str:
    """One word ``--name=value`` of the agent's command line: the one way every value reaches the
    agent. argparse reads a separate word that starts with '-' as an option, so a package name or
    pattern like ``--simulate`` (from a baseline or a machine's report) would otherwise become one;
    joined, it is always the value."""
    return f"{name}={value}"


@dataclass(frozen=True)
class BaselineSource:
    """One source of the baseline for ``operating_system``: which baseline applies depends on
    the machine's system, known on the machine before any scan, so the agent picks."""

    operating_system: OperatingSystem
    source: PatchSource


def baseline_sources(snapshot: Snapshot, labels: Mapping[str, str]) -> tuple[BaselineSource, ...]:
    """The sources of every baseline a machine with ``labels`` could resolve to, one per Linux
    system: which one applies depends on the system the machine runs, which the agent knows
    before its scan (and picks by)."""
    found: list[BaselineSource] = []
    for system in sorted(LINUX_SYSTEMS):
        baseline = resolve(snapshot, labels, system).baseline
        found += [BaselineSource(system, s) for s in (baseline.spec.sources if baseline else ())]
    return tuple(found)


def sources_args(sources: Sequence[BaselineSource]) -> list[str]:
    """The baselines' sources as the agent's one ``--sources`` word (none without sources): a
    source's configuration is multi-line text, so the list travels as base64 of JSON, one word
    that a shell, SSH and a Job's command all carry unchanged. The agent keeps those for its
    own operating system and product."""
    if not sources:
        return []
    items = [
        {**s.source.model_dump(mode="json", by_alias=True), "operatingSystem": s.operating_system}
        for s in sources
    ]
    return [option("--sources", _word(items))]


def scan_args(
    instance_id: str | None, refresh: bool, sources: Sequence[BaselineSource] = ()
) -> list[str]:
    """The agent's command line for a scan (every transport runs the same agent)."""
    return [
        "scan",
        *([option("--instance-id", instance_id)] if instance_id else []),
        *([] if refresh else ["--no-refresh"]),
        *sources_args(sources),
    ]


@dataclass(frozen=True)
class InstallRequest:
    """What an install asks the agent to do on one machine (the same for every transport)."""

    pins: tuple[str, ...]
    """``name[:arch]=version`` of each patch to install."""
    blocked: tuple[str, ...] = ()
    """Package name patterns the install may not touch (not even as a dependency)."""
    holds: tuple[str, ...] = ()
    """The machine's patch group's and instance's hold patterns (docs/guardrails.md): never
    installed, and an update that needs one at a newer version is left out, HELD."""
    simulate: bool = False
    reboot_option: str = "RebootIfNeeded"
    allow_reboot: bool = False
    """Whether the agent may reboot the machine itself (never this host under the loop)."""
    lock_timeout: int = 60
    """Seconds to wait for the package manager's lock."""
    sources: tuple[BaselineSource, ...] = ()
    """The baselines' alternative repositories (the agent uses those for its system and
    product)."""
    pre_install: tuple[HookCommand, ...] = ()
    """A window task's preInstall commands, run by the agent before the install."""
    post_install: tuple[HookCommand, ...] = ()
    """A window task's postInstall commands, run by the agent after the install and before
    its reboot."""

    @property
    def hooked(self) -> bool:
        return bool(self.pre_install or self.post_install)


def install_args(request: InstallRequest, *, trust_root_scripts: bool = False) -> list[str]:
    """The agent's command line for an install; ``trust_root_scripts`` is the operator's word
    (never the configuration repository's) that a directory root may have its maintainer
    scripts run on the host (docs/agent.md)."""
    args = [
        "install",
        option("--reboot-option", request.reboot_option),
        option("--lock-timeout", str(request.lock_timeout)),
        *(option("--pin", pin) for pin in request.pins),
        *(option("--block", pattern) for pattern in request.blocked),
        *(option("--hold", pattern) for pattern in request.holds),
        *(["--simulate"] if request.simulate else []),
        *(["--allow-reboot"] if request.allow_reboot else []),
        *sources_args(request.sources),
        *hooks_args(request),
    ]
    return args + (["--trust-root-scripts"] if trust_root_scripts else [])


def _commands(commands: Sequence[HookCommand]) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json", by_alias=True) for c in commands]


def _word(document: object) -> str:
    """A JSON document as one word (base64), which a shell, SSH and a Job carry unchanged."""
    return base64.b64encode(json.dumps(document).encode()).decode("ascii")


def hooks_args(request: InstallRequest) -> list[str]:
    """The install's ``--hooks`` word: its preInstall and postInstall commands (none without)."""
    if not request.hooked:
        return []
    stages = {"preInstall": request.pre_install, "postInstall": request.post_install}
    return [option("--hooks", _word({k: _commands(v) for k, v in stages.items() if v}))]


def stage_args(stage: str, commands: Sequence[HookCommand]) -> list[str]:
    """The agent's command line for one stage of hooks (onExit) or a command health check."""
    return ["hooks", option("--stage", stage), option("--commands", _word(_commands(commands)))]


def root_args(root: str | None) -> list[str]:
    """The agent's ``--root`` (the host's / when None), appended by the command transports."""
    return [option("--root", root or "/")]


def inventory_of(document: dict[str, Any]) -> Inventory:
    """The agent's scan output as the schema's Inventory, or AgentFailed saying why not."""
    return _read(Inventory, document, "BadInventory", "inventory")


def install_result_of(document: dict[str, Any]) -> InstallResult:
    """The agent's install result as the schema's InstallResult, or AgentFailed saying why not."""
    return _read(InstallResult, document, "BadInstallResult", "install result")


def stage_run_of(document: dict[str, Any]) -> StageRun:
    """The agent's report of a stage of hooks, or AgentFailed saying why not."""
    return _read(StageRun, document, "BadHookResult", "hooks result")


def _read(model: type[M], document: dict[str, Any], code: str, what: str) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:  # the agent's fault, not the loop's: this job fails
        raise AgentFailed(code, f"the agent's {what} does not match the schema: {exc}") from None


class Transport(Protocol):
    """Runs the agent on one machine. Methods block; transports are safe to use from threads."""

    def scan(
        self,
        *,
        instance_id: str | None = None,
        refresh: bool = True,
        sources: Sequence[BaselineSource] = (),
    ) -> Inventory:
        """The machine's inventory document (raises AgentFailed)."""
        ...

    def install(self, request: InstallRequest) -> InstallResult:
        """The agent's install result (raises AgentFailed, BadInstallResult when unreadable)."""
        ...

    def run_stage(self, stage: str, commands: Sequence[HookCommand]) -> StageRun:
        """Run a stage of a window task's commands on the machine (onExit, a command health
        check): what each did, up to the first that failed (raises AgentFailed)."""
        ...


@runtime_checkable
class Rebooting(Protocol):
    """A transport that can reboot its machine for the loop and read its boot id (ssh), so that
    the loop, not the agent, reboots and waits (docs/reboots.md)."""

    def boot_id(self) -> str:
        """The machine's current boot id (raises AgentFailed, SshUnreachable while it is down)."""
        ...

    def reboot(self, if_boot_id: str) -> bool:
        """Start a reboot, detached, unless the machine booted since ``if_boot_id``; whether it
        was started (raises AgentFailed)."""
        ...


_BOOT_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def boot_id_of(document: dict[str, Any]) -> str:
    """The boot id in the agent's ``boot-id`` or ``reboot`` document, or AgentFailed."""
    found = document.get("bootId")
    # The kernel's is a UUID; anything else (a machine that lies) never reaches a record.
    if not isinstance(found, str) or not _BOOT_ID.fullmatch(found):
        raise AgentFailed("BadBootId", "the agent's answer has no bootId of letters, digits and -")
    return found


class AgentCommand(ABC):
    """A transport that runs the agent as one command and gets its JSON document back (local,
    ssh): scan and install are the same for each, only how the command runs differs.
    ``trust_root_scripts``: the operator trusts the transport's directory root (and its
    repositories) to run maintainer scripts on the machine itself; off unless the operator says
    so at the CLI (``PATCHWARDEN_TRUST_ROOT_SCRIPTS=1``, ``patchctl install --trust-root-scripts``).
    """

    trust_root_scripts: bool = False

    def scan(
        self,
        *,
        instance_id: str | None = None,
        refresh: bool = True,
        sources: Sequence[BaselineSource] = (),
    ) -> Inventory:
        return inventory_of(self._run(scan_args(instance_id, refresh, sources)))

    def install(self, request: InstallRequest) -> InstallResult:
        if request.hooked:
            self._may_run_hooks()
        args = install_args(request, trust_root_scripts=self.trust_root_scripts)
        return install_result_of(self._run(args))

    def boot_id(self) -> str:
        return boot_id_of(self._run(["boot-id"]))

    def reboot(self, if_boot_id: str) -> bool:
        document = self._run(["reboot", option("--if-boot-id", if_boot_id)])
        boot_id_of(document)
        return document.get("started") is True

    def run_stage(self, stage: str, commands: Sequence[HookCommand]) -> StageRun:
        self._may_run_hooks()
        return stage_run_of(self._run(stage_args(stage, commands)))

    def _may_run_hooks(self) -> None:
        """Raises AgentFailed where a window task's commands may not run (see LocalTransport)."""
        return None

    @abstractmethod
    def _run(self, args: list[str]) -> dict[str, Any]:
        """The agent's document for ``args`` (raises AgentFailed when it reports an error)."""

"""Stage: dispatch — an I/O edge (files). Where an SSH connection really goes: a ManagedInstance's
``connection`` completed from the operator's SSH client configuration, ``<--ssh-dir>/config``
(OpenSSH's format, read by asyncssh's own parser), the way ``ssh`` would for that host: Host
aliases, ``HostName``, ``Port``, ``User``, ``IdentityFile`` and ``ProxyJump``. Fields written in
the ManagedInstance win; without either, the user is root and the port 22.

May read only inside the operator's SSH directory: no other configuration file (not the user's
``~/.ssh/config`` when ``--ssh-dir`` is elsewhere, not ``/etc/ssh/ssh_config``), an ``Include``
or ``IdentityFile`` outside it is refused, and no command runs (``Match exec``, ``ProxyCommand``
are refused). A file that cannot be parsed is one error naming it and the line, never quoting
it. Decides nothing about patches; imports ``reconciler.api`` and ``reconciler.paths`` only.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import asyncssh
import asyncssh.config

from reconciler.api.resources import SshConnection, parse_jump
from reconciler.dispatch.base import AgentFailed
from reconciler.dispatch.ssh import JumpHost
from reconciler.paths import OutsideDirectory, confine

CONFIG = "config"
"""The configuration's name inside the SSH directory, as OpenSSH names ``~/.ssh/config``."""
DEFAULT_KEYS = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa", "id_rsa")
"""The key files offered, in this order, when neither the connection nor the configuration
names one: OpenSSH's and asyncssh's default names, but inside the SSH directory (asyncssh itself
would read them in ``~/.ssh`` whatever ``--ssh-dir`` says)."""


@dataclass(frozen=True)
class Reach:
    """How to reach one machine, every file confined to the SSH directory."""

    host: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts_file: str | None
    jump: JumpHost | None


@dataclass(frozen=True)
class HostEntry:
    """What the configuration says about one host (None: it says nothing)."""

    hostname: str | None = None
    port: int | None = None
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None


def reach(connection: SshConnection, ssh_dir: Path, name: str | None) -> Reach:
    """``connection`` completed from ``<ssh_dir>/config`` (AgentFailed when the configuration
    cannot be used or names a file outside ``ssh_dir``; the job fails, nothing is connected)."""
    entry = host_entry(ssh_dir, connection.host, name)
    written = connection.model_fields_set
    user = connection.user if "user" in written else entry.user or connection.user
    keys: tuple[str, ...] = ()
    if connection.identity_file:
        keys = (
            in_ssh_dir(connection.identity_file, "spec.connection.identityFile", ssh_dir, name),
        )
    else:
        where = f" in {ssh_dir / CONFIG} (Host {connection.host})"
        keys = tuple(
            in_ssh_dir(path, "IdentityFile", ssh_dir, name, where) for path in entry.identity_files
        ) or default_keys(ssh_dir)
    known = connection.known_hosts_file
    return Reach(
        host=entry.hostname or connection.host,
        port=connection.port if "port" in written else entry.port or connection.port,
        user=user,
        identity_files=keys,
        known_hosts_file=in_ssh_dir(known, "spec.connection.knownHostsFile", ssh_dir, name)
        if known
        else None,
        jump=_jump(connection.proxy_jump or entry.proxy_jump, user, ssh_dir, name),
    )


def default_keys(ssh_dir: Path) -> tuple[str, ...]:
    """The DEFAULT_KEYS present in ``ssh_dir`` (regular files, symlinks kept inside it)."""
    found = []
    for key in DEFAULT_KEYS:
        path = ssh_dir / key
        try:
            if path.is_file():
                found.append(str(confine(str(path), ssh_dir)))
        except OutsideDirectory:
            continue  # a link out of the directory is not read; asked for by name it is refused
    return tuple(found)


def _jump(spec: str | None, user: str, ssh_dir: Path, name: str | None) -> JumpHost | None:
    """The bastion: its alias completed from the configuration (HostName, Port, User; it is
    authenticated with the machine's keys), its user otherwise the machine's login user."""
    if not spec:
        return None
    try:
        jump_user, alias, port = parse_jump(spec)
    except ValueError as exc:  # only the configuration's can be wrong: the schema checked ours
        raise _invalid(ssh_dir / CONFIG, name, f"ProxyJump {spec} {exc}") from None
    entry = host_entry(ssh_dir, alias, name)
    return JumpHost(
        host=entry.hostname or alias,
        port=port or entry.port or 22,
        user=jump_user or entry.user or user,
    )


def host_entry(ssh_dir: Path, host: str, name: str | None) -> HostEntry:
    """What ``<ssh_dir>/config`` says about ``host`` (nothing when there is no such file)."""
    path = ssh_dir / CONFIG
    if not path.exists():
        return HostEntry()
    try:
        config = _Confined.load(
            None, [path], False, False, False, _local_user(), (), host, (), ssh_dir
        )
    except (OSError, ValueError, asyncssh.Error) as exc:
        raise _invalid(path, name, _reason(exc)) from None
    if config.get("ProxyCommand"):
        raise _invalid(
            path, name, f"Host {host} has a ProxyCommand: use ProxyJump (no command runs)"
        )
    port = config.get("Port")
    return HostEntry(
        hostname=_text(config.get("Hostname")),
        port=port if isinstance(port, int) else None,
        user=_text(config.get("User")),
        identity_files=tuple(str(p) for p in _strings(config.get("IdentityFile"))),
        proxy_jump=_text(config.get("ProxyJump")),
    )


def in_ssh_dir(path: str, field: str, ssh_dir: Path, name: str | None, where: str = "") -> str:
    """``path`` (``~`` expanded; relative: inside ``ssh_dir``) resolved inside ``ssh_dir``;
    AgentFailed (the job fails, nothing is read) when it lies outside. ``where`` says which
    file named it, when not the resource."""
    try:
        return str(confine(str(Path(path).expanduser()), ssh_dir))
    except OutsideDirectory:
        resource = f"ManagedInstance {name}: " if name else ""
        raise AgentFailed(
            "SshFileRefused",
            f"{resource}{field} {path}{where} is outside the SSH directory {ssh_dir}: put the file "
            "there (a relative name is read inside it), or start patchctl with --ssh-dir "
            "naming the directory that holds it",
        ) from None


def _strings(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a name (some containers): Match localuser fails
        return ""


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"cannot read it ({exc.strerror or type(exc).__name__})"
    if isinstance(exc, asyncssh.config.ConfigParseError):
        return str(exc)  # our words (_Confined._error)
    if isinstance(exc, asyncssh.Error):
        return f"it cannot be applied ({exc.reason})"
    return "it is not an OpenSSH client configuration (UTF-8 text)"


def _invalid(path: Path, name: str | None, why: str) -> AgentFailed:
    resource = f"ManagedInstance {name}: " if name else ""
    return AgentFailed(
        "SshConfigInvalid",
        f"{resource}the SSH client configuration {path}: {why}: correct the file, or move it "
        "out of the SSH directory (--ssh-dir)",
    )


class _Confined(asyncssh.config.SSHClientConfig):
    """asyncssh's client configuration parser, kept inside the SSH directory: relative
    ``Include`` names are read there (asyncssh would use ``~/.ssh``), one that leaves it is
    refused, ``Match exec`` (a command) is refused, and errors never quote the file."""

    def __init__(
        self,
        last_config: asyncssh.config.SSHConfig,
        reload: bool,
        canonical: bool,
        final: bool,
        local_user: str,
        user: str,
        host: str,
        port: int,
        ssh_dir: Path,
    ) -> None:
        super().__init__(last_config, reload, canonical, final, local_user, user, host, port)
        self._default_path = self._ssh_dir = ssh_dir

    def _error(self, reason: str) -> NoReturn:
        # asyncssh quotes the value it could not read; the file may not be a configuration.
        raise asyncssh.config.ConfigParseError(
            f"line {self._line_no} of {self._path}: {reason.split(':')[0]}"
        )

    def _match(self, option: str, args: list[str]) -> None:
        if any(arg.lower().lstrip("!") == "exec" for arg in args):
            self._error("Match exec is not supported (Patchwarden runs no command from it)")
        super()._match(option, args)

    def _include(self, option: str, args: list[str]) -> None:
        # asyncssh's, with the SSH directory for ~/.ssh and each file (symlinks resolved)
        # checked before it is opened.
        outer = self._path, self._line_no
        for pattern in args:
            path = Path(pattern).expanduser()
            base, glob = Path(path.anchor), str(Path(*path.parts[1:]))
            if not path.anchor:
                base, glob = self._ssh_dir, pattern
            self._inside(base / glob, pattern)
            for found in sorted(p for p in base.glob(glob) if p.is_file()):
                self._inside(found, pattern)
                self.parse(found)
        self._path, self._line_no = outer
        self._matching = True
        args.clear()

    def _inside(self, path: Path, pattern: str) -> None:
        try:
            confine(str(path), self._ssh_dir)
        except OutsideDirectory:
            self._error(f"Include {pattern} leaves the SSH directory {self._ssh_dir}")


# asyncssh dispatches each keyword through this table of plain functions, not through methods.
_Confined._handlers = {
    **asyncssh.config.SSHClientConfig._handlers,
    "include": ("Include", _Confined._include),
    "match": ("Match", _Confined._match),
}

"""Stage: dispatch — an I/O edge (network). The ``ssh`` transport: the agent zipapp is copied to
the machine once per agent version and run there with the machine's own ``python3``. May import
``reconciler.api``; decides nothing.

- **Host keys are checked strictly**: only keys in the connection's known_hosts file are
  accepted (a bastion's too); with no known_hosts file we refuse to connect (no trust on first
  use), and ``~/.ssh/known_hosts`` is never consulted. The SSH client configuration is read
  only as ``<--ssh-dir>/config``, by :mod:`reconciler.dispatch.sshconfig`, never by asyncssh.
- **Privilege**: with ``become`` the agent runs as ``sudo -n [-u USER] -- python3 ...``; its
  zipapp stays in the login user's cache and reaches it on standard input (``/dev/stdin``), so a
  non-root ``becomeUser`` needs no access to the login user's home. sudo's refusals (no rule, a
  password asked for, ``requiretty``) are ``BecomeRefused``; an Install whose agent would not run
  as root is ``InstallNeedsRoot`` before any connection.
- **Bastions**: ``jump`` is reached first (same known_hosts and keys), pooled like any
  endpoint, and the machine is reached through asyncssh's tunnel over it.
- **A file's content never reaches an error**: a known_hosts or key file that cannot be parsed
  is reported in our words, naming the field and the path (``transport_for`` has already kept
  the paths inside the operator's SSH directory).
- **The agent is copied once per version**: it is stored as
  ``~/.cache/patchwarden/agent-<sha256[:16]>.pyz``; one command checks for it, SFTP uploads it
  (to a private name, renamed into place, so a concurrent run never executes half a file).
- **Connections are pooled**: one per endpoint (host, port, user and the credentials that
  authenticated it) in an :class:`SshPool`, shared by every transport given the same pool. The
  pool runs asyncssh on one private event loop in a background thread; the transport's methods
  are synchronous and may be called from any number of threads at once.
- **Failures are AgentFailed**, as with the local transport: ``SshUnreachable`` (refused, no
  route, no handshake within the connect timeout, connection lost), ``SshHostKeyRejected``,
  ``SshAuthFailed``, ``Timeout`` (the agent ran longer than the command timeout),
  ``AgentUploadFailed``, ``BecomeRefused``, ``InstallNeedsRoot``, and the agent's own error
  codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import secrets
import shlex
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncssh

from reconciler.api.install import InstallResult
from reconciler.dispatch.agent_bundle import agent_zipapp
from reconciler.dispatch.base import AgentCommand, AgentFailed, InstallRequest, root_args

CONNECT_TIMEOUT = 15.0
"""Seconds to open and authenticate a connection, and to put the agent in place."""
COMMAND_TIMEOUT = 3600.0
"""Seconds the agent may run (same default as the local transport)."""
REMOTE_DIR = "~/.cache/patchwarden"
"""Where agent versions are kept on machines; ``~/`` is the login user's home."""
MAX_SESSIONS = 8
"""Concurrent channels per connection: OpenSSH refuses more than ``MaxSessions`` (default 10)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """What a pooled connection is keyed by. The credentials are part of the key so that a
    transport never rides on a connection verified against someone else's known_hosts file."""

    host: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts_file: str | None
    jump: Endpoint | None = None
    """The bastion this endpoint is reached through (its own pooled connection)."""

    def __str__(self) -> str:
        via = f" via {self.jump}" if self.jump else ""
        return f"{self.user}@{self.host}:{self.port}{via}"


@dataclass(frozen=True)
class JumpHost:
    """A bastion (OpenSSH's ProxyJump), authenticated with the machine's own keys."""

    host: str
    port: int
    user: str


@dataclass(frozen=True)
class AgentFile:
    """A local agent zipapp and its SHA-256, which names its copy on machines."""

    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return f"agent-{self.sha256[:16]}.pyz"


@dataclass(frozen=True)
class AgentCall:
    """One run of the agent: which zipapp, its arguments, how and how long."""

    agent: AgentFile
    args: tuple[str, ...]
    python: str
    remote_dir: str
    connect_timeout: float
    command_timeout: float
    become: Become | None = None


@dataclass(frozen=True)
class Become:
    """How the agent gains privilege (``connection.become``): sudo, non-interactively, as
    ``user`` (root when None). ``instance`` names the ManagedInstance in sudo's refusals."""

    user: str | None = None
    instance: str | None = None

    def prefix(self) -> list[str]:
        # -n: a rule that asks for a password fails at once instead of waiting for a terminal.
        return ["sudo", "-n", *(["-u", self.user] if self.user else []), "--"]


@dataclass
class _Slot:
    """One endpoint's connection and what is known about it. Touched on the pool's loop only,
    so the asyncio primitives are all the locking it needs."""

    sessions: asyncio.Semaphore
    connecting: asyncio.Lock = field(default_factory=asyncio.Lock)
    uploading: asyncio.Lock = field(default_factory=asyncio.Lock)
    conn: asyncssh.SSHClientConnection | None = None
    agents: dict[str, str] = field(default_factory=dict)
    """sha256 → absolute remote path, for agents known to be in place on ``conn``'s machine."""


# Errors that mean "this connection is gone" before the agent started: safe to reconnect and
# try again once, because nothing ran yet.
_LINK_ERRORS = (asyncssh.ChannelOpenError, asyncssh.DisconnectError, ConnectionError)


class SshPool:
    """SSH connections shared by transports, one per :class:`Endpoint`, on a private event loop.

    Thread-safe. ``close()`` closes every connection and stops the loop; using the pool again
    afterwards starts a fresh one. ``connections_opened`` and ``uploads`` count what the pool did
    (for tests and metrics).
    """

    def __init__(self, *, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self.connections_opened = 0
        self.uploads = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._slots: dict[Endpoint, _Slot] = {}

    # -- thread side -------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="patchwarden-ssh", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            if threading.current_thread() is self._thread:
                coro.close()
                raise RuntimeError("SshPool methods block: do not call them from its own loop")
            # Scheduled under the lock, so close() cannot stop the loop between the check above
            # and this: every submitted coroutine is either run or cancelled by close().
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise AgentFailed("SshUnreachable", "the SSH pool was closed during the call") from None
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: do not leave it running
            raise

    def close(self) -> None:
        """Close every connection and stop the loop thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            if loop is None or thread is None:
                return
            done = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        done.result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> SshPool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def run_agent(self, endpoint: Endpoint, call: AgentCall) -> dict[str, Any]:
        """Run the agent on the endpoint's machine and return its JSON document (blocks; raises
        AgentFailed)."""
        return self._submit(self._run_agent(endpoint, call))

    # -- loop side -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        # Connections first: agents still running see the connection go and fail with
        # SshUnreachable; whatever is left (a connect in progress) is then cancelled.
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            if slot.conn is not None:
                slot.conn.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(slot.conn.wait_closed(), 5)
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _connection(
        self, endpoint: Endpoint, connect_timeout: float
    ) -> tuple[asyncssh.SSHClientConnection, _Slot, bool]:
        """The endpoint's connection, opened if needed; the flag says it was reused."""
        slot = self._slots.get(endpoint)
        if slot is None:
            slot = self._slots[endpoint] = _Slot(asyncio.Semaphore(self.max_sessions))
        # One opener per endpoint: threads that start together share the connection it opens.
        async with slot.connecting:
            if slot.conn is not None and not slot.conn.is_closed():
                return slot.conn, slot, True
            slot.conn, slot.agents = None, {}
            tunnel = await self._tunnel(endpoint, connect_timeout)
            slot.conn = await _open(endpoint, connect_timeout, tunnel)
            self.connections_opened += 1
            return slot.conn, slot, False

    async def _tunnel(
        self, endpoint: Endpoint, connect_timeout: float
    ) -> asyncssh.SSHClientConnection | None:
        """The pooled connection to the endpoint's bastion (None without one): every machine
        behind the same bastion shares it."""
        if endpoint.jump is None:
            return None
        try:
            conn, _, _ = await self._connection(endpoint.jump, connect_timeout)
        except AgentFailed as exc:
            raise AgentFailed(exc.code, f"{endpoint}: the bastion: {exc.message}") from None
        return conn

    @staticmethod
    def _forget(slot: _Slot, conn: asyncssh.SSHClientConnection) -> None:
        if slot.conn is conn:
            slot.conn, slot.agents = None, {}
        conn.close()

    async def _run_agent(self, endpoint: Endpoint, call: AgentCall) -> dict[str, Any]:
        stale_retry = missing_retry = True
        while True:
            conn, slot, reused = await self._connection(endpoint, call.connect_timeout)
            try:
                remote = await asyncio.wait_for(
                    self._agent_on(endpoint, conn, slot, call), call.connect_timeout
                )
                async with slot.sessions:
                    # exec: the agent replaces the login shell, so a TERM on timeout reaches it.
                    process = await conn.create_process(_command(call, remote), encoding="utf-8")
                    completed = await _finish(process, call, endpoint)
            except _LINK_ERRORS as exc:
                self._forget(slot, conn)
                if reused and stale_retry:
                    stale_retry = False  # the server dropped an idle pooled connection
                    continue
                raise AgentFailed("SshUnreachable", f"{endpoint}: {_reason(exc)}") from None
            except TimeoutError:
                raise AgentFailed(
                    "Timeout",
                    f"{endpoint}: copying the agent did not finish within "
                    f"{call.connect_timeout:.0f}s",
                ) from None
            stdout, stderr = str(completed.stdout or ""), str(completed.stderr or "")
            if missing_retry and _agent_missing(call, remote, stdout, stderr, completed):
                # Someone removed the cached agent since we checked: check (and copy) again.
                missing_retry = False
                slot.agents.pop(call.agent.sha256, None)
                continue
            _check_become(endpoint, call, stdout, stderr, completed)
            return _document(endpoint, stdout, stderr, completed)

    async def _agent_on(
        self, endpoint: Endpoint, conn: asyncssh.SSHClientConnection, slot: _Slot, call: AgentCall
    ) -> str:
        """The agent's absolute path on the machine, copied there first if it is missing."""
        agent = call.agent
        known = slot.agents.get(agent.sha256)
        if known is not None:
            return known
        # One check (and upload) per agent per connection; concurrent callers wait for it.
        async with slot.uploading:
            known = slot.agents.get(agent.sha256)
            if known is not None:
                return known
            name = shlex.quote(agent.name)
            check = (
                f"umask 077 && mkdir -p {_shell_path(call.remote_dir)} && "
                f"cd {_shell_path(call.remote_dir)} && pwd && "
                f"if [ -f {name} ]; then echo present; else echo missing; fi"
            )
            async with slot.sessions:
                result = await conn.run(check, encoding="utf-8", check=False)
            lines = str(result.stdout or "").split("\n")
            lines = [line for line in lines if line]
            if result.exit_status != 0 or len(lines) < 2 or not lines[-2].startswith("/"):
                detail = str(result.stderr or result.stdout or "").strip()
                raise AgentFailed(
                    "AgentUploadFailed",
                    f"{endpoint}: cannot prepare {call.remote_dir}: {detail}",
                )
            directory, state = lines[-2], lines[-1]
            path = f"{directory}/{agent.name}"
            if state != "present":
                await self._upload(endpoint, conn, slot, agent, directory, path)
            slot.agents[agent.sha256] = path
            return path

    async def _upload(
        self,
        endpoint: Endpoint,
        conn: asyncssh.SSHClientConnection,
        slot: _Slot,
        agent: AgentFile,
        directory: str,
        path: str,
    ) -> None:
        part = f"{directory}/.{agent.name}.{secrets.token_hex(4)}.part"
        try:
            async with slot.sessions, conn.start_sftp_client() as sftp:
                await sftp.put(str(agent.path), part)
                # Readable by a becomeUser through the descriptor sudo hands on (its 0700
                # directory still keeps others from finding it by name).
                await sftp.chmod(part, 0o644)
                try:
                    await sftp.posix_rename(part, path)
                except asyncssh.SFTPOpUnsupported:
                    await sftp.rename(part, path)
        except asyncssh.SFTPError as exc:
            raise AgentFailed(
                "AgentUploadFailed", f"{endpoint}: copying the agent to {path}: {exc}"
            ) from None
        self.uploads += 1


def _command(call: AgentCall, remote: str) -> str:
    """The remote shell line that runs the agent, as the login user or through sudo."""
    if call.become is None:
        return "exec " + shlex.join([call.python, "-I", "-S", remote, *call.args])
    # The login user opens the zipapp (in its own cache) and sudo hands the open file on as
    # standard input: the agent's user needs no access to the login user's home.
    words = [*call.become.prefix(), call.python, "-I", "-S", "/dev/stdin", *call.args]
    return f"exec {shlex.join(words)} < {shlex.quote(remote)}"


def _agent_missing(
    call: AgentCall, remote: str, stdout: str, stderr: str, completed: asyncssh.SSHCompletedProcess
) -> bool:
    """Whether the cached agent was gone when the command ran (python, or the shell opening it
    for sudo, said so)."""
    if call.become is None:
        return completed.exit_status == 2 and f"can't open file '{remote}'" in stderr
    return not stdout and completed.exit_status in (1, 2) and remote in stderr


def _shell_path(path: str) -> str:
    """Quote a remote path for the shell, keeping a leading ``~/`` meaning the home directory."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", "") or exc) or type(exc).__name__


def _unreadable(endpoint: Endpoint, field: str, path: str, exc: Exception, kind: str) -> str:
    """Why a file could not be used, in our words only: asyncssh's parse errors quote the line
    they could not read, and that line may be a secret (a resource may name any file)."""
    if isinstance(exc, OSError):
        why = f"cannot read it ({exc.strerror or type(exc).__name__})"
    else:
        why = f"it is not an OpenSSH {kind} file"
    return f"{endpoint}: spec.connection.{field} {path}: {why}: check the file and the field"


def _check_become(
    endpoint: Endpoint,
    call: AgentCall,
    stdout: str,
    stderr: str,
    completed: asyncssh.SSHCompletedProcess,
) -> None:
    """BecomeRefused when sudo, not the agent, ended the command: no rule, a password asked
    for (``-n``), ``requiretty``, or no sudo at all. sudo's own line is kept, after ours."""
    become = call.become
    if become is None or stdout.strip() or completed.exit_status not in (1, 127):
        return
    text = stderr.strip()
    said = text.splitlines()[-1] if text else f"exit {completed.exit_status}"
    if completed.exit_status == 127:
        if "sudo" not in text:
            return
        fix = "install sudo on the machine, or log in as root"
    elif not (text.startswith("sudo:") or "sudoers" in text or "not allowed to" in text):
        return  # the agent's python failed before printing: _document reports it
    elif "tty" in text:
        fix = f"add 'Defaults:{endpoint.user} !requiretty' to /etc/sudoers.d/ on the machine"
    else:
        python = call.python if call.python.startswith("/") else "/usr/bin/python3"
        fix = (
            "add a rule that needs no password to /etc/sudoers.d/ on the machine, e.g. "
            f"'{endpoint.user} ALL=({become.user or 'root'}) NOPASSWD: {python}'"
        )
    who = f"ManagedInstance {become.instance} ({endpoint})" if become.instance else str(endpoint)
    raise AgentFailed(
        "BecomeRefused",
        f"{who}: sudo would not run the agent as {become.user or 'root'} for the login user "
        f"{endpoint.user}: {fix} (sudo said: {said})",
    )


async def _open(
    endpoint: Endpoint,
    connect_timeout: float,
    tunnel: asyncssh.SSHClientConnection | None = None,
) -> asyncssh.SSHClientConnection:
    if not endpoint.known_hosts_file:
        raise AgentFailed(
            "SshHostKeyRejected",
            f"{endpoint}: no known_hosts file is configured, and an unknown host key is never "
            "trusted: add the host's key to a known_hosts file and set knownHostsFile",
        )
    try:
        # Parsed here rather than passed as a path: asyncssh falls back to ~/.ssh/known_hosts
        # for an empty argument, and an unreadable file should say so, not "unreachable".
        known_hosts = asyncssh.read_known_hosts(endpoint.known_hosts_file)
    except (OSError, ValueError) as exc:
        raise AgentFailed(
            "SshHostKeyRejected",
            _unreadable(endpoint, "knownHostsFile", endpoint.known_hosts_file, exc, "known_hosts"),
        ) from None
    keys = _client_keys(endpoint)
    try:
        return await asyncssh.connect(
            endpoint.host,
            endpoint.port,
            tunnel=() if tunnel is None else tunnel,
            username=endpoint.user,
            known_hosts=known_hosts,
            x509_trusted_certs=None,  # trust comes from known_hosts only
            # asyncssh would read ~/.ssh/config itself: sshconfig.py has read <--ssh-dir>/config.
            config=None,
            client_keys=keys or None,  # None: no key at all ([] would be ~/.ssh/id_*)
            # Only the endpoint's keys, all from the SSH directory (IdentitiesOnly): never
            # asyncssh's ~/.ssh/id_* nor an ssh-agent, whose keys nobody confined there.
            agent_path=None,
            password_auth=False,  # unattended: nobody is there to type a password
            kbdint_auth=False,
            connect_timeout=connect_timeout,
            keepalive_interval=30,  # notice a dead peer instead of waiting out the command timeout
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise AgentFailed(
            "SshHostKeyRejected",
            f"{endpoint}: host key not in {endpoint.known_hosts_file}: {_reason(exc)}",
        ) from None
    except asyncssh.PermissionDenied as exc:
        hint = "" if keys else _NO_KEY
        raise AgentFailed("SshAuthFailed", f"{endpoint}: {_reason(exc)}{hint}") from None
    except TimeoutError:
        raise AgentFailed(
            "SshUnreachable", f"{endpoint}: no SSH handshake within {connect_timeout:.0f}s"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise AgentFailed("SshUnreachable", f"{endpoint}: {_reason(exc)}") from None


_NO_KEY = (
    "; no key was offered: set identityFile, or put a key under a default name (id_ed25519, "
    "id_ecdsa, id_rsa) in the SSH directory (--ssh-dir); an ssh-agent is never used"
)


def _client_keys(endpoint: Endpoint) -> Sequence[asyncssh.SSHKey]:
    """The endpoint's identity files read as keys, offered in order."""
    keys = []
    for path in endpoint.identity_files:
        try:
            keys.append(asyncssh.read_private_key(path))
        except (OSError, ValueError) as exc:
            raise AgentFailed(
                "SshAuthFailed",
                _unreadable(endpoint, "identityFile", path, exc, "unencrypted private key"),
            ) from None
    return keys


async def _finish(
    process: asyncssh.SSHClientProcess[str], call: AgentCall, endpoint: Endpoint
) -> asyncssh.SSHCompletedProcess:
    try:
        return await process.wait(timeout=call.command_timeout)
    except asyncssh.TimeoutError:
        # Stop the agent like the local transport does; an install cut short is repaired by the
        # agent's own recovery next time. Best effort: older servers ignore signal requests.
        with contextlib.suppress(OSError):
            process.send_signal("TERM")
        process.close()
        raise AgentFailed(
            "Timeout", f"{endpoint}: the agent did not finish within {call.command_timeout:.0f}s"
        ) from None
    except _LINK_ERRORS as exc:
        # Not retried: the agent may have done part of its work.
        raise AgentFailed(
            "SshUnreachable",
            f"{endpoint}: connection lost while the agent ran, its outcome is unknown: "
            f"{_reason(exc)}",
        ) from None


def _document(
    endpoint: Endpoint, stdout: str, stderr: str, completed: asyncssh.SSHCompletedProcess
) -> dict[str, Any]:
    try:
        document = json.loads(stdout)
    except json.JSONDecodeError:
        document = None
    if not isinstance(document, dict):
        if completed.exit_status is None and completed.exit_signal is None:
            raise AgentFailed(
                "SshUnreachable",
                f"{endpoint}: connection lost while the agent ran, its outcome is unknown",
            )
        if completed.exit_signal:
            status = f"killed by signal {completed.exit_signal[0]}"
        else:
            status = f"exit {completed.exit_status}"
        tail = (stderr or stdout).strip().splitlines()[-1:] or [status]
        raise AgentFailed("AgentCrashed", f"{endpoint}: the agent printed no result: {tail[0]}")
    error = document.get("error")
    if error:
        raise AgentFailed(
            error.get("code", "AgentError"), error.get("message", ""), error.get("details")
        )
    return document


class SshTransport(AgentCommand):
    """Runs the agent on a machine over SSH (``root``: a system rooted at a directory there).

    ``agent`` is the local zipapp to copy; by default it is built from this installation's agent
    sources (cached by content hash). Transports given the same ``pool`` share connections; a
    transport without one gets a private pool, closed by :meth:`close`. ``identity_file`` is
    one key file or several, offered in order; ``jump`` a bastion; ``become`` runs the agent
    through sudo (as ``become_user``, root by default); ``name``, the ManagedInstance's, is
    named in refusals.
    """

    def __init__(
        self,
        host: str,
        *,
        port: int = 22,
        user: str = "root",
        identity_file: str | tuple[str, ...] | None = None,
        known_hosts_file: str | None = None,
        jump: JumpHost | None = None,
        become: bool = False,
        become_user: str | None = None,
        name: str | None = None,
        root: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
        agent: Path | str | None = None,
        python: str = "python3",
        remote_dir: str = REMOTE_DIR,
        pool: SshPool | None = None,
        trust_root_scripts: bool = False,
    ) -> None:
        keys = (identity_file,) if isinstance(identity_file, str) else identity_file or ()
        bastion = None
        if jump is not None:
            bastion = Endpoint(jump.host, jump.port, jump.user, keys, known_hosts_file)
        self.endpoint = Endpoint(host, port, user, keys, known_hosts_file, bastion)
        self.name = name
        self.become = Become(become_user, name) if become else None
        self.root = root
        self.trust_root_scripts = trust_root_scripts
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.python = python
        self.remote_dir = remote_dir
        self.pool = pool if pool is not None else SshPool()
        self._owns_pool = pool is None
        self._agent_path = Path(agent) if agent is not None else None
        self._agent: AgentFile | None = None
        self._agent_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SshTransport({self.endpoint}, root={self.root!r})"

    def close(self) -> None:
        """Close the transport's connections (only when its pool is its own)."""
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _agent_file(self) -> AgentFile:
        with self._agent_lock:
            if self._agent is None:
                try:
                    path = self._agent_path or agent_zipapp()
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError as exc:
                    raise AgentFailed(
                        "AgentUploadFailed", f"cannot build or read the agent zipapp: {exc}"
                    ) from None
                self._agent = AgentFile(path, digest)
            return self._agent

    def install(self, request: InstallRequest) -> InstallResult:
        """Refused before connecting (``InstallNeedsRoot``) unless the agent will run as root:
        installing needs it, and a job that could only fail half-way must not start."""
        runs_as = (self.become.user or "root") if self.become else self.endpoint.user
        if runs_as != "root":
            who = f"ManagedInstance {self.name}: " if self.name else ""
            if self.become:
                why = (
                    f"become runs the agent as {runs_as}: drop becomeUser (sudo's default is root)"
                )
            else:
                why = (
                    f"the login user is {runs_as}: set spec.connection.become: sudo (with a "
                    f"sudoers rule for {runs_as}), or log in as root"
                )
            raise AgentFailed(
                "InstallNeedsRoot", f"{who}{self.endpoint}: an Install needs root; {why}"
            )
        return super().install(request)

    def _run(self, args: list[str]) -> dict[str, Any]:
        call = AgentCall(
            agent=self._agent_file(),
            args=(*args, *root_args(self.root)),
            python=self.python,
            remote_dir=self.remote_dir,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            become=self.become,
        )
        return self.pool.run_agent(self.endpoint, call)

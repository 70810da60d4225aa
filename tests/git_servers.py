"""Real Git servers on 127.0.0.1 for the source tests: git daemon, smart HTTP (optionally behind
HTTP basic auth), sshd; plus upstream repositories to commit to, and throwaway GPG and SSH signing
keys.

Every server serves a whole directory of bare repositories, so one server per test module is
enough and each test makes its own repository in it. Processes are started as argv lists and
stopped by their own PID; nothing here touches the host's Git, SSH or GnuPG configuration.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tests.waiting import accepting, tail_of, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# The test side's git ignores the host's configuration and has a fixed identity.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
}


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
) -> str:
    """Run a command; raise with its stderr when it fails."""
    done = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, **GIT_ENV, **(env or {})},
        input=stdin,
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.decode()}")
    return done.stdout.decode().strip()


# --- repositories ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """How the upstream signs a commit: extra git config and environment."""

    config: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Upstream:
    """A bare repository under a served root, and a working clone that pushes to it."""

    bare: Path
    work: Path

    @classmethod
    def create(cls, root: Path, name: str, scratch: Path) -> Upstream:
        bare = root / f"{name}.git"
        run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(bare)])
        (bare / "git-daemon-export-ok").touch()
        work = scratch / name
        run(["git", "init", "--quiet", "--initial-branch=main", str(work)])
        run(["git", "remote", "add", "origin", str(bare)], cwd=work)
        return cls(bare, work)

    def git(self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
        return run(["git", *args], cwd=self.work, env=env, stdin=stdin)

    def write(self, relpath: str, text: str) -> None:
        path = self.work / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def copy_examples(self) -> None:
        shutil.copytree(EXAMPLES, self.work, dirs_exist_ok=True)

    def commit(self, message: str, signer: Signer | None = None, branch: str = "main") -> str:
        """Commit everything in the work tree and push it to ``branch``; the new commit's id."""
        self.git("add", "--all")
        config = [
            arg
            for key, value in (signer.config if signer else {}).items()
            for arg in ("-c", f"{key}={value}")
        ]
        sign = ["-S"] if signer else []
        env = signer.env if signer else None
        self.git(*config, "commit", "--quiet", "--allow-empty", *sign, "-m", message, env=env)
        self.git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}")
        return self.git("rev-parse", "HEAD")

    def tamper_head(self) -> str:
        """Replace HEAD by a copy with another message but the old signature: a bad signature."""
        raw = self.git("cat-file", "commit", "HEAD").encode() + b"\n"
        forged = raw.replace(b"\n\n", b"\n\nTampered: ", 1)
        sha = self.git("hash-object", "-t", "commit", "-w", "--stdin", stdin=forged)
        self.git("push", "--quiet", "--force", "origin", f"{sha}:refs/heads/main")
        return sha


# --- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (servers without port 0 support need one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}: {log.read_text()}")
        return accepting(port)

    wait_until(
        f"a server on port {port}",
        listening,
        timeout=10,
        every=0.02,
        error=RuntimeError,
        detail=tail_of(log),
    )


@dataclass
class Daemon:
    """A server process started from argv, stopped by its PID."""

    argv: list[str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_listening(self.port, self.process, self.log)
        return self

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        # The whole group: `git daemon` runs git-daemon as its child, which outlived a kill of
        # the wrapper alone (left listening after the suite).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def git_daemon(root: Path, log: Path) -> Daemon:
    port = free_port()
    argv = [
        "git",
        "daemon",
        "--reuseaddr",
        "--listen=127.0.0.1",
        f"--port={port}",
        f"--base-path={root}",
        "--export-all",
        str(root),
    ]
    return Daemon(argv, port, log)


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # per-request lines are noise
        pass


_CGI_FROM_REQUEST = (
    *("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "REMOTE_ADDR"),
    # Protocol v2 and gzipped request bodies are announced in these headers.
    *("HTTP_GIT_PROTOCOL", "HTTP_CONTENT_ENCODING"),
)


def http_backend_app(
    root: Path, credentials: tuple[str, str] | None = None
) -> Callable[..., Iterable[bytes]]:
    """A WSGI app running ``git http-backend`` (smart HTTP) for every request, CGI-style; with
    ``credentials`` (user, password), only for requests carrying them as HTTP basic auth."""
    expected = None
    if credentials is not None:
        expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if expected is not None and environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"authentication required\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi = {key: str(environ[key]) for key in _CGI_FROM_REQUEST if key in environ}
        cgi |= {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "test",
            "CONTENT_LENGTH": str(len(body)),
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=cgi, capture_output=True, check=False
        ).stdout
        head, payload = _split_cgi(out)
        headers = [line.split(": ", 1) for line in head.decode().splitlines() if ": " in line]
        status = next((v for k, v in headers if k.lower() == "status"), "200 OK")
        start_response(status, [(k, v) for k, v in headers if k.lower() != "status"])
        return [payload]

    return app


def _split_cgi(out: bytes) -> tuple[bytes, bytes]:
    """CGI output's header block and body; the blank line may be CRLF or LF."""
    ends = [(out.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n") if sep in out]
    index, sep = min(ends)
    return out[:index], out[index + len(sep) :]


class HttpBackend:
    """Smart HTTP on an ephemeral loopback port, served from a thread."""

    def __init__(self, root: Path, credentials: tuple[str, str] | None = None) -> None:
        self.server = make_server(
            "127.0.0.1",
            0,
            http_backend_app(root, credentials),
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HttpBackend:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def ssh_keygen(path: Path, comment: str = "test") -> str:
    """A new passphrase-less ed25519 key at ``path``; its public line."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


class SshServer:
    """sshd on loopback letting ``client_key`` in as root; ``known_hosts`` knows its host key."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        host_public = ssh_keygen(tmp / "host_key", "host")
        (tmp / "authorized_keys").write_text(ssh_keygen(tmp / "client_key", "client") + "\n")
        self.client_key = tmp / "client_key"
        self.known_hosts = tmp / "known_hosts"
        host_key = " ".join(host_public.split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_key}\n")
        config = tmp / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1:{self.port}\nHostKey {tmp / 'host_key'}\n"
            f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nAcceptEnv GIT_PROTOCOL\n"
        )
        argv = ["/usr/sbin/sshd", "-f", str(config), "-D", "-e"]
        self.daemon = Daemon(argv, self.port, tmp / "sshd.log")

    def __enter__(self) -> SshServer:
        # sshd's privilege separation chroots there; the package's init script would create it.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.daemon.__enter__()
        return self

    def __exit__(self, *_: object) -> None:
        self.daemon.__exit__()


# --- signing keys ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GpgKeys:
    """Two signing keys in ``signer_home``; only ``trusted``'s public key is in ``keyring``."""

    signer_home: Path
    keyring: Path
    trusted: str
    stranger: str

    def signer(self, fingerprint: str) -> Signer:
        return Signer(
            {"gpg.format": "openpgp", "user.signingkey": fingerprint},
            {"GNUPGHOME": str(self.signer_home)},
        )


def _gpg(home: Path, *args: str, stdin: bytes | None = None) -> str:
    return run(["gpg", "--batch", "--quiet", "--homedir", str(home), *args], stdin=stdin)


def _new_gpg_key(home: Path, name: str, email: str) -> str:
    params = (
        f"%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\n"
        f"Name-Real: {name}\nName-Email: {email}\nExpire-Date: 0\n%commit\n"
    )
    _gpg(home, "--gen-key", stdin=params.encode())
    listing = _gpg(home, "--with-colons", "--list-secret-keys", email)
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


@dataclass(frozen=True)
class GpgHomes:
    """Creates the homes, and kills their agents at the end (``gpgconf --kill all``)."""

    root: Path

    def __enter__(self) -> GpgKeys:
        signer_home, keyring = self.root / "signer", self.root / "keyring"
        for home in (signer_home, keyring):
            home.mkdir(mode=0o700)
        trusted = _new_gpg_key(signer_home, "Trusted Signer", "trusted@example.invalid")
        stranger = _new_gpg_key(signer_home, "Stranger", "stranger@example.invalid")
        public = _gpg(signer_home, "--armor", "--export", trusted).encode()
        _gpg(keyring, "--import", stdin=public)
        return GpgKeys(signer_home, keyring, trusted, stranger)

    def __exit__(self, *_: object) -> None:
        for home in (self.root / "signer", self.root / "keyring"):
            subprocess.run(
                ["gpgconf", "--kill", "all"],
                env={**os.environ, "GNUPGHOME": str(home)},
                check=False,
                capture_output=True,
            )


@dataclass(frozen=True)
class SshSigningKeys:
    """Two SSH signing keys; only ``trusted`` is in the ``allowed_signers`` file."""

    allowed_signers: Path
    trusted: Path
    stranger: Path

    @classmethod
    def create(cls, root: Path) -> SshSigningKeys:
        trusted_public = ssh_keygen(root / "trusted", "trusted")
        ssh_keygen(root / "stranger", "stranger")
        allowed = root / "allowed_signers"
        allowed.write_text(f"trusted@example.invalid {trusted_public}\n")
        return cls(allowed, root / "trusted", root / "stranger")

    @staticmethod
    def signer(key: Path) -> Signer:
        return Signer({"gpg.format": "ssh", "user.signingkey": str(key)})

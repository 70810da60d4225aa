"""A real OpenSSH server for tests: /usr/sbin/sshd on 127.0.0.1, an ephemeral high port, a
throwaway host key and user key, everything under one scratch directory.

It runs as root (the tests do) and logs in as root with the user key only. The remote "machine"
is this host, so a directory root the tests build is visible to the agent run over SSH.
Recipe: shared/testbeds/README.md (SSH).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from tests.waiting import accepting, wait_until

SSHD = "/usr/sbin/sshd"
HAVE_SSHD = os.path.exists(SSHD) and hasattr(os, "geteuid") and os.geteuid() == 0


def write_key(path: Path) -> asyncssh.SSHKey:
    """A fresh ed25519 key at ``path`` (0600, as sshd and ssh demand) and ``path``.pub."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    path.chmod(0o600)
    key.write_public_key(str(path) + ".pub")
    return key


def known_hosts_line(port: int, key: asyncssh.SSHKey) -> str:
    """A known_hosts entry for 127.0.0.1 on a non-default port."""
    return f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Sshd:
    directory: Path
    port: int
    host_key: asyncssh.SSHKey
    client_key_file: Path
    known_hosts_file: Path
    log_file: Path
    process: subprocess.Popen[bytes]

    def accepted_logins(self) -> int:
        """How many connections sshd has authenticated so far."""
        return self.log_file.read_text(errors="replace").count("Accepted publickey")

    def connection_pids(self) -> list[int]:
        """sshd's per-connection processes (children of the listener)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _listening(
    process: subprocess.Popen[bytes], port: int, log_file: Path, private_network: bool
) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"sshd exited {process.returncode}")
    if private_network:  # not reachable from here: sshd says when it listens
        return f"port {port}." in log_file.read_text(errors="replace")
    return accepting(port)


def start_sshd(
    directory: Path,
    *,
    attempts: int = 3,
    wrap: Sequence[str] = (),
    authorized_keys_file: str | None = None,
    private_network: bool = False,
) -> Sshd:
    """Start sshd with its keys and files under ``directory``; returns once the port accepts.
    ``wrap`` is a command that runs sshd's argv (tests/sudolab.py's namespaces);
    ``authorized_keys_file`` replaces the one shared key file (sshd reads it as the user);
    ``private_network``: sshd listens in a network namespace of its own, so readiness is read
    from its log."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key_file, client_key_file = directory / "host_ed25519", directory / "id_ed25519"
    host_key = write_key(host_key_file)
    client_key = write_key(client_key_file)
    authorized = directory / "authorized_keys"
    authorized.write_bytes(client_key.export_public_key())
    # sshd refuses to start without its privilege-separation directory, which only the
    # package's init script would create.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log_file = directory / "sshd.log"
    for _ in range(attempts):
        # The port is free now; another process could take it before sshd binds, hence retries.
        port = _free_port()
        config = directory / "sshd_config"
        config.write_text(
            f"Port {port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key_file}\n"
            f"AuthorizedKeysFile {authorized_keys_file or authorized}\n"
            f"PidFile {directory / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel VERBOSE\n"
        )
        log = log_file.open("ab")
        process = subprocess.Popen(
            [*wrap, SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        try:
            wait_until(
                "sshd to listen",
                functools.partial(_listening, process, port, log_file, private_network),
                timeout=10,
                every=0.02,
                error=RuntimeError,
            )
        except RuntimeError:  # exited (its port taken?) or hung: another port
            if process.poll() is None:
                process.kill()
            process.wait()
            continue
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(known_hosts_line(port, host_key))
        return Sshd(directory, port, host_key, client_key_file, known_hosts, log_file, process)
    raise RuntimeError(f"sshd did not start: {log_file.read_text(errors='replace')[-2000:]}")


def have_sshd() -> bool:
    return HAVE_SSHD and shutil.which("python3") is not None

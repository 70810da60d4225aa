"""A real sshd with real unprivileged users and real sudoers rules, without touching the host's.

sshd (tests/sshd.py) runs inside ``unshare --mount``: copies of the host's /etc/passwd, /etc/group
and /etc/shadow with the lab's users appended, a sudoers.d directory holding the test's rules, and
scratch directories for /home, /srv and sudo's state are bind-mounted over the host's. The mounts
exist only in that namespace (and its sessions, where ``sudo`` runs): the host's users, sudoers
and home directories (root's too) are never changed. Directory roots a test builds in :attr:`SudoLab.srv` are
``/srv/NAME`` for the machine.

With ``private_network`` sshd also gets a network namespace of its own (only its loopback): the
controller cannot reach it, except through :func:`start_bastion`, an sshd that is started for
each connection accepted on a port of the host's loopback and runs inside that namespace
(``sshd -i``): a bastion in front of a machine that only it can reach.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.sshd import SSHD, Sshd, known_hosts_line, start_sshd, write_key

LOGIN = "pwlogin"
"""Allowed to run python3 as root and as OTHER without a password."""
OTHER = "pwother"
"""A non-root user LOGIN may become."""
PASSWORD = "pwpass"
"""Its sudo rule asks for a password."""
NORULE = "pwnorule"
"""No sudo rule at all."""
TTY = "pwtty"
"""A rule without a password, but sudoers says requiretty."""
USERS = {LOGIN: 64101, OTHER: 64102, PASSWORD: 64103, NORULE: 64104, TTY: 64105}
PYTHON = "/usr/bin/python3"
RULES = f"""\
{LOGIN} ALL=(root) NOPASSWD: {PYTHON}
{LOGIN} ALL=({OTHER}) NOPASSWD: {PYTHON}
{PASSWORD} ALL=(root) {PYTHON}
Defaults:{TTY} requiretty
{TTY} ALL=(root) NOPASSWD: {PYTHON}
"""
KEYS = "/home/.keys/%u"
"""Each user's authorized keys (a path sshd may read as that user)."""


@dataclass
class SudoLab:
    sshd: Sshd
    directory: Path
    srv: Path
    """Seen as /srv inside the namespace: where machines' directory roots go."""
    home: Path
    """Seen as /home inside the namespace."""

    def home_of(self, user: str) -> Path:
        return self.home / user

    def stop(self) -> None:
        self.sshd.stop()

    def __enter__(self) -> SudoLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _account_files(etc: Path) -> None:
    """The host's account databases with the lab's users appended (a copy, never the host's)."""
    etc.mkdir()
    for name in ("passwd", "group", "shadow"):
        shutil.copy2(f"/etc/{name}", etc / name)
        shutil.copystat(f"/etc/{name}", etc / name)
    with (etc / "passwd").open("a") as passwd, (etc / "group").open("a") as group:
        for user, uid in USERS.items():
            passwd.write(f"{user}:x:{uid}:{uid}::/home/{user}:/bin/sh\n")
            group.write(f"{user}:x:{uid}:\n")
    with (etc / "shadow").open("a") as shadow:
        # '*': no password, yet not locked (sshd refuses a locked account even with a key).
        for user in USERS:
            shadow.write(f"{user}:*:19000:0:99999:7:::\n")


def _namespace_script(directory: Path, private_network: bool) -> str:
    mounts = {
        "etc/passwd": "/etc/passwd",
        "etc/group": "/etc/group",
        "etc/shadow": "/etc/shadow",
        "sudoers.d": "/etc/sudoers.d",
        "home": "/home",
        "srv": "/srv",
        "run-sudo": "/run/sudo",
        "var-lib-sudo": "/var/lib/sudo",
        "root-home": "/root",  # root's logins cache the agent here, not in the host's /root
    }
    lines = ["set -e"]
    for source, target in mounts.items():
        if not source.startswith("etc/"):  # the account files exist already
            (directory / source).mkdir(exist_ok=True, mode=0o755)
        # Only over what exists: a missing mount point is not created on the host.
        lines.append(f"[ ! -e {target} ] || mount --bind {directory / source} {target}")
    if private_network:
        lines.append("ip link set lo up")
    lines.append('exec "$@"')
    return "\n".join(lines)


def _homes(home: Path, public_key: bytes) -> None:
    keys = home / ".keys"
    keys.mkdir(mode=0o755)
    for user, uid in {**USERS, "root": 0}.items():
        (keys / user).write_bytes(public_key)
        (keys / user).chmod(0o644)
        if user != "root":
            (home / user).mkdir(mode=0o755)
            shutil.chown(home / user, uid, uid)


def start_lab(directory: Path, *, rules: str = RULES, private_network: bool = False) -> SudoLab:
    """An sshd whose logins are the lab's users (and root), with ``rules`` as sudoers.d."""
    directory.mkdir(parents=True, exist_ok=True)
    _account_files(directory / "etc")
    sudoers = directory / "sudoers.d"
    sudoers.mkdir(mode=0o755)
    (sudoers / "patchwarden-lab").write_text(rules)
    (sudoers / "patchwarden-lab").chmod(0o440)
    script = _namespace_script(directory, private_network)
    wrap = ["unshare", "--mount", "--propagation", "private"]
    wrap += ["--net"] if private_network else []
    sshd = start_sshd(
        directory / "sshd",
        wrap=[*wrap, "sh", "-c", script, "sudolab"],
        authorized_keys_file=KEYS,
        private_network=private_network,
    )
    _homes(directory / "home", sshd.client_key_file.with_suffix(".pub").read_bytes())
    return SudoLab(sshd, directory, directory / "srv", directory / "home")


@dataclass
class Bastion:
    """An sshd on the host's loopback that runs inside a lab's namespaces, one per connection."""

    port: int
    log_file: Path
    listener: socket.socket
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def accepted_logins(self) -> int:
        return self.log_file.read_text(errors="replace").count("Accepted publickey")

    def stop(self) -> None:
        # shutdown, not only close: on Linux close() leaves a thread blocked in accept().
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self.thread is not None:
            self.thread.join()
        for child in self.children:
            child.kill()
            child.wait()


def start_bastion(lab: SudoLab) -> Bastion:
    """A bastion for ``lab`` (its host key added to the lab's known_hosts file, the same client
    key accepted): the only way to a lab in a private network."""
    directory = lab.directory / "bastion"
    directory.mkdir()
    host_key_file = directory / "host_ed25519"
    host_key = write_key(host_key_file)
    config = directory / "sshd_config"
    config.write_text(
        f"HostKey {host_key_file}\nAuthorizedKeysFile {KEYS}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nLogLevel VERBOSE\n"
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = int(listener.getsockname()[1])
    with lab.sshd.known_hosts_file.open("a") as known:
        known.write(known_hosts_line(port, host_key))
    pid = lab.sshd.process.pid
    argv = ["nsenter", f"--net=/proc/{pid}/ns/net", f"--mount=/proc/{pid}/ns/mnt"]
    argv += [SSHD, "-i", "-e", "-f", str(config)]
    bastion = Bastion(port, directory / "sshd.log", listener)
    bastion.log_file.touch()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by stop()
                return
            with conn, bastion.log_file.open("ab") as log:
                child = subprocess.Popen(argv, stdin=conn, stdout=conn, stderr=log)
            bastion.children.append(child)

    bastion.thread = threading.Thread(target=serve, name="bastion", daemon=True)
    bastion.thread.start()
    return bastion

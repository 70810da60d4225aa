"""A fleet of machines that look real from the controller's side (issue 14 item 6; docs/test-fleet.md).

Each :class:`Machine` is a Debian 12 system of its own, reached over the network like any server:

- **its own root**: an overlayfs whose lower layers are one Debian bookworm root built once with
  Debian's ``mmdebstrap`` (cached under /var/cache/patchwarden, keyed by a hash of the recipe) and
  a per-fleet seed layer (users, sudoers, sshd configuration, the reboot shims, the packages the
  fleet starts with, installed for real by dpkg); its upper layer lives in the test's tmp dir, so
  :attr:`Machine.root` shows the machine's files (its own dpkg database) to the test;
- **its own network**: a network namespace with a veth into a host bridge and its own address in a
  private /24 (10.213.N.0/24, N unique per live fleet on this host);
- **its own sshd** (the root's, not the host's) running as PID 1 of its own PID, mount and UTS
  namespaces, chrooted into the root; ``root`` and the unprivileged ``admin`` (with a real
  ``/etc/sudoers.d`` NOPASSWD rule) log in with the fleet's key;
- **its own boot**: ``/proc/sys/kernel/random/boot_id`` is a file bind-mounted per boot, and
  ``reboot``, ``shutdown -r`` and ``systemctl reboot`` inside the machine ask the fleet's
  supervisor thread to kill the machine (sshd, every session, every process: connections drop)
  and boot it again with a new boot id and a fresh /run. ``shutdown -r`` with a later time (the
  agent's ``+1``) happens after :attr:`Machine.scheduled_delay` seconds (a test-sized minute);
  :meth:`Machine.held_down` keeps a machine down until the test lets it come back, so no test
  needs to sleep.

Packages come from a repository built with tests/aptlab.py, bind-mounted read-only into every
machine at /srv/patchwarden-repo and listed in /etc/apt/sources.list.d/patchwarden-fleet.sources.
:meth:`Machine.reset` takes a machine back to the packages the fleet started it with.

Nothing touches the host's packages, apt configuration, users or sshd. Every netns, link, mount and
process is named with a per-fleet prefix (``pwf<sid>``) and registered under
/run/patchwarden-fleet; :meth:`Fleet.close` removes them, and a new fleet first removes what a
killed run left (only fleets whose owning process is gone: other test sessions run at the same
time). Root only: :data:`FLEET_SKIP` says why a fleet cannot run here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from tests.aptlab import Pkg, Repo, build_deb, dpkg_state
from tests.sshd import write_key
from tests.waiting import tail_of, wait_until

CACHE = Path("/var/cache/patchwarden")
REGISTRY = Path("/run/patchwarden-fleet")
PREFIX = "pwf"
SUBNET = "10.213.{}.0/24"
REPO_MOUNT = "/srv/patchwarden-repo"
CONTROL_MOUNT = "/run/patchwarden-fleet"
ADMIN = "admin"
BUILD_TIMEOUT = 45 * 60.0
"""CI's budget for a cold build of the base root (it usually takes a few minutes)."""

# --- the base root ---------------------------------------------------------------------------

SUITE = "bookworm"
INCLUDE = ("openssh-server", "python3", "python3-apt", "sudo")
"""python3 runs the agent (and Ansible's modules, python3-apt for its apt and package_facts)."""
_HOOKS = (
    # The machines see only the fleet's repository: Debian's sources would send every apt-get
    # update to the network. Host keys are made per machine, never shared through the cache.
    'rm -f "$1"/etc/apt/sources.list "$1"/etc/ssh/ssh_host_*',
)
_DPKG_OPTIONS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*")


def host_mirrors(sources: Path = Path("/etc/apt")) -> dict[str, str]:
    """Suite -> URI of the Debian mirror this host's apt uses, for bookworm and bookworm-security
    (deb822 .sources and one-line .list files): the fleet's root is built from the same place."""
    found: dict[str, str] = {}
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in (".list", ".sources", ""):
            continue
        text = path.read_text(errors="replace")
        entries = _deb822(text) if path.suffix == ".sources" else _one_line(text)
        for uri, suite in entries:
            if suite in (SUITE, f"{SUITE}-security"):
                found.setdefault(suite, uri)
    return found


def _deb822(text: str) -> list[tuple[str, str]]:
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(":", 1)
            for line in stanza.splitlines()
            if ":" in line and not line.startswith(("#", " "))
        )
        if "deb" not in fields.get("Types", "").split():
            continue
        for uri in fields.get("URIs", "").split()[:1]:
            out += [(uri, suite) for suite in fields.get("Suites", "").split()]
    return out


def _one_line(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
        if len(words) >= 3 and words[0] == "deb":
            out.append((words[1], words[2]))
    return out


def recipe() -> list[str]:
    """The mmdebstrap command line after the target (its arguments are the cache key)."""
    mirrors = host_mirrors()
    if SUITE not in mirrors:
        raise RuntimeError(f"no Debian {SUITE} mirror in /etc/apt/sources*: cannot build the fleet")
    lines = [f"deb {mirrors[SUITE]} {SUITE} main"]
    if f"{SUITE}-security" in mirrors:
        lines.append(f"deb {mirrors[f'{SUITE}-security']} {SUITE}-security main")
    return [
        "--mode=root",
        "--format=directory",
        "--variant=apt",
        f"--include={','.join(INCLUDE)}",
        *[f"--dpkgopt={option}" for option in _DPKG_OPTIONS],
        *[f"--customize-hook={hook}" for hook in _HOOKS],
        SUITE,
        "TARGET",
        *lines,
    ]


def base_root(cache: Path = CACHE) -> Path:
    """The cached Debian root, built first if missing. Built into a temporary name and renamed, so
    a killed build never leaves a half root; a lock file makes a second process wait for the
    first one's build instead of building it twice."""
    args = recipe()
    key = hashlib.sha256("\0".join(args).encode()).hexdigest()[:16]
    final = cache / f"fleet-{SUITE}-{key}"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"fleet-{SUITE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        for stale in cache.glob(f"fleet-{SUITE}-*.part-*"):  # a killed build's (we hold the lock)
            _remove_tree(stale)
        part = cache / f"{final.name}.part-{os.getpid()}"
        log = cache / f"{final.name}.log"
        argv = ["mmdebstrap", *[str(part) if a == "TARGET" else a for a in args]]
        with log.open("w") as out:
            done = subprocess.run(argv, stdout=out, stderr=out, timeout=BUILD_TIMEOUT, check=False)
        if done.returncode != 0:
            _remove_tree(part)
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mmdebstrap failed ({done.returncode}), see {log}:\n{tail}")
        part.rename(final)
    return final


def _remove_tree(path: Path) -> None:
    _unmount_below(path)
    shutil.rmtree(path, ignore_errors=True)


# --- packages the fleet starts with ----------------------------------------------------------

STABLE = [
    Pkg("pwtest-lib", "1.0-1", priority="important", section="libs"),
    Pkg("pwtest-tool", "2.0-1", section="utils", depends="pwtest-lib (>= 1.0-1)"),
    Pkg("pwtest-other", "1.0-1"),
    Pkg("pwtest-other", "1.1-1"),
]
SECURITY = [
    Pkg("pwtest-lib", "1.0-2", priority="important", section="libs", source="pwtest-src"),
    Pkg("pwtest-tool", "2.1-1", section="utils", depends="pwtest-lib (>= 1.0-2)"),
]
INSTALLED = [STABLE[0], STABLE[1], STABLE[2]]
"""What a machine starts with: each has a newer version waiting (two of them security updates)."""
REBOOTING = Pkg(
    "pwtest-kernel",
    "1.0-2",
    section="kernel",
    scripts={
        "postinst": "touch /run/reboot-required; echo pwtest-kernel >> /run/reboot-required.pkgs"
    },
)
"""A security update whose postinst asks for a reboot, as a kernel's does (add it to a repo)."""


def default_repo(
    directory: Path,
    extra_security: Sequence[Pkg] = (),
    *,
    stable: Sequence[Pkg] = tuple(STABLE),
    security: Sequence[Pkg] = tuple(SECURITY),
) -> Repo:
    """stable + stable-security, labelled like Debian's (the security baselines' implicit rule)."""
    repo = Repo(directory)
    repo.add("stable", *stable, origin="Debian", label="Debian", codename=SUITE)
    repo.add(
        "stable-security",
        *security,
        *extra_security,
        origin="Debian",
        label="Debian-Security",
        codename=f"{SUITE}-security",
    )
    return repo.publish()


# --- preconditions ---------------------------------------------------------------------------


def _skip_reason() -> str:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "the multi-host test fleet needs root (namespaces, overlayfs, bridges)"
    for tool in ("mmdebstrap", "ip", "unshare", "mount", "umount", "chroot"):
        if shutil.which(tool) is None:
            return f"the multi-host test fleet needs {tool} (make install)"
    return ""


FLEET_SKIP = _skip_reason()
"""Why no fleet can run here ("" when it can): ``pytest.mark.skipif(bool(FLEET_SKIP), ...)``."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


# --- the registry: what live fleets own, what dead ones left ---------------------------------


@dataclass(frozen=True)
class Claim:
    """A fleet's entry in the registry: its prefix, subnet and directory, and its owner."""

    sid: str
    subnet: int
    directory: str
    pid: int
    started: str

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.sid}"


def _process_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(claim: Claim) -> bool:
    return _process_start(claim.pid) == claim.started != ""


@contextlib.contextmanager
def _registry_lock() -> Iterator[list[Claim]]:
    REGISTRY.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(REGISTRY / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        claims = []
        for entry in REGISTRY.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                claims.append(Claim(**json.loads(entry.read_text())))
        yield claims


def claim(directory: Path) -> Claim:
    """Register a new fleet: a fresh prefix and the lowest free subnet, after cleaning up what
    fleets of dead processes left behind."""
    with _registry_lock() as claims:
        live = [c for c in claims if _alive(c)]
        for dead in (c for c in claims if not _alive(c)):
            _clean(dead)
        _clean_orphans({c.prefix for c in live})
        used = {c.subnet for c in live} | _routed_subnets()
        subnet = next(n for n in range(256) if n not in used)
        sids = {c.sid for c in live}
        sid = next(s for s in (uuid.uuid4().hex[:4] for _ in range(100)) if s not in sids)
        pid = os.getpid()
        mine = Claim(sid, subnet, str(directory), pid, _process_start(pid))
        (REGISTRY / f"{sid}.json").write_text(json.dumps(mine.__dict__))
        return mine


def release(mine: Claim) -> None:
    with _registry_lock():
        _clean(mine)


def _routed_subnets() -> set[int]:
    routes = _run("ip", "-4", "route", "show", "root", "10.213.0.0/16", check=False).stdout
    return {int(r.split(".")[2]) for r in routes.split() if r.startswith("10.213.")}


def _clean(claim: Claim) -> None:
    _clean_prefix(claim.prefix)
    _unmount_below(Path(claim.directory))
    (REGISTRY / f"{claim.sid}.json").unlink(missing_ok=True)


def _clean_prefix(prefix: str) -> None:
    for ns in _netns_names():
        if ns.startswith(prefix):
            _kill_netns(ns)
            _run("ip", "netns", "delete", ns, check=False)
    for link in _link_names():
        if link.startswith(prefix):
            _run("ip", "link", "delete", link, check=False)


def _clean_orphans(live: set[str]) -> None:
    """Names with the fleet prefix that no live fleet owns (their registry entry is gone)."""
    owned = {
        n[: len(PREFIX) + 4] for n in (*_netns_names(), *_link_names()) if n.startswith(PREFIX)
    }
    for prefix in owned - live:
        _clean_prefix(prefix)


def _netns_names() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = _run("ip", "-o", "link", "show", check=False).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _netns_pids(ns: str) -> list[int]:
    out = _run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def _kill_netns(ns: str) -> None:
    for pid in _netns_pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(f"the processes of {ns} to exit", lambda: not _netns_pids(ns), timeout=30)


def _unmount_below(directory: Path) -> None:
    """Unmount everything mounted at or below ``directory`` in this mount namespace, deepest
    first (lazily: a machine being killed may still hold a file open)."""
    base = str(directory.resolve()) if directory.exists() else str(directory)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == base or point.startswith(base + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        _run("umount", "-l", point, check=False)


# --- machines --------------------------------------------------------------------------------

_BOOT = """\
set -e
R={root}
hostname {name}
mount -t proc proc "$R/proc"
mount --bind {boot_id} "$R/proc/sys/kernel/random/boot_id"
mount -o remount,bind,ro "$R/proc/sys/kernel/random/boot_id"
mount -t tmpfs -o mode=755,nosuid dev "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3; mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7; mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"; ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"
ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=755,nosuid,nodev run "$R/run"
mkdir -p "$R/run/sshd" "$R/run/lock" "$R{control}"
mount --bind {control_dir} "$R{control}"
mount --bind {repo} "$R{repo_mount}"
mount -o remount,bind,ro "$R{repo_mount}"
exec {command}
"""

_SHUTDOWN = """\
#!/bin/sh
# The test fleet's shutdown (tests/netfleet.py): a reboot kills this machine's sshd and every
# process, then the fleet boots it again with a new boot id. Only reboots are simulated.
action=; when=+1
while [ $# -gt 0 ]; do
  case "$1" in
    -r|--reboot) action=reboot ;;
    -c) echo cancel > {control}/request.$$ && mv {control}/request.$$ {control}/request; exit 0 ;;
    -h|-H|-P|--halt|--poweroff) action=poweroff ;;
    --no-wall|-k|-q) ;;
    -*) ;;
    *) when=$1; shift; break ;;
  esac
  shift
done
if [ "$action" != reboot ]; then
  echo "shutdown: this test machine only reboots (shutdown -r)" >&2; exit 1
fi
case "$when" in now|+0) delay=0 ;; *) delay=1 ;; esac
echo "$delay" > {control}/request.$$ && mv {control}/request.$$ {control}/request
if [ "$delay" = 0 ]; then exec sleep infinity; fi
echo "Reboot scheduled (patchwarden test fleet)" >&2
"""

_REBOOT = """\
#!/bin/sh
# The test fleet's {name} (tests/netfleet.py): reboots this machine now.
{guard}echo 0 > {control}/request.$$ && mv {control}/request.$$ {control}/request
exec sleep infinity
"""

_SYSTEMCTL_GUARD = """\
if [ "$1" != reboot ]; then
  echo "systemctl: this test machine has no systemd; only 'systemctl reboot' works" >&2; exit 1
fi
"""


@dataclass
class Machine:
    """One machine of a :class:`Fleet`: its name, address, root (the merged overlay, as seen from
    the host) and boots. Mutable: the fleet's supervisor updates it."""

    fleet: Fleet
    name: str
    address: str
    netns: str
    directory: Path
    host_key: asyncssh.SSHKey
    seed: Path
    scheduled_delay: float = 3.0
    """Seconds a scheduled reboot (``shutdown -r +1``, the agent's) waits before it happens."""
    boots: int = 0
    _process: subprocess.Popen[bytes] | None = None
    _held: int = 0
    _due: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: threading.Lock = field(default_factory=threading.Lock)
    """Held by the supervisor's look at the machine and by :meth:`reset`."""

    @property
    def root(self) -> Path:
        return self.directory / "merged"

    @property
    def control(self) -> Path:
        return self.directory / "control"

    @property
    def boot_id(self) -> str:
        """The id the machine's /proc/sys/kernel/random/boot_id shows in this boot."""
        return (self.directory / "boot_id").read_text().strip()

    @property
    def up(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None and _accepting(self.address)

    def versions(self) -> dict[str, str]:
        """name -> version of what the machine's dpkg has fully installed."""
        return {
            name: version
            for name, (version, status) in dpkg_state(self.root).items()
            if status == "install ok installed"
        }

    # -- from the test ---------------------------------------------------------------------------

    def ssh(self, command: str, *, user: str = "root", check: bool = True) -> str:
        """Run ``command`` on the machine with OpenSSH's client as ``user``; its stdout."""
        done = subprocess.run(
            [*self.fleet.ssh_argv(user), f"{user}@{self.address}", command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}: {command!r} exit {done.returncode}: {done.stderr}")
        return done.stdout

    def reboot(self) -> None:
        """Ask for a reboot now, as ``reboot`` inside the machine would."""
        self._request("0")

    @contextlib.contextmanager
    def held_down(self) -> Iterator[Machine]:
        """While inside, a machine that goes down (reboots) stays down; it boots on exit."""
        with self._lock:
            self._held += 1
        try:
            yield self
        finally:
            with self._lock:
                self._held -= 1

    def wait_up(self, timeout: float = 60.0) -> None:
        wait_until(
            f"{self.name} to be up",
            lambda: self.up,
            timeout=timeout,
            detail=tail_of(self.directory / "supervisor.log"),
        )

    def wait_boots(self, count: int, timeout: float = 60.0) -> None:
        """Until the machine has booted ``count`` times in all (the first boot is 1) and is up."""
        wait_until(
            f"{self.name} to boot {count} times", lambda: self.boots >= count, timeout=timeout
        )
        self.wait_up(timeout)

    def reset(self) -> None:
        """Power the machine off, throw away everything it changed (its overlay's upper layer: the
        packages the fleet started with are back) and boot it again; keeps name, address, host
        key and the count of boots (this is one more)."""
        with self._busy:
            self.halt()
            _run("umount", str(self.root))
            for part in ("upper", "work"):
                shutil.rmtree(self.directory / part)
            (self.control / "request").unlink(missing_ok=True)
            self._due = None
            self.fresh_root()
            self.boot()
            self.wait_listening()

    def fresh_root(self) -> None:
        """Mount the machine's overlay over an empty upper layer, with its own host key and name."""
        for part in ("upper", "work", "merged"):
            (self.directory / part).mkdir(exist_ok=True)
        _mount_overlay(
            self.root,
            [self.seed, self.fleet.base],
            self.directory / "upper",
            self.directory / "work",
        )
        key_file = self.root / "etc/ssh/ssh_host_ed25519_key"
        self.host_key.write_private_key(str(key_file))
        key_file.chmod(0o600)
        (self.root / "etc/hostname").write_text(self.name + "\n")
        (self.root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n")

    def _request(self, delay: str) -> None:
        part = self.control / f"request.{os.getpid()}"
        part.write_text(delay + "\n")
        part.rename(self.control / "request")

    # -- from the supervisor ---------------------------------------------------------------------

    def boot(self) -> None:
        """Start the machine (a new boot id, a fresh /run, sshd as PID 1)."""
        (self.directory / "boot_id").write_text(str(uuid.uuid4()) + "\n")
        script = _BOOT.format(
            root=shlex.quote(str(self.root)),
            name=shlex.quote(self.name),
            boot_id=shlex.quote(str(self.directory / "boot_id")),
            control=CONTROL_MOUNT,
            control_dir=shlex.quote(str(self.control)),
            repo=shlex.quote(str(self.fleet.repo.root)),
            repo_mount=REPO_MOUNT,
            command=shlex.join(["chroot", str(self.root), "/usr/sbin/sshd", "-D", "-e"]),
        )
        log = (self.directory / "sshd.log").open("ab")
        self._process = subprocess.Popen(
            [*_namespaced(self.netns), "/bin/sh", "-c", script],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.boots += 1

    def wait_listening(self) -> None:
        process = self._process
        assert process is not None
        wait_until(
            f"{self.name}'s sshd to listen on {self.address}:22",
            lambda: _accepting(self.address) or process.poll() is not None,
            timeout=60,
        )
        if process.poll() is not None:
            log = (self.directory / "sshd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not boot (exit {process.returncode}): {log}")

    def halt(self) -> None:
        """Kill every process of the machine (the connections drop) and wait until all are gone."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()  # unshare --kill-child: PID 1 of the machine follows, then the rest
            process.wait()
        _kill_netns(self.netns)
        # A process leaves its namespaces before its files are closed: the old sshd's socket
        # may still listen for a moment after the last process is gone.
        wait_until(f"{self.name}'s port 22 to be free", lambda: not self._listening(), timeout=30)

    def _listening(self) -> bool:
        argv = ["ip", "netns", "exec", self.netns, "ss", "-H", "-l", "-t", "-n", "sport = :22"]
        return bool(_run(*argv).stdout.strip())

    def tick(self, now: float) -> None:
        """One look by the supervisor: take a reboot request, carry out a due one, boot a machine
        that is down and no longer held."""
        with self._busy:
            self._look(now)

    def _look(self, now: float) -> None:
        request = self.control / "request"
        if request.exists():
            what = request.read_text().strip()
            request.unlink()
            self._due = (
                None if what == "cancel" else now + (self.scheduled_delay if what != "0" else 0)
            )
        if self._due is not None and now >= self._due:
            self._due = None
            self.halt()
        if self._process is None:
            with self._lock:
                held = self._held > 0
            if not held:
                self.boot()
                self.wait_listening()


def _namespaced(netns: str) -> list[str]:
    """The prefix that runs a command as a machine's PID 1: its netns, and new mount, UTS and PID
    namespaces that die with it (so do its mounts)."""
    return [
        "ip", "netns", "exec", netns,
        "unshare", "--mount", "--uts", "--pid", "--kill-child", "--propagation", "private", "--",
    ]  # fmt: skip


def _accepting(address: str) -> bool:
    """Whether an sshd answers on ``address``:22 (its banner, not just an open port)."""
    try:
        with socket.create_connection((address, 22), timeout=1) as conn:
            conn.settimeout(2)
            return conn.recv(8).startswith(b"SSH-")
    except OSError:
        return False


# --- the fleet -------------------------------------------------------------------------------


class Fleet:
    """``count`` machines named ``m01``… (or ``names``), addresses ``10.213.N.11``…, their
    packages from ``repo`` (default: :func:`default_repo`) with ``installed`` installed by dpkg.

    Use as a context manager (a module- or session-scoped fixture): ``close()`` removes every
    machine, namespace, link and mount. ``key_file`` and ``known_hosts_file`` are what a
    ManagedInstance or an Ansible inventory names."""

    def __init__(
        self,
        directory: Path,
        count: int = 3,
        *,
        names: Sequence[str] = (),
        repo: Repo | None = None,
        installed: Sequence[Pkg] = tuple(INSTALLED),
        scheduled_delay: float = 3.0,
    ) -> None:
        if FLEET_SKIP:
            raise RuntimeError(FLEET_SKIP)
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        self.base = base_root()
        self.repo = repo if repo is not None else default_repo(directory / "repo")
        _readable(self.repo.root)
        self.claim = claim(directory)
        self.key_file = directory / "id_ed25519"
        self.known_hosts_file = directory / "known_hosts"
        self.machines: list[Machine] = []
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="netfleet", daemon=True)
        try:
            self._start(list(names) or [f"m{i:02d}" for i in range(1, count + 1)], installed)
            for machine in self.machines:
                machine.scheduled_delay = scheduled_delay
        except BaseException:
            self.close()
            raise

    @property
    def prefix(self) -> str:
        return self.claim.prefix

    @property
    def gateway(self) -> str:
        """The host's address on the fleet's bridge."""
        return f"10.213.{self.claim.subnet}.1"

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Machine:
        return next(m for m in self.machines if m.name == name)

    def _start(self, names: list[str], installed: Sequence[Pkg]) -> None:
        if len(names) > 240:
            raise ValueError("a fleet has at most 240 machines (one /24)")
        write_key(self.key_file)
        seed = _seed_layer(self, installed)
        bridge = f"{self.prefix}br"
        _run("ip", "link", "add", bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", bridge)
        _run("ip", "link", "set", bridge, "up")
        for i, name in enumerate(names):
            self.machines.append(self._machine(i, name, seed, bridge))
        self.known_hosts_file.write_text(
            "".join(
                f"{m.address} {m.host_key.export_public_key().decode().strip()}\n"
                for m in self.machines
            )
        )
        for machine in self.machines:
            machine.boot()
        for machine in self.machines:
            machine.wait_listening()
        self._supervisor.start()

    def _machine(self, index: int, name: str, seed: Path, bridge: str) -> Machine:
        directory = self.directory / "machines" / name
        (directory / "control").mkdir(parents=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        address = f"10.213.{self.claim.subnet}.{11 + index}"
        netns = f"{self.prefix}m{index}"
        veth = f"{self.prefix}v{index}"
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run("ip", "link", "set", veth, "master", bridge, "up")
        _run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        machine = Machine(self, name, address, netns, directory, host_key, seed)
        machine.fresh_root()
        return machine

    def _supervise(self) -> None:
        while not self._stop.wait(0.05):
            for machine in self.machines:
                try:
                    machine.tick(time.monotonic())
                except Exception as exc:  # one machine that fails to boot must not stop the rest
                    with (machine.directory / "supervisor.log").open("a") as log:
                        log.write(f"{exc}\n")

    def reset(self) -> None:
        """Every machine back to how the fleet started it (:meth:`Machine.reset`)."""
        for machine in self.machines:
            machine.reset()

    def close(self) -> None:
        """Stop every machine and remove the fleet's namespaces, links and mounts."""
        self._stop.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        for machine in self.machines:
            process = machine._process
            if process is not None:
                process.kill()
                process.wait()
        release(self.claim)

    # -- what clients need ------------------------------------------------------------------------

    def ssh_argv(self, user: str = "root") -> list[str]:
        """OpenSSH's client with the fleet's key and known_hosts (no host config, no agent)."""
        return [
            "ssh", "-F", "none", "-i", str(self.key_file), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts_file}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-l", user,
        ]  # fmt: skip

    def instance_yaml(
        self,
        machine: Machine,
        *,
        user: str = "root",
        labels: Mapping[str, str] | None = None,
        become: bool = False,
    ) -> str:
        """A ManagedInstance for ``machine``, reached over SSH as ``user`` (root by default),
        with ``become: sudo`` when ``become`` (``user=ADMIN, become=True``: the sudo login)."""
        labels = dict(labels or {"fleet": "e2e"})
        return (
            "apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
            f"metadata:\n  name: {machine.name}\n  labels: {json.dumps(labels)}\n"
            "spec:\n  connection:\n    type: ssh\n"
            f"    host: {machine.address}\n    port: 22\n    user: {user}\n"
            f"    identityFile: {self.key_file}\n    knownHostsFile: {self.known_hosts_file}\n"
            + ("    become: sudo\n" if become else "")
        )

    def ansible_inventory(
        self,
        path: Path,
        groups: Mapping[str, Sequence[Machine]] | None = None,
        *,
        user: str = "root",
        become: bool = False,
        children: Mapping[str, Sequence[str]] | None = None,
        ranges: bool = False,
    ) -> Path:
        """Write an INI Ansible inventory listing the machines (``groups``: name -> machines;
        default one group ``fleet`` with all) with ``ansible_host``, ``ansible_user``,
        ``ansible_become`` and ``ansible_ssh_private_key_file``; host keys are checked against
        the fleet's known_hosts. ``children``: parent group -> its child groups. ``ranges``:
        each group is one host range (``m[01:05]``: its machines' names must run on without a
        gap), each machine's ``ansible_host`` in ``host_vars/<name>.yml`` beside the file."""
        groups = groups if groups is not None else {"fleet": self.machines}
        shared = (
            f"ansible_user={user} ansible_become={'true' if become else 'false'} "
            f"ansible_ssh_private_key_file={self.key_file}"
        )
        lines = []
        for group, members in groups.items():
            lines.append(f"[{group}]")
            if ranges:
                lines.append(f"{_host_range(members)} {shared}")
                (path.parent / "host_vars").mkdir(exist_ok=True)
                for m in members:
                    (path.parent / "host_vars" / f"{m.name}.yml").write_text(
                        f"ansible_host: {m.address}\n"
                    )
            else:
                lines += [f"{m.name} ansible_host={m.address} {shared}" for m in members]
            lines.append("")
        for parent, kids in (children or {}).items():
            lines += [f"[{parent}:children]", *kids, ""]
        common = (
            f"-F none -o UserKnownHostsFile={self.known_hosts_file} -o StrictHostKeyChecking=yes"
        )
        lines += [
            "[all:vars]",
            f"ansible_ssh_common_args='{common}'",
            "ansible_python_interpreter=/usr/bin/python3",
            "",
        ]
        path.write_text("\n".join(lines))
        return path


def _host_range(machines: Sequence[Machine]) -> str:
    """``m[01:05]`` for m01…m05: Ansible's range pattern, leading zeros kept."""
    stem = machines[0].name.rstrip("0123456789")
    digits = [m.name[len(stem) :] for m in machines]
    first = int(digits[0])
    wanted = [f"{stem}{first + i:0{len(digits[0])}d}" for i in range(len(machines))]
    if [m.name for m in machines] != wanted:
        raise ValueError(f"{[m.name for m in machines]}: not one run of names for a host range")
    return f"{stem}[{digits[0]}:{digits[-1]}]"


def ansible_environment(directory: Path) -> dict[str, str]:
    """Environment for Ansible run against a fleet: its own files under ``directory`` (no
    ~/.ansible, no ansible.cfg from the working directory), no color, no retry files."""
    config = directory / "ansible.cfg"
    config.write_text("[defaults]\nhost_key_checking = True\n")
    return {
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_HOME": str(directory / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(directory / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
    }


def _readable(directory: Path) -> None:
    """apt inside the machines reads the bind-mounted repository as its _apt user."""
    for path in (directory, *directory.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _mount_overlay(target: Path, lowers: Sequence[Path], upper: Path, work: Path) -> None:
    lower = ":".join(str(p) for p in lowers)
    _run(
        "mount", "-t", "overlay", "overlay",
        "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(target),
    )  # fmt: skip


def _seed_layer(fleet: Fleet, installed: Sequence[Pkg]) -> Path:
    """The layer every machine of ``fleet`` shares above the base root: apt's source, sshd's
    configuration, the ``admin`` user and its sudoers rule, the fleet's key for root and admin,
    the reboot shims, and ``installed`` installed by the root's own dpkg."""
    seed = fleet.directory / "seed"
    upper, work, merged = seed / "upper", seed / "work", seed / "merged"
    for part in (upper, work, merged):
        part.mkdir(parents=True)
    _mount_overlay(merged, [fleet.base], upper, work)
    try:
        _configure(merged, fleet)
        _install(merged, fleet, installed)
    finally:
        _run("umount", str(merged))
    return upper


def _configure(root: Path, fleet: Fleet) -> None:
    (root / REPO_MOUNT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    suites = " ".join(sorted(fleet.repo.suites))
    (root / "etc/apt/sources.list.d/patchwarden-fleet.sources").write_text(
        f"Types: deb\nURIs: file:{REPO_MOUNT}\nSuites: {suites}\nComponents: main\nTrusted: yes\n"
    )
    (root / "etc/ssh/sshd_config").write_text(
        "Port 22\nHostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
    )
    chroot = ["chroot", str(root)]
    # "*": no password, yet not locked ("!"), which sshd without PAM would refuse.
    _run(*chroot, "useradd", "--create-home", "--shell", "/bin/bash", "--password", "*", ADMIN)
    sudoers = root / "etc/sudoers.d/patchwarden-admin"
    sudoers.write_text(f"{ADMIN} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    _run(*chroot, "visudo", "-c", "-q")
    key = (fleet.key_file.with_suffix(".pub")).read_text()
    for home, owner in (("root", "root"), (f"home/{ADMIN}", ADMIN)):
        ssh_dir = root / home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(key)
        _run(*chroot, "chown", "-R", f"{owner}:{owner}", f"/{home}/.ssh")
    _shims(root)


def _shims(root: Path) -> None:
    """reboot, shutdown and systemctl that reboot this machine only (the agent runs
    ``/sbin/shutdown -r +1``; merged /usr makes /sbin/shutdown /usr/sbin/shutdown)."""
    shims = {
        "usr/sbin/shutdown": _SHUTDOWN.format(control=CONTROL_MOUNT),
        "usr/sbin/reboot": _REBOOT.format(name="reboot", guard="", control=CONTROL_MOUNT),
        "usr/bin/systemctl": _REBOOT.format(
            name="systemctl", guard=_SYSTEMCTL_GUARD, control=CONTROL_MOUNT
        ),
    }
    for relative, text in shims.items():
        path = root / relative
        path.unlink(missing_ok=True)  # a symlink to systemctl on systemd systems
        path.write_text(text)
        path.chmod(0o755)


def _install(root: Path, fleet: Fleet, installed: Sequence[Pkg]) -> None:
    """Install ``installed`` with the root's dpkg, inside the same namespaces a machine boots in."""
    if not installed:
        return
    staging = root / "tmp/patchwarden-seed"
    staging.mkdir()
    for pkg in installed:
        (staging / pkg.filename).write_bytes(build_deb(pkg))
    debs = [f"/tmp/patchwarden-seed/{p.filename}" for p in installed]
    argv = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--", "chroot"]
    done = subprocess.run(
        [*argv, str(root), "dpkg", "-i", *debs], capture_output=True, text=True, check=False
    )
    shutil.rmtree(staging)
    if done.returncode != 0:
        raise RuntimeError(f"seeding the fleet's packages failed: {done.stdout}{done.stderr}")

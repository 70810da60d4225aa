"""Stage: agent. dnf (and yum 3) on the host or on a directory root: what is installed, which
updates are offered with their update notices, and exact-NEVRA installs. Standard library only.

Only commands and flags both dnf 4 and yum 3 accept are used (``check-update``, ``updateinfo list
updates``, ``install``, ``--assumeno``, ``--setopt``, ``-C``), so the yum path (Amazon Linux 2,
RHEL/CentOS/Oracle 7) is the same code. Notice details dnf's text output does not show (issued
date, reboot_suggested, references) and build times come from the repository metadata dnf/yum
already downloaded into the root's cache (:mod:`reconciler.agent.rpmmd`); versions are ordered
as rpm orders them (:mod:`reconciler.agent.rpmvercmp`).
"""

import fcntl
import os
import platform
import re
import shutil
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

from reconciler.agent.errors import (
    CommandFailed,
    InstallRefused,
    InvalidPin,
    PackageManagerBusy,
    RepositoryError,
)
from reconciler.agent.facts import below
from reconciler.agent.patchnames import blocked_by, rpm_names
from reconciler.agent.rootconf import private_config
from reconciler.agent.rpmmd import Metadata, by_package, iso_time, read_cache, source_name
from reconciler.agent.rpmvercmp import EvrKey, compare_evr, evr_text
from reconciler.agent.runner import Result, empty_dir, private_home, run
from reconciler.agent.sources import write_repo_files

RPM = "/usr/bin/rpm"
# rpm's own NAME, VERSION and RELEASE syntax (no whitespace, no "-" in version/release).
_NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9_.+-]*$")
_VERSION = re.compile(r"^(?:([0-9]+):)?([A-Za-z0-9._+~^]+)-([A-Za-z0-9._+~^]+)$")
_ARCH = re.compile(r"^[A-Za-z0-9_]+$")
_QUERY = "\\t".join(
    ("%{NAME}", "%{EPOCHNUM}", "%{VERSION}", "%{RELEASE}", "%{ARCH}", "%{INSTALLTIME}",
     "%{BUILDTIME}", "%{SOURCERPM}")
) + "\\n"  # fmt: skip
CLASSIFICATION = {
    "security": "Security",
    "bugfix": "Bugfix",
    "enhancement": "Enhancement",
    "newpackage": "Newpackage",
    "recommended": "Recommended",
}
# What ``needs-restarting -r`` treats as needing a reboot (dnf-plugins-core NEED_REBOOT).
CORE_PACKAGES = frozenset(
    (
        "kernel", "kernel-core", "kernel-rt", "kernel-rt-core", "glibc", "linux-firmware",
        "systemd", "dbus", "dbus-broker", "dbus-daemon", "udev", "gnutls", "openssl-libs",
        "zlib", "microcode_ctl",
    )
)  # fmt: skip
Pin = Tuple[str, str, str]  # name, arch ("" = native), [epoch:]version-release
Key = Tuple[str, str]  # name, arch


def parse_pin(text: str) -> Pin:
    """``name[:arch]=[epoch:]version-release`` -> (name, arch, evr); InvalidPin before anything
    runs, so nothing that is not a plain NEVRA ever reaches dnf's argv."""
    name, sep, evr = text.partition("=")
    arch = ""
    if ":" in name:
        name, _, arch = name.partition(":")
    if (
        not sep
        or not _NAME.match(name)
        or not _VERSION.match(evr)
        or (arch and not _ARCH.match(arch))
    ):
        raise InvalidPin(
            "{!r} is not a valid pin: expected name[:arch]=[epoch:]version-release with an RPM "
            "name and version".format(text)
        )
    return name, arch, evr


def nevra(pin: Pin) -> str:
    """dnf's spelling of an exact package: name-[epoch:]version-release[.arch]."""
    name, arch, evr = pin
    return "{}-{}{}".format(name, evr, "." + arch if arch else "")


def split_nevra(text: str) -> Optional[Tuple[str, str, str]]:
    """``name-[epoch:]version-release.arch`` -> (name, arch, evr)."""
    base, dot, arch = text.rpartition(".")
    parts = base.rsplit("-", 2)
    if not dot or len(parts) != 3:
        return None
    name, version, release = parts
    epoch = ""
    if ":" in version:
        epoch, _, version = version.partition(":")
    return name, arch, evr_text(epoch, version, release)


# The [main] options of a root's dnf.conf (yum.conf) the agent keeps: which packages, and how
# to fetch and check them. Every other option is the agent's to choose: plugins, pluginpath and
# pluginconfpath load Python from this host; cachedir, logdir, persistdir, reposdir and varsdir
# move reading and writing outside the root; protected_packages, ssl*cert/key and the like name
# files on this host.
ROOT_MAIN_OPTIONS = frozenset(
    (
        "gpgcheck", "localpkg_gpgcheck", "repo_gpgcheck", "best", "obsoletes", "strict",
        "installonly_limit", "installonlypkgs", "clean_requirements_on_remove", "exclude",
        "excludepkgs", "includepkgs", "exclude_from_weak", "install_weak_deps", "multilib_policy",
        "exactarch", "distroverpkg", "keepcache", "metadata_expire", "proxy", "proxy_username",
        "proxy_password", "proxy_auth_method", "username", "password", "timeout", "minrate",
        "throttle", "bandwidth", "retries", "ip_resolve", "max_parallel_downloads",
        "fastestmirror", "sslverify", "deltarpm", "zchunk", "module_platform_id", "debuglevel",
        "errorlevel", "diskspacecheck", "user_agent",
    )
)  # fmt: skip


class Plan(NamedTuple):
    packages: List[Dict[str, str]]  # {name, arch, version, action}
    output: str


class Dnf:
    """dnf (or yum 3, ``tool="yum"``) on the host (``root="/"``) or a directory root."""

    def __init__(self, root: str, version_id: str, tool: str = "dnf", lock_timeout: int = 60):
        self.root = os.path.abspath(root)
        self.is_host = self.root == "/"
        self.tool = tool
        self._expired = False
        self._metadata = None  # type: Optional[Metadata]
        self.lock_timeout = lock_timeout
        self.version_id = version_id
        found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
        if not found:
            raise CommandFailed("{} is not installed on this machine".format(tool))
        # Absolute path, but not resolved: a yum name for dnf must keep its name.
        self.binary = os.path.abspath(found)
        self._env = {}  # type: Dict[str, str]
        self._config = ""
        # A baseline's sources replace the machine's repositories (reposdir) for this run.
        self._sources = write_repo_files()
        if not self.is_host:
            self._prepare_root()

    def state_dir(self) -> str:
        return below(self.root, "/var/lib/patchwarden")

    def _prepare_root(self) -> None:
        # HOME (rpm reads ~/.rpmmacros, whose %(...) runs a command) and the configuration dnf
        # is run with are the agent's own, outside the root; TMPDIR inside the root.
        home = private_home()
        tmp = os.path.join(self.state_dir(), "tmp")
        os.makedirs(tmp, exist_ok=True)
        source = below(self.root, "/etc/yum.conf") if self.tool == "yum" else ""
        if not source or not os.path.isfile(source):
            source = below(self.root, "/etc/dnf/dnf.conf")
        empty = empty_dir(home)
        pinned = {"plugins": "0", "pluginpath": empty, "pluginconfpath": empty}
        self._config = private_config(
            source,
            os.path.join(home, "dnf.conf"),
            ROOT_MAIN_OPTIONS,
            pinned,
            repos=not self._sources,
        )
        self._env = {"HOME": home, "TMPDIR": tmp}

    def _base(self) -> List[str]:
        argv = [self.binary, "--setopt=skip_if_unavailable=False"]
        reposdir = self._sources or below(self.root, "/etc/yum.repos.d")
        if self.is_host:
            return argv + (["--setopt=reposdir=" + self._sources] if self._sources else [])
        return argv + [
            "--installroot=" + self.root,
            "--releasever=" + (self.version_id or "0"),
            "--setopt=reposdir=" + reposdir,
            "--config=" + self._config,
            "--noplugins",
        ]

    def command(self, *args: str, timeout: float = 1800.0) -> Result:
        return run(self._base() + list(args), self._env, timeout=timeout)

    def _rpm(self, *args: str) -> Result:
        root = [] if self.is_host else ["--root", self.root, "--dbpath", "/var/lib/rpm"]
        return run([RPM] + root + list(args), self._env, timeout=300)

    # -- scan ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Expire the metadata so the next query downloads it again; a repository that cannot
        be fetched then fails the scan (skip_if_unavailable=False) instead of going stale.
        dnf does it within the next query (``--refresh``), saving a whole dnf start; yum 3 has
        no such flag and needs its own ``clean expire-cache``."""
        if self.tool == "yum":
            self.command("-q", "clean", "expire-cache")
        else:
            self._expired = True

    def installed(self) -> List[Dict[str, object]]:
        result = self._rpm("-qa", "--queryformat", _QUERY)
        if result.rc != 0:
            raise CommandFailed("rpm -qa failed: " + _last_line(result))
        out = []  # type: List[Dict[str, object]]
        for line in sorted(result.stdout.splitlines()):
            fields = line.split("\t")
            if len(fields) < 8 or fields[0] == "gpg-pubkey":
                continue  # gpg-pubkey entries are imported keys, not packages
            name, epoch, version, release, arch, itime, btime, srpm = fields[:8]
            out.append(
                {
                    "name": name,
                    "arch": arch,
                    "version": evr_text(epoch, version, release),
                    "sourcePackage": source_name(srpm),
                    "installedTime": iso_time(itime),
                    "buildTime": iso_time(btime),
                }
            )
        return out

    def updates(self, cache_only: bool) -> List[Dict[str, object]]:
        """Every update the tool offers, with the notices that reference it."""
        extra = ["-C"] if cache_only else (["--refresh"] if self._expired else [])
        # Both queries read the same metadata; the second starts once the first has refreshed
        # it, so they never race on the cache.
        check = self.command(*(extra + ["-q", "check-update"]))
        if cache_only and "no cache for" in check.stderr:
            # Nothing downloaded yet: --no-refresh cannot mean "report nothing".
            check = self.command("-q", "check-update")
        if check.rc not in (0, 100):
            raise _repository_error(check)
        metadata = self.metadata()
        by_nevra = self._noticesby_package()
        installed = {}  # type: Dict[Key, str]
        for pkg in self.installed():
            installed[(str(pkg["name"]), str(pkg["arch"]))] = str(pkg["version"])
        out = []  # type: List[Dict[str, object]]
        for name, arch, evr, repo in parse_check_update(check.stdout):
            update = {
                "name": name,
                "arch": arch,
                "version": evr,
                "repository": repo,
                "installedVersion": installed.get((name, arch)),
                "security": False,
                "rebootSuggested": False,
            }  # type: Dict[str, object]
            meta = metadata.packages.get((name, arch, evr))
            if meta:
                update["buildTime"] = meta.get("buildTime")
                update["sourcePackage"] = meta.get("sourcePackage")
                update["requires"] = meta.get("requires") or []
            _apply_notices(update, by_nevra.get((name, arch, evr), []), metadata.notices)
            out.append({k: v for k, v in update.items() if v is not None})
        out.extend(self._shadowed(out, by_nevra, metadata))
        return out

    def _shadowed(
        self,
        updates: List[Dict[str, object]],
        by_nevra: Dict[Tuple[str, str, str], List[Tuple[str, str]]],
        metadata: Metadata,
    ) -> List[Dict[str, object]]:
        """Security versions a newer candidate that no security notice ships hides: check-update
        shows only the newest version, so a security-only baseline would see nothing to
        approve. As the apt backend does, the newest such version between the installed one and
        the candidate is reported too (``candidate: false``), when a repository still offers
        it; the engine decides."""
        shipped = {}  # type: Dict[Key, List[str]]
        for (name, arch, evr), found in by_nevra.items():
            if any(_notice_type(a, kind, metadata.notices) == "security" for a, kind in found):
                shipped.setdefault((name, arch), []).append(evr)
        wanted = {}  # type: Dict[Key, Tuple[Dict[str, object], List[str]]]
        for update in updates:
            key = (str(update["name"]), str(update["arch"]))
            installed = str(update.get("installedVersion") or "")
            if update.get("classification") == "Security" or not installed:
                continue
            between = [
                v
                for v in shipped.get(key, [])
                if compare_evr(v, installed) > 0 and compare_evr(v, str(update["version"])) < 0
            ]
            if between:
                wanted[key] = (update, between)
        if not wanted:
            return []
        offered = self.available_versions([name for name, _ in wanted])
        out = []  # type: List[Dict[str, object]]
        for key, (candidate, between) in sorted(wanted.items()):
            available = offered.get(key, {})
            versions = sorted((v for v in between if v in available), key=EvrKey, reverse=True)
            if not versions:
                continue
            version = versions[0]
            entry = dict(candidate, version=version, repository=available[version])
            entry.update(candidate=False, security=False, rebootSuggested=False)
            for field in ("buildTime", "sourcePackage", "requires"):
                entry.pop(field, None)
            meta = metadata.packages.get((key[0], key[1], version)) or {}
            entry.update({k: v for k, v in meta.items() if v is not None})
            _apply_notices(entry, by_nevra[(key[0], key[1], version)], metadata.notices)
            out.append({k: v for k, v in entry.items() if v is not None})
        return out

    def last_transaction(self) -> Dict[str, object]:
        """The tool's own record of its latest transaction (``history info``): its id, return
        code and every package it altered; {} when there is none."""
        # yum 3 shows the latest transaction without an argument; dnf needs "last".
        result = self.command(*(["history", "info"] + (["last"] if self.tool == "dnf" else [])))
        return parse_history_info(result.stdout) if result.rc == 0 else {}

    def _noticesby_package(self) -> Dict[Tuple[str, str, str], List[Tuple[str, str]]]:
        """(name, arch, evr) -> [(advisory, kind)]. A notice applies to the versions it ships:
        read from the updateinfo the tool cached, which saves a whole second dnf run; when the
        cache has none readable (zchunk, sqlite), ``updateinfo list updates`` answers instead."""
        by_nevra = by_package(self.metadata().shipped)
        if by_nevra:
            return by_nevra
        notices = self.command("-C", "-q", "updateinfo", "list", "updates")
        if notices.rc != 0:
            raise _repository_error(notices)
        for advisory, kind, target in parse_updateinfo_list(notices.stdout):
            by_nevra.setdefault(target, []).append((advisory, kind))
        return by_nevra

    def metadata(self) -> Metadata:
        """The cached repository metadata, parsed once per scan."""
        if self._metadata is None:
            self._metadata = read_cache(self.cache_dirs())
        return self._metadata

    def annotate_installed(self, installed: List[Dict[str, object]]) -> None:
        """Give installed versions their update notices (type, severity, ids, dates), as
        ``updateinfo list --installed`` would, from the cached metadata: an installed version a
        security notice shipped is an approved, INSTALLED patch, not just "other"."""
        metadata = self.metadata()
        shipped = by_package(metadata.shipped)
        if not shipped:
            return
        notices = metadata.notices
        for pkg in installed:
            found = shipped.get((str(pkg["name"]), str(pkg["arch"]), str(pkg["version"])))
            if found:
                pkg["security"] = True
                _apply_notices(pkg, found, notices)

    def cache_dirs(self) -> List[str]:
        """Directories under the cache that hold a repomd.xml (dnf: ``<repo>-<hash>/repodata``,
        yum 3: ``<basearch>/<releasever>/<repo>``)."""
        found = []  # type: List[str]
        for base in ("/var/cache/dnf", "/var/cache/yum"):
            top = below(self.root, base)
            for dirpath, _dirs, files in os.walk(top):
                if "repomd.xml" in files:
                    found.append(dirpath)
        return sorted(found)

    # -- install ---------------------------------------------------------------------------

    def plan(self, pins: List[Pin], blocked: List[str]) -> Plan:
        """What installing ``pins`` would do, from the tool's own transaction summary; refused
        when it would remove anything or install a package matching a BLOCK pattern."""
        self.wait_for_locks()
        result = self.command("--assumeno", "install", *[nevra(p) for p in pins])
        text = result.stdout + "\n" + result.stderr
        packages = parse_transaction(result.stdout)
        # --assumeno answers "no" and exits 1 ("Operation aborted."): that is success when a
        # transaction summary was printed; rc 0 means there was nothing to do.
        if result.rc != 0 and not packages:
            raise InstallRefused(
                "{} cannot install {}: {}".format(
                    self.tool, ", ".join(nevra(p) for p in pins), _errors(text)
                ),
                {"output": text[-2000:]},
            )
        removals = [p for p in packages if p["action"] in ("remove", "downgrade", "obsolete")]
        if removals:
            raise InstallRefused(
                "the install would {} {}; refused".format(
                    removals[0]["action"], ", ".join(p["name"] for p in removals)
                ),
                {"packages": removals},
            )
        for pkg in packages:
            hit = blocked_by(blocked, rpm_names(pkg["name"], pkg["arch"], pkg["version"]))
            if hit:
                raise InstallRefused(
                    "the install would install {} {}, which the baseline rejects (BLOCK {!r}); "
                    "refused before anything was installed".format(
                        pkg["name"], pkg["version"], hit
                    ),
                    {"package": pkg, "pattern": hit},
                )
        return Plan(packages, text)

    def held_dependants(self, pins: List[Pin], holds: List[str]) -> Dict[str, List[str]]:
        """Pin name -> the packages an exclusion of ``holds`` kept from the pin's dependencies.
        One dry run with the held names excluded (``--exclude``, what the versionlock plugin
        does: the agent runs the tool without plugins) and ``--skip-broken``: the tool's own
        depsolve skips each pin that needs an excluded package, and its problems name the pin
        and each provider the exclusion filtered out."""
        self.wait_for_locks()
        excluded = ["--exclude=" + pattern for pattern in holds]
        argv = excluded + ["--skip-broken", "--assumeno", "install"] + [nevra(p) for p in pins]
        result = self.command(*argv)
        return parse_filtered_out(result.stdout + "\n" + result.stderr)

    def install(self, pins: List[Pin]) -> Result:
        self.wait_for_locks()
        return self.command("-y", "install", *[nevra(p) for p in pins])

    def downgrade(self, pins: List[Pin]) -> Result:
        """Put back exact earlier versions, in one transaction (a rollback after a failed
        upgrade); ``downgrade`` is the command dnf 4 and yum 3 both have for it."""
        self.wait_for_locks()
        return self.command("-y", "downgrade", *[nevra(p) for p in pins])

    def available_versions(self, names: List[str]) -> Dict[Key, Dict[str, str]]:
        """(name, arch) -> {version: repository} of every version the enabled repositories
        offer now, as the tool sees them (``--showduplicates list``, from the metadata already
        loaded). The cache on disk would not do: it keeps repositories no longer configured."""
        result = self.command("-C", "-q", "--showduplicates", "list", *sorted(set(names)))
        out = {}  # type: Dict[Key, Dict[str, str]]
        available = result.stdout.partition("Available Packages")[2]
        for name, arch, evr, repo in parse_check_update(available):
            out.setdefault((name, arch), {})[evr] = repo
        return out

    def versions_now(self, names: List[str]) -> Dict[Key, List[str]]:
        """(name, arch) -> installed versions (several for installonly packages like kernel)."""
        if not names:
            return {}
        result = self._rpm("-q", "--queryformat", _QUERY, *sorted(set(names)))
        out = {}  # type: Dict[Key, List[str]]
        for line in result.stdout.splitlines():
            fields = line.split("\t")
            if len(fields) >= 5:
                key = (fields[0], fields[4])
                out.setdefault(key, []).append(evr_text(fields[1], fields[2], fields[3]))
        return out

    def wait_for_locks(self) -> None:
        """Wait up to lock_timeout for rpm's transaction lock and dnf's pid locks, then fail
        naming the holder (rpm and dnf would otherwise wait forever, or give up unclearly)."""
        deadline = time.time() + self.lock_timeout
        while True:
            holder = self.lock_holder()
            if holder is None:
                return
            if time.time() >= deadline:
                pid, command, path = holder
                raise PackageManagerBusy(
                    "the package manager lock {} is held by process {} ({}); waited {}s; try "
                    "again when it is done".format(path, pid, command, self.lock_timeout),
                    {"pid": pid, "command": command, "lock": path},
                )
            time.sleep(0.2)

    def lock_holder(self) -> Optional[Tuple[int, str, str]]:
        rpm_lock = below(self.root, "/var/lib/rpm/.rpm.lock")
        if os.path.exists(rpm_lock):
            pid = _fcntl_holder(rpm_lock)
            if pid:
                return pid, _comm(pid), rpm_lock
        for base in ("/var/cache/dnf", "/var/lib/dnf", "/var/run", "/run"):
            top = below(self.root, base)
            if not os.path.isdir(top):
                continue
            for entry in os.listdir(top):
                if entry.endswith("_lock.pid") or entry == "yum.pid":
                    path = os.path.join(top, entry)
                    try:
                        with open(path, encoding="ascii") as handle:
                            pid = int(handle.read().strip() or "0")
                    except (OSError, ValueError):
                        continue
                    if pid and pid != os.getpid() and os.path.exists("/proc/{}".format(pid)):
                        return pid, _comm(pid), path
        return None

    def running_kernel_outdated(self) -> bool:
        """Host only: the most recently installed kernel is not the running one (``uname -r``
        is version-release.arch on every RPM-family system)."""
        if not self.is_host:
            return False
        result = self._rpm(
            "-q", "--queryformat", "%{INSTALLTIME} %{VERSION}-%{RELEASE}.%{ARCH}\\n",
            "kernel", "kernel-core",
        )  # fmt: skip
        installed = []  # type: List[Tuple[int, str]]
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit():
                installed.append((int(fields[0]), fields[1]))
        return bool(installed) and max(installed)[1] != platform.release()


def _apply_notices(
    update: Dict[str, object], found: List[Tuple[str, str]], notices: Dict[str, Dict[str, object]]
) -> None:
    """Fill classification, severity, ids and dates from the notices that reference the
    update; the most severe security notice wins the classification."""
    if not found:
        return
    key = (update["name"], update["arch"], update["version"])
    ids, cves, bugs = [], [], []  # type: List[str], List[str], List[str]
    issued, updated = [], []  # type: List[str], List[str]
    best = None  # type: Optional[Tuple[int, str, Optional[str]]]
    for advisory, kind in found:
        detail = notices.get(advisory, {})
        notice_type = _notice_type(advisory, kind, notices)
        severity = detail.get("severity") or _severity_from_list(kind)
        rank = (0 if notice_type == "security" else 1) * 10 + _SEVERITY_RANK.get(
            str(severity or "").lower(), 9
        )
        if best is None or rank < best[0]:
            best = (rank, notice_type, str(severity) if severity else None)
        ids.append(advisory)
        cves.extend(c for c in _strs(detail.get("cves")) if c not in cves)
        bugs.extend(b for b in _strs(detail.get("bugzillaIds")) if b not in bugs)
        if detail.get("issued"):
            issued.append(str(detail["issued"]))
        if detail.get("updated"):
            updated.append(str(detail["updated"]))
        reboot = detail.get("rebootSuggested")
        if isinstance(reboot, set) and key in reboot:
            update["rebootSuggested"] = True
    assert best is not None
    update["classification"] = CLASSIFICATION.get(best[1], best[1].title() or None)
    update["severity"] = best[2]
    update["advisoryIds"] = sorted(set(ids))
    update["cves"] = cves
    update["bugzillaIds"] = bugs
    # SSM counts from the notice's release date (updated date on Amazon Linux): the latest of
    # the notices' dates, so a re-issued notice does not approve early. A missing date stays
    # missing: the engine owns the fallbacks (issued, then build time).
    update["issued"] = max(issued) if issued else None
    update["updated"] = max(updated) if updated else None
    update["security"] = True


_SEVERITY_RANK = {"critical": 0, "important": 1, "moderate": 2, "medium": 2, "low": 3}


def _strs(value: object) -> List[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _notice_type(advisory: str, kind: str, notices: Dict[str, Dict[str, object]]) -> str:
    return str(notices.get(advisory, {}).get("type") or _type_from_list(kind))


def _type_from_list(kind: str) -> str:
    return "security" if kind.endswith("/Sec.") or kind == "security" else kind.lower()


def _severity_from_list(kind: str) -> Optional[str]:
    return kind.split("/")[0] if kind.endswith("/Sec.") and kind != "/Sec." else None


def parse_check_update(text: str) -> List[Tuple[str, str, str, str]]:
    """``name.arch  evr  repo`` rows of check-update (a long name wraps onto its own line, so
    the text is read as a stream of tokens); stops at "Obsoleting Packages"."""
    tokens = []  # type: List[str]
    for line in text.splitlines():
        if line.startswith("Obsoleting") or line.startswith("Security:"):
            if line.startswith("Obsoleting"):
                break
            continue
        tokens.extend(line.split())
    rows = []  # type: List[Tuple[str, str, str, str]]
    i = 0
    while i + 2 < len(tokens):
        first, evr, repo = tokens[i : i + 3]
        name, dot, arch = first.rpartition(".")
        if dot and name and "-" in evr and _VERSION.match(evr):
            rows.append((name, arch, evr_text(*_split_evr(evr)), repo))
            i += 3
        else:
            i += 1
    return rows


def _split_evr(evr: str) -> Tuple[str, str, str]:
    match = _VERSION.match(evr)
    assert match is not None
    return match.group(1) or "", match.group(2), match.group(3)


def parse_updateinfo_list(text: str) -> List[Tuple[str, str, Tuple[str, str, str]]]:
    """``ADVISORY  Severity/Sec.|type  NEVRA`` rows -> (advisory, kind, (name, arch, evr))."""
    rows = []  # type: List[Tuple[str, str, Tuple[str, str, str]]]
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        parsed = split_nevra(fields[-1])
        if parsed:
            rows.append((fields[0], fields[1], parsed))
    return rows


_SECTIONS = (
    ("removing", "remove"),
    ("erasing", "remove"),
    ("downgrading", "downgrade"),
    ("obsoleting", "obsolete"),
    ("replacing", "obsolete"),
    ("reinstalling", "reinstall"),
    ("upgrading", "upgrade"),
    ("updating", "upgrade"),
    ("installing", "install"),
)


def parse_transaction(text: str) -> List[Dict[str, str]]:
    """The packages of a transaction summary table (dnf 4 and yum 3 print the same columns:
    Package Arch Version Repository Size, under "Installing:", "Upgrading:", "Removing:"...)."""
    out = []  # type: List[Dict[str, str]]
    action = None  # type: Optional[str]
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("=") or stripped.startswith("Package "):
            continue
        if stripped.startswith("Transaction Summary"):
            break
        if stripped.endswith(":") and not line.startswith(" "):
            lowered = stripped.lower()
            action = next((a for word, a in _SECTIONS if lowered.startswith(word)), None)
            continue
        if action is None or not line.startswith(" "):
            continue
        fields = (pending + " " + stripped).split()
        if len(fields) < 4:
            pending = " ".join(fields)  # a long name wraps onto its own line
            continue
        pending = ""
        if fields[0] == "replacing":
            out.append({"name": fields[1].rsplit(".", 1)[0], "arch": "", "version": fields[2],
                        "action": "obsolete"})  # fmt: skip
            continue
        out.append({"name": fields[0], "arch": fields[1], "version": fields[2], "action": action})
    return out


# "Problem 2: package demo-tool-1.1-1.noarch requires demo-lib >= 1.0-2, but none of the
# providers can be installed", then "  - package demo-lib-1.0-2.noarch is filtered out by exclude
# filtering" for each provider an exclusion hid (dnf 4's wording).
_PROBLEM = re.compile(r"^\s*Problem(?: \d+)?: package (\S+) requires ")
_FILTERED = re.compile(r"^\s*- package (\S+) is filtered out by exclude filtering")


def parse_filtered_out(text: str) -> Dict[str, List[str]]:
    """Name of the package each depsolve problem is about -> the names of the packages an
    exclusion filtered out of its dependencies (an indirect dependency counts too)."""
    out = {}  # type: Dict[str, List[str]]
    subject = None  # type: Optional[str]
    for line in text.splitlines():
        problem = _PROBLEM.match(line)
        if problem or line.strip().startswith("Problem"):
            parsed = split_nevra(problem.group(1)) if problem else None
            subject = parsed[0] if parsed else None
            continue
        filtered = _FILTERED.match(line)
        parsed = split_nevra(filtered.group(1)) if filtered else None
        if subject and parsed and parsed[0] not in out.get(subject, []):
            out.setdefault(subject, []).append(parsed[0])
    return out


def _fcntl_holder(path: str) -> Optional[int]:
    """The pid holding a POSIX lock on ``path`` (from /proc/locks), or None when it is free."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines, inode = [], 0
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[5].split(":")[-1] == str(inode):
            try:
                return int(fields[4])
            except ValueError:
                continue
    if not lines:
        # No /proc/locks: probe by taking the lock ourselves and letting it go at once.
        try:
            with open(path, "a") as handle:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(handle, fcntl.LOCK_UN)
        except OSError:
            return -1
    return None


def _comm(pid: int) -> str:
    try:
        with open("/proc/{}/comm".format(pid), encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def _errors(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error") or "No match" in ln or "Problem" in ln]
    return " / ".join(errors[:5]) or (lines[-1] if lines else "no output")


def _last_line(result: Result) -> str:
    return _errors(result.stderr + "\n" + result.stdout)


_REPO = re.compile(r"repo(?:sitory)? '?([^' :]+)'?")


def _repository_error(result: Result) -> Exception:
    text = result.stderr + "\n" + result.stdout
    match = re.search(r"(?:metadata for repo|repo) '([^']+)'", text) or _REPO.search(text)
    if match:
        return RepositoryError(
            "repository {} could not be read: {}".format(match.group(1), _errors(text)),
            {"repository": match.group(1)},
        )
    return CommandFailed("{} failed (exit {}): {}".format(result.argv[0], result.rc, _errors(text)))


_ALTERED = re.compile(r"^\s+(\S+(?: \S+)?)\s+(\S+)\s+(@\S+)\s*$")


def parse_history_info(text: str) -> Dict[str, object]:
    """``history info``: {"id", "returnCode", "altered": [{"action", "package", "from"}]}."""
    out = {}  # type: Dict[str, object]
    altered = []  # type: List[Dict[str, str]]
    in_altered = False
    for line in text.splitlines():
        if line.startswith("Transaction ID"):
            out["id"] = line.split(":", 1)[1].strip()
        elif line.startswith("Return-Code"):
            out["returnCode"] = line.split(":", 1)[1].strip()
        elif line.startswith("Packages Altered"):
            in_altered = True
        elif in_altered:
            match = _ALTERED.match(line)
            if match:
                altered.append(
                    {
                        "action": match.group(1),
                        "package": match.group(2),
                        "from": match.group(3).lstrip("@"),
                    }
                )
            elif line.strip() and not line.startswith(" "):
                in_altered = False
    if out:
        out["altered"] = altered
    return out

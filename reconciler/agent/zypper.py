"""Stage: agent. zypper and rpm on SUSE systems (SLES 12/15, openSUSE Leap). Standard library only.

Everything runs as argv lists through :mod:`reconciler.agent.runner`. Machine-readable output comes
from ``zypper --xmlout``; the one thing it does not give as data (the packages a patch updates) is
read from ``info -t patch``, whose XML mode wraps the text view in ``<message>`` elements.

A directory root (``--root DIR``) gets a private ``HOME`` outside the root
(:func:`reconciler.agent.runner.private_home`: an ``.rpmmacros`` from the root would run its
``%(...)`` on this host) and ``ZYPP_LOGFILE`` inside the root: without it zypper appends to the
host's /var/log/zypper.log. ``ZYPP_CONF`` names the agent's own zypp.conf, with only the root's
options in ROOT_ZYPP_OPTIONS (:mod:`reconciler.agent.rootconf`); libzypp runs no commit plugin in
a root.
GPG checking is left as each repository configures it: the agent never passes ``--no-gpg-checks``.
"""

import glob
import os
import re
import xml.etree.ElementTree as ET
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from reconciler.agent.errors import (
    CommandFailed,
    InstallRefused,
    InvalidPin,
    PackageManagerBusy,
    RepositoryError,
)
from reconciler.agent.facts import below
from reconciler.agent.rootconf import private_config
from reconciler.agent.rpmmd import iso_time, updateinfo_packages
from reconciler.agent.rpmvercmp import evr_text
from reconciler.agent.runner import Result, Running, private_home, run
from reconciler.agent.sources import write_repo_files

ZYPPER = "/usr/bin/zypper"
RPM = "/usr/bin/rpm"

# zypper's documented exit codes (zypper(8), "EXIT CODES").
EXIT_LOCKED = 7
EXIT_INFO_UPDATES_NEEDED = 100
EXIT_INFO_SECURITY_NEEDED = 101
EXIT_INFO_REBOOT_NEEDED = 102
EXIT_INFO_RESTART_NEEDED = 103  # zypper itself was updated: run it again
EXIT_INFO_CAP_NOT_FOUND = 104
EXIT_INFO_RPM_SCRIPT_FAILED = 107
_OK_CODES = (
    0,
    EXIT_INFO_UPDATES_NEEDED,
    EXIT_INFO_SECURITY_NEEDED,
    EXIT_INFO_REBOOT_NEEDED,
    EXIT_INFO_RESTART_NEEDED,
    EXIT_INFO_RPM_SCRIPT_FAILED,
)

# Patch category (updateinfo type) -> SSM's SUSE classification (reference §1.4). libzypp reads
# "bugfix" as recommended and "enhancement" as optional, so do we.
CLASSIFICATIONS = {
    "security": "Security",
    "recommended": "Recommended",
    "bugfix": "Recommended",
    "optional": "Optional",
    "enhancement": "Optional",
    "feature": "Feature",
    "document": "Document",
    "yast": "Yast",
}
SEVERITIES = {
    "critical": "Critical",
    "important": "Important",
    "moderate": "Moderate",
    "low": "Low",
}

_ARCHES = {
    "noarch",
    "x86_64",
    "i386",
    "i486",
    "i586",
    "i686",
    "aarch64",
    "ppc64le",
    "ppc64",
    "s390x",
    "armv7hl",
    "armv6hl",
    "riscv64",
    "src",
    "nosrc",
}
_NAME = r"[A-Za-z0-9_+][A-Za-z0-9_.+-]*"
_PIN = re.compile(
    r"^(?P<name>" + _NAME + r")(?::(?P<arch>[A-Za-z0-9_]+))?="
    r"(?P<evr>(?:[0-9]+:)?[A-Za-z0-9._+~^]+-[A-Za-z0-9._+~^]+)$"
)

Pin = Tuple[str, str, str]  # name, arch ("" = native), [epoch:]version-release


def parse_pin(text: str) -> Pin:
    """``name[:arch]=[epoch:]version-release``; InvalidPin before any command runs."""
    match = _PIN.match(text or "")
    if not match:
        raise InvalidPin(
            "invalid pin {!r}: expected name[:arch]=[epoch:]version-release".format(text),
            {"pin": text},
        )
    return match.group("name"), match.group("arch") or "", match.group("evr")


def zypper_spec(pin: Pin) -> str:
    """The pin as a zypper capability: ``name.arch=evr`` or ``name=evr``."""
    name, arch, evr = pin
    return "{}{}={}".format(name, "." + arch if arch else "", evr)


# The zypp.conf options of a root the agent keeps: how to solve, download and install. Every
# other one is left out: update.messages.notify names a command, credentials.*, vendordir,
# locksfile.path and solver.checkSystemFile* read files on this host, history.logfile, cachedir
# and the like move writes, and commit.* and techpreview.* change how libzypp runs rpm.
ROOT_ZYPP_OPTIONS = frozenset(
    (
        "solver.onlyRequires", "solver.allowVendorChange", "solver.dupAllowVendorChange",
        "solver.dupAllowDowngrade", "solver.dupAllowNameChange", "solver.dupAllowArchChange",
        "solver.cleandepsOnRemove", "solver.upgradeRemoveDroppedPackages", "solver.focus",
        "multiversion", "multiversion.kernels", "rpm.install.excludedocs", "download.use_deltarpm",
        "download.use_deltarpm.always", "download.max_concurrent_connections",
        "download.min_download_speed", "download.max_download_speed", "download.max_silent_tries",
        "download.transfer_timeout", "download.connect_timeout", "repo.refresh.delay",
        "repo.refresh.locales", "arch",
    )
)  # fmt: skip


class Patch(NamedTuple):
    name: str
    status: str  # needed, optional (applicable but not needed by default)
    category: str
    severity: str
    issued: Optional[str]  # YYYY-MM-DDTHH:MM:SSZ (UTC)
    cves: List[str]
    bugzilla: List[str]
    reboot: bool  # restart="true": the patch suggests a reboot
    interactive: bool  # zypper --non-interactive skips it unless --with-interactive
    repository: str


class Update(NamedTuple):
    name: str
    arch: str
    version: str
    installed_version: str
    repository: str


class Zypper:
    """zypper and rpm for the system at ``root``."""

    def __init__(self, root: str, lock_timeout: int = 60) -> None:
        self.root = os.path.abspath(root or "/")
        self.is_host = self.root == "/"
        self.lock_timeout = lock_timeout
        self._env = {"ZYPP_LOCK_TIMEOUT": str(lock_timeout)}  # libzypp waits this long for its lock
        # A baseline's sources replace the machine's repositories for this run (sources.py).
        self._sources = write_repo_files()
        if not self.is_host:
            # HOME outside the root: rpm reads ~/.rpmmacros, whose %(...) runs a command here.
            state = below(self.root, "/var/lib/patchwarden")
            os.makedirs(state, exist_ok=True)
            home = private_home()
            # zypper --root reads the root's zypp.conf unless ZYPP_CONF names one.
            conf = private_config(
                below(self.root, "/etc/zypp/zypp.conf"),
                os.path.join(home, "zypp.conf"),
                ROOT_ZYPP_OPTIONS,
                {},
            )
            self._env.update(
                {
                    "HOME": home,
                    "TMPDIR": state,
                    "ZYPP_CONF": conf,
                    "ZYPP_LOGFILE": os.path.join(state, "zypper.log"),
                }
            )

    def _argv(self, *args: str) -> List[str]:
        argv = [ZYPPER, "--non-interactive"]
        if not self.is_host:
            argv += ["--root", self.root]
        if self._sources:
            argv += ["--reposd-dir", self._sources]
        return argv + list(args)

    def zypper(self, *args: str, timeout: float = 1800.0) -> Result:
        result = run(self._argv(*args), self._env, timeout=timeout)
        if result.rc == EXIT_LOCKED:
            raise PackageManagerBusy(
                "zypper is locked by another process (waited {}s): {}".format(
                    self.lock_timeout, _last_line(result.stdout + result.stderr)
                ),
                {"holder": _lock_holder(self.root)},
            )
        return result

    def rpm_query(self) -> Running:
        argv = [RPM, "--dbpath", "/var/lib/rpm", "-qa", "--qf", _RPM_FORMAT]
        if not self.is_host:
            argv[1:1] = ["--root", self.root]
        return Running(argv, self._env)

    # -- scan --------------------------------------------------------------------------------

    def refresh(self) -> None:
        """``zypper ref``; any repository that fails fails the scan, named."""
        result = self.zypper("--xmlout", "refresh")
        if result.rc == 0:
            return
        failed = _refresh_failures(_messages(result))
        raise RepositoryError(
            "could not refresh repositor{} {}".format(
                "y" if len(failed) == 1 else "ies", ", ".join(failed) or "(unknown)"
            ),
            {"repositories": failed, "output": _messages(result)[-2000:]},
        )

    def installed(self) -> List[Dict[str, object]]:
        result = self.rpm_query().result(300)
        if result.rc != 0:
            raise CommandFailed("rpm -qa failed: " + _last_line(result.stderr))
        return parse_rpm_query(result.stdout)

    def updates_and_patches(self, refresh: bool) -> Tuple[List[Update], List[Patch]]:
        """(refresh,) list-updates and list-patches from ONE zypper run (its shell reads the
        commands from standard input), so the repositories and the rpm database are loaded
        once. A repository that fails to refresh fails the scan, named, as ``refresh()`` does."""
        commands = ("refresh\n" if refresh else "") + "list-updates\nlist-patches\n"
        args = ("--xmlout", "shell") if refresh else ("--no-refresh", "--xmlout", "shell")
        result = run(self._argv(*args), self._env, timeout=1800, stdin=commands)
        if refresh:
            failed = _refresh_failures(_messages(result))
            if failed:
                raise RepositoryError(
                    "could not refresh repositor{} {}".format(
                        "y" if len(failed) == 1 else "ies", ", ".join(failed)
                    ),
                    {"repositories": failed, "output": _messages(result)[-2000:]},
                )
        if result.rc == EXIT_LOCKED:
            raise PackageManagerBusy(
                "zypper is locked by another process: {}".format(
                    _last_line(result.stdout + result.stderr)
                ),
                {"holder": _lock_holder(self.root)},
            )
        if result.rc not in _OK_CODES or "<update-status" not in result.stdout:
            if refresh:
                self.refresh()  # the plain commands report what went wrong
            return self.updates(), self.patches()
        return parse_updates(result.stdout), parse_patches(result.stdout)

    def updates(self) -> List[Update]:
        result = self.zypper("--no-refresh", "--xmlout", "list-updates")
        _check(result, "list-updates")
        return parse_updates(result.stdout)

    def patches(self) -> List[Patch]:
        result = self.zypper("--no-refresh", "--xmlout", "list-patches")
        _check(result, "list-patches")
        return parse_patches(result.stdout)

    def patch_packages(self, names: List[str]) -> Dict[str, List[Tuple[str, str, str]]]:
        """patch -> [(package, arch or "", version)] the patch updates to."""
        if not names:
            return {}
        # zypper keeps the repositories' rpm-md metadata: reading updateinfo from it saves a
        # whole zypper run; `info -t patch` remains the fallback for what the cache lacks.
        raw = below(self.root, "/var/cache/zypp/raw")
        dirs = sorted(glob.glob(os.path.join(raw, "*", "repodata")))
        cached = updateinfo_packages(dirs)
        if all(name in cached for name in names):
            return {name: cached[name] for name in names}
        result = self.zypper("--no-refresh", "--xmlout", "info", "-t", "patch", *names)
        _check(result, "info -t patch")
        return parse_patch_info(_messages(result))

    # -- install -----------------------------------------------------------------------------

    def install(self, specs: List[str], dry_run: bool) -> Result:
        args = ["--no-refresh", "--xmlout", "install", "--no-recommends", "--oldpackage"]
        if dry_run:
            args.append("--dry-run")
        return self.zypper(*(args + ["--"] + specs))

    def rpm_versions(self, names: List[str]) -> Dict[Tuple[str, str], str]:
        """(name, arch) -> version installed now, for ``names``."""
        return {
            (str(p["name"]), str(p["arch"])): str(p["version"])
            for p in self.installed()
            if p["name"] in names
        }

    def record_reboot(self, why: List[str]) -> None:
        """A directory root never reboots: leave the flag SUSE uses (/run/reboot-needed)."""
        path = below(self.root, "/run/reboot-needed")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(w + "\n" for w in why))

    def reboot_pending(self) -> bool:
        return os.path.exists(below(self.root, "/run/reboot-needed"))


_RPM_FORMAT = (
    "%{NAME}\\t%{EPOCHNUM}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{INSTALLTIME}\\t%{SOURCERPM}"
    "\\t%{BUILDTIME}\\n"
)


def parse_rpm_query(text: str) -> List[Dict[str, object]]:
    out = []  # type: List[Dict[str, object]]
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 8 or fields[0].startswith("gpg-pubkey"):
            continue  # gpg-pubkey entries are imported keys, not packages
        name, epoch, version, release, arch, when, source, built = fields
        pkg = {
            "name": name,
            "arch": arch,
            "version": evr_text(epoch, version, release),
            "installedTime": iso_time(when),
            "buildTime": iso_time(built),
        }  # type: Dict[str, object]
        if source and source != "(none)":
            pkg["sourcePackage"] = re.sub(r"-[^-]+-[^-]+\.(no)?src\.rpm$", "", source)
        out.append({k: v for k, v in pkg.items() if v is not None})
    return out


def _xml(text: str, what: str) -> ET.Element:
    start = text.find("<?xml")
    try:
        return ET.fromstring(text[start:] if start >= 0 else text)
    except ET.ParseError as exc:
        raise CommandFailed("zypper {} printed XML we cannot read: {}".format(what, exc)) from exc


def parse_updates(text: str) -> List[Update]:
    root = _xml(text, "list-updates")
    out = []
    for node in root.iter("update"):
        if node.get("kind") != "package":
            continue
        source = node.find("source")
        out.append(
            Update(
                name=node.get("name", ""),
                arch=node.get("arch", ""),
                version=node.get("edition", ""),
                installed_version=node.get("edition-old", ""),
                repository=source.get("alias", "") if source is not None else "",
            )
        )
    return out


def parse_patches(text: str) -> List[Patch]:
    root = _xml(text, "list-patches")
    out = []
    for node in root.iter("update"):
        if node.get("kind") != "patch":
            continue
        date = node.find("issue-date")
        # The whole time: SSM's approve-after-days counts 24-hour periods from it.
        issued = iso_time(date.get("time_t", "") if date is not None else "")
        issues = node.findall("issue-list/issue")
        source = node.find("source")
        out.append(
            Patch(
                name=node.get("name", ""),
                status=node.get("status", ""),
                category=node.get("category", ""),
                severity=node.get("severity", ""),
                issued=issued,
                cves=[i.get("id", "") for i in issues if i.get("type") == "cve"],
                bugzilla=[i.get("id", "") for i in issues if i.get("type") == "bugzilla"],
                reboot=node.get("restart") == "true",
                interactive=node.get("interactive") == "true",
                repository=source.get("alias", "") if source is not None else "",
            )
        )
    return out


def parse_patch_info(text: str) -> Dict[str, List[Tuple[str, str, str]]]:
    """The packages each patch updates, from its ``Conflicts`` (``pkg[.arch] < version``):
    a SUSE patch conflicts with every older version of the packages it ships."""
    out = {}  # type: Dict[str, List[Tuple[str, str, str]]]
    current = None  # type: Optional[str]
    in_conflicts = False
    for line in text.splitlines():
        field = re.match(r"^([A-Z][A-Za-z ]*?)\s*:\s?(.*)$", line)
        if field:
            key, value = field.group(1), field.group(2).strip()
            in_conflicts = key == "Conflicts"
            if key == "Name":
                current = value
                out.setdefault(current, [])
            if in_conflicts and current is not None and not value.startswith("["):
                out[current].extend(_conflicts(value))
        elif in_conflicts and current is not None and line.startswith(" "):
            out[current].extend(_conflicts(line.strip()))
        else:
            in_conflicts = False
    return out


def _conflicts(text: str) -> Iterator[Tuple[str, str, str]]:
    match = re.match(r"^(\S+)\s*<\s*(\S+)$", text)
    if not match:
        return
    name, version = match.group(1), match.group(2)
    arch = ""
    if "." in name and name.rsplit(".", 1)[1] in _ARCHES:
        name, arch = name.rsplit(".", 1)
    yield name, arch, version


def parse_install_summary(text: str) -> Dict[str, List[Dict[str, str]]]:
    """kind (to-install, to-upgrade, to-downgrade, to-reinstall, to-remove) -> solvables."""
    out = {}  # type: Dict[str, List[Dict[str, str]]]
    start = text.find("<install-summary")
    end = text.find("</install-summary>")
    if start < 0 or end < 0:
        return out
    summary = ET.fromstring(text[start : end + len("</install-summary>")])
    for group in summary:
        out[group.tag] = [dict(s.attrib) for s in group.iter("solvable")]
    return out


# "not installable providers: demo-lib-1.0-2.noarch[demo-updates]": a solvable and its repository.
_PROVIDER = re.compile(r"(" + _NAME + r")-[^\s\[-]+-[^\s\[-]+\.[A-Za-z0-9_]+\[")


def solver_problem_providers(result: Result) -> List[str]:
    """The names of the providers a solver problem says cannot be installed: zypper
    --non-interactive cancels at a problem (exit 4) and tells it in a prompt's description
    ("Problem: X requires Y, but this requirement cannot be provided / not installable
    providers: ..."), whose solutions are left out."""
    start = result.stdout.find("<?xml")
    try:
        root = ET.fromstring(result.stdout[start:]) if start >= 0 else None
    except ET.ParseError:
        return []
    names = []  # type: List[str]
    for prompt in root.iter("prompt") if root is not None else []:
        problem = (prompt.findtext("description") or "").split(" Solution ")[0]
        for line in problem.splitlines():
            if "providers:" in line or (line.startswith("   ") and "[" in line):
                names.extend(n for n in _PROVIDER.findall(line) if n not in names)
    return names


def errors(result: Result) -> List[str]:
    """zypper's error messages."""
    found = []  # type: List[str]
    start = result.stdout.find("<?xml")
    try:
        root = ET.fromstring(result.stdout[start:]) if start >= 0 else None
    except ET.ParseError:
        root = None
    if root is not None:
        found = [(m.text or "").strip() for m in root.iter("message") if m.get("type") == "error"]
    found += [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return [f for f in found if "use Alien" not in f and "assuming you know" not in f]


def _refresh_failures(messages: str) -> List[str]:
    """Repositories zypper says it could not refresh."""
    failed = sorted(set(re.findall(r"Repository '([^']+)' is invalid", messages)))
    failed += sorted(set(re.findall(r"Skipping repository '([^']+)'", messages)) - set(failed))
    return failed


def _messages(result: Result) -> str:
    start = result.stdout.find("<?xml")
    try:
        root = ET.fromstring(result.stdout[start:]) if start >= 0 else None
    except ET.ParseError:
        return result.stdout + result.stderr
    if root is None:
        return result.stdout + result.stderr
    return "\n".join((m.text or "") for m in root.iter("message")) + "\n" + result.stderr


def _check(result: Result, what: str) -> None:
    if result.rc not in _OK_CODES:
        raise CommandFailed(
            "zypper {} failed (exit {}): {}".format(what, result.rc, " / ".join(errors(result)))
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _lock_holder(root: str) -> str:
    """Who holds libzypp's lock (``/run/zypp.pid`` in the root)."""
    try:
        with open(below(root, "/run/zypp.pid"), encoding="ascii") as handle:
            pid = handle.read().strip()
        with open("/proc/{}/comm".format(pid), encoding="utf-8") as handle:
            return "{} (pid {})".format(handle.read().strip(), pid)
    except (OSError, ValueError):
        return "unknown"


def refuse_unknown(result: Result) -> None:
    """A pin that names no existing version: refused, naming it."""
    missing = [e for e in errors(result) if e.startswith("No provider of")]
    if missing or result.rc == EXIT_INFO_CAP_NOT_FOUND:
        raise InstallRefused(
            "zypper cannot find: " + (" / ".join(missing) or " / ".join(errors(result))),
            {"errors": errors(result)},
        )

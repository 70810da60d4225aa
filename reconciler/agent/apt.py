"""Stage: agent. Debian-family systems through apt and dpkg: refresh, inventory, exact-pin install.

apt decides candidates (pinning included): we only ask it — ``apt-cache policy`` for installed and
candidate versions with their package files, ``apt-cache policy`` without arguments for what each
package file's Release says, ``apt-cache show`` for Priority/Section/Source/Depends. A system rooted
at a directory is driven through ``APT_CONFIG`` pointing at the agent's own file (outside the
root), so none of the host's apt configuration is read, and dpkg gets ``--root``/``--log`` so
nothing is written outside it (shared/testbeds/apt.md §2.3). A root supplies data only (sources,
preferences, keyrings, dpkg's status): never its apt.conf(.d), whose hooks would run on this host
(:func:`hardened_config`), nor a download method that is a path (``Apt._check_methods``).
"""

import fnmatch
import os
import re
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

from reconciler.agent.errors import (
    CommandFailed,
    InstallRefused,
    InvalidPin,
    PackageManagerBusy,
    RecoveryFailed,
    RepositoryError,
    UntrustedRoot,
)
from reconciler.agent.facts import below, reboot_required
from reconciler.agent.patchnames import blocked_by
from reconciler.agent.runner import Result, Running, empty_dir, note, private_dir, run
from reconciler.agent.sources import write_apt_parts
from reconciler.agent.stamps import utc_stamp

APT_GET = "/usr/bin/apt-get"
APT_CACHE = "/usr/bin/apt-cache"
DPKG = "/usr/bin/dpkg"
DPKG_QUERY = "/usr/bin/dpkg-query"

# Debian policy §5.6.1 and §5.6.12: what a package name and a version may contain.
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
VERSION = re.compile(r"^([0-9]+:)?[0-9][A-Za-z0-9.+~-]*$")
ARCH = re.compile(r"^[a-z0-9-]+$")
# A download method's name (http, https, file, mirror+http, tor+https...): never a path.
_METHOD = re.compile(r"^[a-z0-9][a-z0-9+-]*$")

_QUERY_FORMAT = (
    "\\t".join(
        [
            "${Package}",
            "${Architecture}",
            "${Version}",
            "${db:Status-Abbrev}",
            "${Priority}",
            "${Section}",
            "${Source}",
        ]
    )
    + "\\n"
)
_LOCK_HOLDER = re.compile(r"held by process (\d+) \(([^)]*)\)")
_INSTALLED_STATES = {"i", "W", "t"}  # installed, triggers-awaited, triggers-pending
_BROKEN_STATES = {"U": "unpacked", "F": "half-configured", "H": "half-installed"}


class PackageFile(NamedTuple):
    """What a package file's Release says (``apt-cache policy`` 'release' line)."""

    origin: str
    label: str
    suite: str
    codename: str
    component: str
    site: str


class VersionInfo(NamedTuple):
    version: str
    files: List[str]  # keys into the package-file table


class Plan(NamedTuple):
    """What apt's simulation says an install would do."""

    actions: List[Dict[str, object]]
    dependencies: List[Dict[str, str]]  # packages pulled in beyond the pins


class PolicyEntry(NamedTuple):
    installed: Optional[str]
    candidate: Optional[str]
    versions: List[VersionInfo]


def is_security(files: List[PackageFile]) -> bool:
    """The version is offered by a security pocket: Debian's <codename>-security (label
    Debian-Security) or Ubuntu's <codename>-security suite."""
    return any(
        f.codename.endswith("-security")
        or f.suite.endswith("-security")
        or f.label == "Debian-Security"
        for f in files
    )


def scripts_run_on_host(root: str) -> bool:
    """Whether dpkg would run the maintainer scripts of ``root``'s packages on this host: it
    runs them chrooted through the root's own ``/bin/sh``, so a root without one needs
    ``--force-script-chrootless`` (scripts on the host, as root, with ``DPKG_ROOT`` set)."""
    root = os.path.abspath(root)
    return root != "/" and not os.path.exists(below(root, "/bin/sh"))


def check_scripts_trusted(root: str, trusted: bool) -> None:
    """UntrustedRoot, before the root is touched, for an install whose maintainer scripts would
    run on this host without the operator's ``--trust-root-scripts``: whoever controls the root
    or its repositories would run code here."""
    if trusted or not scripts_run_on_host(root):
        return
    raise UntrustedRoot(
        "{}: the root has no /bin/sh, so dpkg would run its packages' maintainer scripts on "
        "this host as root (--force-script-chrootless), not inside the root; nothing was "
        "changed. Give the root a /bin/sh so they run chrooted, or, only if you trust the root "
        "and its repositories, install with --trust-root-scripts (patchctl: "
        "PATCHWARDEN_TRUST_ROOT_SCRIPTS=1, or `patchctl install --trust-root-scripts`)".format(
            os.path.abspath(root)
        ),
        {"root": os.path.abspath(root)},
    )


def parse_pin(text: str) -> Tuple[str, str, str]:
    """``name[:arch]=version`` -> (name, arch, version); InvalidPin before anything runs."""
    name, sep, version = text.partition("=")
    arch = ""
    if ":" in name:
        name, _, arch = name.partition(":")
    if (
        not sep
        or not PACKAGE_NAME.match(name)
        or not VERSION.match(version)
        or (arch and not ARCH.match(arch))
    ):
        raise InvalidPin(
            "{!r} is not a valid pin: expected name=version with a Debian package name "
            "([a-z0-9][a-z0-9+.-]+) and version ([epoch:]upstream[-revision])".format(text)
        )
    return name, arch, version


class Apt:
    """One Debian-family system: the host (``root="/"``) or a system rooted at a directory."""

    def __init__(
        self,
        root: str = "/",
        lock_timeout: int = 60,
        http_timeout: int = 20,
        private_state: Optional[str] = None,
        trust_root_scripts: bool = False,
    ) -> None:
        self.root = os.path.abspath(root)
        self.trust_root_scripts = trust_root_scripts
        self.is_host = self.root == "/"
        self.lock_timeout = lock_timeout
        self.http_timeout = http_timeout
        self.unprivileged = os.geteuid() != 0
        self._env = {}  # type: Dict[str, str]
        self._arch = None  # type: Optional[str]
        self.read_only = False
        self._options = [
            "-o",
            "Acquire::Retries=0",
            "-o",
            "Acquire::http::Timeout={}".format(http_timeout),
            "-o",
            "Acquire::https::Timeout={}".format(http_timeout),
            "-o",
            "APT::Get::Show-User-Simulation-Note=false",
        ]  # type: List[str]
        parts = write_apt_parts()
        if parts:  # a baseline's sources replace the machine's for this run (sources.py)
            self._options += [
                "-o",
                "Dir::Etc::SourceList=" + os.path.join(parts, "none.list"),
                "-o",
                "Dir::Etc::SourceParts=" + parts + "/",
            ]
        if not self.is_host:
            self._prepare_root()
            self._check_methods()
        elif self.unprivileged or private_state:
            self._prepare_private_state(private_state)

    # -- setup -----------------------------------------------------------------------------

    @property
    def state_dir(self) -> str:
        return below(self.root, "/var/lib/patchwarden")

    def _prepare_root(self) -> None:
        for path in (
            "/var/lib/apt/lists/partial",
            "/var/cache/apt/archives/partial",
            "/var/log/apt",
            "/var/lib/dpkg/info",
            "/var/lib/dpkg/updates",
            "/etc/apt/preferences.d",
            "/etc/apt/sources.list.d",
            "/var/lib/patchwarden/tmp",
        ):
            os.makedirs(below(self.root, path), exist_ok=True)
        status = below(self.root, "/var/lib/dpkg/status")
        if not os.path.exists(status):
            open(status, "a").close()
        _note_ignored_configuration(self.root)
        # Our configuration, apt's HOME (dpkg reads $HOME/.dpkg.cfg, whose pre-invoke hooks run
        # unchrooted) and the empty parts directory live outside the root: the root supplies
        # sources, preferences, keyrings and dpkg's status, never configuration.
        private = private_dir()
        config = hardened_config(empty_dir(private)) + [
            'Dir "{}/";'.format(self.root),
            'Dir::State::status "{}";'.format(status),
            'APT::Sandbox::User "root";',
            'Acquire::Languages "none";',
            "DPkg::Options {{ {}; }};".format(
                "; ".join('"{}"'.format(a) for a in self._dpkg_args())
            ),
            'DPkg::Use-Pty "false";',
            'Dpkg::Progress-Fancy "false";',
            "",
        ]
        path = os.path.join(private, "apt.conf")
        _write_if_changed(path, "\n".join(config))
        tmp = os.path.join(self.state_dir, "tmp")
        self._env = {"APT_CONFIG": path, "TMPDIR": tmp, "HOME": private}

    def _prepare_private_state(self, base: Optional[str]) -> None:
        # A read-only scan of the host: the host's configuration and status, but private lists
        # and cache, and none of the host's hooks (an update would otherwise notify PackageKit or
        # refresh the host's AppStream cache).
        base = os.path.abspath(
            base or os.path.join(os.path.expanduser("~"), ".cache", "patchwarden", "apt")
        )
        for sub in ("lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        host = [p for p in ("/etc/apt/apt.conf.d/", "/etc/apt/apt.conf") if os.path.exists(p)]
        config = hardened_config(os.path.join(base, "empty-parts"), host) + [
            'Dir::State::Lists "{}/lists/";'.format(base),
            'Dir::Cache "{}/cache/";'.format(base),
            # Images often disable apt's binary cache; in our private cache it saves every
            # apt-cache call from re-reading all package lists.
            'Dir::Cache::pkgcache "pkgcache.bin";',
            'Dir::Cache::srcpkgcache "srcpkgcache.bin";',
            # ... and compressed lists make every record lookup (apt-cache show) decompress.
            'Acquire::GzipIndexes "false";',
            'Debug::NoLocking "true";',
            "",
        ]
        path = os.path.join(base, "apt.conf")
        _write_if_changed(path, "\n".join(config))
        self._env = {"APT_CONFIG": path}
        self.read_only = True

    def _check_methods(self) -> None:
        """Refuse a root whose sources name a download method that is not a method name: apt
        runs ``/usr/lib/apt/methods/<scheme>`` and takes a scheme such as ``../../x`` as it is,
        so a sources line could make it run any program on this host."""
        listed = self.apt_get(
            "indextargets", "--no-release-info", "--format", "$(REPO_URI)\t$(SOURCESENTRY)",
            timeout=120,
        )  # fmt: skip
        for line in listed.stdout.splitlines():
            uri, _, entry = line.partition("\t")
            scheme = uri.partition(":")[0]
            if not _METHOD.match(scheme):
                raise RepositoryError(
                    "{}: the repository {} names the download method {!r}, which is not a "
                    "method name (a root may not make apt run a program); fix the root's "
                    "sources".format(entry, uri, scheme),
                    {"repository": uri, "source": entry},
                )

    @property
    def environment(self) -> Dict[str, str]:
        """What every apt and dpkg command on this system runs with (APT_CONFIG...), for
        oracles and benchmarks that run apt itself the same way."""
        return dict(self._env)

    def _dpkg_args(self) -> List[str]:
        args = [
            "--root={}".format(self.root),
            "--log={}".format(below(self.root, "/var/log/dpkg.log")),
        ]
        if self.trust_root_scripts and scripts_run_on_host(self.root):
            # Only with the operator's word (check_scripts_trusted): without it dpkg is never
            # told to run a root's scripts here, so even a stray dpkg call would fail, not run.
            args.append("--force-script-chrootless")
        if self.unprivileged:
            args.insert(0, "--force-not-root")
        return args if not self.is_host else []

    def apt_get(self, *args: str, timeout: float = 1800.0) -> Result:
        return run([APT_GET, *self._options, *args], self._env, timeout=timeout)

    def apt_cache(self, *args: str) -> Result:
        return run([APT_CACHE, *self._options, *args], self._env, timeout=600.0)

    # -- facts ------------------------------------------------------------------------------

    def architecture(self) -> str:
        if self._arch is None:
            result = run([DPKG, "--print-architecture"], self._env, timeout=30)
            self._arch = result.stdout.strip() or "amd64"
        return self._arch

    # -- refresh ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """``apt-get update``; RepositoryError naming every repository that failed (apt exits 0
        on an unreachable repository unless told otherwise)."""
        result = self.apt_get("-o", "APT::Update::Error-Mode=any", "update", timeout=900.0)
        failures = list(_repository_failures(result.stdout + "\n" + result.stderr))
        if result.rc != 0 or failures:
            raise RepositoryError(
                "refreshing package lists failed: "
                + (
                    "; ".join("{} ({})".format(f["repository"], f["reason"]) for f in failures)
                    or _last_error(result)
                ),
                {"repositories": failures},
            )

    # -- inventory --------------------------------------------------------------------------

    def inventory(
        self,
    ) -> Tuple[List[Dict[str, object]], List[Dict[str, object]], List[Dict[str, str]]]:
        """(installed, updates, broken): the inventory's package lists and packages dpkg left
        in an unfinished state."""
        native = self.architecture()
        # Read-only queries run side by side: the package files' Release data while dpkg-query
        # and then the per-package policy run.
        files_query = Running([APT_CACHE, *self._options, "policy"], self._env)
        installed, broken = self._installed()
        names = [_apt_name(p["name"], p["arch"], native) for p in installed]
        # The candidates' records (Priority, Section, Source, Depends) are read while the policy
        # runs: a candidate is what `show --no-all-versions NAME` shows. Shadowed security
        # versions, which are not candidates, are asked for afterwards.
        records_query = (
            Running([APT_CACHE, *self._options, "show", "--no-all-versions", *names], self._env)
            if 0 < len(names) <= 5000
            else None
        )
        policy = self._policy(names)
        files = self._package_files(files_query.result())
        records = {}  # type: Dict[Tuple[str, str], Dict[str, str]]
        if records_query is not None:
            for stanza in parse_stanzas(records_query.result().stdout):
                records.setdefault((stanza.get("Package", ""), stanza.get("Version", "")), stanza)
        wanted = []  # type: List[Tuple[Dict[str, object], VersionInfo, bool]]
        for pkg in installed:
            entry = policy.get(_apt_name(pkg["name"], pkg["arch"], native))
            if entry is None:
                continue
            current = next((v for v in entry.versions if v.version == pkg["version"]), None)
            if current is not None:
                pkg["security"] = is_security([files[k] for k in current.files if k in files])
            for info, is_candidate in _newer_versions(entry, files):
                wanted.append((pkg, info, is_candidate))
        details = self._show(
            {
                (str(p["name"]), str(p["arch"]), i.version)
                for p, i, _ in wanted
                if (str(p["name"]), i.version) not in records
            },
            native,
        )
        details.update(records)
        updates = [
            _update(
                pkg, info, is_candidate, files, details.get((str(pkg["name"]), info.version), {})
            )
            for pkg, info, is_candidate in wanted
        ]
        return [_clean(p) for p in installed], updates, broken

    def _dpkg_query(self, fmt: str) -> str:
        result = run(
            [
                DPKG_QUERY,
                "--admindir={}".format(below(self.root, "/var/lib/dpkg")),
                "-W",
                "-f",
                fmt,
            ],
            self._env,
            timeout=120,
        )
        if result.rc not in (0, 1):
            raise CommandFailed("dpkg-query failed: " + _last_error(result))
        return result.stdout

    def holds(self) -> List[str]:
        """The packages held with ``apt-mark hold`` (dpkg's selection "hold"), which apt never
        upgrades: the inventory reports them so that they are never counted as failures."""
        held = []
        for line in self._dpkg_query("${db:Status-Abbrev}\\t${Package}\\n").splitlines():
            abbrev, _, name = line.partition("\t")
            if abbrev.startswith("h") and name:
                held.append(name)
        return held

    def _installed(self) -> Tuple[List[Dict[str, object]], List[Dict[str, str]]]:
        stdout = self._dpkg_query(_QUERY_FORMAT)
        info = below(self.root, "/var/lib/dpkg/info")
        installed, broken = [], []  # type: List[Dict[str, object]], List[Dict[str, str]]
        for line in stdout.splitlines():
            fields = line.split("\t")
            if len(fields) < 7 or len(fields[3]) < 2:
                continue
            name, arch, version, abbrev, priority, section, source = fields[:7]
            state = abbrev[1]
            if state in _BROKEN_STATES or (len(abbrev) > 2 and abbrev[2] == "R"):
                broken.append(
                    {
                        "name": name,
                        "arch": arch,
                        "version": version,
                        "state": _BROKEN_STATES.get(state, "reinstall-required"),
                    }
                )
            if state not in _INSTALLED_STATES and state not in _BROKEN_STATES:
                continue  # not installed, or only its configuration files are left
            pkg = {
                "name": name,
                "arch": arch,
                "version": version,
                "priority": priority or None,
                "section": section or None,
                "sourcePackage": (source.split(" ")[0] if source else name),
                "installedTime": _installed_time(info, name, arch),
            }  # type: Dict[str, object]
            installed.append(pkg)
        return installed, broken

    def _package_files(self, result: Result) -> Dict[str, PackageFile]:
        if result.rc != 0:
            raise CommandFailed("apt-cache policy failed: " + _last_error(result))
        return parse_package_files(result.stdout)

    def _policy(self, names: List[str]) -> Dict[str, PolicyEntry]:
        entries = {}  # type: Dict[str, PolicyEntry]
        for chunk in _chunks(names, 2000):
            result = self.apt_cache("policy", *chunk)
            if result.rc != 0:
                raise CommandFailed("apt-cache policy failed: " + _last_error(result))
            entries.update(parse_policy(result.stdout))
        return entries

    def _show(
        self, versions: Set[Tuple[str, str, str]], native: str
    ) -> Dict[Tuple[str, str], Dict[str, str]]:
        if not versions:
            return {}
        args = sorted("{}={}".format(_apt_name(n, a, native), v) for n, a, v in versions)
        out = {}  # type: Dict[Tuple[str, str], Dict[str, str]]
        for chunk in _chunks(args, 1000):
            result = self.apt_cache("show", "--no-all-versions", *chunk)
            for stanza in parse_stanzas(result.stdout):
                key = (stanza.get("Package", ""), stanza.get("Version", ""))
                out.setdefault(key, stanza)
        return out

    # -- dpkg state -------------------------------------------------------------------------

    def interrupted(self) -> List[Dict[str, str]]:
        """Packages an interrupted dpkg left unfinished (``dpkg --audit`` exits 0 even then, so
        the status database and the journal are read instead)."""
        _, broken = self._installed()
        updates = below(self.root, "/var/lib/dpkg/updates")
        if not broken and os.path.isdir(updates) and any(f.isdigit() for f in os.listdir(updates)):
            broken.append({"name": "", "arch": "", "version": "", "state": "journal-pending"})
        return broken

    def recover(self) -> List[Dict[str, object]]:
        """Finish what an interrupted dpkg left: replay the journal, configure what is unpacked,
        and reinstall what is half-installed (``dpkg --configure -a`` alone does not fix that)."""
        broken = self.interrupted()
        if not broken:
            return []
        actions = []  # type: List[Dict[str, object]]
        result = run([DPKG, *self._dpkg_args(), "--configure", "-a"], self._env, timeout=1800)
        actions.append({"action": "dpkg --configure -a", "rc": result.rc})
        still = [b for b in self.interrupted() if b["name"]]
        # Reinstall the version dpkg was working on, not whatever apt would pick now.
        reinstall = sorted(
            {
                "{}={}".format(b["name"], b["version"])
                for b in still
                if b["state"] in ("half-installed", "reinstall-required")
            }
        )
        if reinstall:
            result = self._locked(
                self.apt_get, "-y", "--reinstall", "--allow-downgrades", "install", *reinstall
            )
            actions.append(
                {"action": "apt-get install --reinstall", "packages": reinstall, "rc": result.rc}
            )
        left = self.interrupted()
        if left:
            raise RecoveryFailed(
                "dpkg was interrupted and could not be repaired: "
                + ", ".join("{} ({})".format(b["name"] or "journal", b["state"]) for b in left)
                + "; repair the machine by hand (dpkg --configure -a, apt-get install --reinstall)",
                {"packages": left, "actions": actions},
            )
        return actions

    # -- install ----------------------------------------------------------------------------

    def needs_held(self, pins: List[Tuple[str, str, str]], holds: List[str]) -> Dict[str, str]:
        """Pin name -> a held package (a name ``holds`` matches, not a pin) that installing the
        pin would have to change. One simulation of them all; only when it needs a held package
        (apt refuses with "held broken packages" for an apt-mark hold, or would upgrade a
        declared one), one per pin to tell which."""
        changed = self._held_changed(pins, holds)
        if len(pins) == 1 and changed:
            return {pins[0][0]: changed[0]}
        needs = {}  # type: Dict[str, str]
        for pin in pins if changed else []:
            alone = self._held_changed([pin], holds)
            if alone:
                needs[pin[0]] = alone[0]
        return needs

    def _held_changed(self, pins: List[Tuple[str, str, str]], holds: List[str]) -> List[str]:
        """The held packages (not pins) a simulated install of ``pins`` would upgrade, or that
        apt names as the unmet dependency it refused on."""
        result = self.apt_get("-s", "-y", "--no-install-recommends", "install", *_pin_args(pins))
        if result.rc != 0:
            names = unmet_dependencies(result.stdout)
        else:
            actions = parse_simulation(result.stdout)
            names = [str(a["name"]) for a in actions if a["action"] == "Inst"]
        pinned = {p[0] for p in pins}
        held = {n for n in names if any(fnmatch.fnmatchcase(n, h) for h in holds)}
        return sorted(held - pinned)

    def simulate(self, pins: List[Tuple[str, str, str]], blocked: List[str]) -> "Plan":
        """What installing ``pins`` would do, refused when it would install a BLOCKed package or
        remove anything."""
        result = self.apt_get("-s", "-y", "--no-install-recommends", "install", *_pin_args(pins))
        if result.rc != 0:
            raise InstallRefused(
                "apt cannot install the pins: " + _last_error(result), {"output": _errors(result)}
            )
        actions = parse_simulation(result.stdout)
        removals = [a for a in actions if a["action"] == "Remv"]
        if removals:
            raise InstallRefused(
                "installing the pins would remove " + ", ".join(str(a["name"]) for a in removals),
                {"removals": removals},
            )
        pinned = {p[0] for p in pins}
        for action in actions:
            name = str(action["name"])
            hit = blocked_by(blocked, [name])  # apt entries are names only
            if hit is not None and action["action"] == "Inst":
                why = "it is a pin" if name in pinned else "a pin depends on it"
                raise InstallRefused(
                    "refusing to install {} ({}): rejected with BLOCK by {!r}".format(
                        name, why, hit
                    ),
                    {"package": name, "rejectedBy": hit},
                )
        dependencies = [
            {"name": str(a["name"]), "version": str(a["version"]), "from": str(a["from"] or "")}
            for a in actions
            if a["action"] == "Inst" and a["name"] not in pinned
        ]
        return Plan(actions, dependencies)

    def downgrade(self, name: str, arch: str, version: str) -> Result:
        """Install exactly ``version`` again (a rollback after a failed upgrade)."""
        return self._locked(
            self.apt_get,
            "-y",
            "--no-install-recommends",
            "--allow-downgrades",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "install",
            *_pin_args([(name, arch, version)]),
        )

    def install(self, pins: List[Tuple[str, str, str]]) -> Result:
        return self._locked(
            self.apt_get,
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "install",
            *_pin_args(pins),
        )

    def _locked(self, command, *args: str) -> Result:  # type: ignore[no-untyped-def]
        result = command("-o", "DPkg::Lock::Timeout={}".format(self.lock_timeout), *args)  # type: Result
        holder = _LOCK_HOLDER.search(result.stdout + result.stderr)
        if result.rc != 0 and holder and "Could not get lock" in result.stdout + result.stderr:
            raise PackageManagerBusy(
                "the dpkg lock is held by process {} ({}); waited {}s; try again when it is "
                "done".format(holder.group(1), holder.group(2), self.lock_timeout),
                {"pid": int(holder.group(1)), "command": holder.group(2)},
            )
        return result

    def versions_now(self, names: List[str]) -> Dict[Tuple[str, str], Tuple[str, str]]:
        """(name, arch) -> (version, status abbreviation) for installed packages among ``names``."""
        installed, broken = self._installed()
        out = {
            (str(p["name"]), str(p["arch"])): (str(p["version"]), "ii")
            for p in installed
            if p["name"] in names
        }
        for b in broken:
            if b["name"] in names:
                out[(b["name"], b["arch"])] = (b["version"], b["state"])
        return out

    def reboot_pending(self) -> List[str]:
        return reboot_required(self.root)


# Every apt option that names a command for apt or dpkg to run (apt.conf(5); apt 2.6's own list).
APT_HOOKS = (
    "APT::Update::Pre-Invoke",
    "APT::Update::Post-Invoke",
    "APT::Update::Post-Invoke-Success",
    "APT::Update::Post-Invoke-Stats",
    "APT::Install::Pre-Invoke",
    "APT::Install::Post-Invoke-Success",
    "DPkg::Pre-Invoke",
    "DPkg::Post-Invoke",
    "DPkg::Pre-Install-Pkgs",
)


def hardened_config(empty: str, includes: Sequence[str] = ()) -> List[str]:
    """The first lines of every apt configuration the agent writes (scan and install alike):
    ``includes`` (the host's own files, on a private-state scan of the host; never a root's),
    every hook cleared, and apt's configuration files pointed at ``empty``, a private empty
    directory. apt reads APT_CONFIG first, then Dir::Etc::Parts, then Dir::Etc::Main: left
    alone, those two would be read from the root (``Dir``) and could add hooks back."""
    os.makedirs(empty, exist_ok=True)
    return (
        ['#include "{}";'.format(path) for path in includes]
        + ["#clear {};".format(hook) for hook in APT_HOOKS]
        + [
            'Dir::Etc::Parts "{}/";'.format(empty),
            'Dir::Etc::Main "{}/apt.conf";'.format(empty),
        ]
    )


def _note_ignored_configuration(root: str) -> None:
    parts = below(root, "/etc/apt/apt.conf.d")
    found = (
        [below(root, "/etc/apt/apt.conf")]
        if os.path.exists(below(root, "/etc/apt/apt.conf"))
        else []
    )
    if os.path.isdir(parts):
        found += [os.path.join(parts, name) for name in sorted(os.listdir(parts))]
    if found:
        note(
            "ignored {} (a root's apt configuration is never read: its hooks would run on "
            "this host; its sources, preferences and keyrings are used)".format(", ".join(found))
        )


# -- parsing ---------------------------------------------------------------------------------


def parse_package_files(text: str) -> Dict[str, PackageFile]:
    """``apt-cache policy`` (no arguments): package file key -> its Release fields."""
    files = {}  # type: Dict[str, PackageFile]
    key = None  # type: Optional[str]
    for line in text.splitlines():
        stripped = line.strip()
        head = re.match(r"^ *-?\d+ (.+)$", line)
        if head and not stripped.startswith(("release", "origin")):
            key = head.group(1).strip()
            files[key] = PackageFile("", "", "", "", "", "")
        elif key and stripped.startswith("release "):
            fields = dict(
                f.split("=", 1) for f in stripped[len("release ") :].split(",") if "=" in f
            )
            files[key] = files[key]._replace(
                origin=fields.get("o", ""),
                label=fields.get("l", ""),
                suite=fields.get("a", ""),
                codename=fields.get("n", ""),
                component=fields.get("c", ""),
            )
        elif key and stripped.startswith("origin "):
            files[key] = files[key]._replace(site=stripped[len("origin ") :].strip())
        elif not line.startswith(" "):
            key = None
    return files


def parse_policy(text: str) -> Dict[str, PolicyEntry]:
    """``apt-cache policy NAME...``: name -> installed, candidate and every version's files."""
    entries = {}  # type: Dict[str, PolicyEntry]
    name = None  # type: Optional[str]
    installed = candidate = None  # type: Optional[str]
    versions = []  # type: List[VersionInfo]

    def flush() -> None:
        if name is not None:
            entries[name] = PolicyEntry(installed, candidate, list(versions))

    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            flush()
            name, installed, candidate, versions = line[:-1], None, None, []
            continue
        stripped = line.strip()
        if stripped.startswith("Installed:"):
            installed = _none(stripped.split(":", 1)[1].strip())
        elif stripped.startswith("Candidate:"):
            candidate = _none(stripped.split(":", 1)[1].strip())
        elif stripped.startswith("Version table:"):
            continue
        else:
            version_line = re.match(r"^ (?:\*\*\*| {3}) (\S+) -?\d+$", line)
            file_line = re.match(r"^ {8}-?\d+ (.+)$", line)
            if version_line:
                versions.append(VersionInfo(version_line.group(1), []))
            elif file_line and versions:
                versions[-1].files.append(file_line.group(1).strip())
    flush()
    return entries


def parse_stanzas(text: str) -> Iterator[Dict[str, str]]:
    """deb822 stanzas (``apt-cache show``) as dicts; continuation lines are kept."""
    stanza = {}  # type: Dict[str, str]
    last = None  # type: Optional[str]
    for line in text.splitlines():
        if not line.strip():
            if stanza:
                yield stanza
            stanza, last = {}, None
        elif line[0] in " \t" and last:
            stanza[last] += "\n" + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            stanza[last] = value.strip()
    if stanza:
        yield stanza


def parse_simulation(text: str) -> List[Dict[str, object]]:
    """``apt-get -s`` Inst/Conf/Remv lines."""
    actions = []  # type: List[Dict[str, object]]
    pattern = re.compile(
        r"^(Inst|Conf|Remv) (\S+)(?: \[([^\]]+)\])?(?: \((\S+)(?: ([^\[]*?))?(?: \[(\S+)\])?\))?"
    )
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        action, name, old, new, origins, arch = match.groups()
        if action == "Conf":
            continue
        base, _, qualifier = name.partition(":")
        actions.append(
            {
                "action": action,
                "name": base,
                "arch": qualifier or arch or "",
                "from": old,
                "version": new,
                "origins": (origins or "").strip(),
            }
        )
    return actions


def unmet_dependencies(text: str) -> List[str]:
    """The packages apt names in "The following packages have unmet dependencies" (`` x :
    Depends: y (>= 2) but 1 is to be installed``, further lines without `` x :``)."""
    pattern = re.compile(r"^\s+(?:\S+ :\s+)?(?:Pre-)?Depends: ([^\s:]+)")
    return [m.group(1) for m in (pattern.match(line) for line in text.splitlines()) if m]


def dependency_names(stanza: Dict[str, str]) -> List[str]:
    """Package names from Depends and Pre-Depends (every alternative)."""
    names = []  # type: List[str]
    for field in ("Pre-Depends", "Depends"):
        for clause in stanza.get(field, "").replace("\n", " ").split(","):
            for alternative in clause.split("|"):
                name = alternative.strip().split(" ")[0].split(":")[0]
                if name and name not in names:
                    names.append(name)
    return names


# -- helpers ---------------------------------------------------------------------------------


def _newer_versions(
    entry: PolicyEntry, files: Dict[str, PackageFile]
) -> Iterator[Tuple[VersionInfo, bool]]:
    """The candidate when it differs from what is installed, and any security version between
    the two that a newer non-security candidate shadows."""
    if entry.installed is None or entry.candidate is None or entry.candidate == entry.installed:
        return
    names = [v.version for v in entry.versions]
    if entry.candidate not in names or entry.installed not in names:
        return
    candidate_index, installed_index = names.index(entry.candidate), names.index(entry.installed)
    if candidate_index > installed_index:
        return  # the table is newest first: the candidate is older (a downgrade pin)
    candidate = entry.versions[candidate_index]
    yield candidate, True
    if is_security([files[k] for k in candidate.files if k in files]):
        return
    for info in entry.versions[candidate_index + 1 : installed_index]:
        if is_security([files[k] for k in info.files if k in files]):
            yield info, False
            return


def _update(
    pkg: Dict[str, object],
    info: VersionInfo,
    is_candidate: bool,
    files: Dict[str, PackageFile],
    stanza: Dict[str, str],
) -> Dict[str, object]:
    origins = [files[k] for k in info.files if k in files]
    update = {
        "name": pkg["name"],
        "arch": pkg["arch"],
        "version": info.version,
        "installedVersion": pkg["version"],
        "candidate": is_candidate,
        "repository": origins[0].suite if origins else None,
        "origins": [_origin(o) for o in origins],
        "security": is_security(origins),
        "priority": stanza.get("Priority") or pkg.get("priority"),
        "section": stanza.get("Section") or pkg.get("section"),
        "sourcePackage": (stanza.get("Source") or str(pkg["name"])).split(" ")[0],
        "requires": dependency_names(stanza),
    }  # type: Dict[str, object]
    if update["security"]:
        update["classification"] = "Security"
    return _clean(update)


def _origin(f: PackageFile) -> Dict[str, str]:
    return {
        k: v
        for k, v in (
            ("origin", f.origin),
            ("label", f.label),
            ("suite", f.suite),
            ("codename", f.codename),
            ("site", f.site),
            ("component", f.component),
        )
        if v
    }


def _clean(item: Dict[str, object]) -> Dict[str, object]:
    return {k: v for k, v in item.items() if v is not None}


def _apt_name(name: object, arch: object, native: str) -> str:
    return str(name) if arch in (native, "all", "", None) else "{}:{}".format(name, arch)


def _pin_args(pins: List[Tuple[str, str, str]]) -> List[str]:
    return ["{}{}={}".format(n, ":" + a if a else "", v) for n, a, v in pins]


def _none(value: str) -> Optional[str]:
    return None if value in ("(none)", "") else value


def _installed_time(info_dir: str, name: str, arch: str) -> Optional[str]:
    # dpkg keeps no install time; its file list is (re)written when the package is unpacked.
    for candidate in ("{}:{}.list".format(name, arch), "{}.list".format(name)):
        try:
            mtime = os.stat(os.path.join(info_dir, candidate)).st_mtime
        except OSError:
            continue
        return utc_stamp(mtime)
    return None


def _chunks(items: List[str], size: int) -> Iterator[List[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _repository_failures(output: str) -> Iterator[Dict[str, str]]:
    seen = set()  # type: Set[str]
    for line in output.splitlines():
        match = re.match(r"^[WE]: Failed to fetch (\S+)\s+(.*)$", line)
        if match:
            repo = re.sub(r"/(dists|pool)/.*$", "", match.group(1))
            key = repo
            reason = match.group(2).strip() or "download failed"
        else:
            match = re.match(
                r"^E: The repository '([^']+)' (is not signed|does not have a Release file)", line
            )
            if not match:
                match = re.match(r"^W: GPG error: (\S+) .*?: (.*)$", line)
            if not match:
                continue
            key, reason = match.group(1), match.group(2)
        if key not in seen:
            seen.add(key)
            yield {"repository": key, "reason": reason}


def _errors(result: Result) -> List[str]:
    return [
        line
        for line in (result.stdout + "\n" + result.stderr).splitlines()
        if line.startswith(("E:", "dpkg: error", " ")) and line.strip()
    ][:40]


def _last_error(result: Result) -> str:
    lines = [
        line
        for line in (result.stderr + "\n" + result.stdout).splitlines()
        if line.startswith("E:")
    ]
    if lines:
        return " ".join(line[2:].strip() for line in lines)
    text = (result.stderr or result.stdout).strip().splitlines()
    return text[-1] if text else "exit status {}".format(result.rc)


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return
    except OSError:
        pass
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)

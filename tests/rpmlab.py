"""Real RPM packages, repositories and system roots for the tests of the dnf and zypper backends.

``build_rpms`` builds tiny noarch packages from one parameterized spec with rpmbuild (about 0.1 s
each) in a private ``_topdir``; ``make_repo`` runs createrepo_c and attaches an updateinfo.xml
with modifyrepo_c; ``make_rpm_root`` creates an empty system root with an os-release, a repo
configuration inside the root (dnf: ``etc/yum.repos.d`` + ``etc/dnf/dnf.conf``; zypper:
``etc/zypp/repos.d``) and, optionally, a static ``/bin/sh`` (busybox) so ``%post`` scriptlets run;
``rpm_q`` says what a root has installed; ``needs`` skips a test module unless its tools are
on PATH; ``dnf_versionlock`` writes a root's versionlock list and ``zypper_lock`` locks a package
(the holds a machine's administrator makes).

The zypper tests' SUSE 15 SP5 systems are built from the same pieces: ``build_suse_repos`` makes
``base`` (the -1 versions), ``updates`` (the new ones, with SUSE patches of every category and
severity) and ``extra`` (a package providing /bin/sh); ``make_suse_root`` adds them with
``zypper ar`` and installs the old versions; ``zypper`` runs zypper on a root the way the tests'
oracle does, with ``zypper_env`` (private HOME, zypper's log inside the root, nothing else of the
host's environment).

Recipe and gotchas: shared/testbeds/README.md §1 (Debian's rpm keeps its database in
``~/.rpmdb`` unless ``HOME/.rpmmacros`` says ``%_dbpath /var/lib/rpm``: ``rpm_env`` and
``zypper_env`` do that).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

SPEC = """\
Name: %{pkgname}
Version: %{pkgver}
Release: %{pkgrel}
Summary: test package %{pkgname}
License: MIT
BuildArch: noarch
%{?pkgreq:Requires: %{pkgreq}}
%{?pkgprov:Provides: %{pkgprov}}
%{?pkgepoch:Epoch: %{pkgepoch}}
AutoReqProv: no

%description
test package %{pkgname}

%install
mkdir -p %{buildroot}/usr/share/%{name}
echo %{version}-%{release} > %{buildroot}/usr/share/%{name}/VERSION

%files
/usr/share/%{name}/VERSION
"""

OS_RELEASES = {
    "rhel9": 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n',
    "al2023": 'NAME="Amazon Linux"\nID="amzn"\nID_LIKE="fedora"\nVERSION_ID="2023"\n',
    "al2": 'NAME="Amazon Linux"\nID="amzn"\nID_LIKE="centos rhel fedora"\nVERSION_ID="2"\n',
    "sles15": 'NAME="SLES"\nID="sles"\nID_LIKE="suse"\nVERSION_ID="15.5"\n',
    # the zypper tests' roots (make_suse_root): the full file of SLES 15 SP5
    "sles15sp5": (
        'NAME="SLES"\nVERSION="15-SP5"\nVERSION_ID="15.5"\n'
        'PRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"\nID="sles"\nID_LIKE="suse"\n'
    ),
}


@dataclass(frozen=True)
class Rpm:
    name: str
    version: str
    release: str = "1"
    requires: str = ""
    provides: str = ""
    post: str = ""
    """Body of a %post scriptlet (needs /bin/sh in the root)."""
    pre: str = ""
    """Body of a %pre scriptlet (runs before the files are unpacked; needs /bin/sh)."""
    posttrans: str = ""
    """Body of a %posttrans scriptlet (runs after the whole transaction; needs /bin/sh)."""
    epoch: int | None = None

    @property
    def evr(self) -> str:
        prefix = f"{self.epoch}:" if self.epoch else ""
        return f"{prefix}{self.version}-{self.release}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.release}.noarch.rpm"


@dataclass(frozen=True)
class Notice:
    """One update notice of updateinfo.xml."""

    id: str
    type: str  # security, bugfix, enhancement, newpackage
    packages: tuple[Rpm, ...]
    severity: str = ""
    issued: str = "2024-01-15 00:00:00"  # as createrepo writes it: UTC, with the time of day
    updated: str = ""
    cves: tuple[str, ...] = ()
    bugs: tuple[str, ...] = ()
    reboot: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def rpm_env(home: Path) -> dict[str, str]:
    """Environment for rpm/rpmbuild/dnf: a private HOME whose .rpmmacros puts the database where
    RHEL has it (inside the root), never in the host's ~/.rpmdb."""
    return {**os.environ, "HOME": _rpm_home(home), "LC_ALL": "C.UTF-8"}


def zypper_env(root: Path) -> dict[str, str]:
    """Environment for zypper/rpm on ``root``: a private HOME (as rpm_env's) and zypper's log
    inside the root, and nothing else of the host's environment."""
    state = root / "var/lib/patchwarden"
    return {
        "HOME": _rpm_home(state / "home"),
        "ZYPP_LOGFILE": str(state / "zypper.log"),
        "LC_ALL": "C.UTF-8",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


def _rpm_home(home: Path) -> str:
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    return str(home)


def build_rpms(workdir: Path, rpms: list[Rpm]) -> dict[Rpm, Path]:
    """Build each package; returns where each .rpm is."""
    top = workdir / "rpmbuild"
    spec = workdir / "pkg.spec"
    workdir.mkdir(parents=True, exist_ok=True)
    if not spec.exists():
        spec.write_text(SPEC)
    env = rpm_env(workdir / "home")
    out: dict[Rpm, Path] = {}
    for rpm in rpms:
        text = SPEC
        for section, body in (("pre", rpm.pre), ("post", rpm.post), ("posttrans", rpm.posttrans)):
            if body:
                text += f"\n%{section}\n{body}\n"
        own = workdir / f"{rpm.name}-{rpm.version}-{rpm.release}.spec"
        own.write_text(text)
        argv = ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}"]
        for key, value in (
            ("pkgname", rpm.name),
            ("pkgver", rpm.version),
            ("pkgrel", rpm.release),
            ("pkgreq", rpm.requires),
            ("pkgprov", rpm.provides),
            ("pkgepoch", str(rpm.epoch or "")),
        ):
            if value:
                argv += ["--define", f"{key} {value}"]
        subprocess.run([*argv, str(own)], check=True, env=env, capture_output=True)
        out[rpm] = top / "RPMS" / "noarch" / rpm.filename
    return out


def updateinfo_xml(notices: list[Notice]) -> str:
    parts = ["<?xml version='1.0' encoding='UTF-8'?>", "<updates>"]
    for n in notices:
        parts.append(
            f'<update from="tests@patchwarden.invalid" status="final" type="{n.type}" version="1">'
        )
        parts.append(f"<id>{n.id}</id><title>{n.id}</title>")
        if n.severity:
            parts.append(f"<severity>{n.severity}</severity>")
        parts.append(f'<issued date="{n.issued}"/>')
        if n.updated:
            parts.append(f'<updated date="{n.updated}"/>')
        parts.append("<references>")
        for cve in n.cves:
            parts.append(
                f'<reference href="https://cve.invalid/{cve}" id="{cve}" type="cve" title="{cve}"/>'
            )
        for bug in n.bugs:
            parts.append(
                f'<reference href="https://bugzilla.invalid/{bug}" id="{bug}"'
                f' type="bugzilla" title="bug {bug}"/>'
            )
        parts.append("</references>")
        parts.append(f"<description>{n.id} fixes things</description>")
        parts.append('<pkglist><collection short="demo"><name>demo</name>')
        for p in n.packages:
            epoch = p.epoch or 0
            parts.append(
                f'<package name="{p.name}" version="{p.version}" release="{p.release}"'
                f' epoch="{epoch}" arch="noarch" src="{p.name}.src.rpm">'
                f"<filename>{p.filename}</filename>"
            )
            if n.reboot:
                parts.append("<reboot_suggested>True</reboot_suggested>")
            parts.append("</package>")
        parts.append("</collection></pkglist></update>")
    parts.append("</updates>")
    return "\n".join(parts) + "\n"


def make_repo(directory: Path, rpms: list[Path], notices: list[Notice] | None = None) -> Path:
    """A yum repository of ``rpms`` (createrepo_c), with update notices when given."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in rpms:
        shutil.copy2(path, directory / path.name)
    subprocess.run(["createrepo_c", "-q", str(directory)], check=True, capture_output=True)
    if notices:
        xml = directory.parent / f"{directory.name}-updateinfo.xml"
        xml.write_text(updateinfo_xml(notices))
        subprocess.run(
            ["modifyrepo_c", "--mdtype=updateinfo", str(xml), str(directory / "repodata")],
            check=True,
            capture_output=True,
        )
    return directory


def make_rpm_root(path: Path, os_release: str, repos: dict[str, str], shell: bool = False) -> Path:
    """An empty system root: os-release (a key of OS_RELEASES or the text), repos {id: baseurl}
    configured inside the root for dnf/yum and zypper, and with ``shell`` a busybox /bin/sh."""
    (path / "etc/yum.repos.d").mkdir(parents=True, exist_ok=True)
    (path / "etc/dnf").mkdir(parents=True, exist_ok=True)
    (path / "etc/zypp/repos.d").mkdir(parents=True, exist_ok=True)
    (path / "etc/os-release").write_text(OS_RELEASES.get(os_release, os_release))
    (path / "etc/dnf/dnf.conf").write_text(
        "[main]\ngpgcheck=0\nbest=True\ninstallonly_limit=3\nclean_requirements_on_remove=0\n"
    )
    for repo_id, url in repos.items():
        stanza = (
            f"[{repo_id}]\nname={repo_id}\nbaseurl={url}\nenabled=1\ngpgcheck=0\n"
            "metadata_expire=0\n"
        )
        (path / f"etc/yum.repos.d/{repo_id}.repo").write_text(stanza)
        (path / f"etc/zypp/repos.d/{repo_id}.repo").write_text(
            stanza + "autorefresh=1\ntype=rpm-md\n"
        )
    if shell:
        (path / "bin").mkdir(exist_ok=True)
        shutil.copy2("/bin/busybox", path / "bin/busybox")
        if not (path / "bin/sh").exists():
            os.symlink("busybox", path / "bin/sh")
    return path


def base_and_updates(
    work: Path, base: list[Path], updates: list[Path], notices: list[Notice]
) -> dict[str, str]:
    """Repositories ``work/base`` (the versions to install first) and ``work/updates`` (with the
    update notices), as {repo id: baseurl} for make_rpm_root and seed_rpm_root."""
    return {
        "base": f"file://{make_repo(work / 'base', base)}",
        "updates": f"file://{make_repo(work / 'updates', updates, notices)}",
    }


def seed_rpm_root(
    path: Path,
    os_release: str,
    repos: dict[str, str],
    names: list[str],
    *,
    shell: bool = False,
    seed_release: str | None = None,
) -> Path:
    """A root with ``names`` installed by dnf from ``repos["base"]`` alone, then every repo of
    ``repos`` configured, so that the newer versions are updates. dnf installs under
    ``seed_release`` when given (a root for zypper is seeded as a RHEL one), else ``os_release``."""
    make_rpm_root(path, seed_release or os_release, {"base": repos["base"]}, shell=shell)
    subprocess.run(
        [*dnf_argv(path), "-y", "-q", "install", *names],
        check=True,
        capture_output=True,
        env=rpm_env(path.parent / f"{path.name}-home"),
    )
    return make_rpm_root(path, os_release, repos)


def needs(*tools: str) -> pytest.MarkDecorator:
    """Skip the test (or module, as ``pytestmark``) unless every one of ``tools`` is on PATH."""
    listed = ", ".join(tools[:-1]) + " and " + tools[-1] if len(tools) > 1 else tools[0]
    return pytest.mark.skipif(
        not all(shutil.which(tool) for tool in tools), reason=f"needs {listed}"
    )


def dnf_versionlock(root: Path, *entries: str) -> None:
    """The root's versionlock list as `dnf versionlock add` writes it: ``entries`` are its lines
    (``NAME-EPOCH:VERSION-RELEASE.*``; a ``!`` line excludes one version). The plugin itself is
    not run: it writes the host's list whatever --installroot says, and Debian's
    dnf-plugins-core conflicts with zypper."""
    locks = root / "etc/dnf/plugins/versionlock.list"
    locks.parent.mkdir(parents=True, exist_ok=True)
    locks.write_text("".join(f"{entry}\n" for entry in entries))


def dnf_argv(root: Path) -> list[str]:
    """dnf on ``root`` the way the recipe runs it (for seeding and oracles)."""
    release = (root / "etc/os-release").read_text()
    version = next(
        (
            line.split("=", 1)[1].strip('"')
            for line in release.splitlines()
            if line.startswith("VERSION_ID=")
        ),
        "9",
    )
    return [
        "dnf",
        f"--installroot={root}",
        f"--releasever={version}",
        f"--config={root}/etc/dnf/dnf.conf",
        f"--setopt=reposdir={root}/etc/yum.repos.d",
    ]


def rpm_q(root: Path, *names: str) -> dict[str, str]:
    """name -> version-release installed in ``root``: of ``names`` (absent ones are left out), or
    of every package when no name is given."""
    query = ["-q", *names] if names else ["-qa"]
    out = subprocess.run(
        ["rpm", "--root", str(root), "--dbpath", "/var/lib/rpm", "--qf",
         "%{NAME} %{VERSION}-%{RELEASE}\\n", *query],
        capture_output=True, text=True, env=rpm_env(root.parent / "q-home"),
    ).stdout  # fmt: skip
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


# -- SUSE 15 SP5, for the zypper backend -------------------------------------------------------

# (name, old version-release, new version-release)
SUSE_PACKAGES = [
    ("demo-lib", "1.0-1", "1.0-2"),
    ("demo-tool", "1.0-1", "1.1-1"),
    ("demo-util", "1.0-1", "1.0-2"),
    ("demo-net", "1.0-1", "1.0-2"),
    ("demo-web", "1.0-1", "1.0-2"),
    ("demo-doc", "1.0-1", "1.0-2"),
    ("demo-feat", "1.0-1", "1.0-2"),
    ("demo-bad", "1.0-1", "1.0-2"),
]

SUSE_PREFIX = "SUSE-SLE-Module-Demo-15-SP5-2024-"

# (patch id, category, severity, package, CVEs, reboot suggested, issued (UTC))
SUSE_PATCHES = [
    (
        SUSE_PREFIX + "1",
        "security",
        "critical",
        "demo-lib",
        ["CVE-2024-1001"],
        True,
        "2024-01-15 09:30:00",  # a time of day: the agent must keep it
    ),
    (
        SUSE_PREFIX + "2",
        "security",
        "important",
        "demo-net",
        ["CVE-2024-1002", "CVE-2024-1003"],
        False,
        "2024-02-01",
    ),
    (SUSE_PREFIX + "3", "security", "moderate", "demo-web", ["CVE-2024-1004"], False, "2024-02-10"),
    (SUSE_PREFIX + "4", "security", "low", "demo-doc", [], False, "2024-03-01"),
    (SUSE_PREFIX + "5", "recommended", "moderate", "demo-util", [], False, "2024-03-05"),
    (SUSE_PREFIX + "6", "optional", "low", "demo-tool", [], False, "2024-03-07"),
    (SUSE_PREFIX + "7", "feature", "low", "demo-feat", [], False, "2024-03-09"),
    (
        SUSE_PREFIX + "8",
        "security",
        "important",
        "demo-bad",
        ["CVE-2024-1008"],
        False,
        "2024-03-11",
    ),
]


def _suse_rpm(name: str, evr: str, post: str = "") -> Rpm:
    version, release = evr.split("-")
    requires = "demo-lib >= 1.0" if name == "demo-tool" else ""
    return Rpm(name, version, release, requires=requires, post=post)


def _issued(moment: str) -> str:
    """SUSE's updateinfo gives issue times as seconds since the epoch; ``moment`` is UTC,
    "YYYY-MM-DD" or "YYYY-MM-DD HH:MM:SS"."""
    form = "%Y-%m-%d %H:%M:%S" if " " in moment else "%Y-%m-%d"
    return str(int(datetime.strptime(moment, form).replace(tzinfo=UTC).timestamp()))


def build_suse_repos(where: Path) -> Path:
    """``where/base`` (old versions), ``where/updates`` (new versions, with SUSE_PATCHES as
    updateinfo) and ``where/extra`` (sh-stub, which provides /bin/sh)."""
    old = [_suse_rpm(name, evr) for name, evr, _ in SUSE_PACKAGES]
    fails = 'echo "post of demo-bad fails on purpose" >&2; exit 1'
    new = {
        name: _suse_rpm(name, evr, post=fails if name == "demo-bad" else "")
        for name, _, evr in SUSE_PACKAGES
    }
    # Provides /bin/sh (busybox supplies the shell) so %post scriptlets can run.
    stub = Rpm("sh-stub", "1.0", "1", provides="/bin/sh")
    built = build_rpms(where / "build", [*old, *new.values(), stub])
    notices = [
        Notice(pid, category, (new[pkg],), severity, _issued(day), cves=tuple(cves), reboot=reboot)
        for pid, category, severity, pkg, cves, reboot, day in SUSE_PATCHES
    ]
    make_repo(where / "base", [built[r] for r in old])
    make_repo(where / "updates", [built[r] for r in new.values()], notices)
    make_repo(where / "extra", [built[stub]])
    return where


def zypper(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run zypper on ``root`` the way the tests' oracle does."""
    argv = ["zypper", "--non-interactive", "--root", str(root), *args]
    return subprocess.run(argv, env=zypper_env(root), capture_output=True, text=True, check=False)


def zypper_lock(root: Path, name: str) -> None:
    """Lock ``name`` on the root as its administrator would (`zypper addlock`)."""
    locked = zypper(root, "addlock", name)
    assert locked.returncode == 0, locked.stdout + locked.stderr


def make_suse_root(
    root: Path,
    repos: Path,
    installed: list[str] | None = None,
    with_updates: bool = True,
    with_shell: bool = False,
) -> Path:
    """A SLES 15 SP5 root with ``installed`` (name-version-release) from the base repo; the
    repositories are added with gpgcheck off (they are unsigned; the agent keeps the repo's own
    gpgcheck setting)."""
    make_rpm_root(root, "sles15sp5", {}, shell=with_shell)
    for alias, sub in (("demo-base", "base"), ("demo-extra", "extra")):
        done = zypper(root, "ar", "-G", f"file://{repos / sub}", alias)
        assert done.returncode == 0, done.stderr
    if installed or with_shell:
        pkgs = (["sh-stub"] if with_shell else []) + list(installed or [])
        done = zypper(root, "in", "--no-recommends", *pkgs)
        assert done.returncode == 0, done.stdout + done.stderr
    if with_updates:
        done = zypper(root, "ar", "-G", f"file://{repos / 'updates'}", "demo-updates")
        assert done.returncode == 0, done.stderr
    return root


def plant_hooks(root: Path, marker: Path) -> None:
    """What whoever is root inside ``root`` could write to run code on the host: an .rpmmacros
    whose %(...) runs when rpm expands %_dbpath, in the HOME the agent used to give rpm; a dnf
    plugin (Python) on the root's dnf.conf pluginpath; a libzypp commit plugin. Each appends its
    name to ``marker`` (outside the root) when it runs."""
    home = root / "var/lib/patchwarden/home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(
        f"%_dbpath %(echo .rpmmacros >> {marker}; echo /var/lib/rpm)\n"
    )
    plugins = root / "opt/hostile-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    (plugins / "hostile.py").write_text(
        f"open({str(marker)!r}, 'a').write('dnf plugin\\n')\n"
        "import dnf\n\n\nclass Hostile(dnf.Plugin):\n    name = 'hostile'\n"
    )
    (plugins / "hostile.conf").write_text("[main]\nenabled=1\n")
    conf = root / "etc/dnf/dnf.conf"
    conf.write_text(
        conf.read_text() + f"plugins=1\npluginpath={plugins}\npluginconfpath={plugins}\n"
    )
    commit = root / "usr/lib/zypp/plugins/commit/hostile"
    commit.parent.mkdir(parents=True, exist_ok=True)
    commit.write_text(f"#!/bin/sh\necho zypp commit plugin >> {marker}\n")
    commit.chmod(0o755)

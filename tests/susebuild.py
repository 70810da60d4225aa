"""Real SUSE-style systems on one machine, for the zypper backend's tests.

Builds tiny noarch RPMs with rpmbuild, two createrepo_c repositories (``base`` with the -1
versions, ``updates`` with the new ones and an updateinfo.xml of SUSE patches of every category
and severity) and per-test roots: an os-release of SLES 15 SP5, an rpmdb, the repositories added
with gpgcheck off (the repos are unsigned; the agent keeps the repo's own gpgcheck setting).

The environment every rpm/zypper call here uses has a private ``HOME`` with ``.rpmmacros``
(``%_dbpath /var/lib/rpm``: Debian's rpm defaults to ``~/.rpmdb``) and ``ZYPP_LOGFILE`` inside the
root, so nothing of the host is read or written (shared/testbeds/README.md §1, RPM gotchas).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

SPEC = """\
Name: %{pkgname}
Version: %{pkgver}
Release: %{pkgrel}
Summary: test package %{pkgname}
License: MIT
BuildArch: noarch
%{?pkgreq:Requires: %{pkgreq}}
%{?pkgprov:Provides: %{pkgprov}}
%description
A test package.
%install
mkdir -p %{buildroot}/usr/share/%{name}
echo %{version}-%{release} > %{buildroot}/usr/share/%{name}/VERSION
%{?failpost:%post}
%{?failpost:echo "post of %{name} fails on purpose" >&2; exit 1}
%files
/usr/share/%{name}/VERSION
"""

# (name, old version-release, new version-release)
PACKAGES = [
    ("demo-lib", "1.0-1", "1.0-2"),
    ("demo-tool", "1.0-1", "1.1-1"),
    ("demo-util", "1.0-1", "1.0-2"),
    ("demo-net", "1.0-1", "1.0-2"),
    ("demo-web", "1.0-1", "1.0-2"),
    ("demo-doc", "1.0-1", "1.0-2"),
    ("demo-feat", "1.0-1", "1.0-2"),
    ("demo-bad", "1.0-1", "1.0-2"),
]

PREFIX = "SUSE-SLE-Module-Demo-15-SP5-2024-"

# (patch id, category, severity, package, CVEs, reboot suggested, issued)
PATCHES = [
    (PREFIX + "1", "security", "critical", "demo-lib", ["CVE-2024-1001"], True, "2024-01-15"),
    (
        PREFIX + "2",
        "security",
        "important",
        "demo-net",
        ["CVE-2024-1002", "CVE-2024-1003"],
        False,
        "2024-02-01",
    ),
    (PREFIX + "3", "security", "moderate", "demo-web", ["CVE-2024-1004"], False, "2024-02-10"),
    (PREFIX + "4", "security", "low", "demo-doc", [], False, "2024-03-01"),
    (PREFIX + "5", "recommended", "moderate", "demo-util", [], False, "2024-03-05"),
    (PREFIX + "6", "optional", "low", "demo-tool", [], False, "2024-03-07"),
    (PREFIX + "7", "feature", "low", "demo-feat", [], False, "2024-03-09"),
    (PREFIX + "8", "security", "important", "demo-bad", ["CVE-2024-1008"], False, "2024-03-11"),
]

OS_RELEASE = """\
NAME="SLES"
VERSION="15-SP5"
VERSION_ID="15.5"
PRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"
ID="sles"
ID_LIKE="suse"
"""


def env(root: Path) -> dict[str, str]:
    """The environment for rpm/zypper on ``root``: private HOME and zypper log inside the root."""
    state = root / "var/lib/patchwarden"
    home = state / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    return {
        "HOME": str(home),
        "ZYPP_LOGFILE": str(state / "zypper.log"),
        "LC_ALL": "C.UTF-8",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


def _run(argv: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=environ, capture_output=True, text=True, check=False)


def _rpmbuild(top: Path, environ: dict[str, str], name: str, evr: str, **defs: str) -> Path:
    version, release = evr.split("-")
    argv = ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {top}"]
    for key, value in {"pkgname": name, "pkgver": version, "pkgrel": release, **defs}.items():
        argv += ["--define", f"{key} {value}"]
    done = _run([*argv, str(top / "demo.spec")], environ)
    assert done.returncode == 0, done.stderr
    return top / "RPMS/noarch" / f"{name}-{evr}.noarch.rpm"


def _epoch(day: str) -> int:
    """SUSE's updateinfo gives issue dates as seconds since the epoch."""
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())


def updateinfo(patches: list[tuple[str, str, str, str, list[str], bool, str]]) -> str:
    """An updateinfo.xml of SUSE patches, one package each."""
    versions = {name: new for name, _, new in PACKAGES}
    out = ['<?xml version="1.0" encoding="UTF-8"?>', "<updates>"]
    for pid, category, severity, pkg, cves, reboot, issued in patches:
        version, release = versions[pkg].split("-")
        refs = "".join(
            f'<reference href="https://www.suse.com/security/cve/{c}/" id="{c}" '
            f'title="{c}" type="cve"/>'
            for c in cves
        )
        out.append(
            f'<update from="maint-coord@suse.de" status="stable" type="{category}" version="1">'
            f"<id>{pid}</id><title>Update for {pkg}</title><severity>{severity}</severity>"
            f'<release>SUSE Updates SLE-Module-Demo 15-SP5</release><issued date="{_epoch(issued)}"/>'
            f"<references>{refs}</references><description>Fixes {pkg}.</description>"
            f'<pkglist><collection><package name="{pkg}" epoch="0" version="{version}" '
            f'release="{release}" arch="noarch" src="src/{pkg}-{versions[pkg]}.src.rpm">'
            f"<filename>{pkg}-{versions[pkg]}.noarch.rpm</filename>"
            + ("<reboot_suggested>True</reboot_suggested>" if reboot else "")
            + "</package></collection></pkglist></update>"
        )
    out.append("</updates>")
    return "\n".join(out)


def build_repos(where: Path) -> Path:
    """``where/base`` and ``where/updates`` (with updateinfo) and ``where/rpms/sh-stub...``."""
    top = where / "rpmbuild"
    top.mkdir(parents=True)
    (top / "demo.spec").write_text(SPEC)
    environ = env(where / "build")
    for sub in ("base", "updates", "extra"):
        (where / sub).mkdir()
    for name, old, new in PACKAGES:
        defs = {"pkgreq": "demo-lib >= 1.0"} if name == "demo-tool" else {}
        post = {"failpost": "1"} if name == "demo-bad" else {}
        shutil.copy(_rpmbuild(top, environ, name, old, **defs), where / "base")
        shutil.copy(_rpmbuild(top, environ, name, new, **defs, **post), where / "updates")
    # A stub that provides /bin/sh (busybox supplies the shell) so %post scriptlets can run.
    shutil.copy(_rpmbuild(top, environ, "sh-stub", "1.0-1", pkgprov="/bin/sh"), where / "extra")
    for sub in ("base", "updates", "extra"):
        done = _run(["createrepo_c", "-q", str(where / sub)], environ)
        assert done.returncode == 0, done.stderr
    (where / "updateinfo.xml").write_text(updateinfo(PATCHES))
    done = _run(
        [
            "modifyrepo_c",
            "--mdtype=updateinfo",
            str(where / "updateinfo.xml"),
            str(where / "updates/repodata"),
        ],
        environ,
    )
    assert done.returncode == 0, done.stderr
    return where


def zypper(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run zypper on ``root`` the way the tests' oracle does."""
    return _run(["zypper", "--non-interactive", "--root", str(root), *args], env(root))


def make_root(
    root: Path,
    repos: Path,
    installed: list[str] | None = None,
    with_updates: bool = True,
    with_shell: bool = False,
) -> Path:
    """A SLES 15 SP5 root with ``installed`` (name-version-release) from the base repo."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASE)
    env(root)
    if with_shell:
        (root / "bin").mkdir()
        shutil.copy("/bin/busybox", root / "bin/busybox")
        os.symlink("busybox", root / "bin/sh")
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


def rpm_q(root: Path, *names: str) -> dict[str, str]:
    """name -> version-release installed in ``root`` (absent names are left out)."""
    done = _run(
        ["rpm", "--root", str(root), "-q", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\\n", *names],
        env(root),
    )
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)

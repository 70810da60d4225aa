"""Real RPM repositories and installroots for tests (dnf, yum path, zypper).

``build_rpms`` builds tiny noarch packages from one parameterized spec with rpmbuild (about 0.1 s
each) in a private ``_topdir``; ``make_repo`` runs createrepo_c and attaches an updateinfo.xml
with modifyrepo_c; ``make_rpm_root`` creates an empty system root with an os-release, a repo
configuration inside the root (dnf: ``etc/yum.repos.d`` + ``etc/dnf/dnf.conf``; zypper:
``etc/zypp/repos.d``) and, optionally, a static ``/bin/sh`` (busybox) so ``%post`` scriptlets run.
Recipe and gotchas: shared/testbeds/README.md §1 (Debian's rpm keeps its database in
``~/.rpmdb`` unless ``HOME/.rpmmacros`` says ``%_dbpath /var/lib/rpm``: ``rpm_env`` does that).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
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
    issued: str = "2024-01-15 00:00:00"
    updated: str = ""
    cves: tuple[str, ...] = ()
    bugs: tuple[str, ...] = ()
    reboot: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def rpm_env(home: Path) -> dict[str, str]:
    """Environment for rpm/rpmbuild/dnf: a private HOME whose .rpmmacros puts the database where
    RHEL has it (inside the root), never in the host's ~/.rpmdb."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    return {**os.environ, "HOME": str(home), "LC_ALL": "C.UTF-8"}


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

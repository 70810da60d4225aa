"""Real apt repositories and system roots for tests, built in milliseconds with the stdlib.

``Repo`` writes .deb files (ar + control.tar.gz + data.tar.gz), ``Packages`` and ``Release`` per
suite; apt and dpkg accept them as they are. ``make_root`` creates an empty Debian or Ubuntu root
whose sources point at a repo, and seeds "installed" packages by writing dpkg's status database
(real dpkg installs cost ~15 ms per package; tests that need files or scripts install for real).
Maintainer scripts run chrootless, so every path they touch must be prefixed with $DPKG_ROOT.
Recipe: shared/testbeds/apt.md §1-§2.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import threading
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ARCH = "amd64"


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    priority: str = "optional"
    section: str = "misc"
    arch: str = "all"
    depends: str = ""
    source: str = ""
    scripts: dict[str, str] = field(default_factory=dict)

    def control(self) -> str:
        lines = [
            f"Package: {self.name}",
            f"Version: {self.version}",
            f"Architecture: {self.arch}",
            "Maintainer: Patchwarden Tests <tests@patchwarden.invalid>",
            f"Priority: {self.priority}",
            f"Section: {self.section}",
        ]
        if self.source:
            lines.append(f"Source: {self.source}")
        if self.depends:
            lines.append(f"Depends: {self.depends}")
        lines.append(f"Description: test package {self.name}")
        return "\n".join(lines) + "\n"

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def _tar(members: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        dirs = sorted({str(Path(n).parent) for n in members} - {"."})
        for d in dirs:
            for i in range(1, len(Path(d).parts) + 1):
                part = "/".join(Path(d).parts[:i])
                if part in ("", "."):
                    continue
                info = tarfile.TarInfo("./" + part)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                if "./" + part not in tar.getnames():
                    tar.addfile(info)
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo("./" + name)
            info.size, info.mode, info.uname, info.gname = len(data), mode, "root", "root"
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_deb(pkg: Pkg) -> bytes:
    control = {"control": (pkg.control().encode(), 0o644)}
    for script, body in pkg.scripts.items():
        control[script] = (f"#!/bin/sh\nset -e\n{body}\n".encode(), 0o755)
    payload = {
        f"usr/share/patchwarden-tests/{pkg.name}": (f"{pkg.name} {pkg.version}\n".encode(), 0o644)
    }
    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", _tar(control)),
        ("data.tar.gz", _tar(payload)),
    ]
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n"
        out.write(header.encode())
        out.write(data)
        if len(data) % 2:
            out.write(b"\n")
    return out.getvalue()


class Repo:
    """A flat set of suites under one directory, published once (never re-published)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.suites: dict[str, tuple[list[Pkg], str, str, str]] = {}

    def add(
        self,
        suite: str,
        *pkgs: Pkg,
        origin: str = "Patchwarden",
        label: str = "",
        codename: str = "",
    ) -> Repo:
        self.suites[suite] = (list(pkgs), origin, label or origin, codename or suite)
        return self

    def publish(self) -> Repo:
        for suite, (pkgs, origin, label, codename) in self.suites.items():
            stanzas = []
            for pkg in pkgs:
                rel = f"pool/main/{suite}/{pkg.filename}"
                data = build_deb(pkg)
                target = self.root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                stanzas.append(
                    pkg.control() + f"Filename: {rel}\nSize: {len(data)}\n"
                    f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
                    f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
                )
            packages = "\n".join(stanzas).encode()
            bindir = self.root / "dists" / suite / "main" / f"binary-{ARCH}"
            bindir.mkdir(parents=True, exist_ok=True)
            (bindir / "Packages").write_bytes(packages)
            (bindir / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
            sums = []
            for rel in (f"main/binary-{ARCH}/Packages", f"main/binary-{ARCH}/Packages.gz"):
                blob = (self.root / "dists" / suite / rel).read_bytes()
                sums.append((rel, len(blob), hashlib.sha256(blob).hexdigest()))
            release = (
                f"Origin: {origin}\nLabel: {label}\nSuite: {suite}\nCodename: {codename}\n"
                f"Date: Sat, 28 Nov 2026 00:00:00 UTC\nArchitectures: {ARCH} all\nComponents: main\n"
                "SHA256:\n" + "".join(f" {h} {n} {r}\n" for r, n, h in sums)
            )
            (self.root / "dists" / suite / "Release").write_text(release)
        return self

    @property
    def uri(self) -> str:
        return f"file:{self.root}"


OS_RELEASE = {
    "debian": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
    'VERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n',
    "ubuntu": 'PRETTY_NAME="Ubuntu 22.04.5 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n'
    "VERSION_CODENAME=jammy\nID=ubuntu\nID_LIKE=debian\n",
}


def make_root(
    path: Path,
    uri: str,
    suites: list[str],
    *,
    os_id: str = "debian",
    trusted: bool = True,
    installed: list[Pkg] | None = None,
) -> Path:
    """An empty system root using ``uri``'s suites, with ``installed`` seeded as installed."""
    (path / "etc/apt").mkdir(parents=True)
    path.chmod(0o755)
    (path / "etc/os-release").write_text(OS_RELEASE[os_id])
    (path / "etc/hostname").write_text(path.name + "\n")
    option = "[trusted=yes] " if trusted else ""
    (path / "etc/apt/sources.list").write_text(
        "".join(f"deb {option}{uri} {s} main\n" for s in suites)
    )
    (path / "var/lib/dpkg/info").mkdir(parents=True)
    (path / "var/lib/dpkg/updates").mkdir()
    (path / "var/lib/dpkg/status").write_text("")
    (path / "var/lib/dpkg/arch").write_text(f"{ARCH}\n")
    seed(path, installed or [])
    return path


def seed(root: Path, pkgs: list[Pkg], status: str = "install ok installed") -> None:
    """Record ``pkgs`` in dpkg's status database as ``status`` without unpacking anything."""
    with (root / "var/lib/dpkg/status").open("a") as handle:
        for pkg in pkgs:
            control = pkg.control().replace("Version:", f"Status: {status}\nVersion:", 1)
            handle.write(control + "\n")
            (root / "var/lib/dpkg/info" / f"{pkg.name}.list").write_text("")


class HttpRepo:
    """The repo served on a loopback port (for network tests); ``stop()`` leaves a dead port."""

    def __init__(self, directory: Path) -> None:
        handler = partial(_QuietHandler, directory=str(directory))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def dpkg_state(root: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, status) from the root's status database."""
    out: dict[str, tuple[str, str]] = {}
    text = (root / "var/lib/dpkg/status").read_text()
    for stanza in text.strip().split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in stanza.splitlines()
            if ": " in line and not line.startswith(" ")
        )
        if "Package" in fields:
            out[fields["Package"]] = (fields.get("Version", ""), fields.get("Status", ""))
    return out


def environ_without_apt() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("APT_CONFIG", None)
    return env


# Every apt and dpkg option that runs a command, as a hostile root would set them.
APT_HOOKS = (
    "APT::Update::Pre-Invoke",
    "APT::Update::Post-Invoke",
    "APT::Update::Post-Invoke-Success",
    "APT::Install::Pre-Invoke",
    "APT::Install::Post-Invoke-Success",
    "DPkg::Pre-Invoke",
    "DPkg::Post-Invoke",
    "DPkg::Pre-Install-Pkgs",
)


def plant_hooks(root: Path, marker: Path) -> None:
    """What whoever is root inside ``root`` could write to run commands on the host: hooks in
    apt.conf.d and apt.conf, and a dpkg pre-invoke in the HOME the agent used to give dpkg.
    Each appends its name to ``marker`` (outside the root) when it runs."""
    parts = root / "etc/apt/apt.conf.d"
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "99hostile").write_text(
        "".join(f'{hook} {{ "echo {hook} >> {marker}"; }};\n' for hook in APT_HOOKS)
    )
    (root / "etc/apt/apt.conf").write_text(
        f'APT::Update::Pre-Invoke {{ "echo apt.conf >> {marker}"; }};\n'
    )
    home = root / "var/lib/patchwarden"
    home.mkdir(parents=True, exist_ok=True)
    (home / ".dpkg.cfg").write_text(f'pre-invoke="echo .dpkg.cfg >> {marker}"\n')


def hold(root: Path, *names: str) -> None:
    """``apt-mark hold NAME...`` on ``root``: apt-mark records a hold as dpkg's selection "hold",
    which is what this writes, through the root's own dpkg database (never the host's)."""
    import subprocess

    selections = "".join(f"{name} hold\n" for name in names)
    subprocess.run(
        ["dpkg", f"--root={root}", "--set-selections"],
        input=selections,
        text=True,
        check=True,
        capture_output=True,
    )

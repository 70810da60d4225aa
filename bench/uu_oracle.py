"""Benchmark and oracle on the host: our security scan against Debian's own unattended-upgrades.

Debian's security updater decides, with a security-only origin pattern, which packages it would
upgrade. We run it in dry-run mode against a copy of the host's dpkg status and the same private
package lists our scan uses, and compare:

- same packages: the packages our scan + the predefined Debian baseline mark MISSING must be
  exactly the ones unattended-upgrades would upgrade;
- time: ours (``python3 -I patchwarden-agent.pyz scan --private-state S``, refresh included, plus
  the evaluation) / unattended-upgrade --dry-run; target <= 0.1.

unattended-upgrades is downloaded and unpacked into a temporary directory, never installed: its
installation would enable automatic upgrades of the host (shared/testbeds/apt.md §5.3). Nothing on
the host is written: lists, cache, status copy, locks and logs all live in the temporary directory.
Needs the host's /usr/bin/python3 with python3-apt (Debian's), and network access to the archive.
The dry-run downloads every candidate .deb (~200 MB) into the temporary directory.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import record  # noqa: E402

TARGET = 0.1
SYSTEM_PYTHON = "/usr/bin/python3"
RUNNER = """
import importlib.machinery, importlib.util, os, sys
unpacked, rootdir = sys.argv[1], sys.argv[2]
sys.path.insert(0, unpacked + "/usr/lib/python3/dist-packages")
loader = importlib.machinery.SourceFileLoader("uu", unpacked + "/usr/bin/unattended-upgrade")
spec = importlib.util.spec_from_loader("uu", loader)
uu = importlib.util.module_from_spec(spec)
loader.exec_module(uu)
for name in ("LOCK_FILE", "PID_FILE", "PROGRESS_LOG", "REBOOT_REQUIRED_FILE"):
    setattr(uu, name, os.path.join(rootdir, "run", name.lower()))
options = uu.Options()
options.dry_run = True
options.debug = True
sys.exit(uu.main(options, rootdir=rootdir))
"""
ORIGINS = """\
Unattended-Upgrade::Origins-Pattern {
  "origin=Debian,codename=${distro_codename},label=Debian-Security";
  "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";
};
Unattended-Upgrade::AutoFixInterruptedDpkg "false";
Unattended-Upgrade::SyslogEnable "false";
Unattended-Upgrade::Mail "";
"""


def prepare(tmp: Path, state: Path) -> tuple[Path, Path]:
    """The unpacked unattended-upgrades and an oracle root sharing ``state``'s lists."""
    rootdir = tmp / "oracle"
    for sub in (
        "etc/apt/apt.conf.d",
        "var/lib/dpkg",
        "usr/bin",
        "run",
        "cache/archives/partial",
        "periodic",
    ):
        (rootdir / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/var/lib/dpkg/status", rootdir / "var/lib/dpkg/status")
    if Path("/var/lib/apt/extended_states").exists():
        shutil.copy("/var/lib/apt/extended_states", rootdir / "extended_states")
    (rootdir / "usr/bin/dpkg").symlink_to("/usr/bin/dpkg")
    (rootdir / "etc/apt/apt.conf.d/50unattended-upgrades").write_text(ORIGINS)
    # apt.Cache(rootdir=...) reads the sources below the root: copy the host's (read-only keys).
    if Path("/etc/apt/sources.list").exists():
        shutil.copy("/etc/apt/sources.list", rootdir / "etc/apt/sources.list")
    shutil.copytree("/etc/apt/sources.list.d", rootdir / "etc/apt/sources.list.d")
    config = (state / "apt.conf").read_text()
    config += (
        f'Dir::State "{rootdir}/";\nDir::State::Lists "{state}/lists/";\n'
        f'Dir::State::extended_states "{rootdir}/extended_states";\n'
        f'Dir::Cache "{rootdir}/cache/";\nAPT::Sandbox::User "root";\n'
        'Dir::Etc::Trusted "/etc/apt/trusted.gpg";\nDir::Etc::TrustedParts "/etc/apt/trusted.gpg.d/";\n'
    )
    (rootdir / "apt.conf").write_text(config)
    unpacked = tmp / "uu"
    env = {**os.environ, "APT_CONFIG": str(rootdir / "apt.conf")}
    subprocess.run(
        [
            "/usr/bin/apt-get",
            "download",
            "unattended-upgrades",
            "python3-distro-info",
            "distro-info-data",
        ],
        cwd=tmp,
        env=env,
        check=True,
        capture_output=True,
    )
    for deb in tmp.glob("*.deb"):
        subprocess.run(["/usr/bin/dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
    return unpacked, rootdir


def main() -> int:
    if (
        not Path(SYSTEM_PYTHON).exists()
        or subprocess.run([SYSTEM_PYTHON, "-c", "import apt"]).returncode
    ):
        print("skipped: needs Debian's python3 with python3-apt")
        return 0
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        pyz = tmp / "patchwarden-agent.pyz"
        subprocess.run(
            [sys.executable, str(ROOT / "scripts/build-agent"), str(pyz)],
            check=True,
            capture_output=True,
        )
        state = tmp / "state"
        agent = [sys.executable, "-I", "-S", str(pyz), "scan", "--private-state", str(state)]
        subprocess.run(
            agent, check=True, capture_output=True
        )  # warm-up: first download of the lists
        start = time.perf_counter()
        inventory = subprocess.run(agent, check=True, capture_output=True, text=True).stdout
        ours = missing_under_default_baseline(inventory)
        t_ours = time.perf_counter() - start

        unpacked, rootdir = prepare(tmp, state)
        runner = tmp / "run_uu.py"
        runner.write_text(RUNNER)
        env = {**os.environ, "APT_CONFIG": str(rootdir / "apt.conf"), "LC_ALL": "C.UTF-8"}
        start = time.perf_counter()
        uu = subprocess.run(
            [SYSTEM_PYTHON, str(runner), str(unpacked), str(rootdir)],
            env=env,
            capture_output=True,
            text=True,
        )
        t_uu = time.perf_counter() - start
        log = uu.stdout + uu.stderr
        theirs = packages_to_upgrade(log)
        if not theirs and os.environ.get("BENCH_DEBUG"):
            print(log[-3000:])
    same = ours == theirs
    ratio = t_ours / t_uu
    verdict = "PASS" if same and ratio <= TARGET else "FAIL"
    print(
        f"host: ours {t_ours:.2f} s ({len(ours)} packages), unattended-upgrade --dry-run {t_uu:.2f} s "
        f"({len(theirs)} packages), same packages: {same}, ratio {ratio:.3f} (target <= {TARGET}) {verdict}"
    )
    if not same:
        print("only ours:", sorted(ours - theirs)[:20], "only theirs:", sorted(theirs - ours)[:20])
    record(
        "host security scan vs unattended-upgrades",
        "This host (Debian 12), private package lists. Ours: agent zipapp scan with refresh + evaluation "
        "under the predefined Debian baseline (packages MISSING). Reference: Debian's `unattended-upgrade "
        "--dry-run` (2.9.1, unpacked, not installed) with a security-only Origins-Pattern, on a copy of "
        "the host's dpkg status and the same lists.",
        [
            "date",
            "ours (s)",
            "unattended-upgrades (s)",
            "ratio",
            "target",
            "same packages",
            "packages",
            "result",
            "machine",
        ],
        [
            datetime.now(UTC).strftime("%Y-%m-%d"),
            f"{t_ours:.2f}",
            f"{t_uu:.2f}",
            f"{ratio:.3f}",
            f"≤ {TARGET}",
            "yes" if same else "no",
            str(len(ours)),
            verdict,
            f"{os.cpu_count()} cores, {platform.platform(terse=True)}",
        ],
    )
    return 0


def missing_under_default_baseline(inventory_json: str) -> set[str]:
    from reconciler.api.inventory import Inventory
    from reconciler.defaults import predefined_baselines
    from reconciler.evaluation import evaluate

    inventory = Inventory.model_validate(json.loads(inventory_json))
    result = evaluate(predefined_baselines()["aws-debian-default"], inventory, datetime.now(UTC))
    return {p.name for p in result.patches if str(p.state) == "MISSING"}


def packages_to_upgrade(log: str) -> set[str]:
    for line in log.splitlines():
        if "Packages that will be upgraded:" in line:
            return set(line.split("Packages that will be upgraded:", 1)[1].split())
    return set()


if __name__ == "__main__":
    raise SystemExit(main())

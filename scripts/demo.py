"""`make demo`: the main job on an embedded fleet, from a fresh machine, touching nothing of the host.

1. Builds a local apt repository (stable + stable-security) and six Debian systems rooted in
   directories under build/demo/fleet, each with outdated packages.
2. Creates a Git repository holding a baseline (security updates only, one package BLOCKed), a
   patch group and the six ManagedInstances, and runs the reconciler: every machine is scanned and
   shown NON_COMPLIANT.
3. Commits a maintenance window that is open now, and runs the reconciler again: the fleet is
   patched within the window's budgets (at most 50% at once) until it converges, and the
   before/after compliance is shown.

Everything lives under build/demo, or the directory given as the only argument (state database,
Git clones, logs); run it again to start over.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.aptlab import Pkg, Repo, make_root  # noqa: E402

DEMO = ROOT / "build" / "demo"
PATCHCTL = [sys.executable, "-m", "reconciler"]
FLEET = [f"web-{i}" for i in range(1, 5)] + ["db-1", "db-2"]

OLD = [Pkg("demo-openssl", "3.0.11-1", priority="important", section="libs"),
       Pkg("demo-curl", "7.88.1-10", section="web", depends="demo-openssl (>= 3.0.11-1)"),
       Pkg("demo-sudo", "1.9.13-3", priority="important", section="admin"),
       Pkg("demo-tzdata", "2024a-0", priority="required", section="localization"),
       Pkg("demo-telnetd", "0.17-1", section="net")]
SECURITY = [Pkg("demo-openssl", "3.0.15-1", priority="important", section="libs"),
            Pkg("demo-curl", "7.88.1-10+deb12u8", section="web", depends="demo-openssl (>= 3.0.15-1)"),
            Pkg("demo-sudo", "1.9.13-3+deb12u1", priority="important", section="admin"),
            Pkg("demo-telnetd", "0.17-1+deb12u1", section="net")]
UPDATES = [Pkg("demo-tzdata", "2025b-0", priority="required", section="localization")]

BASELINE = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata:
  name: debian-security
spec:
  operatingSystem: DEBIAN
  description: Every security update, except the telnet daemon, which must go rather than be patched.
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: PRIORITY
            values: [Required, Important, Standard, Optional, Extra]
      complianceLevel: HIGH
  rejectedPatches: [demo-telnetd]
  rejectedPatchesAction: ALLOW_AS_DEPENDENCY
---
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata:
  name: demo
spec:
  selector:
    matchLabels: {app: demo}
  baselines:
    DEBIAN: debian-security
"""
WINDOW = """\
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata:
  name: open-now
spec:
  description: Opens every hour for two hours, so it is open whenever the demo runs.
  schedule: cron(0 * * * ? *)
  duration: 2
  cutoff: 0
  targets:
    patchGroups: [demo]
  tasks:
    - name: install-security
      operation: Install
      rebootOption: RebootIfNeeded
      maxConcurrency: 50%
      maxErrors: "1"
"""


def instance(name: str, demo: Path) -> str:
    return (f"apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\nmetadata:\n  name: {name}\n"
            f"  labels: {{app: demo, tier: {name.split('-')[0]}}}\nspec:\n"
            f"  connection: {{type: local, root: {demo / 'fleet' / name}}}\n")


def git(*args: str, cwd: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Demo", "GIT_AUTHOR_EMAIL": "demo@patchwarden.invalid",
           "GIT_COMMITTER_NAME": "Demo", "GIT_COMMITTER_EMAIL": "demo@patchwarden.invalid"}
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


# The demo's roots have no /bin/sh (tests/aptlab.py), so dpkg runs their maintainer scripts on
# this host: patchctl refuses that unless the operator trusts the roots. These roots and their
# repository are the demo's own, built just above, so the demo says it trusts them.
TRUSTED = {**os.environ, "PATCHWARDEN_TRUST_ROOT_SCRIPTS": "1"}


def reconcile(url: str, title: str, demo: Path) -> None:
    print(f"\n=== {title} ===", flush=True)
    with (demo / "reconcile.log").open("a") as log:
        subprocess.run([*PATCHCTL, "reconcile", "--source", url, "--state", str(demo / "state.db"), "-o", "table"],
                       check=True, stderr=log, env=TRUSTED)


def main(argv: list[str]) -> int:
    demo = Path(argv[1]).resolve() if len(argv) > 1 else DEMO
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    repo = Repo(demo / "repo")
    repo.add("stable", *OLD, *UPDATES, origin="Debian", label="Debian", codename="bookworm")
    repo.add("stable-security", *SECURITY, origin="Debian", label="Debian-Security", codename="bookworm-security")
    repo.publish()
    for name in FLEET:
        make_root(demo / "fleet" / name, repo.uri, ["stable", "stable-security"], installed=OLD)
    print(f"Built an apt repository and {len(FLEET)} Debian systems in {demo / 'fleet'}.")
    print("They have no /bin/sh, so dpkg runs their maintainer scripts on this host: the demo "
          "trusts its own roots (PATCHWARDEN_TRUST_ROOT_SCRIPTS=1, docs/agent.md).")

    bare, work = demo / "config.git", demo / "config"
    git("init", "--bare", "--initial-branch=main", str(bare), cwd=demo)
    git("clone", str(bare), str(work), cwd=demo)
    (work / "fleet.yaml").write_text(BASELINE)
    (work / "instances.yaml").write_text("---\n".join(instance(n, demo) for n in FLEET))
    git("add", ".", cwd=work)
    git("commit", "-m", "Baseline, group and instances", cwd=work)
    git("push", "origin", "HEAD:main", cwd=work)
    url = f"file://{bare}"
    reconcile(url, "Before: the fleet as committed, no maintenance window yet (scan only)", demo)

    (work / "window.yaml").write_text(WINDOW)
    git("add", ".", cwd=work)
    git("commit", "-m", "Open a maintenance window", cwd=work)
    git("push", "origin", "HEAD:main", cwd=work)
    reconcile(url, "After: a window is committed; the reconciler patches the fleet inside it", demo)
    print(f"\nState: {demo / 'state.db'}; JSON logs: {demo / 'reconcile.log'}.")
    # The virtualenv's patchctl by its full path: a new shell has no activated virtualenv.
    patchctl = Path(sys.executable).parent / "patchctl"
    print("Try:", shlex.join([str(patchctl), "plan", "--source", url, "--state", str(demo / "state.db")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

"""A fleet repository with a reviewed change, and a state store with its machines' scans, for
``patchctl diff`` and the CI templates that run it.

Revision "before": baseline web-prod approves Important updates (curl) for the web group,
db-prod approves every priority for db; window web-sunday installs on web, old-scan scans db.
Revision "after": web-prod also approves Optional ones (openssl) and rejects curl, db-prod only
Required ones (db-1 turns compliant), web-sunday moves to Saturday, old-scan is gone and
db-monthly installs on db. The three machines' scans are recorded in a real state store.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from reconciler.api.enums import Operation
from reconciler.evaluation import evaluate
from reconciler.state import StateStore
from tests.factories import NOW, baseline, inventory, rule
from tests.git_servers import Upstream

HEADER = "apiVersion: patchwarden.io/v1alpha1\n"

INSTANCES = "".join(
    f"{HEADER}kind: ManagedInstance\nmetadata:\n  name: {name}\n  labels: {labels}\n"
    "spec:\n  connection: {type: local}\n---\n"
    for name, labels in (
        ("web-1", "{role: web}"),
        ("web-2", "{role: web}"),
        ("db-1", "{patchwarden.io/patch-group: db}"),
    )
)

GROUPS = (
    f"{HEADER}kind: PatchGroup\nmetadata:\n  name: web\nspec:\n  selector:\n"
    "    matchLabels: {role: web}\n  baselines: {UBUNTU: web-prod}\n---\n"
    f"{HEADER}kind: PatchGroup\nmetadata:\n  name: db\nspec:\n  baselines: {{UBUNTU: db-prod}}\n"
)


def baselines(web: str, db: str, rejected: str = "[]") -> str:
    """The two baselines: the priorities each approves, and web-prod's rejected patches."""
    return (
        f"{HEADER}kind: PatchBaseline\nmetadata:\n  name: web-prod\nspec:\n"
        "  operatingSystem: UBUNTU\n  approvalRules:\n    - patchFilterGroup:\n"
        f"        patchFilters: [{{key: PRIORITY, values: {web}}}]\n"
        f"  rejectedPatches: {rejected}\n---\n"
        f"{HEADER}kind: PatchBaseline\nmetadata:\n  name: db-prod\nspec:\n"
        "  operatingSystem: UBUNTU\n  approvalRules:\n    - patchFilterGroup:\n"
        f"        patchFilters: [{{key: PRIORITY, values: {db}}}]\n"
    )


def window(name: str, schedule: str, targets: str, operation: str) -> str:
    return (
        f"{HEADER}kind: MaintenanceWindow\nmetadata:\n  name: {name}\nspec:\n"
        f"  schedule: {schedule}\n  duration: 3\n  cutoff: 1\n  targets: {targets}\n"
        f"  tasks:\n    - name: {operation.lower()}\n      operation: {operation}\n"
        "      maxConcurrency: '1'\n      maxErrors: '0'\n"
    )


BEFORE = {
    "instances.yaml": INSTANCES,
    "groups.yaml": GROUPS,
    "baselines.yaml": baselines("[Important]", "[Required, Important, Optional]"),
    "windows/web-sunday.yaml": window(
        "web-sunday", "cron(0 3 ? * SUN *)", "{patchGroups: [web]}", "Install"
    ),
    "windows/old-scan.yaml": window("old-scan", "cron(0 1 * * ? *)", "{patchGroups: [db]}", "Scan"),
}

AFTER = {
    **BEFORE,
    "baselines.yaml": baselines("[Important, Optional]", "[Required]", rejected="[curl]"),
    "windows/web-sunday.yaml": window(
        "web-sunday", "cron(0 3 ? * SAT *)", "{patchGroups: [web]}", "Install"
    ),
    "windows/old-scan.yaml": None,
    "windows/db-monthly.yaml": window(
        "db-monthly", "cron(0 4 1 * ? *)", "{patchGroups: [db]}", "Install"
    ),
}

CURL = {"name": "curl", "priority": "important", "section": "web", "security": True}
SSL = {"name": "openssl", "priority": "optional", "section": "utils", "security": True}


@dataclass(frozen=True)
class Fleet:
    upstream: Upstream
    before: str
    after: str
    state: Path


def write(upstream: Upstream, files: dict[str, str | None]) -> None:
    for relpath, text in files.items():
        if text is None:
            (upstream.work / relpath).unlink(missing_ok=True)
        else:
            upstream.write(relpath, text)


def fleet(tmp_path: Path) -> Fleet:
    """The repository with both revisions committed, and the state store with the scans."""
    upstream = Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")
    write(upstream, BEFORE)
    before = upstream.commit("before")
    write(upstream, AFTER)
    after = upstream.commit("after")
    return Fleet(upstream, before, after, record_scans(tmp_path / "state.db"))


def record_scans(path: Path, names: tuple[str, ...] = ("web-1", "web-2", "db-1")) -> Path:
    """The machines scanned: curl and openssl each have a security update."""
    judge = baseline("UBUNTU", rule(("PRIORITY", ["Important"])))
    with StateStore(path) as store:
        for name in names:
            scanned = inventory(
                "UBUNTU",
                [{**CURL, "version": "7.81.0-1"}, {**SSL, "version": "3.0.2-1"}],
                [
                    {**CURL, "version": "7.81.0-2", "installedVersion": "7.81.0-1"},
                    {**SSL, "version": "3.0.2-2", "installedVersion": "3.0.2-1"},
                ],
            ).model_copy(update={"instance_id": name})
            store.record_scan(
                instance=name,
                operation=Operation.SCAN,
                revision="main@sha1:" + "0" * 40,
                baseline="web-prod",
                baseline_hash="h",
                job_id=None,
                started_at=NOW - timedelta(hours=1),
                finished_at=NOW - timedelta(minutes=59),
                inventory=scanned.model_dump(mode="json", by_alias=True),
                evaluation=evaluate(judge, scanned, NOW).to_dict(),
            )
    return path


def patchctl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``patchctl`` as a user runs it: its own process, stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )

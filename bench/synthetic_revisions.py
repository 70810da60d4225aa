"""Two revisions of the synthetic fleet's desired state (bench/synthetic_fleet.py) that differ
as a reviewed change would, for ``patchctl diff``'s benchmark (bench/diff_fleet.py) and tests.

Each instance is a ManagedInstance in its baseline's patch group. The change: one approval
rule's approveAfterDays (al2023-prod: 7 -> 10 days), a rejected pattern added (ubuntu-prod:
``pkg-ubuntu-03*``), a rule's classification list (rhel-prod: Bugfix and Enhancement -> Bugfix),
and one Install window moved from Sunday to Saturday; two Install windows and a Scan window
target the groups.
"""

from __future__ import annotations

from bench.synthetic_fleet import BASELINES_YAML, PROFILES, Member
from reconciler.api.snapshot import Snapshot, build_snapshot

HEADER = "apiVersion: patchwarden.io/v1alpha1\n"

# The reviewed change: each edit is one line of the baselines' YAML.
CHANGES = (
    ("      approveAfterDays: 7\n", "      approveAfterDays: 10\n"),
    (
        "pkg-ubuntu-0666]\n  rejectedPatchesAction",
        'pkg-ubuntu-0666, "pkg-ubuntu-03*"]\n  rejectedPatchesAction',
    ),
    (
        "patchFilters: [{key: CLASSIFICATION, values: [Bugfix, Enhancement]}]",
        "patchFilters: [{key: CLASSIFICATION, values: [Bugfix]}]",
    ),
)


def revisions(fleet: list[Member]) -> tuple[Snapshot, Snapshot]:
    """The fleet's desired state before and after the reviewed change."""
    changed = BASELINES_YAML
    for old, new in CHANGES:
        assert old in changed, old
        changed = changed.replace(old, new, 1)
    common = [("groups.yaml", _groups().encode()), ("instances.yaml", _instances(fleet).encode())]
    return (
        build_snapshot([("baselines.yaml", BASELINES_YAML.encode()), *common, _windows("SUN")]),
        build_snapshot([("baselines.yaml", changed.encode()), *common, _windows("SAT")]),
    )


def _groups() -> str:
    names = sorted({(b, p.operating_system) for p in PROFILES for b in p.baselines})
    return "---\n".join(
        f"{HEADER}kind: PatchGroup\nmetadata: {{name: {b}-group}}\n"
        f"spec: {{baselines: {{{os}: {b}}}}}\n"
        for b, os in names
    )


def _instances(fleet: list[Member]) -> str:
    return "---\n".join(
        f"{HEADER}kind: ManagedInstance\nmetadata: {{name: {m.inventory.instance_id}, "
        f"labels: {{patchwarden.io/patch-group: {m.patch_group}}}}}\n"
        "spec: {connection: {type: local}}\n"
        for m in fleet
    )


def _windows(day: str) -> tuple[str, bytes]:
    def window(name: str, schedule: str, groups: str, operation: str) -> str:
        return (
            f"{HEADER}kind: MaintenanceWindow\nmetadata: {{name: {name}}}\nspec:\n"
            f"  schedule: {schedule}\n  duration: 3\n  cutoff: 1\n"
            f"  targets: {{patchGroups: [{groups}]}}\n"
            f"  tasks: [{{name: {operation.lower()}, operation: {operation}, "
            "maxConcurrency: '10%', maxErrors: '1'}]\n"
        )

    text = "---\n".join(
        (
            window(
                "prod", f"cron(0 3 ? * {day} *)", "ubuntu-prod-group, al2023-prod-group", "Install"
            ),
            window("rest", "cron(0 4 ? * WED *)", "rhel-prod-group, suse-prod-group", "Install"),
            window("scan", "cron(0 1 * * ? *)", "ubuntu-dev-group", "Scan"),
        )
    )
    return "windows.yaml", text.encode()

"""Checks across documents: names, references, group membership, default baselines.

A snapshot is validated whole: every file of the directory together with the predefined baselines.
Errors are located in the document that has to change, at the line of the offending field.
"""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from reconciler.api.enums import OperatingSystem
from reconciler.api.snapshot import Snapshot, SnapshotInvalid, build_snapshot
from reconciler.defaults import predefined_baselines

Files = list[tuple[str, str]]


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def baseline(name: str, os: str = "UBUNTU", default: bool = False, comment: str = "") -> str:
    rules = (
        ""
        if os in ("UBUNTU", "DEBIAN")
        else "  approvalRules:\n"
        "    - patchFilterGroup: {patchFilters: [{key: PRODUCT, values: ['*']}]}\n"
        "      approveAfterDays: 7\n"
    )
    return (
        comment + "apiVersion: patchwarden.io/v1alpha1\n"
        "kind: PatchBaseline\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        f"  operatingSystem: {os}\n" + ("  defaultBaseline: true\n" if default else "") + rules
    )


def group(name: str, baselines: str = "", selector: str | None = None) -> str:
    text = f"apiVersion: patchwarden.io/v1alpha1\nkind: PatchGroup\nmetadata:\n  name: {name}\n"
    if selector is not None or baselines:
        text += "spec:\n"
    if selector is not None:
        text += f"  selector:\n    matchLabels: {{{selector}}}\n"
    if baselines:
        text += "  baselines:\n" + "".join(f"    {line}\n" for line in baselines.split("\n"))
    return text


def instance(name: str, labels: str) -> str:
    return doc(f"""
        apiVersion: patchwarden.io/v1alpha1
        kind: ManagedInstance
        metadata:
          name: {name}
          labels: {{{labels}}}
        spec:
          connection: {{type: local}}
        """)


def window(name: str, groups: str) -> str:
    return doc(f"""
        apiVersion: patchwarden.io/v1alpha1
        kind: MaintenanceWindow
        metadata:
          name: {name}
        spec:
          schedule: cron(0 2 ? * TUE *)
          duration: 3
          cutoff: 1
          targets:
            patchGroups: [{groups}]
          tasks:
            - name: install
              operation: Install
        """)


def report(name: str, groups: str) -> str:
    return doc(f"""
        apiVersion: patchwarden.io/v1alpha1
        kind: ComplianceReport
        metadata:
          name: {name}
        spec:
          schedule: rate(1 day)
          destination: /var/lib/patchwarden/reports
          scope:
            patchGroups: [{groups}]
        """)


def validate(files: Files) -> Snapshot:
    return build_snapshot([(name, text.encode()) for name, text in files], predefined_baselines())


def problems(files: Files) -> list[str]:
    with pytest.raises(SnapshotInvalid) as caught:
        validate(files)
    return [str(p) for p in caught.value.problems]


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not found")


# -- the predefined baselines ---------------------------------------------------------------------


def test_predefined_baselines_load_with_one_default_per_operating_system() -> None:
    predefined = predefined_baselines()
    assert len(predefined) == 17
    defaults = Counter(
        b.spec.operating_system for b in predefined.values() if b.spec.default_baseline
    )
    assert set(defaults) == set(OperatingSystem)
    assert len(defaults) == 15
    assert all(count == 1 for count in defaults.values()), defaults
    assert all(name.startswith("aws-") for name in predefined)


def test_every_operating_system_has_a_default_baseline_in_an_empty_snapshot() -> None:
    snapshot = validate([])
    for os in OperatingSystem:
        chosen = snapshot.default_baseline(os)
        assert chosen is not None and chosen.spec.operating_system is os


def test_a_user_default_replaces_the_predefined_one() -> None:
    snapshot = validate([("b.yaml", baseline("ubuntu-prod", default=True))])
    chosen = snapshot.default_baseline(OperatingSystem.UBUNTU)
    assert chosen is not None and chosen.metadata.name == "ubuntu-prod"


# -- a valid multi-file snapshot -------------------------------------------------------------------


def test_valid_snapshot_across_files() -> None:
    snapshot = validate(
        [
            ("baselines/ubuntu.yaml", baseline("ubuntu-prod")),
            ("baselines/rhel.yaml", baseline("rhel-prod", os="REDHAT_ENTERPRISE_LINUX")),
            (
                "groups.yaml",
                group(
                    "web",
                    "UBUNTU: ubuntu-prod\nREDHAT_ENTERPRISE_LINUX: rhel-prod\n"
                    "WINDOWS: aws-windows-default",
                    selector="role: web",
                ),
            ),
            ("instances.yaml", instance("web-1", "role: web")),
            ("windows.yaml", window("nightly", "web")),
            ("reports.yaml", report("daily", "web")),
        ]
    )
    assert set(snapshot.baselines) == {"ubuntu-prod", "rhel-prod"}
    assert [g.metadata.name for g in snapshot.groups_of({"role": "web"})] == ["web"]
    assert str(snapshot.locations[("PatchGroup", "web")]) == "groups.yaml:4"


def test_the_same_name_in_different_kinds_is_allowed() -> None:
    snapshot = validate(
        [("a.yaml", baseline("web")), ("b.yaml", group("web", "UBUNTU: web", "role: web"))]
    )
    assert "web" in snapshot.baselines and "web" in snapshot.groups


# -- duplicates ------------------------------------------------------------------------------------


def test_duplicate_name_names_the_first_location() -> None:
    second = baseline("ubuntu-prod", comment="# copied from a.yaml\n")
    found = problems([("a.yaml", baseline("ubuntu-prod")), ("b.yaml", second)])
    assert found == [
        "b.yaml:5: metadata.name: PatchBaseline 'ubuntu-prod' is already defined at a.yaml:4"
    ]


def test_duplicate_name_in_one_file() -> None:
    text = group("web", selector="role: web") + "---\n" + group("web", selector="role: app")
    found = problems([("groups.yaml", text)])
    second = line_of(text, "name: web", occurrence=2)
    assert found == [
        f"groups.yaml:{second}: metadata.name: PatchGroup 'web' is already defined at groups.yaml:4"
    ]


def test_a_user_baseline_may_not_take_a_predefined_name() -> None:
    found = problems([("b.yaml", baseline("aws-ubuntu-default"))])
    assert found == [
        "b.yaml:4: metadata.name: 'aws-ubuntu-default' is the name of a predefined baseline; "
        "choose another name (set spec.defaultBaseline: true to replace the default for an "
        "operating system)"
    ]


def test_same_os_twice_in_a_group_is_a_duplicate_key() -> None:
    text = group("web", "UBUNTU: ubuntu-prod\nUBUNTU: aws-ubuntu-default", "role: web")
    found = problems([("a.yaml", baseline("ubuntu-prod")), ("groups.yaml", text)])
    assert found == [
        f"groups.yaml:{line_of(text, 'UBUNTU', 2)}: duplicate key 'UBUNTU' "
        "(the earlier value would be lost)"
    ]


def test_two_user_defaults_for_one_os() -> None:
    second = baseline("ubuntu-canary", default=True)
    found = problems([("a.yaml", baseline("ubuntu-prod", default=True)), ("b.yaml", second)])
    assert found == [
        f"b.yaml:{line_of(second, 'defaultBaseline')}: spec.defaultBaseline: 'ubuntu-prod' is "
        "already the default baseline for UBUNTU"
    ]


def test_user_defaults_for_different_oses_are_fine() -> None:
    validate(
        [
            ("a.yaml", baseline("ubuntu-prod", default=True)),
            ("b.yaml", baseline("debian-prod", os="DEBIAN", default=True)),
        ]
    )


# -- references ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("ubuntu-prd", "no PatchBaseline named 'ubuntu-prd' (did you mean 'ubuntu-prod'?)"),
        (
            "aws-ubuntu-defualt",
            "no PatchBaseline named 'aws-ubuntu-defualt' (did you mean 'aws-ubuntu-default'?)",
        ),
        ("nothing-like-it", "no PatchBaseline named 'nothing-like-it'"),
    ],
)
def test_group_names_a_missing_baseline(reference: str, says: str) -> None:
    text = group("web", f"UBUNTU: {reference}", "role: web")
    found = problems([("a.yaml", baseline("ubuntu-prod")), ("groups.yaml", text)])
    assert found == [f"groups.yaml:{line_of(text, reference)}: spec.baselines.UBUNTU: {says}"]


def test_group_baseline_for_another_os() -> None:
    text = group("web", "UBUNTU: ubuntu-prod\nDEBIAN: ubuntu-prod", "role: web")
    found = problems([("a.yaml", baseline("ubuntu-prod")), ("groups.yaml", text)])
    assert found == [
        f"groups.yaml:{line_of(text, 'DEBIAN')}: spec.baselines.DEBIAN: baseline 'ubuntu-prod' "
        "is for UBUNTU, not DEBIAN"
    ]


def test_group_predefined_baseline_for_another_os() -> None:
    text = group("web", "WINDOWS: aws-ubuntu-default", "role: web")
    found = problems([("groups.yaml", text)])
    assert found == [
        f"groups.yaml:{line_of(text, 'WINDOWS')}: spec.baselines.WINDOWS: baseline "
        "'aws-ubuntu-default' is for UBUNTU, not WINDOWS"
    ]


def test_instance_selected_by_two_groups() -> None:
    groups = group("web", selector="role: web") + "---\n" + group("prod", selector="env: prod")
    inst = instance("web-1", "role: web, env: prod")
    found = problems([("groups.yaml", groups), ("instances.yaml", inst)])
    assert found == [
        f"instances.yaml:{line_of(inst, 'labels')}: metadata.labels: selected by patch groups "
        "web, prod; an instance belongs to at most one group: change its labels or the groups' "
        "selectors"
    ]


def test_instance_selected_by_label_and_by_selector() -> None:
    groups = group("db") + "---\n" + group("prod", selector="env: prod")
    inst = instance("db-1", "patchwarden.io/patch-group: db, env: prod")
    found = problems([("groups.yaml", groups), ("instances.yaml", inst)])
    assert len(found) == 1 and "selected by patch groups db, prod" in found[0]


def test_window_targets_a_missing_group() -> None:
    win = window("nightly", "web, dbs")
    found = problems([("groups.yaml", group("web") + "---\n" + group("db")), ("w.yaml", win)])
    assert found == [
        f"w.yaml:{line_of(win, 'patchGroups')}: spec.targets.patchGroups[1]: no PatchGroup "
        "named 'dbs' (did you mean 'db'?)"
    ]


def test_report_scoped_to_a_missing_group() -> None:
    rep = report("daily", "webb")
    found = problems([("groups.yaml", group("web")), ("r.yaml", rep)])
    assert found == [
        f"r.yaml:{line_of(rep, 'patchGroups')}: spec.scope.patchGroups[0]: no PatchGroup named "
        "'webb' (did you mean 'web'?)"
    ]


def test_an_invalid_document_is_not_reported_again_as_missing() -> None:
    # The group exists but is refused: its own error is the one to fix, not every reference to it.
    broken_group = group("web", "UBUNTU: ubuntu-prod", "role: web").replace("selector", "selecter")
    broken_baseline = baseline("ubuntu-prod").replace("operatingSystem", "operatingSytem")
    found = problems(
        [
            ("a.yaml", broken_baseline),
            ("groups.yaml", broken_group),
            ("w.yaml", window("nightly", "web")),
            ("r.yaml", report("daily", "web")),
        ]
    )
    assert [p.split(": ")[0].split(":")[0] for p in found] == [
        "a.yaml",
        "a.yaml",
        "groups.yaml",
    ], found
    assert not any("no Patch" in p for p in found)


def test_every_cross_document_problem_at_once() -> None:
    files = [
        ("a.yaml", baseline("ubuntu-prod", default=True)),
        ("b.yaml", baseline("ubuntu-prod")),
        ("c.yaml", baseline("ubuntu-two", default=True)),
        ("g.yaml", group("web", "UBUNTU: ubuntu-prd\nDEBIAN: ubuntu-two", "role: web")),
        ("h.yaml", group("all", selector="")),
        ("i.yaml", instance("web-1", "role: web")),
        ("w.yaml", window("nightly", "web, nope")),
    ]
    found = problems(files)
    assert [p.split(":")[0] for p in found] == [
        "b.yaml",  # duplicate name
        "c.yaml",  # second default for UBUNTU
        "g.yaml",  # DEBIAN -> a UBUNTU baseline
        "g.yaml",  # missing baseline
        "i.yaml",  # in two groups (the empty selector selects everything)
        "w.yaml",  # missing group
    ], found


def ssh_instance(name: str, labels: str, connection: str) -> str:
    return instance(name, labels).replace(
        "{type: local}", f"{{type: ssh, host: {name}, {connection}}}"
    )


def test_an_install_window_on_a_non_root_login_without_become_is_refused_at_its_line() -> None:
    """Issue 14 item 2: such installs would all fail (InstallNeedsRoot), so validate says so
    before the window; a Scan window, become: sudo, root or a disabled window are fine."""
    groups = group("web") + "---\n" + group("db")
    insts = "---\n".join(
        [
            ssh_instance("web-1", "patchwarden.io/patch-group: web", "user: ubuntu"),
            ssh_instance("web-2", "patchwarden.io/patch-group: web", "user: ubuntu, become: sudo"),
            ssh_instance(
                "web-3",
                "patchwarden.io/patch-group: web",
                "user: ubuntu, become: sudo, becomeUser: postgres",
            ),
            ssh_instance("web-4", "patchwarden.io/patch-group: web", "user: root"),
            ssh_instance("db-1", "patchwarden.io/patch-group: db", "user: ubuntu"),
        ]
    )
    scans = window("scans", "db").replace("operation: Install", "operation: Scan")
    off = window("paused", "db").replace("cutoff: 1\n", "cutoff: 1\n  enabled: false\n")
    found = problems(
        [
            ("groups.yaml", groups),
            ("instances.yaml", insts),
            ("w.yaml", window("tuesday", "web") + "---\n" + scans + "---\n" + off),
        ]
    )
    assert found == [
        f"instances.yaml:{line_of(insts, 'user: ubuntu}')}: spec.connection.user: window "
        "tuesday installs here (task install) and an Install needs root, but the agent would "
        "run as ubuntu: add become: sudo (and a sudoers rule for ubuntu on the machine), or "
        "log in as root",
        f"instances.yaml:{line_of(insts, 'becomeUser')}: spec.connection.becomeUser: window "
        "tuesday installs here (task install) and an Install needs root, but the agent would "
        "run as postgres: remove becomeUser (sudo's default is root)",
    ]

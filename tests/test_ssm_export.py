"""``patchctl export ssm``: our baselines, patch groups and maintenance windows created or
updated in AWS Systems Manager; a dry run by default, ``--apply`` to do it; what SSM cannot hold
refused at its file and line before any call. And the round trip: export, then import, gives the
same resources back.

SSM is moto's server (tests/awslab.py): an EMULATOR of the SSM API, not SSM itself. moto lacks
UpdatePatchBaseline and UpdateMaintenanceWindow, so the update path is shown as a dry run only,
and it lacks GetPatchBaseline, so the round-trip property runs on the requests export sends,
answered in the response shapes AWS documents (see tests/test_ssm_import.py for the reading).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.api.snapshot import build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.sources.ssm import SsmAccount, SsmWindow, convert
from reconciler.sources.ssm.convert import SSM_NAME
from reconciler.sources.ssm.outbound import Outbound, to_ssm
from tests import awslab

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "tests" / "ssmdata" / "resources"
REGION = "eu-central-1"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    with awslab.moto_server() as url:
        yield url


@pytest.fixture
def ssm(
    moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[str, str]]:
    env = awslab.isolated_aws(monkeypatch, tmp_path)
    env.update(AWS_ACCESS_KEY_ID="moto-key", AWS_SECRET_ACCESS_KEY="moto-secret")
    env["AWS_ENDPOINT_URL_SSM"] = awslab.moto_reset(moto_server)
    client = boto3.client(
        "ssm",
        region_name=REGION,
        endpoint_url=moto_server,
        aws_access_key_id="moto-key",
        aws_secret_access_key="moto-secret",
    )
    return client, env


def export(
    env: dict[str, str], *args: str, path: Path = RESOURCES
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "export", "ssm", str(path), "--region", REGION, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def windows(client: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = client.describe_maintenance_windows()["WindowIdentities"]
    return found


def test_a_dry_run_says_what_it_would_do_and_changes_nothing(
    ssm: tuple[Any, dict[str, str]],
) -> None:
    client, env = ssm
    done = export(env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "would create patch baseline Prod-AL2023",
        "would register patch group prod with Prod-AL2023 for AMAZON_LINUX_2023",
        "would create maintenance window prod-tuesday-night: 2 target(s), 1 AWS-RunPatchBaseline task(s)",
        "dry run: nothing was changed in SSM; --apply does it",
    ]
    assert (
        client.describe_patch_baselines(Filters=[{"Key": "OWNER", "Values": ["Self"]}])[
            "BaselineIdentities"
        ]
        == []
    )
    assert windows(client) == []


def test_apply_creates_the_baseline_registration_window_targets_and_task(
    ssm: tuple[Any, dict[str, str]],
) -> None:
    client, env = ssm
    done = export(env, "--apply")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "create patch baseline Prod-AL2023"
    (identity,) = client.describe_patch_baselines(Filters=[{"Key": "OWNER", "Values": ["Self"]}])[
        "BaselineIdentities"
    ]
    assert (identity["BaselineName"], identity["OperatingSystem"]) == (
        "Prod-AL2023",
        "AMAZON_LINUX_2023",
    )
    registered = client.get_patch_baseline_for_patch_group(
        PatchGroup="prod", OperatingSystem="AMAZON_LINUX_2023"
    )
    assert registered["BaselineId"] == identity["BaselineId"]
    (window,) = windows(client)
    assert (window["Name"], window["Schedule"], window["ScheduleTimezone"]) == (
        "prod-tuesday-night",
        "cron(0 22 ? * TUE#2 *)",
        "Europe/Berlin",
    )
    assert (window["ScheduleOffset"], window["Duration"], window["Cutoff"]) == (2, 4, 1)
    targets = client.describe_maintenance_window_targets(WindowId=window["WindowId"])["Targets"]
    assert sorted(str(t["Targets"]) for t in targets) == [
        str([{"Key": "tag:Environment", "Values": ["Production"]}]),
        str([{"Key": "tag:Patch Group", "Values": ["prod"]}]),
    ]
    (task,) = client.describe_maintenance_window_tasks(WindowId=window["WindowId"])["Tasks"]
    assert (task["TaskArn"], task["MaxConcurrency"], task["MaxErrors"]) == (
        "AWS-RunPatchBaseline",
        "10%",
        "1",
    )
    assert sorted(task["Targets"][0]["Values"]) == sorted(t["WindowTargetId"] for t in targets)
    # A second export finds them by name: updates, and the registration already in place.
    again = export(env)
    assert again.stdout.splitlines() == [
        "would update patch baseline Prod-AL2023",
        "would update maintenance window prod-tuesday-night: 2 target(s), 1 AWS-RunPatchBaseline task(s)",
        "dry run: nothing was changed in SSM; --apply does it",
    ]


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (
            (
                "MaintenanceWindow",
                "tasks",
                [
                    {
                        "name": "gated",
                        "operation": "Install",
                        "gates": [{"name": "g", "prometheus": {"url": "http://p", "query": "up"}}],
                    }
                ],
            ),
            "spec.tasks.0.gates",
            "gates has no AWS-RunPatchBaseline parameter of this form: remove it to export",
        ),
        (
            ("MaintenanceWindow", "scheduleOffset", 14),
            "spec.scheduleOffset",
            "SSM allows 1-6 days (got 14, a Patchwarden extension): lower it or move the cron "
            "expression to export",
        ),
        (
            ("PatchBaseline", "approveAfterDaysFrom", "FirstSeen"),
            "spec.approveAfterDaysFrom",
            "SSM has no approveAfterDaysFrom (a Patchwarden extension): remove it to export",
        ),
        (
            (
                "MaintenanceWindow",
                "targets",
                {
                    "selector": {
                        "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]
                    }
                },
            ),
            "spec.targets.selector.matchExpressions.0.operator",
            "SSM targets tags that are present: NotIn has no form there",
        ),
        (
            ("PatchGroup", "holds", ["postgresql-*"]),
            "spec.holds",
            "SSM has no package holds (a Patchwarden extension): remove them to export, or list "
            "the packages in the baselines' rejectedPatches (counted alike with "
            "ALLOW_AS_DEPENDENCY)",
        ),
    ],
)
def test_what_ssm_cannot_hold_is_refused_before_any_call(
    ssm: tuple[Any, dict[str, str]],
    tmp_path: Path,
    edit: tuple[str, str, Any],
    field: str,
    message: str,
) -> None:
    client, env = ssm
    docs = list(yaml.safe_load_all((RESOURCES / "fleet.yaml").read_text()))
    kind, key, value = edit
    for doc in docs:
        if kind == "PatchBaseline" and doc["kind"] == "PatchGroup":
            doc["spec"]["baselines"] = {"UBUNTU": "prod-al2023"}
        if doc["kind"] == kind:
            doc["spec"][key] = value
            if kind == "PatchBaseline":
                doc["spec"]["operatingSystem"] = "UBUNTU"
                doc["spec"]["approvalRules"][0]["patchFilterGroup"]["patchFilters"] = [
                    {"key": "PRIORITY", "values": ["Required"]}
                ]
    path = tmp_path / "resources"
    path.mkdir()
    (path / "fleet.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    done = export(env, "--apply", path=path)
    assert done.returncode == 1
    first = done.stderr.splitlines()[0]
    assert first.startswith("fleet.yaml:") and first.endswith(f": {field}: {message}"), first
    assert done.stderr.splitlines()[-1] == "refused: 1 problem(s); nothing was applied"
    assert windows(client) == []


def test_a_window_guarded_by_a_change_calendar_is_refused_before_any_call(
    ssm: tuple[Any, dict[str, str]], tmp_path: Path
) -> None:
    client, env = ssm
    docs = list(yaml.safe_load_all((RESOURCES / "fleet.yaml").read_text()))
    for doc in docs:
        if doc["kind"] == "MaintenanceWindow":
            doc["spec"]["changeCalendars"] = ["freeze"]
    calendar = {"kind": "ChangeCalendar", "metadata": {"name": "freeze"}}
    docs.append({"apiVersion": docs[0]["apiVersion"], **calendar, "spec": {"type": "DEFAULT_OPEN"}})
    path = tmp_path / "resources"
    path.mkdir()
    (path / "fleet.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    done = export(env, "--apply", path=path)
    assert done.returncode == 1
    first = done.stderr.splitlines()[0]
    assert first.endswith(
        ": spec.changeCalendars: SSM maintenance windows take no change calendar (SSM checks one "
        "only in State Manager associations and Automation runbooks): remove changeCalendars to "
        "export"
    ), first
    assert windows(client) == []


def test_without_credentials_it_says_how_to_give_them(ssm: tuple[Any, dict[str, str]]) -> None:
    _, env = ssm
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    done = export(env)
    assert done.returncode == 1
    assert done.stderr.startswith("patchctl: cannot export to SSM: no usable AWS credentials")


# -- export -> import gives the same resources ------------------------------------------------

_WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=3, max_size=10)
# Package names (digits alone would read as Bugzilla ids, which rejectedPatches refuses).
_PACKAGE = _WORD.map(lambda word: f"pkg-{word}")
_LEVEL = st.sampled_from(["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED"])


@st.composite
def _baseline(draw: st.DrawFn, name: str) -> dict[str, Any]:
    rule = st.fixed_dictionaries(
        {
            "patchFilterGroup": st.just(
                {"patchFilters": [{"key": "CLASSIFICATION", "values": ["Security"]}]}
            ),
            "approveAfterDays": st.integers(0, 360),
            "complianceLevel": _LEVEL,
            "enableNonSecurity": st.booleans(),
        }
    )
    spec = {
        "operatingSystem": "REDHAT_ENTERPRISE_LINUX",
        "approvalRules": draw(st.lists(rule, max_size=3)),
        "approvedPatches": draw(st.lists(_PACKAGE, max_size=3, unique=True)),
        "approvedPatchesComplianceLevel": draw(_LEVEL),
        "rejectedPatches": draw(st.lists(_PACKAGE, max_size=3, unique=True)),
        "rejectedPatchesAction": draw(st.sampled_from(["ALLOW_AS_DEPENDENCY", "BLOCK"])),
    }
    if draw(st.booleans()):
        spec["description"] = draw(_WORD)
    return {"kind": "PatchBaseline", "metadata": {"name": name}, "spec": spec}


@st.composite
def _window(draw: st.DrawFn, groups: list[str]) -> dict[str, Any]:
    duration = draw(st.integers(1, 24))
    task = st.fixed_dictionaries(
        {
            "name": _WORD,
            "operation": st.sampled_from(["Scan", "Install"]),
            "rebootOption": st.sampled_from(["RebootIfNeeded", "NoReboot"]),
            "maxConcurrency": st.sampled_from(["1", "10", "10%", "100%"]),
            "maxErrors": st.sampled_from(["0", "1", "5%"]),
            "priority": st.integers(0, 5),
            "cutoffBehavior": st.sampled_from(["CONTINUE_TASK", "CANCEL_TASK"]),
        }
    )
    tasks = draw(st.lists(task, min_size=1, max_size=3, unique_by=lambda t: t["name"]))
    targets: dict[str, Any] = {"patchGroups": groups}
    if draw(st.booleans()):
        targets["selector"] = {
            "matchExpressions": [{"key": "env", "operator": "In", "values": [draw(_WORD)]}]
        }
    spec = {
        "schedule": draw(
            st.sampled_from(["cron(0 2 ? * SUN *)", "rate(7 days)", "cron(30 23 ? * TUE#2 *)"])
        ),
        "scheduleTimezone": draw(st.sampled_from(["UTC", "Europe/Berlin", "America/Los_Angeles"])),
        "duration": duration,
        "cutoff": draw(st.integers(0, duration - 1)),
        "enabled": draw(st.booleans()),
        "targets": targets,
        "tasks": tasks,
    }
    return {"kind": "MaintenanceWindow", "metadata": {"name": draw(_WORD)}, "spec": spec}


@st.composite
def resources(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(_WORD, min_size=1, max_size=3, unique=True))
    docs = [draw(_baseline(f"b-{name}")) for name in names]
    groups = draw(st.lists(_WORD, min_size=1, max_size=2, unique=True))
    for i, group in enumerate(groups):
        baseline = names[i % len(names)]
        spec = {"baselines": {"REDHAT_ENTERPRISE_LINUX": f"b-{baseline}"}}
        docs.append({"kind": "PatchGroup", "metadata": {"name": f"g-{group}"}, "spec": spec})
    docs.append(draw(_window([f"g-{g}" for g in groups])))
    return [{"apiVersion": "patchwarden.io/v1alpha1", **doc} for doc in docs]


def answered(outbound: Outbound) -> SsmAccount:
    """What SSM answers after ``outbound`` was sent: each request in its Get/Describe response
    shape (the same field names, with SSM's ids)."""
    baselines = [{**b, "BaselineId": f"pb-{i:017x}"} for i, b in enumerate(outbound.baselines)]
    mappings = [
        {"PatchGroup": group, "BaselineIdentity": {"BaselineName": name, "OperatingSystem": system}}
        for group, name, system in outbound.registrations
    ]
    windows = []
    for i, sent in enumerate(outbound.windows):
        window = {**sent.window, "WindowId": f"mw-{i:017x}", "Enabled": sent.enabled}
        targets = [{**t, "WindowTargetId": f"t{n}"} for n, t in enumerate(sent.targets)]
        tasks = [
            {**t, "WindowTaskId": f"k{n}", "Type": t["TaskType"]} for n, t in enumerate(sent.tasks)
        ]
        windows.append(SsmWindow(window, tuple(targets), tuple(tasks)))
    return SsmAccount(tuple(baselines), tuple(mappings), tuple(windows))


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    annotations = doc["metadata"].get("annotations", {})
    return {"kind": doc["kind"], "name": doc["metadata"]["name"], "ssm": annotations.get(SSM_NAME)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resources())
def test_export_then_import_gives_the_same_resources(docs: list[dict[str, Any]]) -> None:
    predefined = predefined_baselines()
    snapshot = build_snapshot([("gen.yaml", yaml.safe_dump_all(docs).encode())], predefined)
    by_ssm_name = {
        b.metadata.annotations[SSM_NAME]: n
        for n, b in predefined.items()
        if SSM_NAME in b.metadata.annotations
    }
    back = convert(answered(to_ssm(snapshot)), by_ssm_name)
    assert back.not_carried == ()
    again = build_snapshot([("back.yaml", yaml.safe_dump_all(back.documents).encode())], predefined)
    for kind in ("baselines", "groups", "windows"):
        theirs, ours = getattr(again, kind), getattr(snapshot, kind)
        assert set(theirs) == set(ours)
        for name, resource in ours.items():
            assert theirs[name].spec == resource.spec, name

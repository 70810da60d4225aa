"""``patchctl diff``: a reviewed change judged against the recorded scans of a real state store,
on a real Git repository (tests/difflab.py): each kind of change, exit codes, each format."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from reconciler.report.views.diff import Diff, InstanceChange, Side
from reconciler.report.views.diffrender import markdown
from tests.difflab import AFTER, HEADER, Fleet, fleet, patchctl, record_scans, write

NOW = "2026-11-28T12:00:00Z"  # a Saturday: web-sunday opened on the 29th, now on Dec 5th


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return fleet(tmp_path_factory.mktemp("diff"))


def diff(lab: Fleet, *args: str) -> tuple[int, str, str]:
    url = f"file://{lab.upstream.bare}"
    done = patchctl("diff", "--source", url, "--state", str(lab.state), "--now", NOW, *args)
    return done.returncode, done.stdout, done.stderr


def document(lab: Fleet, *args: str) -> dict[str, object]:
    code, out, err = diff(lab, "--from", lab.before, *args, "-o", "json")
    assert (code, err) == (3, ""), err
    return dict(json.loads(out))


def test_approvals_rejections_and_compliance_per_instance(lab: Fleet) -> None:
    found = document(lab, "--to", lab.after)
    instances = {i["instance"]: i for i in found["instances"]}  # type: ignore[attr-defined]
    web = instances["web-1"]
    assert web["newlyApproved"] == ["openssl=3.0.2-1", "openssl=3.0.2-2"]
    assert web["noLongerApproved"] == ["curl=7.81.0-1", "curl=7.81.0-2"]
    assert web["newlyRejected"] == ["curl=7.81.0-1", "curl=7.81.0-2"]
    assert web["compliance"] == {"before": "NON_COMPLIANT", "after": "NON_COMPLIANT"}
    db = instances["db-1"]
    assert db["compliance"] == {"before": "NON_COMPLIANT", "after": "COMPLIANT"}
    assert db["noLongerApproved"] == [
        "curl=7.81.0-1",
        "curl=7.81.0-2",
        "openssl=3.0.2-1",
        "openssl=3.0.2-2",
    ]
    assert found["totals"] == {
        "instances": 3,
        "newlyApproved": 4,
        "noLongerApproved": 8,
        "newlyRejected": 4,
        "complianceChanges": 1,
        "windowsAdded": 1,
        "windowsRemoved": 1,
        "windowsRescheduled": 1,
        "installsChanged": 1,
    }


def test_sums_per_baseline_and_group(lab: Fleet) -> None:
    found = document(lab, "--to", lab.after)
    baselines = {b["name"]: b for b in found["baselines"]}  # type: ignore[attr-defined]
    assert baselines["web-prod"]["instances"] == 2
    assert baselines["web-prod"]["newlyRejected"] == ["curl=7.81.0-1", "curl=7.81.0-2"]
    assert (baselines["db-prod"]["nowCompliant"], baselines["db-prod"]["nowNonCompliant"]) == (1, 0)
    groups = {g["name"]: g["instances"] for g in found["groups"]}  # type: ignore[attr-defined]
    assert groups == {"db": 1, "web": 2}


def test_windows_added_removed_rescheduled_with_next_openings(lab: Fleet) -> None:
    found = document(lab, "--to", lab.after)
    windows = {w["window"]: w for w in found["windows"]}  # type: ignore[attr-defined]
    assert windows["db-monthly"]["change"] == "added"
    assert windows["db-monthly"]["nextOpening"] == {
        "before": None,
        "after": "2026-12-01T04:00:00+00:00",
    }
    assert windows["old-scan"]["change"] == "removed"
    assert windows["old-scan"]["nextOpening"]["after"] is None
    moved = windows["web-sunday"]
    assert moved["change"] == "rescheduled"
    assert moved["nextOpening"] == {
        "before": "2026-11-29T03:00:00+00:00",
        "after": "2026-12-05T03:00:00+00:00",
    }
    assert "SAT" in moved["schedule"]["after"] and "SUN" in moved["schedule"]["before"]


def test_what_each_next_opening_would_install(lab: Fleet) -> None:
    found = document(lab, "--to", lab.after)
    installs = {i["window"]: i for i in found["nextInstalls"]}  # type: ignore[attr-defined]
    web = installs["web-sunday"]
    assert web["opening"] == "2026-12-05T03:00:00+00:00"
    assert {i["instance"]: (i["before"], i["after"]) for i in web["instances"]} == {
        "web-1": (["curl=7.81.0-2"], ["openssl=3.0.2-2"]),
        "web-2": (["curl=7.81.0-2"], ["openssl=3.0.2-2"]),
    }
    db = installs["db-monthly"]  # db-1 is compliant under the new db-prod: nothing to install
    assert db["instances"] == [{"instance": "db-1", "before": [], "after": []}]


def test_no_change_exits_0(lab: Fleet) -> None:
    code, out, err = diff(lab, "--from", lab.after, "--to", lab.after)
    assert (code, err) == (0, "")
    assert "No change" in out


def test_against_a_directory_of_custom_resources(lab: Fleet, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(lab.upstream.work, tree, ignore=shutil.ignore_patterns(".git"))
    via_git = document(lab, "--to", lab.after)
    via_dir = document(lab, "--against", str(tree))
    assert via_dir["instances"] == via_git["instances"]
    assert via_dir["windows"] == via_git["windows"]


def test_table_lists_totals_then_each_kind(lab: Fleet) -> None:
    code, out, _ = diff(lab, "--from", lab.before, "--to", lab.after)
    assert code == 3
    first, totals = out.splitlines()[:2]
    assert first == f"patchctl diff: {lab.before[:12]} → {lab.after[:12]}"
    assert totals.startswith("3 instance(s) change: 4 newly approved")
    for title in ("Baselines", "Patch groups", "Instances", "Windows", "Next openings"):
        assert title in out
    assert "NON_COMPLIANT → COMPLIANT" in out


def _markdown_sections(text: str) -> list[tuple[str, list[str]]]:
    """(summary, table rows) of each <details> section."""
    sections = []
    for chunk in text.split("<details>")[1:]:
        body, _, _ = chunk.partition("</details>")
        summary = body.split("<summary>")[1].split("</summary>")[0]
        sections.append((summary, [ln for ln in body.splitlines() if ln.startswith("|")]))
    return sections


def test_markdown_totals_first_details_folded(lab: Fleet) -> None:
    code, out, _ = diff(lab, "--from", lab.before, "--to", lab.after, "-o", "markdown")
    assert code == 3
    head = out.split("<details>")[0].strip().splitlines()
    assert head[0].startswith("### patchctl diff: ")
    assert head[-1].startswith("3 instance(s) change")
    sections = dict(_markdown_sections(out))
    assert list(sections) == [
        "Baselines (2)",
        "Patch groups (2)",
        "Instances (3)",
        "Windows (3)",
        "Next openings: what each would install (3)",
    ]
    for rows in sections.values():
        header, rule, *body = rows
        assert rule.count("---|") == header.count(" | ") + 1
        assert all(row.count(" | ") == header.count(" | ") for row in body)
    assert len(sections["Instances (3)"]) == 2 + 3


def test_markdown_is_cut_past_the_limit_with_a_count(lab: Fleet) -> None:
    _, out, _ = diff(lab, "--from", lab.before, "--to", lab.after, "-o", "markdown", "--limit", "1")
    sections = dict(_markdown_sections(out))
    assert len(sections["Instances (3)"]) == 2 + 1
    assert "… and 2 more" in out


def test_unknown_revision_is_one_line(lab: Fleet) -> None:
    code, out, err = diff(lab, "--from", lab.before, "--to", "no-such-branch")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("patchctl: --to no-such-branch: ")
    assert "no branch, tag or commit named 'no-such-branch'" in err


def test_unreadable_repository_is_one_line(lab: Fleet, tmp_path: Path) -> None:
    done = patchctl(
        "diff", "--source", f"file://{tmp_path}/nothing", "--state", str(lab.state),
        "--from", "main", "--to", "main",
    )  # fmt: skip
    code, err = done.returncode, done.stderr
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("patchctl: --from main: cannot fetch file://")


def test_invalid_yaml_at_one_revision_names_it_and_the_field(lab: Fleet) -> None:
    write(lab.upstream, {**AFTER, "groups.yaml": "kind: PatchGroup\nmetadata: {name: x}\n"})
    broken = lab.upstream.commit("broken")
    write(lab.upstream, AFTER)
    lab.upstream.commit("fixed")
    code, _, err = diff(lab, "--from", lab.before, "--to", broken)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"patchctl: --to {broken}: groups.yaml:1: ")
    assert "apiVersion" in err


def test_missing_state_is_one_line(lab: Fleet, tmp_path: Path) -> None:
    done = patchctl(
        "diff", "--source", f"file://{lab.upstream.bare}", "--state", str(tmp_path / "none.db"),
        "--from", lab.before, "--to", lab.after,
    )  # fmt: skip
    code, err = done.returncode, done.stderr
    assert code == 1
    assert (
        err
        == f"patchctl: --state {tmp_path / 'none.db'}: no such file (the state database with the scans)\n"
    )


def test_machines_an_instance_source_lists_at_a_revision_are_judged(
    lab: Fleet, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    shutil.copy(lab.state, state)
    record_scans(state, ("app-1",))
    write(lab.upstream, AFTER)
    lab.upstream.write(
        "enrol.yaml",
        f"{HEADER}kind: InstanceSource\nmetadata:\n  name: apps\nspec:\n"
        "  static:\n    hosts: [{name: app-1, address: 10.0.1.11}]\n"
        "  connection: {user: admin}\n  labels: {role: web}\n",
    )
    enrolled = lab.upstream.commit("enrol app-1")
    (lab.upstream.work / "enrol.yaml").unlink()
    lab.upstream.commit("enrol nothing")
    done = patchctl(
        "diff", "--source", f"file://{lab.upstream.bare}", "--state", str(state), "--now", NOW,
        "--from", lab.after, "--to", enrolled, "-o", "json",
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    (app,) = json.loads(done.stdout)["instances"]
    assert (app["instance"], app["group"], app["compliance"]) == (
        "app-1",
        {"before": None, "after": "web"},
        {"before": "ABSENT", "after": "NON_COMPLIANT"},
    )


def test_markdown_shows_names_from_machines_as_text() -> None:
    hostile = "<img src=x onerror=alert(1)>|x"
    change = InstanceChange("web-1", Side(), Side(baseline="b", status="COMPLIANT",
                            approved=frozenset({hostile + "=1"})))  # fmt: skip
    text = markdown(Diff((change,), (), ()), "patchctl diff: a → b")
    (row,) = [ln for ln in text.splitlines() if ln.startswith("| web-1")]
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;\\|x=1" in row
    assert row.count(" | ") == 6  # the | inside the name is escaped: still seven cells


def test_markdown_of_a_large_change_fits_in_one_comment() -> None:
    approved = frozenset(f"package-with-a-long-name-{n}=1.0.{n}" for n in range(300))
    changes = tuple(
        InstanceChange(f"web-{n:04}", Side(), Side(baseline="b", status="NON_COMPLIANT", approved=approved))
        for n in range(2000)
    )  # fmt: skip
    text = markdown(Diff(changes, (), ()), "patchctl diff: a → b")
    assert len(text) <= 60_000
    assert "<summary>Instances (2000)</summary>" in text
    assert "(+295 more)" in text and re.search(r"… and \d+ more", text)


@pytest.mark.parametrize("after", [[], ["--to", "main", "--against", "."]])
def test_to_or_against_exactly_one_is_a_usage_error(lab: Fleet, after: list[str]) -> None:
    code, out, err = diff(lab, "--from", lab.before, *after)
    assert (code, out) == (2, "")
    assert "--to" in err.splitlines()[-1] and "--against" in err.splitlines()[-1]


def test_both_revisions_share_one_clone(lab: Fleet, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    shutil.copy(lab.state, state)
    done = patchctl(
        "diff", "--source", f"file://{lab.upstream.bare}", "--state", str(state),
        "--from", lab.before, "--to", lab.after,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert len(list((tmp_path / "git").iterdir())) == 1  # the clone lives beside the state

"""The CI templates of examples/ci/ and the pre-commit hook: their ``patchctl`` commands, taken
from the YAML itself and run as the CI would run them (bash, the variables CI sets) in a CI-like
checkout of a real Git repository with two commits, against a real state store with scans."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.difflab import Fleet, fleet
from tests.git_servers import run

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / "examples" / "ci" / ".github" / "workflows" / "patchwarden.yml"
GITLAB = ROOT / "examples" / "ci" / ".gitlab-ci.yml"
HOOKS = ROOT / ".pre-commit-hooks.yaml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return fleet(tmp_path_factory.mktemp("ci"))


def checkout(lab: Fleet, tmp_path: Path, commit: str) -> Path:
    """The pull request's commit as CI checks it out: a clone at a detached HEAD, no local
    branch (the base commit is reachable only through the remote's refs)."""
    work = tmp_path / "checkout"
    run(["git", "clone", "--quiet", str(lab.upstream.bare), str(work)])
    run(["git", "checkout", "--quiet", "--detach", commit], cwd=work)
    run(["git", "branch", "--quiet", "-D", "main"], cwd=work)
    return work


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``script`` as the runner's shell runs it, with this checkout's patchctl first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env={**os.environ, **env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )


def patchctl_steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    """The workflow's steps that run patchctl (not those that install it or post its output)."""
    steps = workflow["jobs"]["review"]["steps"]
    return [s for s in steps if re.search(r"^\s*patchctl ", s.get("run", ""), re.M)]


def test_github_workflow_runs_validate_and_diff_on_the_pull_request(
    lab: Fleet, tmp_path: Path
) -> None:
    workflow = yaml.safe_load(GITHUB.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    steps = patchctl_steps(workflow)
    assert [s["name"] for s in steps] == [
        "Validate the resources",
        "What the change does to the fleet",
    ]
    work = checkout(lab, tmp_path, lab.after)
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    shutil.copy(lab.state, temp / "state.db")  # what the step before downloads from S3
    given = {"RUNNER_TEMP": str(temp), "BASE_SHA": lab.before, "HEAD_SHA": lab.after}
    for step in steps:
        assert set(step.get("env", {})) <= set(given)
        done = bash(step["run"], work, given)
        assert done.returncode == 0, done.stderr
    comment = (temp / "diff.md").read_text()
    assert comment.startswith(f"### patchctl diff: {lab.before[:12]} → {lab.after[:12]}")
    assert "<summary>Instances (3)</summary>" in comment


def test_github_workflow_fails_on_invalid_resources(lab: Fleet, tmp_path: Path) -> None:
    lab.upstream.write("groups.yaml", "kind: PatchGroup\nmetadata: {name: x}\n")
    broken = lab.upstream.commit("broken")
    work = checkout(lab, tmp_path, broken)
    temp = tmp_path / "runner-temp"
    temp.mkdir()
    shutil.copy(lab.state, temp / "state.db")
    given = {"RUNNER_TEMP": str(temp), "BASE_SHA": lab.after, "HEAD_SHA": broken}
    validate, diff = patchctl_steps(yaml.safe_load(GITHUB.read_text()))
    done = bash(validate["run"], work, given)
    assert done.returncode == 1 and "groups.yaml:1: " in done.stderr
    done = bash(diff["run"], work, given)  # an error (1) is not "changes" (3): the step fails
    assert done.returncode != 0
    assert done.stderr.startswith(f"patchctl: --to {broken}: groups.yaml:1: ")


def test_gitlab_job_runs_validate_and_diff_on_the_merge_request(lab: Fleet, tmp_path: Path) -> None:
    job = yaml.safe_load(GITLAB.read_text())["patchwarden-review"]
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    lines = [line for line in job["script"] if line.startswith("patchctl ")]
    assert [line.split()[1] for line in lines] == ["validate", "diff"]
    work = checkout(lab, tmp_path, lab.after)
    shutil.copy(lab.state, tmp_path / "state.db")  # what the line before downloads from S3
    given = {
        **job["variables"],
        "STATE_DB": str(tmp_path / "state.db"),
        "DIFF_MD": str(tmp_path / "diff.md"),
        "CI_MERGE_REQUEST_DIFF_BASE_SHA": lab.before,
        "CI_COMMIT_SHA": lab.after,
    }
    for line in lines:
        done = bash(line, work, given)
        assert done.returncode == 0, done.stderr
    note = (tmp_path / "diff.md").read_text()
    assert "3 instance(s) change" in note.split("<details>")[0]


def test_pre_commit_hook_validates_the_repository(lab: Fleet, tmp_path: Path) -> None:
    (hook,) = yaml.safe_load(HOOKS.read_text())
    assert (hook["id"], hook["language"], hook["pass_filenames"]) == (
        "patchctl-validate",
        "python",
        False,
    )
    assert re.search(hook["files"], "windows/web-sunday.yaml")
    work = checkout(lab, tmp_path, lab.after)
    command = shlex.join([*shlex.split(hook["entry"]), *hook.get("args", [])])
    done = bash(command, work, {})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(".: valid (2 PatchBaseline, 2 PatchGroup, 2 MaintenanceWindow")
    (work / "groups.yaml").write_text("kind: PatchGroup\nmetadata: {name: x}\n")
    done = bash(command, work, {})
    assert done.returncode == 1 and "groups.yaml:1: " in done.stderr

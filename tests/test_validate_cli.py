"""``patchctl validate`` end to end: the examples, the error format, hostile files, file discovery.

Every case runs the real command in a subprocess and looks at what a user sees: the exit code and
``file:line: field.path: message`` lines on stderr, never a Python traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from reconciler.api.snapshot import build_snapshot
from reconciler.api.yamldocs import MAX_BYTES, MAX_DEPTH, MAX_NODES
from reconciler.defaults import predefined_baselines
from reconciler.sources.base import YAML_SUFFIXES, is_resource

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The files a snapshot of examples/ reads, by the sources' own rule: the CI templates under
# examples/ci/ sit in hidden paths (.github/, .gitlab-ci.yml), as in a repository, and are none.
SNAPSHOT_FILES = sorted(
    p
    for p in EXAMPLES.rglob("*")
    if p.is_file() and is_resource(p.relative_to(EXAMPLES).as_posix())
)
"""What a source reads: resources, and the iCalendar files a ChangeCalendar names."""
EXAMPLE_FILES = [p for p in SNAPSHOT_FILES if p.suffix in YAML_SUFFIXES]
PROBLEM = re.compile(
    r"^(?P<file>[^:\s]+):(?P<line>[1-9][0-9]*): (?:(?P<path>[\w.\[\]/-]+): )?(?P<message>.+)$"
)
SUMMARY = re.compile(r"^refused: (?P<count>\d+) problem\(s\); nothing was applied$")


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def problems(self) -> list[str]:
        """The problem lines, after checking that stderr holds nothing else."""
        lines = self.stderr.splitlines()
        assert lines, "expected problems on stderr"
        summary = SUMMARY.match(lines[-1])
        assert summary, lines[-1]
        assert int(summary["count"]) == len(lines) - 1
        for line in lines[:-1]:
            assert PROBLEM.match(line), f"not file:line: path: message: {line!r}"
        return lines[:-1]


def validate(path: Path, *args: str, cwd: Path = ROOT) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "PATCHWARDEN_DEBUG"}
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(path), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "internal error" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


def refused(path: Path, cwd: Path = ROOT) -> list[str]:
    run = validate(path, cwd=cwd)
    assert run.code == 1, (run.stdout, run.stderr)
    assert run.stdout == ""
    return run.problems


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    seen = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in {path}")


BASELINE = """
    apiVersion: patchwarden.io/v1alpha1
    kind: PatchBaseline
    metadata:
      name: ubuntu-prod
    spec:
      operatingSystem: UBUNTU
      approvalRules:
        - patchFilterGroup:
            patchFilters:
              - key: PRIORITY
                values: [Required, Important]
          complianceLevel: HIGH
    """

GROUP = """
    apiVersion: patchwarden.io/v1alpha1
    kind: PatchGroup
    metadata:
      name: web
    spec:
      selector:
        matchLabels: {role: web}
      baselines:
        UBUNTU: ubuntu-prod
    """


# -- the shipped examples and defaults ------------------------------------------------------------


def example_counts() -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in EXAMPLE_FILES:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is not None:
                counts[document["kind"]] += 1
    return counts


def example_names(kind: str) -> list[str]:
    return [
        document["metadata"]["name"]
        for path in EXAMPLE_FILES
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document is not None and document["kind"] == kind
    ]


def test_examples_validate() -> None:
    run = validate(EXAMPLES)
    assert run.code == 0, run.stderr
    assert run.stderr == ""
    counts = example_counts()
    listed = ", ".join(
        f"{counts[kind]} {kind}"
        for kind in (
            "PatchBaseline",
            "PatchGroup",
            "MaintenanceWindow",
            "ManagedInstance",
            "ComplianceReport",
            "InstanceSource",
            "Rollout",
            "ChangeCalendar",
        )
        if counts[kind]
    )
    first, *enrolled = run.stdout.splitlines()
    assert first == f"{EXAMPLES}: valid ({listed})"
    # Then what each InstanceSource enrols (docs/enrolment.md).
    assert [line.split(" (")[0] for line in enrolled if not line.startswith(" ")] == [
        f"InstanceSource {name}" for name in sorted(example_names("InstanceSource"))
    ]


def test_examples_validate_from_a_relative_path_with_json_output() -> None:
    run = validate(Path("examples/"), "-o", "json")
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["valid"] is True
    assert result["resources"] == dict(example_counts())


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_every_example_file_is_part_of_the_valid_snapshot(path: Path) -> None:
    files = [(p.relative_to(EXAMPLES).as_posix(), p.read_bytes()) for p in SNAPSHOT_FILES]
    snapshot = build_snapshot(files, predefined_baselines())
    relpath = path.relative_to(EXAMPLES).as_posix()
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert documents, f"{relpath} holds no resource"
    for document in documents:
        key = (document["kind"], document["metadata"]["name"])
        assert snapshot.locations[key].file == relpath


@pytest.mark.parametrize(
    "path",
    sorted((EXAMPLES / "baselines").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_example_baseline_validates_alone(path: Path) -> None:
    run = validate(path)
    assert run.code == 0, run.stderr
    assert run.stdout == f"{path}: valid (1 PatchBaseline)\n"


def test_predefined_baselines_load_with_one_default_per_os() -> None:
    predefined = predefined_baselines()
    assert len(predefined) == 17
    defaults = Counter(
        b.spec.operating_system for b in predefined.values() if b.spec.default_baseline
    )
    assert len(defaults) == 15
    assert set(defaults.values()) == {1}


# -- the error format ------------------------------------------------------------------------------


def test_one_error_has_the_file_line_path_message_shape(tmp_path: Path) -> None:
    broken = write(tmp_path, "fleet/baselines/ubuntu.yaml", BASELINE.replace("HIGH", "HIHG"))
    found = refused(tmp_path / "fleet")
    assert found == [
        f"baselines/ubuntu.yaml:{line_of(broken, 'HIHG')}: "
        "spec.approvalRules[0].complianceLevel: 'HIHG' is not one of CRITICAL, HIGH, MEDIUM, "
        "LOW, INFORMATIONAL, UNSPECIFIED (did you mean 'HIGH'?)"
    ]


def test_paths_are_relative_to_the_directory_given(tmp_path: Path) -> None:
    write(tmp_path, "repo/fleet/deep/dir/b.yaml", BASELINE.replace("UBUNTU", "UBUNTUX"))
    found = refused(Path("repo/fleet"), cwd=tmp_path)
    assert len(found) == 1
    assert found[0].startswith("deep/dir/b.yaml:6: spec.operatingSystem: 'UBUNTUX'")
    assert str(tmp_path) not in found[0]


def test_every_error_in_every_file_is_reported_at_once(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet"
    baselines = write(
        fleet,
        "baselines.yaml",
        """
        apiVersion: patchwarden.io/v1alpha1
        kind: PatchBaseline
        metadata:
          name: al2023-prod
        spec:
          operatingSystem: AMAZON_LINUX_2023
          approvalRules:
            - patchFilterGroup:
                patchFilters:
                  - key: SEVERITY
                    values: [Critical]
              approveAfterDays: 361
              complianceLevel: CRITICL
              enableNonSecurty: true
        ---
        apiVersion: patchwarden.io/v1alpha1
        kind: PatchBaseline
        metadata:
          name: ubuntu-prod
        spec:
          operatingSystem: UBUNTU
          approvalRules:
            - patchFilterGroup:
                patchFilters:
                  - key: SEVERITY
                    values: [Critical]
              approveAfterDays: 7
        """,
    )
    windows = write(
        fleet,
        "windows.yaml",
        """
        apiVersion: patchwarden.io/v1alpha1
        kind: MaintenanceWindow
        metadata:
          name: Nightly
        spec:
          schedule: rate(1 days)
          scheduleTimezone: Europe/Berln
          duration: 25
          cutoff: 1
          targets: {patchGroups: [web]}
          tasks:
            - name: install
              operation: Install
              maxConcurrency: "101%"
        ---
        apiVersion: patchwarden.io/v1alpha1
        kind: MaintenanceWindow
        metadata:
          name: weekly
        spec:
          schedule: cron(0 2 ? * SUN *)
          duration: 4
          cutoff: 1
          targets: {patchGroups: [webb]}
          tasks: [{name: scan, operation: Scan}]
        """,
    )
    write(fleet, "groups.yaml", GROUP)

    def at(path: Path, needle: str) -> str:
        return f"{path.name}:{line_of(path, needle)}"

    assert refused(fleet) == [
        f"{at(baselines, '361')}: spec.approvalRules[0].approveAfterDays: must be ≤ 360 (got 361)",
        f"{at(baselines, 'CRITICL')}: spec.approvalRules[0].complianceLevel: 'CRITICL' is not "
        "one of CRITICAL, HIGH, MEDIUM, LOW, INFORMATIONAL, UNSPECIFIED (did you mean "
        "'CRITICAL'?)",
        f"{at(baselines, 'enableNonSecurty')}: spec.approvalRules[0].enableNonSecurty: unknown "
        "field 'enableNonSecurty' (did you mean 'enableNonSecurity'?)",
        f"baselines.yaml:{line_of(baselines, 'key: SEVERITY', 2)}: "
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].key: SEVERITY is not a filter "
        "key for UBUNTU; use one of PRODUCT, PRIORITY, SECTION",
        f"{at(baselines, 'approveAfterDays: 7')}: spec.approvalRules[0].approveAfterDays: UBUNTU "
        "packages carry no release dates; remove approveAfterDays, or set "
        "spec.approveAfterDaysFrom: FirstSeen (Debian-family rules approve immediately)",
        # groups.yaml names ubuntu-prod, which is refused above: not reported a second time.
        f"{at(windows, 'Nightly')}: metadata.name: 'Nightly' is not valid: use lowercase "
        "letters, digits, '-' and '.', starting and ending with a letter or digit (a Kubernetes "
        "object name) (did you mean 'nightly'?)",
        f"{at(windows, 'rate(1 days)')}: spec.schedule: use a singular unit for 1, a plural one "
        "otherwise: rate(1 day), rate(2 days)",
        f"{at(windows, 'Berln')}: spec.scheduleTimezone: unknown IANA time zone 'Europe/Berln', "
        "for example Europe/Berlin or UTC (did you mean 'Europe/Berlin'?)",
        f"{at(windows, 'duration: 25')}: spec.duration: must be ≤ 24 (got 25)",
        f"{at(windows, '101%')}: spec.tasks[0].maxConcurrency: '101%' is not valid: give a "
        'number of targets of at least 1 ("10") or a percentage from 1% to 100% ("10%")',
        f"{at(windows, 'webb')}: spec.targets.patchGroups[0]: no PatchGroup named 'webb' (did "
        "you mean 'web'?)",
    ]


def test_a_broken_file_does_not_hide_the_problems_of_the_others(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "apiVersion: [unclosed\n")
    write(tmp_path, "b.yaml", BASELINE.replace("HIGH", "HIHG"))
    found = refused(tmp_path)
    assert [p.split(":")[0] for p in found] == ["a.yaml", "b.yaml"]
    assert found[0].startswith("a.yaml:2: invalid YAML: ")


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        (
            "kind: PatchBaseline\nmetadata: {name: x}\n",
            1,
            "apiVersion: missing; set apiVersion: patchwarden.io/v1alpha1",
        ),
        (
            "apiVersion: patchwarden.io/v1beta1\nkind: PatchBaseline\n",
            1,
            "apiVersion: 'patchwarden.io/v1beta1' is not supported; use patchwarden.io/v1alpha1",
        ),
        (
            "apiVersion: patchwarden.io/v1alpha1\nmetadata: {name: x}\n",
            1,
            "kind: missing; one of PatchBaseline, PatchGroup, MaintenanceWindow, ManagedInstance, "
            "ComplianceReport, InstanceSource, Rollout, ChangeCalendar",
        ),
        (
            "apiVersion: patchwarden.io/v1alpha1\nkind: MaintenanceWindo\n",
            2,
            "kind: unknown kind 'MaintenanceWindo'; one of PatchBaseline, PatchGroup, "
            "MaintenanceWindow, ManagedInstance, ComplianceReport, InstanceSource, Rollout, "
            "ChangeCalendar (did you mean 'MaintenanceWindow'?)",
        ),
    ],
    ids=["no apiVersion", "wrong apiVersion", "no kind", "misspelt kind"],
)
def test_identity_errors(tmp_path: Path, text: str, line: int, says: str) -> None:
    write(tmp_path, "r.yaml", text)
    assert refused(tmp_path) == [f"r.yaml:{line}: {says}"]


# -- hostile input ---------------------------------------------------------------------------------


def billion_laughs(levels: int = 9, fan_out: int = 10) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n"


def nested_lists(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def nested_mappings(depth: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf\n"


@dataclass(frozen=True)
class Hostile:
    id: str
    content: bytes
    line: int
    says: str


HOSTILE = [
    Hostile(
        "prose",
        b"Please patch the web servers on Tuesday.\nThanks: the ops team: everyone\n",
        2,
        "invalid YAML: mapping values are not allowed here",
    ),
    Hostile("unclosed bracket", b"apiVersion: [unclosed\n", 2, "invalid YAML: expected ','"),
    Hostile("tab indentation", b"spec:\n\tduration: 4\n", 2, "invalid YAML: found character '\\t'"),
    Hostile("undefined alias", b"a: *nowhere\n", 1, "invalid YAML: found undefined alias"),
    Hostile("binary", bytes(range(256)) * 16, 1, "binary file (contains NUL bytes), not YAML"),
    Hostile(
        "gzip",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\x48\xcd\xc9\xc9\x07\x00",
        1,
        "binary file (contains NUL bytes), not YAML",
    ),
    Hostile(
        "latin-1",
        "apiVersion: patchwarden.io/v1alpha1\nkind: PatchGroup\nmetadata: {name: caf\u00e9}\n".encode(
            "latin-1"
        ),
        3,
        "not UTF-8 text; save the file as UTF-8",
    ),
    Hostile(
        "UTF-16",
        "apiVersion: patchwarden.io/v1alpha1\n".encode("utf-16"),
        1,
        "UTF-16 or UTF-32 text; save the file as UTF-8",
    ),
    Hostile(
        "over 4 MiB",
        b"# padding\n" * (MAX_BYTES // 10 + 1),
        1,
        "file is larger than 4 MiB (4194304 bytes); refused",
    ),
    Hostile(
        "200 nested lists",
        nested_lists(200).encode(),
        1,
        f"nesting is deeper than {MAX_DEPTH} levels",
    ),
    Hostile(
        "200 nested mappings",
        nested_mappings(200).encode(),
        MAX_DEPTH + 2,  # the line of the first mapping nested too deep (k49:)
        f"nesting is deeper than {MAX_DEPTH} levels",
    ),
    Hostile(
        "100000 nested lists",
        nested_lists(100_000).encode(),
        1,
        "nesting is too deep",
    ),
    Hostile(
        "billion laughs",
        billion_laughs().encode(),
        1,
        f"document expands to more than {MAX_NODES} values (alias bomb?)",
    ),
    Hostile(
        "merge key",
        b"base: &base {duration: 4, cutoff: 1}\nspec:\n  <<: *base\n",
        3,
        "merge keys (<<) are not supported; write the fields out",
    ),
    Hostile(
        "python/object/apply",
        b"apiVersion: !!python/object/apply:os.system ['echo pwned']\n",
        1,
        "unsupported tag !!python/object/apply:os.system: only plain YAML",
    ),
    Hostile(
        "python/object on the document",
        b"--- !!python/object:reconciler.cli.UserError\nargs: [boom]\n",
        1,
        "unsupported tag !!python/object:reconciler.cli.UserError",
    ),
    Hostile(
        "python/name on a value",
        b"apiVersion: patchwarden.io/v1alpha1\nkind: !!python/name:os.system ''\n",
        2,
        "unsupported tag !!python/name:os.system",
    ),
    Hostile("custom tag", b"metadata:\n  name: !Ref BaselineName\n", 2, "unsupported tag !Ref"),
    Hostile("!!set", b"values: !!set {Critical, Important}\n", 1, "unsupported tag !!set"),
    Hostile(
        "bad !!int", b"spec:\n  duration: !!int four\n", 2, "'four' is not a valid !!int value"
    ),
    Hostile("complex key", b"? [a, b]\n: c\n", 1, "mapping keys must be plain scalars"),
    Hostile(
        "list document",
        b"- apiVersion: patchwarden.io/v1alpha1\n  kind: PatchGroup\n",
        1,
        "expected a resource (a mapping with apiVersion and kind), got list",
    ),
    Hostile(
        "scalar document",
        b"just some text\n",
        1,
        "expected a resource (a mapping with apiVersion and kind), got str",
    ),
    Hostile(
        "number document",
        b"---\n42\n",
        2,
        "expected a resource (a mapping with apiVersion and kind), got int",
    ),
    Hostile(
        "duplicate key",
        b"apiVersion: patchwarden.io/v1alpha1\nkind: PatchGroup\nkind: PatchBaseline\n",
        3,
        "duplicate key 'kind' (the earlier value would be lost)",
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.id)
def test_hostile_input_is_refused_cleanly(tmp_path: Path, case: Hostile) -> None:
    write(tmp_path, "evil.yaml", case.content)
    found = refused(tmp_path)
    assert len(found) == 1, found
    assert found[0].startswith(f"evil.yaml:{case.line}: "), found[0]
    assert case.says in found[0]


def test_no_code_runs_from_a_python_tag(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    command = f"{sys.executable} -c \"open('{marker}', 'w')\""
    write(
        tmp_path, "fleet/evil.yaml", f"a: !!python/object/apply:os.system [{json.dumps(command)}]\n"
    )
    refused(tmp_path / "fleet")
    assert not marker.exists()


def test_a_large_valid_file_under_the_limit_is_accepted(tmp_path: Path) -> None:
    body = textwrap.dedent(BASELINE).lstrip("\n")
    padding = "# " + "x" * 98 + "\n"
    content = padding * ((MAX_BYTES - len(body)) // len(padding)) + body
    assert len(content.encode()) <= MAX_BYTES
    write(tmp_path, "big.yaml", content)
    run = validate(tmp_path)
    assert run.code == 0, run.stderr


def test_hostile_files_are_reported_together_with_ordinary_errors(tmp_path: Path) -> None:
    write(tmp_path, "bomb.yaml", billion_laughs())
    write(tmp_path, "binary.yaml", b"\x00" * 64)
    write(tmp_path, "deep.yaml", nested_lists(200))
    write(tmp_path, "ubuntu.yaml", BASELINE.replace("HIGH", "HIHG"))
    found = refused(tmp_path)
    assert [p.split(":")[0] for p in found] == [
        "binary.yaml",
        "bomb.yaml",
        "deep.yaml",
        "ubuntu.yaml",
    ]


# -- which files are read --------------------------------------------------------------------------


GARBAGE = "this: is: not: yaml: [\n"


def test_only_yaml_files_outside_hidden_directories_are_read(tmp_path: Path) -> None:
    write(tmp_path, "baselines/ubuntu.yaml", BASELINE)
    write(tmp_path, "groups.yml", GROUP)
    for name in (
        "README.md",
        "notes.txt",
        "groups.yaml.bak",
        "groups.yaml~",
        "inventory.json",
        ".git/config.yaml",
        ".git/refs/heads/main.yml",
        ".github/workflows/ci.yaml",
        "baselines/.hidden/old.yaml",
    ):
        write(tmp_path, name, GARBAGE)
    run = validate(tmp_path)
    assert run.code == 0, run.stderr
    assert run.stdout == f"{tmp_path}: valid (1 PatchBaseline, 1 PatchGroup)\n"


def test_yml_and_nested_files_are_read(tmp_path: Path) -> None:
    write(tmp_path, "a/b/c/ubuntu.yml", BASELINE.replace("HIGH", "HIHG"))
    assert [p.split(":")[0] for p in refused(tmp_path)] == ["a/b/c/ubuntu.yml"]


def test_a_single_file_path(tmp_path: Path) -> None:
    good = write(tmp_path, "fleet/ubuntu.yaml", BASELINE)
    run = validate(good)
    assert run.code == 0, run.stderr
    assert run.stdout == f"{good}: valid (1 PatchBaseline)\n"

    bad = write(tmp_path, "fleet/broken.yaml", BASELINE.replace("UBUNTU", "UBUNTUX"))
    found = refused(bad)
    assert len(found) == 1
    assert found[0].startswith("broken.yaml:6: spec.operatingSystem: ")


def test_a_single_file_is_checked_against_the_predefined_baselines(tmp_path: Path) -> None:
    group = write(tmp_path, "group.yaml", GROUP.replace("ubuntu-prod", "aws-ubuntu-default"))
    assert validate(group).code == 0


def test_an_empty_directory_is_valid(tmp_path: Path) -> None:
    write(tmp_path, "only-comments.yaml", "# nothing here yet\n---\n")
    run = validate(tmp_path)
    assert run.code == 0, run.stderr
    assert run.stdout == f"{tmp_path}: valid (no resources)\n"


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    run = validate(tmp_path / "nope")
    assert run.code == 1
    assert "no such file or directory" in run.stderr

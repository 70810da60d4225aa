"""Validation of single documents: schema, SSM's limits, per-OS checks, did-you-mean hints.

Each case edits one line (or a few) of a valid document and expects exactly one problem, printed
as ``file:line: field.path: message``, on the line the user has to change. ``build_snapshot`` is
called directly; ``test_validate_cli.py`` covers the same output through ``patchctl validate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from reconciler.api.snapshot import Snapshot, SnapshotInvalid, build_snapshot
from reconciler.defaults import predefined_baselines

FILE = "fleet/baselines.yaml"

AL2023 = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata:
  name: al2023-prod
spec:
  operatingSystem: AMAZON_LINUX_2023
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: CLASSIFICATION
            values: [Security]
          - key: SEVERITY
            values: [Critical, Important]
      approveAfterDays: 7
      complianceLevel: CRITICAL
  approvedPatches: [CVE-2024-1234]
  rejectedPatches: ["kernel-debug*"]
  rejectedPatchesAction: BLOCK
"""

UBUNTU = """\
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
  rejectedPatches: [telnetd]
"""

WINDOWS = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchBaseline
metadata:
  name: windows-prod
spec:
  operatingSystem: WINDOWS
  approvalRules:
    - patchFilterGroup:
        patchFilters:
          - key: MSRC_SEVERITY
            values: [Critical, Important]
      approveAfterDays: 7
  approvedPatches: [KB5034439]
"""

WINDOW = """\
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata:
  name: patch-tuesday
spec:
  schedule: cron(0 2 ? * TUE#2 *)
  scheduleTimezone: Europe/Berlin
  scheduleOffset: 3
  duration: 4
  cutoff: 1
  targets:
    selector:
      matchLabels: {role: web}
  tasks:
    - name: install-approved
      operation: Install
      maxConcurrency: "25%"
      maxErrors: "1"
"""

GROUP = """\
apiVersion: patchwarden.io/v1alpha1
kind: PatchGroup
metadata:
  name: web
spec:
  selector:
    matchLabels: {role: web}
  baselines:
    UBUNTU: aws-ubuntu-default
"""

INSTANCE = """\
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata:
  name: web-1
  labels: {role: web}
spec:
  connection: {type: ssh, host: web-1.example.internal, port: 22}
"""

REPORT = """\
apiVersion: patchwarden.io/v1alpha1
kind: ComplianceReport
metadata:
  name: weekly
spec:
  schedule: cron(0 6 ? * MON *)
  scheduleTimezone: UTC
  destination: s3://compliance-bucket/patchwarden
"""

EXTRA_RULE = """\
    - patchFilterGroup:
        patchFilters:
          - key: CLASSIFICATION
            values: [Bugfix]
      approveAfterDays: 14
"""

ALL_VALID = (AL2023, UBUNTU, WINDOWS, WINDOW, GROUP, INSTANCE, REPORT)


def validate(text: str) -> Snapshot:
    return build_snapshot([(FILE, text.encode())], predefined_baselines())


def problems(text: str) -> list[str]:
    with pytest.raises(SnapshotInvalid) as caught:
        validate(text)
    return [str(p) for p in caught.value.problems]


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line of ``text`` containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the document")


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` by ``new`` in ``base``; the problem is expected on the first line of
    ``new`` (or on the line containing ``at``), at ``path``, with every one of ``says``."""

    id: str
    base: str
    old: str
    new: str
    path: str = ""
    says: tuple[str, ...] = ()
    at: str | None = None
    absent: tuple[str, ...] = ()

    def text(self) -> str:
        assert self.base.count(self.old) == 1, f"{self.id}: {self.old!r} must occur once"
        return self.base.replace(self.old, self.new)

    def line(self) -> int:
        text = self.text()
        if self.at is not None:
            return line_of(text, self.at)
        return text[: text.index(self.new)].count("\n") + 1 if self.new else 1


def ids(count: int, pattern: str) -> str:
    return "[" + ", ".join(pattern.format(i) for i in range(count)) + "]"


# -- every base document is valid on its own ------------------------------------------------


@pytest.mark.parametrize("text", ALL_VALID, ids=lambda t: t.split("kind: ")[1].split("\n")[0])
def test_base_documents_are_valid(text: str) -> None:
    snapshot = validate(text)
    assert len(snapshot.locations) == 1


# -- one problem per edit -------------------------------------------------------------------------

ERRORS = [
    # apiVersion / kind
    Edit(
        "missing apiVersion",
        AL2023,
        "apiVersion: patchwarden.io/v1alpha1\n",
        "",
        "apiVersion",
        ("missing; set apiVersion: patchwarden.io/v1alpha1",),
        at="kind:",
    ),
    Edit(
        "wrong apiVersion",
        AL2023,
        "apiVersion: patchwarden.io/v1alpha1",
        "apiVersion: patchwarden.io/v1",
        "apiVersion",
        ("'patchwarden.io/v1' is not supported; use patchwarden.io/v1alpha1",),
    ),
    Edit(
        "kubernetes-style apiVersion",
        GROUP,
        "apiVersion: patchwarden.io/v1alpha1",
        "apiVersion: v1",
        "apiVersion",
        ("'v1' is not supported",),
    ),
    Edit(
        "missing kind",
        AL2023,
        "kind: PatchBaseline\n",
        "",
        "kind",
        ("missing; one of PatchBaseline, PatchGroup, MaintenanceWindow",),
        at="apiVersion",
    ),
    Edit(
        "misspelt kind",
        AL2023,
        "kind: PatchBaseline",
        "kind: PatchBaselin",
        "kind",
        ("unknown kind 'PatchBaselin'", "(did you mean 'PatchBaseline'?)"),
    ),
    Edit(
        "lower-case kind",
        WINDOW,
        "kind: MaintenanceWindow",
        "kind: maintenancewindow",
        "kind",
        ("(did you mean 'MaintenanceWindow'?)",),
    ),
    Edit(
        "kind is a list",
        GROUP,
        "kind: PatchGroup",
        "kind: [PatchGroup]",
        "kind",
        ("unknown kind ['PatchGroup']",),
    ),
    # unknown and misspelt fields
    Edit(
        "misspelt field aproveAfterDays",
        AL2023,
        "approveAfterDays: 7",
        "aproveAfterDays: 7",
        "spec.approvalRules[0].aproveAfterDays",
        ("unknown field 'aproveAfterDays' (did you mean 'approveAfterDays'?)",),
    ),
    Edit(
        "misspelt spec field",
        AL2023,
        "  rejectedPatchesAction: BLOCK",
        "  rejectedPatchAction: BLOCK",
        "spec.rejectedPatchAction",
        ("(did you mean 'rejectedPatchesAction'?)",),
    ),
    Edit(
        "misspelt field in a window task",
        WINDOW,
        '      maxConcurrency: "25%"',
        '      maxConcurency: "25%"',
        "spec.tasks[0].maxConcurency",
        ("(did you mean 'maxConcurrency'?)",),
    ),
    Edit(
        "misspelt metadata field",
        INSTANCE,
        "  labels: {role: web}",
        "  lables: {role: web}",
        "metadata.lables",
        ("unknown field 'lables' (did you mean 'labels'?)",),
    ),
    Edit(
        "unknown field without a close match",
        AL2023,
        "  rejectedPatchesAction: BLOCK",
        "  rejectedPatchesAction: BLOCK\n  owner: platform-team",
        "spec.owner",
        ("unknown field 'owner'",),
        at="owner:",
        absent=("did you mean",),
    ),
    Edit(
        "unknown top-level field",
        GROUP,
        "kind: PatchGroup\n",
        "kind: PatchGroup\nlabels: {team: ops}\n",
        "labels",
        ("unknown field 'labels'",),
        at="labels:",
    ),
    Edit(
        "required field missing",
        WINDOW,
        "  duration: 4\n",
        "",
        "spec.duration",
        ("required field is missing",),
        at="spec:",
    ),
    Edit(
        "metadata is text",
        GROUP,
        "metadata:\n  name: web",
        "metadata: web",
        "metadata",
        ("must be a mapping of fields, got 'web'",),
    ),
    Edit(
        "values is not a list",
        AL2023,
        "values: [Security]",
        "values: Security",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].values",
        ("must be a list, got 'Security'",),
    ),
    # enum values
    Edit(
        "misspelt enum CRITICL",
        AL2023,
        "complianceLevel: CRITICAL",
        "complianceLevel: CRITICL",
        "spec.approvalRules[0].complianceLevel",
        (
            "'CRITICL' is not one of CRITICAL, HIGH, MEDIUM, LOW, INFORMATIONAL, UNSPECIFIED",
            "(did you mean 'CRITICAL'?)",
        ),
    ),
    Edit(
        "misspelt operating system UBUNTUX",
        UBUNTU,
        "operatingSystem: UBUNTU",
        "operatingSystem: UBUNTUX",
        "spec.operatingSystem",
        ("'UBUNTUX' is not one of WINDOWS,", "AMAZON_LINUX_2023", "(did you mean 'UBUNTU'?)"),
    ),
    Edit(
        "lower-case operating system",
        UBUNTU,
        "operatingSystem: UBUNTU",
        "operatingSystem: ubuntu",
        "spec.operatingSystem",
        ("(did you mean 'UBUNTU'?)",),
    ),
    Edit(
        "misspelt rejectedPatchesAction",
        AL2023,
        "rejectedPatchesAction: BLOCK",
        "rejectedPatchesAction: BLOK",
        "spec.rejectedPatchesAction",
        ("'BLOK' is not one of ALLOW_AS_DEPENDENCY, BLOCK (did you mean 'BLOCK'?)",),
    ),
    Edit(
        "misspelt filter key",
        AL2023,
        "- key: CLASSIFICATION",
        "- key: CLASIFICATION",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].key",
        ("(did you mean 'CLASSIFICATION'?)",),
    ),
    Edit(
        "misspelt task operation",
        WINDOW,
        "operation: Install",
        "operation: Instal",
        "spec.tasks[0].operation",
        ("'Instal' is not one of Scan, Install (did you mean 'Install'?)",),
    ),
    Edit(
        "misspelt group OS key",
        GROUP,
        "    UBUNTU: aws-ubuntu-default",
        "    UBUNTUX: aws-ubuntu-default",
        "spec.baselines.UBUNTUX",
        ("(did you mean 'UBUNTU'?)",),
    ),
    # SSM limits on baselines (reference §1.2, §1.4, §1.5, §1.10)
    Edit(
        "11 approval rules",
        AL2023,
        "  approvalRules:\n",
        "  approvalRules:\n" + EXTRA_RULE * 10,
        "spec.approvalRules",
        ("at most 10 allowed (got 11)",),
    ),
    Edit(
        "5 filters in a rule",
        AL2023,
        "        patchFilters:\n",
        "        patchFilters:\n" + "          - key: PRODUCT\n            values: ['*']\n" * 3,
        "spec.approvalRules[0].patchFilterGroup.patchFilters",
        ("at most 4 allowed (got 5)",),
    ),
    Edit(
        "5 global filters",
        WINDOWS,
        "  approvalRules:\n",
        "  globalFilters:\n    patchFilters:\n"
        + "      - key: PRODUCT\n        values: ['*']\n" * 5
        + "  approvalRules:\n",
        "spec.globalFilters.patchFilters",
        ("at most 4 allowed (got 5)",),
        at="    patchFilters:",
    ),
    Edit(
        "21 values in a filter",
        AL2023,
        "values: [Security]",
        "values: " + ids(21, "AmazonLinux2023.{}"),
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].values",
        ("at most 20 allowed (got 21)",),
    ),
    Edit(
        "empty filter values",
        AL2023,
        "values: [Security]",
        "values: []",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].values",
        ("at least 1 required",),
    ),
    Edit(
        "filter value over 64 characters",
        AL2023,
        "- key: CLASSIFICATION\n            values: [Security]",
        "- key: PRODUCT\n            values: [" + "p" * 65 + "]",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].values[0]",
        ("at most 64 characters",),
        at="values: [ppp",
    ),
    Edit(
        "51 approved patches",
        AL2023,
        "approvedPatches: [CVE-2024-1234]",
        "approvedPatches: " + ids(51, "CVE-2024-{}0000"),
        "spec.approvedPatches",
        ("at most 50 allowed (got 51)",),
    ),
    Edit(
        "51 rejected patches",
        AL2023,
        'rejectedPatches: ["kernel-debug*"]',
        "rejectedPatches: " + ids(51, "pkg-{}"),
        "spec.rejectedPatches",
        ("at most 50 allowed (got 51)",),
    ),
    Edit(
        "approveAfterDays 361",
        AL2023,
        "approveAfterDays: 7",
        "approveAfterDays: 361",
        "spec.approvalRules[0].approveAfterDays",
        ("must be ≤ 360 (got 361)",),
    ),
    Edit(
        "approveAfterDays -1",
        AL2023,
        "approveAfterDays: 7",
        "approveAfterDays: -1",
        "spec.approvalRules[0].approveAfterDays",
        ("must be ≥ 0 (got -1)",),
    ),
    Edit(
        "approveAfterDays true",
        AL2023,
        "approveAfterDays: 7",
        "approveAfterDays: yes",
        "spec.approvalRules[0].approveAfterDays",
        ("must be a whole number, got true (a boolean)",),
    ),
    Edit(
        "approveAfterDays quoted",
        AL2023,
        "approveAfterDays: 7",
        'approveAfterDays: "7"',
        "spec.approvalRules[0].approveAfterDays",
        ("must be a number, got the text '7': write it without quotes",),
    ),
    Edit(
        "approveAfterDays 7.5",
        AL2023,
        "approveAfterDays: 7",
        "approveAfterDays: 7.5",
        "spec.approvalRules[0].approveAfterDays",
        ("must be a whole number, got 7.5",),
    ),
    Edit(
        "approveUntilDate with slashes (quoted)",
        AL2023,
        "approveAfterDays: 7",
        'approveUntilDate: "2024/01/01"',
        "spec.approvalRules[0].approveUntilDate",
        ("must be a date written YYYY-MM-DD",),
    ),
    Edit(
        "approveUntilDate with slashes (plain)",
        AL2023,
        "approveAfterDays: 7",
        "approveUntilDate: 2024/01/01",
        "spec.approvalRules[0].approveUntilDate",
        ("must be a date written YYYY-MM-DD",),
    ),
    Edit(
        "approveUntilDate day-first",
        AL2023,
        "approveAfterDays: 7",
        "approveUntilDate: 01-31-2024",
        "spec.approvalRules[0].approveUntilDate",
        ("must be a date written YYYY-MM-DD",),
    ),
    Edit(
        "approveUntilDate month 13",
        AL2023,
        "approveAfterDays: 7",
        "approveUntilDate: 2024-13-01",
        "spec.approvalRules[0].approveUntilDate",
        ("month value is outside expected range",),
    ),
    Edit(
        "both approveAfterDays and approveUntilDate",
        AL2023,
        "approveAfterDays: 7",
        "approveAfterDays: 7\n      approveUntilDate: 2024-01-01",
        "spec.approvalRules[0]",
        ("give approveAfterDays or approveUntilDate, not both",),
        at="- patchFilterGroup:",
    ),
    Edit(
        "neither approveAfterDays nor approveUntilDate",
        AL2023,
        "      approveAfterDays: 7\n",
        "",
        "spec.approvalRules[0]",
        ("give approveAfterDays or approveUntilDate",),
        at="- patchFilterGroup:",
        absent=("not both",),
    ),
    Edit(
        "neither, on WINDOWS",
        WINDOWS,
        "      approveAfterDays: 7\n",
        "",
        "spec.approvalRules[0]",
        ("give approveAfterDays or approveUntilDate",),
        at="- patchFilterGroup:",
    ),
    Edit(
        "approveAfterDays on UBUNTU",
        UBUNTU,
        "      complianceLevel: HIGH",
        "      approveAfterDays: 7\n      complianceLevel: HIGH",
        "spec.approvalRules[0].approveAfterDays",
        (
            "UBUNTU packages carry no release dates; remove approveAfterDays, or set "
            "spec.approveAfterDaysFrom: FirstSeen",
        ),
    ),
    Edit(
        "approveUntilDate on UBUNTU with approveAfterDaysFrom: FirstSeen",
        UBUNTU,
        "      complianceLevel: HIGH",
        "      approveUntilDate: 2024-01-01\n      complianceLevel: HIGH\n"
        "  approveAfterDaysFrom: FirstSeen",
        "spec.approvalRules[0].approveUntilDate",
        ("UBUNTU packages carry no release dates; remove approveUntilDate",),
        absent=("FirstSeen",),
    ),
    Edit(
        "approveAfterDaysFrom on WINDOWS",
        WINDOWS,
        "  approvedPatches: [KB5034439]",
        "  approveAfterDaysFrom: FirstSeen\n  approvedPatches: [KB5034439]",
        "spec.approveAfterDaysFrom",
        ("applies to DEBIAN, UBUNTU and RASPBIAN only, not WINDOWS",),
    ),
    Edit(
        "approveAfterDaysFrom misspelt",
        UBUNTU,
        "  rejectedPatches: [telnetd]",
        "  approveAfterDaysFrom: FirstSeem\n  rejectedPatches: [telnetd]",
        "spec.approveAfterDaysFrom",
        ("FirstSeen",),
    ),
    Edit(
        "approveUntilDate on DEBIAN",
        UBUNTU.replace("operatingSystem: UBUNTU", "operatingSystem: DEBIAN"),
        "      complianceLevel: HIGH",
        "      approveUntilDate: 2024-01-01\n      complianceLevel: HIGH",
        "spec.approvalRules[0].approveUntilDate",
        ("DEBIAN packages carry no release dates; remove approveUntilDate",),
    ),
    Edit(
        "SEVERITY filter on UBUNTU",
        UBUNTU,
        "- key: PRIORITY",
        "- key: SEVERITY",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].key",
        ("SEVERITY is not a filter key for UBUNTU; use one of PRODUCT, PRIORITY, SECTION",),
    ),
    Edit(
        "MSRC_SEVERITY filter on AMAZON_LINUX_2023",
        AL2023,
        "- key: SEVERITY",
        "- key: MSRC_SEVERITY",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[1].key",
        (
            "MSRC_SEVERITY is not a filter key for AMAZON_LINUX_2023; use one of PRODUCT, "
            "CLASSIFICATION, SEVERITY",
        ),
    ),
    Edit(
        "filter value Importnt",
        AL2023,
        "values: [Critical, Important]",
        "values: [Critical, Importnt]",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[1].values[1]",
        (
            "'Importnt' is not a SEVERITY value for AMAZON_LINUX_2023; use one of Critical,",
            "(did you mean 'Important'?)",
        ),
    ),
    Edit(
        "a severity is not an APT priority",
        UBUNTU,
        "values: [Required, Important]",
        "values: [Required, Critical]",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[0].values[1]",
        ("'Critical' is not a PRIORITY value for UBUNTU; use one of Required, Important,",),
    ),
    Edit(
        "same filter key twice",
        AL2023,
        "- key: SEVERITY\n            values: [Critical, Important]",
        "- key: CLASSIFICATION\n            values: [Bugfix]",
        "spec.approvalRules[0].patchFilterGroup.patchFilters[1].key",
        ("CLASSIFICATION appears twice in this filter group",),
    ),
    Edit(
        "enableNonSecurity on WINDOWS",
        WINDOWS,
        "      approveAfterDays: 7",
        "      approveAfterDays: 7\n      enableNonSecurity: true",
        "spec.approvalRules[0].enableNonSecurity",
        ("applies to Linux only, not WINDOWS",),
        at="enableNonSecurity",
    ),
    Edit(
        "Windows patch id that is not a KB",
        WINDOWS,
        "approvedPatches: [KB5034439]",
        "approvedPatches: [KB5034439, 5034440]",
        "spec.approvedPatches[1]",
        ("'5034440': Windows patch ids are KB ids",),
    ),
    Edit(
        "CVE in rejectedPatches on AL2023",
        AL2023,
        'rejectedPatches: ["kernel-debug*"]',
        "rejectedPatches: [CVE-2024-1234]",
        "spec.rejectedPatches[0]",
        ("rejectedPatches takes package names on AMAZON_LINUX_2023",),
    ),
    Edit(
        "two wildcards in a patch name",
        AL2023,
        'rejectedPatches: ["kernel-debug*"]',
        'rejectedPatches: ["kernel-*-debug*"]',
        "spec.rejectedPatches[0]",
        ("at most one '*' wildcard is allowed",),
    ),
    # names
    # descriptions: SSM's lengths (1-1024 for a baseline, 1-128 for a window)
    Edit(
        "baseline description over 1024 characters",
        AL2023,
        "  rejectedPatchesAction: BLOCK",
        "  rejectedPatchesAction: BLOCK\n  description: " + "d" * 1025,
        "spec.description",
        ("at most 1024 characters",),
        at="description:",
    ),
    Edit(
        "window description over 128 characters",
        WINDOW,
        "  duration: 4",
        "  duration: 4\n  description: " + "d" * 129,
        "spec.description",
        ("at most 128 characters",),
        at="description:",
    ),
    Edit(
        "group description over 1024 characters",
        GROUP,
        "    UBUNTU: aws-ubuntu-default",
        "    UBUNTU: aws-ubuntu-default\n  description: " + "d" * 1025,
        "spec.description",
        ("at most 1024 characters",),
        at="description:",
    ),
    Edit(
        "baseline name with upper-case letters",
        AL2023,
        "  name: al2023-prod",
        "  name: AL2023-Prod",
        "metadata.name",
        (
            "'AL2023-Prod' is not valid: use lowercase letters, digits, '-' and '.'",
            "(did you mean 'al2023-prod'?)",
        ),
    ),
    Edit(
        "name with an underscore",
        WINDOW,
        "  name: patch-tuesday",
        "  name: patch_tuesday",
        "metadata.name",
        ("'patch_tuesday' is not valid: use lowercase letters",),
        absent=("did you mean",),
    ),
    Edit(
        "group baseline name with upper-case letters",
        GROUP,
        "    UBUNTU: aws-ubuntu-default",
        "    UBUNTU: AWS-UbuntuDefaultPatchBaseline",
        "spec.baselines.UBUNTU",
        ("(did you mean 'aws-ubuntudefaultpatchbaseline'?)",),
    ),
    Edit(
        "task name too short",
        WINDOW,
        "    - name: install-approved",
        "    - name: go",
        "spec.tasks[0].name",
        ("'go' is not valid: use 3-128 letters, digits, '_', '-' or '.'",),
    ),
    # maintenance windows (reference §5.1, §5.2)
    Edit(
        "duration 0",
        WINDOW,
        "duration: 4",
        "duration: 0",
        "spec.duration",
        ("must be ≥ 1 (got 0)",),
    ),
    Edit(
        "duration 25",
        WINDOW,
        "duration: 4",
        "duration: 25",
        "spec.duration",
        ("must be ≤ 24 (got 25)",),
    ),
    Edit(
        "cutoff 24",
        WINDOW,
        "duration: 4\n  cutoff: 1",
        "duration: 24\n  cutoff: 24",
        "spec.cutoff",
        ("must be ≤ 23 (got 24)",),
        at="cutoff:",
    ),
    Edit(
        "cutoff equal to duration",
        WINDOW,
        "cutoff: 1",
        "cutoff: 4",
        "spec.cutoff",
        ("cutoff (4 h) must be less than duration (4 h)",),
    ),
    Edit(
        "cutoff over duration",
        WINDOW,
        "duration: 4\n  cutoff: 1",
        "duration: 2\n  cutoff: 3",
        "spec.cutoff",
        ("cutoff (3 h) must be less than duration (2 h)",),
        at="cutoff:",
    ),
    Edit(
        "scheduleOffset 28",
        WINDOW,
        "scheduleOffset: 3",
        "scheduleOffset: 28",
        "spec.scheduleOffset",
        ("must be ≤ 27 (got 28)",),
    ),
    Edit(
        "scheduleOffset 0",
        WINDOW,
        "scheduleOffset: 3",
        "scheduleOffset: 0",
        "spec.scheduleOffset",
        ("must be ≥ 1 (got 0)",),
    ),
    Edit(
        "scheduleOffset on a rate() schedule",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)",
        "schedule: rate(7 days)",
        "spec.scheduleOffset",
        ("scheduleOffset applies to cron(...) schedules only",),
        at="scheduleOffset:",
    ),
    Edit(
        "rate(1 days)",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)\n",
        "schedule: rate(1 days)\n",
        "spec.schedule",
        ("use a singular unit for 1, a plural one otherwise: rate(1 day), rate(2 days)",),
    ),
    Edit(
        "rate(2 day)",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)\n  scheduleTimezone: Europe/Berlin\n  scheduleOffset: 3",
        "schedule: rate(2 day)\n  scheduleTimezone: Europe/Berlin",
        "spec.schedule",
        ("use a singular unit for 1, a plural one otherwise",),
    ),
    Edit(
        "rate in weeks",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)\n  scheduleTimezone: Europe/Berlin\n  scheduleOffset: 3",
        "schedule: rate(2 weeks)\n  scheduleTimezone: Europe/Berlin",
        "spec.schedule",
        ("rate(...) takes 'N minutes|hours|days'",),
    ),
    Edit(
        "cron with 5 fields",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)",
        "schedule: cron(0 2 ? * TUE#2)",
        "spec.schedule",
        ("cron(...) takes 6 fields (7 with seconds)",),
    ),
    Edit(
        "schedule in words",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)",
        "schedule: every tuesday",
        "spec.schedule",
        ("a plain cron expression has 5 fields",),
    ),
    Edit(
        "at() with a bad time",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)\n  scheduleTimezone: Europe/Berlin\n  scheduleOffset: 3",
        "schedule: at(2026-02-30T02:00:00)\n  scheduleTimezone: Europe/Berlin",
        "spec.schedule",
        ("at(...) takes a time YYYY-MM-DDThh:mm:ss",),
    ),
    Edit(
        "misspelt timezone",
        WINDOW,
        "scheduleTimezone: Europe/Berlin",
        "scheduleTimezone: Europe/Berln",
        "spec.scheduleTimezone",
        ("unknown IANA time zone 'Europe/Berln'", "(did you mean 'Europe/Berlin'?)"),
    ),
    Edit(
        "made-up timezone",
        WINDOW,
        "scheduleTimezone: Europe/Berlin",
        "scheduleTimezone: Mars/Olympus_Mons",
        "spec.scheduleTimezone",
        ("unknown IANA time zone 'Mars/Olympus_Mons', for example Europe/Berlin or UTC",),
    ),
    Edit(
        "timezone abbreviation",
        WINDOW,
        "scheduleTimezone: Europe/Berlin",
        "scheduleTimezone: CEST",
        "spec.scheduleTimezone",
        ("unknown IANA time zone 'CEST'",),
    ),
    Edit(
        "endDate before startDate",
        WINDOW,
        "  duration: 4\n",
        '  duration: 4\n  startDate: "2026-06-01T00:00:00Z"\n  endDate: "2026-01-01T00:00:00Z"\n',
        "spec.endDate",
        ("endDate must be after startDate",),
        at="endDate:",
    ),
    Edit(
        'maxConcurrency "0"',
        WINDOW,
        'maxConcurrency: "25%"',
        'maxConcurrency: "0"',
        "spec.tasks[0].maxConcurrency",
        ("'0' is not valid: give a number of targets of at least 1", "from 1% to 100%"),
    ),
    Edit(
        "maxConcurrency 0 (a number)",
        WINDOW,
        'maxConcurrency: "25%"',
        "maxConcurrency: 0",
        "spec.tasks[0].maxConcurrency",
        ("'0' is not valid",),
    ),
    Edit(
        'maxConcurrency "101%"',
        WINDOW,
        'maxConcurrency: "25%"',
        'maxConcurrency: "101%"',
        "spec.tasks[0].maxConcurrency",
        ("'101%' is not valid: give a number of targets of at least 1",),
    ),
    Edit(
        'maxConcurrency "0%"',
        WINDOW,
        'maxConcurrency: "25%"',
        'maxConcurrency: "0%"',
        "spec.tasks[0].maxConcurrency",
        ("'0%' is not valid",),
    ),
    Edit(
        "maxConcurrency of 8 digits (SSM takes 7 characters)",
        WINDOW,
        'maxConcurrency: "25%"',
        "maxConcurrency: 10000000",
        "spec.tasks[0].maxConcurrency",
        ("at most 7 characters",),
    ),
    Edit(
        "maxErrors of 8 digits",
        WINDOW,
        'maxErrors: "1"',
        'maxErrors: "10000000"',
        "spec.tasks[0].maxErrors",
        ("at most 7 characters",),
    ),
    Edit(
        'maxErrors "101%"',
        WINDOW,
        'maxErrors: "1"',
        'maxErrors: "101%"',
        "spec.tasks[0].maxErrors",
        ("'101%' is not valid: give a number of errors",),
    ),
    Edit(
        "installOverrideList on a Scan task",
        WINDOW,
        "      operation: Install\n",
        "      operation: Scan\n      installOverrideList: [openssl]\n",
        "spec.tasks[0].installOverrideList",
        ("applies to Install tasks only",),
        at="installOverrideList",
    ),
    Edit(
        "baselineOverride on a Scan task",
        WINDOW,
        "      operation: Install\n",
        "      operation: Scan\n      baselineOverride: aws-ubuntu-default\n",
        "spec.tasks[0].baselineOverride",
        ("applies to Install tasks only",),
        at="baselineOverride",
    ),
    Edit(
        "installOverrideList with baselineOverride",
        WINDOW,
        "      operation: Install\n",
        "      operation: Install\n      installOverrideList: [openssl]\n"
        "      baselineOverride: aws-ubuntu-default\n",
        "spec.tasks[0].baselineOverride",
        ("not both",),
        at="baselineOverride",
    ),
    Edit(
        "empty installOverrideList",
        WINDOW,
        "      operation: Install\n",
        "      operation: Install\n      installOverrideList: []\n",
        "spec.tasks[0].installOverrideList",
        ("at least 1",),
        at="installOverrideList",
    ),
    Edit(
        "baselineOverride naming no baseline",
        WINDOW,
        "      operation: Install\n",
        "      operation: Install\n      baselineOverride: aws-ubuntu-defualt\n",
        "spec.tasks[0].baselineOverride",
        ("no PatchBaseline named 'aws-ubuntu-defualt'", "did you mean 'aws-ubuntu-default'"),
        at="baselineOverride",
    ),
    Edit(
        "no tasks",
        WINDOW,
        '    - name: install-approved\n      operation: Install\n      maxConcurrency: "25%"\n'
        '      maxErrors: "1"\n',
        "    []\n",
        "spec.tasks",
        ("at least 1 required",),
        at="tasks:",
    ),
    Edit(
        "no targets",
        WINDOW,
        "    selector:\n      matchLabels: {role: web}\n",
        "    patchGroups: []\n",
        "spec.targets",
        ("name at least one patch group or give a selector",),
        at="targets:",
    ),
    # instances and reports
    Edit(
        "ssh port 0",
        INSTANCE,
        "port: 22",
        "port: 0",
        "spec.connection.port",
        ("must be ≥ 1 (got 0)",),
        at="connection:",
    ),
    Edit(
        "ssh host with a control character",
        INSTANCE,
        "host: web-1.example.internal",
        'host: "web-1\\u001b[31m"',
        "spec.connection.host",
        ("must not contain control characters (found \\x1b)",),
        at="connection:",
    ),
    Edit(
        "ssh user with a newline",
        INSTANCE,
        "port: 22}",
        'port: 22, user: "root\\nx"}',
        "spec.connection.user",
        ("must not contain control characters (found \\x0a)",),
        at="connection:",
    ),
    Edit(
        "ssh proxyJump with two hops",
        INSTANCE,
        "port: 22}",
        "port: 22, proxyJump: 'bastion-1,bastion-2'}",
        "spec.connection.proxyJump",
        ("must be one bastion as [user@]host[:port]", "no list of hops"),
        at="connection:",
    ),
    Edit(
        "ssh proxyJump port out of range",
        INSTANCE,
        "port: 22}",
        "port: 22, proxyJump: 'ops@bastion:70000'}",
        "spec.connection.proxyJump",
        ("a port from 1 to 65535",),
        at="connection:",
    ),
    Edit(
        "ssh root relative",
        INSTANCE,
        "port: 22}",
        "port: 22, root: srv/node}",
        "spec.connection.root",
        ("must be an absolute path",),
        at="connection:",
    ),
    Edit(
        "ssh root with DEL",
        INSTANCE,
        "port: 22}",
        'port: 22, root: "/srv/node\\x7f"}',
        "spec.connection.root",
        ("must not contain control characters (found \\x7f)",),
        at="connection:",
    ),
    Edit(
        "knownHostsFile climbing out with ..",
        INSTANCE,
        "port: 22}",
        "port: 22, knownHostsFile: ../../etc/shadow}",
        "spec.connection.knownHostsFile",
        ("must not contain '..'", "--ssh-dir"),
        at="connection:",
    ),
    Edit(
        "identityFile with a tab",
        INSTANCE,
        "port: 22}",
        'port: 22, identityFile: "id\\tx"}',
        "spec.connection.identityFile",
        ("must not contain control characters (found \\x09)",),
        at="connection:",
    ),
    Edit(
        "local root with a NUL",
        INSTANCE,
        "{type: ssh, host: web-1.example.internal, port: 22}",
        '{type: local, root: "/srv/node\\0"}',
        "spec.connection.root",
        ("must not contain control characters (found \\x00)",),
        at="connection:",
    ),
    Edit(
        "label value over 63 characters",
        INSTANCE,
        "labels: {role: web}",
        "labels: {role: " + "w" * 64 + "}",
        "metadata.labels.role",
        ("at most 63 characters",),
    ),
    Edit(
        "report with a bad timezone",
        REPORT,
        "scheduleTimezone: UTC",
        "scheduleTimezone: Europe/Pariss",
        "spec.scheduleTimezone",
        ("(did you mean 'Europe/Paris'?)",),
    ),
    Edit(
        "report with a bad schedule",
        REPORT,
        "schedule: cron(0 6 ? * MON *)",
        "schedule: rate(1 weeks)",
        "spec.schedule",
        ("rate(...) takes 'N minutes|hours|days'",),
    ),
    Edit(
        "report to an http URL",
        REPORT,
        "destination: s3://compliance-bucket/patchwarden",
        "destination: https://example.com/upload",
        "spec.destination",
        ("must be a directory path or s3://bucket/prefix",),
    ),
    Edit(
        "report destination climbing out with ..",
        REPORT,
        "destination: s3://compliance-bucket/patchwarden",
        "destination: /srv/reports/../../etc/cron.d",
        "spec.destination",
        ("must not contain '..'", "--report-dir"),
    ),
    Edit(
        "report destination with a newline",
        REPORT,
        "destination: s3://compliance-bucket/patchwarden",
        'destination: "weekly\\nx"',
        "spec.destination",
        ("must not contain control characters (found \\x0a)",),
    ),
]


@pytest.mark.parametrize("case", ERRORS, ids=lambda c: c.id)
def test_one_precise_problem(case: Edit) -> None:
    found = problems(case.text())
    assert len(found) == 1, found
    prefix = f"{FILE}:{case.line()}: {case.path}: " if case.path else f"{FILE}:{case.line()}: "
    assert found[0].startswith(prefix), (found[0], prefix)
    for fragment in case.says:
        assert fragment in found[0]
    for fragment in case.absent:
        assert fragment not in found[0]


# -- SSM's limits are inclusive: the largest allowed value is accepted ----------------------

BOUNDARIES = [
    Edit(
        "approveAfterDays on UBUNTU with approveAfterDaysFrom: FirstSeen",
        UBUNTU,
        "      complianceLevel: HIGH\n",
        "      approveAfterDays: 7\n      complianceLevel: HIGH\n  approveAfterDaysFrom: FirstSeen\n",
    ),
    Edit("approveAfterDays 0", AL2023, "approveAfterDays: 7", "approveAfterDays: 0"),
    Edit("approveAfterDays 360", AL2023, "approveAfterDays: 7", "approveAfterDays: 360"),
    Edit("approveUntilDate plain", AL2023, "approveAfterDays: 7", "approveUntilDate: 2024-01-01"),
    Edit(
        "approveUntilDate quoted", AL2023, "approveAfterDays: 7", 'approveUntilDate: "2024-01-01"'
    ),
    Edit("10 rules", AL2023, "  approvalRules:\n", "  approvalRules:\n" + EXTRA_RULE * 9),
    Edit(
        "4 filters",
        WINDOWS,
        "        patchFilters:\n",
        "        patchFilters:\n"
        "          - key: PRODUCT\n            values: [WindowsServer2022]\n"
        "          - key: PRODUCT_FAMILY\n            values: [Windows]\n"
        "          - key: CLASSIFICATION\n            values: [SecurityUpdates]\n",
    ),
    Edit(
        "20 values",
        AL2023,
        "- key: CLASSIFICATION\n            values: [Security]",
        "- key: PRODUCT\n            values: " + ids(20, "AmazonLinux2023.{}"),
    ),
    Edit(
        "50 approved patches",
        AL2023,
        "approvedPatches: [CVE-2024-1234]",
        "approvedPatches: " + ids(50, "CVE-2024-{}0000"),
    ),
    Edit(
        "numeric Bugzilla id (a YAML integer)",
        AL2023,
        "approvedPatches: [CVE-2024-1234]",
        "approvedPatches: [1234567, RHSA-2024:1234, ALAS2023-2024-123]",
    ),
    Edit("filter values are case-insensitive", AL2023, "[Security]", "[security]"),
    Edit("wildcard value", AL2023, "values: [Critical, Important]", "values: ['*']"),
    Edit("rules on UBUNTU need no date", UBUNTU, "complianceLevel: HIGH", "complianceLevel: LOW"),
    Edit(
        "duration 24, cutoff 23",
        WINDOW,
        "duration: 4\n  cutoff: 1",
        "duration: 24\n  cutoff: 23",
    ),
    Edit(
        "Install task with installOverrideList",
        WINDOW,
        "      operation: Install\n",
        "      operation: Install\n      installOverrideList: [openssl, 'libssl*']\n",
    ),
    Edit(
        "Install task with baselineOverride",
        WINDOW,
        "      operation: Install\n",
        "      operation: Install\n      baselineOverride: aws-ubuntu-default\n",
    ),
    Edit("duration 1, cutoff 0", WINDOW, "duration: 4\n  cutoff: 1", "duration: 1\n  cutoff: 0"),
    Edit(
        "maxConcurrency and maxErrors of 7 digits",
        WINDOW,
        'maxConcurrency: "25%"\n      maxErrors: "1"',
        'maxConcurrency: "9999999"\n      maxErrors: 9999999',
    ),
    Edit("scheduleOffset 1", WINDOW, "scheduleOffset: 3", "scheduleOffset: 1"),
    Edit("scheduleOffset 6", WINDOW, "scheduleOffset: 3", "scheduleOffset: 6"),
    Edit("scheduleOffset 27 (an extension)", WINDOW, "scheduleOffset: 3", "scheduleOffset: 27"),
    Edit(
        "rate(1 day)",
        WINDOW,
        "schedule: cron(0 2 ? * TUE#2 *)\n  scheduleTimezone: Europe/Berlin\n  scheduleOffset: 3",
        "schedule: rate(1 day)\n  scheduleTimezone: Europe/Berlin",
    ),
    Edit("cron with seconds", WINDOW, "cron(0 2 ? * TUE#2 *)", "cron(0 0 2 ? * TUE#2 *)"),
    Edit("timezone America/Los_Angeles", WINDOW, "Europe/Berlin", "America/Los_Angeles"),
    Edit("maxConcurrency 100%", WINDOW, '"25%"', '"100%"'),
    Edit("maxConcurrency 1 (a number)", WINDOW, 'maxConcurrency: "25%"', "maxConcurrency: 1"),
    Edit("maxErrors 0", WINDOW, 'maxErrors: "1"', "maxErrors: 0"),
    Edit("maxErrors 0%", WINDOW, 'maxErrors: "1"', 'maxErrors: "0%"'),
    Edit("name with dots", AL2023, "name: al2023-prod", "name: al2023.prod.v2"),
    Edit("kubectl get -o yaml metadata", GROUP, "  name: web\n", "  name: web\n  uid: abc\n"),
    # Where the files are is checked where the directories are known (docs/loop.md).
    Edit(
        "ssh files relative to --ssh-dir",
        INSTANCE,
        "port: 22}",
        "port: 22, identityFile: keys/id_ed25519, knownHostsFile: known_hosts}",
    ),
    Edit(
        "ssh files by absolute path",
        INSTANCE,
        "port: 22}",
        "port: 22, knownHostsFile: /etc/patchwarden/ssh/known_hosts, root: /srv/node}",
    ),
    Edit(
        "report destination relative to --report-dir",
        REPORT,
        "destination: s3://compliance-bucket/patchwarden",
        "destination: weekly..old/x",
    ),
]


@pytest.mark.parametrize("case", BOUNDARIES, ids=lambda c: c.id)
def test_accepted(case: Edit) -> None:
    snapshot = validate(case.text())
    assert len(snapshot.locations) == 1


def test_several_problems_in_one_document_are_all_reported() -> None:
    text = (
        AL2023.replace("approveAfterDays: 7", "approveAfterDays: 361")
        .replace("complianceLevel: CRITICAL", "complianceLevel: CRITICL")
        .replace("rejectedPatchesAction: BLOCK", "rejectedPatchesAction: BLOK")
    )
    found = problems(text)
    assert [p.split(": ")[1] for p in found] == [
        "spec.approvalRules[0].approveAfterDays",
        "spec.approvalRules[0].complianceLevel",
        "spec.rejectedPatchesAction",
    ]
    assert [int(p.split(":")[1]) for p in found] == [14, 15, 18]


def test_misspelt_top_level_spec_names_the_field_and_the_missing_one() -> None:
    found = problems(GROUP.replace("spec:", "sepc:"))
    assert f"{FILE}:5: sepc: unknown field 'sepc' (did you mean 'spec'?)" in found


def test_problems_are_reported_per_document_with_the_document_line() -> None:
    text = AL2023 + "---\n" + UBUNTU.replace("operatingSystem: UBUNTU", "operatingSystem: UBUNTUX")
    found = problems(text)
    assert len(found) == 1
    ubuntux = line_of(text, "UBUNTUX")
    assert ubuntux > len(AL2023.splitlines())
    assert found[0].startswith(f"{FILE}:{ubuntux}: spec.operatingSystem: ")

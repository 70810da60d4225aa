"""Stage: cli — ``patchctl``, the composition root: the only place adapters are chosen.

Exit codes (README.md, "Using it"): 0 ok, 1 invalid input or failed operation, 2 usage error,
3 non-compliant when ``--fail-on-noncompliant`` is given. No traceback reaches a user: bad input
is reported as ``file:line: field: message``; anything unexpected as one line
(PATCHWARDEN_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import structlog
import yaml

from reconciler import __version__
from reconciler.api import editor
from reconciler.api.checks import CVE_ID
from reconciler.api.crd import custom_resource_definitions
from reconciler.api.enrolment import provenance
from reconciler.api.enums import ComplianceStatus, Operation
from reconciler.api.install import InstallResult
from reconciler.api.inventory import Inventory, PackageFacts
from reconciler.api.oneoff import ACTIVE as ONE_OFF_ACTIVE
from reconciler.api.oneoff import TASK_NAME as ONE_OFF_TASK
from reconciler.api.oneoff import (
    OneOffOpening,
    OneOffStatus,
    OneOffTargets,
    check_budget,
    gating_task,
    hook_fields,
    parse_selector,
    refused_targets,
    targeted,
)
from reconciler.api.overrides import read_install_override_list
from reconciler.api.resources import ManagedInstance, PatchBaseline, RolloutStage, WindowTask
from reconciler.api.snapshot import Problem, Snapshot, SnapshotInvalid, build_snapshot
from reconciler.api.times import utc_stamp
from reconciler.defaults import predefined_baselines
from reconciler.dispatch import (
    AgentFailed,
    InstallRequest,
    LocalTransport,
    default_ssh_dir,
    transport_for,
)
from reconciler.dispatch.base import BaselineSource, baseline_sources
from reconciler.dispatch.calendars import calendar_refusal, read_calendars
from reconciler.dispatch.gates import read_gates
from reconciler.dispatch.local import TRUST_HOOKS_ENV
from reconciler.dispatch.outcomes import (
    after_install,
    architectures,
    install_failed,
    override_pins,
    pins_for,
)
from reconciler.errors import RefusedInput, TemporaryError
from reconciler.evaluation import (
    DecisionCache,
    InstanceEvaluation,
    Resolution,
    declared_holds,
    evaluate,
    resolve,
)
from reconciler.loop import (
    Clock,
    Reconciler,
    TransportFor,
    clock_from,
    configure_logging,
    serve,
    utc_now,
)
from reconciler.loop.common import Emitter, InForce
from reconciler.loop.endpoints import ListenError, parse_listen
from reconciler.loop.passes import gate_readings
from reconciler.loop.reboots import RebootSettings
from reconciler.loop.rollouts import status as rollout_status
from reconciler.loop.workers import MIN_LEASE, JobQueue, Worker, WorkerSettings, runners
from reconciler.paths import control_character
from reconciler.plan import Settings, calendars_guarding, emergency_fix, gates_guarding
from reconciler.redaction import redacted
from reconciler.report.notify import audit
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.report.publish import PublishError, publish
from reconciler.report.views import (
    compliance,
    diffrender,
    export,
    findings,
    patchnow,
    render,
    ssmimport,
)
from reconciler.report.views.diff import compare
from reconciler.report.views.enrolment import enrolment_lines, status_document
from reconciler.rollout import (
    RolloutRecord,
    approved,
    digest_matches,
    short_digest,
    stage_members,
)
from reconciler.schedule import describe, openings
from reconciler.schedule.ical import reading_state
from reconciler.sources import (
    DirectorySource,
    SignatureVerification,
    Source,
    SourceError,
    read_inventories,
    read_snapshot,
)
from reconciler.sources.base import snapshot_of
from reconciler.sources.enrol import enrol_once, enrol_revision
from reconciler.sources.ssm import convert
from reconciler.sources.ssm.client import SsmReadFailed, export_account, read_account, read_files
from reconciler.sources.ssm.convert import SSM_NAME
from reconciler.sources.ssm.outbound import to_ssm
from reconciler.state import (
    Holder,
    OneOffRecord,
    StateBackend,
    StateStore,
    StoreUnusable,
    StoreWriteFailed,
)

if TYPE_CHECKING:
    from reconciler.controller import EventSink, LeaseConfig
    from reconciler.dispatch.base import Transport
    from reconciler.dispatch.nodes import NodeSettings
    from reconciler.dispatch.ssh import SshPool
    from reconciler.report.notify.events import Sink
    from reconciler.report.notify.occurrences import Observer
    from reconciler.state import JobRecord

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_NONCOMPLIANT = 0, 1, 2, 3
EXIT_CHANGES = 3  # patchctl diff: the change does something (like diff(1)'s 1, kept off 1: errors)


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit 1."""


def main(argv: Sequence[str] | None = None) -> int:
    _library_words_off_stderr()
    parser = _parser()
    args = parser.parse_args(argv)
    # Warnings (a skipped symlink) go to stderr as JSON lines in every verb: stdout is the output.
    configure_logging()
    try:
        args.trust_root_scripts = _root_scripts_trusted(args)
        return int(args.handler(args))
    except SnapshotInvalid as exc:
        for problem in exc.problems:
            _say(str(problem))
        _say(f"refused: {len(exc.problems)} problem(s); nothing was applied")
        return EXIT_INVALID
    except AgentFailed as exc:
        _say(f"patchctl: the agent failed: {exc.code}: {exc.message}")
        return EXIT_INVALID
    except (UserError, StoreUnusable, StoreWriteFailed) as exc:
        _say(f"patchctl: {exc}")
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.: not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # the last line of defence: never a traceback for users
        if os.environ.get("PATCHWARDEN_DEBUG"):
            traceback.print_exc()
        _say(
            f"patchctl: internal error: {type(exc).__name__}: {exc} "
            "(set PATCHWARDEN_DEBUG=1 for details and report it)"
        )
        return EXIT_INVALID


def _say(line: str) -> None:
    """One line of ours on stderr. What it quotes may come from a machine (an agent's error) or a
    commit: control characters are shown as ``\\xNN``, never sent to the terminal as escapes."""
    print(render.visible(line), file=sys.stderr)


TRUST_ROOT_SCRIPTS_ENV = "PATCHWARDEN_TRUST_ROOT_SCRIPTS"


def _root_scripts_trusted(args: argparse.Namespace) -> bool:
    """The operator's word, and only the operator's (never a resource's), that directory roots
    may have their maintainer scripts run on their machine (docs/agent.md): ``install
    --trust-root-scripts`` or $PATCHWARDEN_TRUST_ROOT_SCRIPTS=1, read here once and passed down."""
    trusted = _switch(TRUST_ROOT_SCRIPTS_ENV, "trust directory roots' maintainer scripts")
    return bool(getattr(args, "trust_root_scripts", False)) or trusted


def _library_words_off_stderr() -> None:
    """stderr carries only patchctl's own words. Libraries talk to their own developers there:
    asyncssh under a newer cryptography warns "DSA is deprecated" four times on import, and
    urllib3/botocore log retries through the logging module's last-resort handler. Both are
    dropped here, at the entry point, unless PATCHWARDEN_DEBUG is set; a warning raised in (or
    attributed by a library to) our own code still shows, because it is ours to fix."""
    if os.environ.get("PATCHWARDEN_DEBUG"):
        logging.basicConfig(level=logging.DEBUG)
        return
    warnings.filterwarnings("ignore", module=r"(?!reconciler(\.|$))")
    # With a handler on the root logger, library records no longer reach logging.lastResort.
    logging.getLogger().addHandler(logging.NullHandler())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchctl", description="GitOps patch management with SSM Patch Manager semantics."
    )
    parser.add_argument("--version", action="version", version=f"patchctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="validate a directory of resources (or one file)")
    p.add_argument("path", nargs="?", default=".", type=Path)
    _ec2_endpoint_arg(p)
    _output_arg(p, "table", "json", "yaml")
    p.set_defaults(handler=_validate)

    p = sub.add_parser(
        "evaluate", help="evaluate saved inventories against a baseline or a snapshot"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--baseline", type=Path, help="a YAML file holding one PatchBaseline")
    which.add_argument(
        "--source",
        type=Path,
        help="a snapshot directory: each instance gets its effective baseline",
    )
    p.add_argument(
        "--inventory",
        type=Path,
        required=True,
        help="an inventory JSON file or a directory of them",
    )
    _common_evaluation_args(p)
    p.add_argument(
        "--all",
        action="store_true",
        help="tables: list every patch, not only those needing attention",
    )
    p.add_argument(
        "--fail-on-noncompliant",
        action="store_true",
        help="exit 3 when an instance is non-compliant",
    )
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser(
        "explain",
        help="which group and baseline apply to an instance, and why each patch is in its state",
    )
    p.add_argument("instance")
    p.add_argument("patch", nargs="?")
    p.add_argument("--source", type=Path, required=True)
    p.add_argument("--inventory", type=Path, required=True)
    p.add_argument(
        "--state",
        metavar="PATH|sqlite:///PATH",
        help="take apt versions' first-seen times from this state database "
        "(for baselines with approveAfterDaysFrom: FirstSeen)",
    )
    _common_evaluation_args(p)
    p.set_defaults(handler=_explain)

    p = sub.add_parser(
        "scan", help="inventory this host (or a root) and evaluate it against its baseline"
    )
    _machine_args(p)
    p.set_defaults(handler=_scan)

    p = sub.add_parser("install", help="scan, install the approved missing patches, rescan")
    _machine_args(p)
    p.add_argument(
        "--reboot-option", choices=("RebootIfNeeded", "NoReboot"), default="RebootIfNeeded"
    )
    p.add_argument(
        "--allow-reboot",
        action="store_true",
        help="let the agent reboot the host when it needs it (never for a --root)",
    )
    p.add_argument(
        "--simulate", action="store_true", help="show what would be installed; change nothing"
    )
    p.add_argument(
        "--install-override-list",
        type=Path,
        metavar="FILE",
        help="SSM's InstallOverrideList (patches: [{id: NAME}]): install the newest update of "
        "these packages instead of the baseline's approvals",
    )
    p.add_argument(
        "--lock-timeout",
        type=_seconds_or_zero,
        default=60,
        help="seconds to wait for the package manager's lock (0: do not wait)",
    )
    p.add_argument(
        "--trust-root-scripts",
        action="store_true",
        help="you trust the --root and its repositories: a Debian root without /bin/sh may run "
        f"its maintainer scripts on this host (refused otherwise; or {TRUST_ROOT_SCRIPTS_ENV}=1)",
    )
    p.set_defaults(handler=_install)

    p = sub.add_parser("plan", help="what the next reconcile would do now, and why the rest waits")
    _loop_args(p)
    p.add_argument("--now", type=_timestamp, default=None, help="plan as of this ISO-8601 time")
    _output_arg(p, "table", "json", "yaml")
    p.set_defaults(handler=_plan)

    p = sub.add_parser(
        "reconcile", help="run the reconcile loop until nothing more can be done now"
    )
    _loop_args(p)
    p.add_argument(
        "--once", action="store_true", help="stop when converged or only waiting (the default)"
    )
    _clock_start_arg(p)
    p.add_argument("--workers", type=_positive_int, default=10, help="jobs run at once, at most")
    _external_workers_arg(p)
    _reboot_args(p)
    _output_arg(p, "table", "json", "yaml")
    _audit_log_arg(p)
    _events_args(p)
    p.set_defaults(handler=_reconcile)

    p = sub.add_parser(
        "run", help="the reconcile loop as a service (poll/watch, /healthz, /metrics)"
    )
    _loop_args(p)
    p.add_argument("--workers", type=_positive_int, default=10, help="jobs run at once, at most")
    _external_workers_arg(p)
    _reboot_args(p)
    p.add_argument(
        "--interval", type=_seconds, default=60.0, help="seconds between passes / Git polls"
    )
    _clock_start_arg(p)
    p.add_argument(
        "--listen",
        type=_listen,
        default="127.0.0.1:9469",
        help="HOST:PORT for /healthz and /metrics",
    )
    _audit_log_arg(p)
    _events_args(p)
    p.set_defaults(handler=_run)

    _worker_parser(sub)

    p = sub.add_parser(
        "controller",
        help="the Kubernetes controller: the loop on a namespace's resources, status, leader lease",
    )
    _controller_args(p)
    _clock_start_arg(p)
    _reboot_args(p)
    _audit_log_arg(p)
    _events_args(p)
    p.set_defaults(handler=_controller)

    p = sub.add_parser(
        "patch-now",
        help="patch chosen instances now under a task's budgets (a one-off opening the loop "
        "runs), or list or cancel such requests",
    )
    _patch_now_args(p)
    p.set_defaults(handler=_patch_now)

    p = sub.add_parser(
        "emergency",
        help="install only the fixes of one CVE now, through rings, gates and budgets (an "
        "emergency run the loop runs), or list, show or cancel such runs",
    )
    _emergency_args(p)
    p.set_defaults(handler=_emergency)

    p = sub.add_parser("windows", help="the next openings of each maintenance window, per target")
    p.add_argument("--source", required=True, help="a snapshot directory or Git URL")
    p.add_argument("--ref", default="main")
    p.add_argument("--count", type=_positive_int, default=3, help="openings to list per window")
    p.add_argument("--now", type=_timestamp, default=None)
    _output_arg(p, "table", "json", "yaml")
    p.set_defaults(handler=_windows)

    p = sub.add_parser("calendar", help="change calendars: whether one is open or closed")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = verbs.add_parser("state", help="whether a ChangeCalendar is open or closed, and until when")
    p.add_argument("name", help="the ChangeCalendar")
    p.add_argument("--source", required=True, help="a snapshot directory or Git URL")
    p.add_argument("--ref", default="main", help="Git branch, tag or commit (default main)")
    p.add_argument("--at", type=_timestamp, default=None, help="as of this ISO-8601 time")
    _output_arg(p, "table", "json", "yaml")
    p.set_defaults(handler=_calendar_state)

    p = sub.add_parser(
        "diff",
        help="what a change of desired state would do to the fleet: approvals, compliance, "
        "windows and next installs (exit 3 when something changes)",
    )
    _diff_args(p)
    p.set_defaults(handler=_diff)

    p = sub.add_parser(
        "compliance", help="compliance per instance, per patch, per group, or its history"
    )
    p.add_argument(
        "instance", nargs="?", help="one instance: every patch with its state and reason"
    )
    p.add_argument("--group", help="SSM's patch group state: instances with patches in each state")
    p.add_argument(
        "--history", action="store_true", help="how the instance's compliance changed, and why"
    )
    _state_arg(p)
    _output_arg(p, "table", "json", "yaml", "csv")
    p.set_defaults(handler=_compliance)

    p = sub.add_parser(
        "sources",
        help="the InstanceSources the loop read: machines listed, last refresh, last error",
    )
    _state_arg(p)
    _output_arg(p, "table", "json", "yaml", "csv")
    p.set_defaults(handler=_sources_status)

    p = sub.add_parser(
        "report",
        help="write a compliance report (CSV with SSM's columns, JSON, or an HTML dashboard), "
        "or list the scheduled reports' runs (--runs)",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--to",
        metavar="DIR|s3://BUCKET/PREFIX",
        help="a directory, or an S3 bucket and prefix (credentials, region: the AWS ways)",
    )
    what.add_argument(
        "--runs",
        action="store_true",
        help="list the recorded exports of scheduled ComplianceReports, newest first",
    )
    p.add_argument("--report", metavar="NAME", help="with --runs: only this ComplianceReport")
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=100,
        help="with --runs: at most this many (default 100)",
    )
    _output_arg(p, "table", "json", "yaml", when="with --runs: ")
    _s3_endpoint_arg(p)
    p.add_argument(
        "--format",
        choices=export.FORMATS,
        default="csv",
        help="csv: SSM's report columns (default); json: for machines; html: a dashboard",
    )
    p.add_argument("--instance", help="only this instance: its summary and detail")
    p.add_argument("--group", help="only the instances of this patch group")
    p.add_argument(
        "--now",
        type=_timestamp,
        default=None,
        help="report as of this ISO-8601 time: the files' time stamp, generatedAt and the "
        "trend's last day (default: now, UTC)",
    )
    _state_arg(p)
    p.set_defaults(handler=_report)

    p = sub.add_parser("audit", help="what the loop did: the audit log, filtered")
    p.add_argument(
        "--since", type=_since, help="from this ISO-8601 time, or this long ago (30m, 12h, 7d)"
    )
    p.add_argument("--instance", help="only what concerns this instance")
    p.add_argument(
        "--kind",
        choices=audit.kinds(),
        metavar="KIND",
        help="only this kind (job.dispatched) or family (job): " + ", ".join(audit.kinds()),
    )
    p.add_argument("--revision", help="only under this revision (or a commit's short sha)")
    _audit_log_arg(p)
    _state_arg(p)
    _output_arg(p, "table", "json", "jsonl", "yaml")
    p.set_defaults(handler=_audit)

    p = sub.add_parser(
        "findings",
        help="non-compliant instances as AWS Security Finding Format (ASFF) findings",
    )
    p.add_argument(
        "--account-id",
        default=findings.DEFAULT_ACCOUNT,
        help=f"the AWS account the findings belong to (default {findings.DEFAULT_ACCOUNT})",
    )
    p.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        help=f"default: $AWS_REGION, $AWS_DEFAULT_REGION, else {findings.DEFAULT_REGION}",
    )
    p.add_argument(
        "--product-arn",
        help="default: the account's custom-findings product, "
        "arn:aws:securityhub:REGION:ACCOUNT:product/ACCOUNT/default",
    )
    p.add_argument("--to", type=Path, help="write the findings (a JSON list) to this file")
    _state_arg(p)
    _output_arg(p, "table", "json", "yaml")
    p.set_defaults(handler=_findings)

    p = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the schema")
    p.add_argument("--out", type=Path, default=Path("crds"))
    p.add_argument(
        "--check", action="store_true", help="fail when the files differ from the schema"
    )
    p.set_defaults(handler=_crds)

    p = sub.add_parser(
        "node-agent",
        help="(inside a node Job) run the agent on the node's host and store its result in a "
        "ConfigMap",
    )
    p.add_argument("--result-configmap", required=True, help="the ConfigMap to write")
    p.add_argument("--namespace", required=True, help="the ConfigMap's namespace")
    p.add_argument("--node", required=True, help="the node's name (recorded with the result)")
    p.add_argument("--agent", type=Path, default=Path("/opt/patchwarden/agent.pyz"))
    p.add_argument(
        "--host-dir",
        type=Path,
        default=Path("/var/lib/patchwarden"),
        help="host directory mounted at the same path, where the agent is put for the host",
    )
    p.add_argument(
        "--host-pid",
        type=_positive_int,
        default=1,
        help="the host process whose namespaces the agent enters (nsenter -t): its init",
    )
    p.add_argument(
        "--no-nsenter",
        action="store_true",
        help="run the agent in this container instead of in the host's namespaces",
    )
    p.add_argument("--kubeconfig", help="default: the pod's ServiceAccount, else ~/.kube/config")
    p.add_argument("agent_args", nargs=argparse.REMAINDER, help="-- then the agent's arguments")
    p.set_defaults(handler=_node_agent)

    p = sub.add_parser(
        "schema",
        help="write the JSON Schemas of every kind (--out DIR; docs/editors.md), or print or "
        "check the JSON Schema of a document (inventory)",
    )
    p.add_argument("document", nargs="?", choices=("inventory",))
    p.add_argument("--out", type=Path, metavar="DIR", help="write one schema per kind here")
    p.add_argument(
        "--check",
        type=Path,
        metavar="PATH",
        help="fail when this file (inventory) or directory (every kind) differs from the schemas",
    )
    p.set_defaults(handler=_schema)
    _rollout_parser(sub)
    _import_parser(sub)
    _export_parser(sub)
    return parser


def _diff_args(p: argparse.ArgumentParser) -> None:
    """``patchctl diff`` (docs/diff.md)."""
    p.add_argument(
        "--source",
        help="the Git repository: a URL (file://, https://, ssh://...) or a local clone",
    )
    p.add_argument("--from", dest="from_rev", metavar="REV", help="the revision before (main)")
    after = p.add_mutually_exclusive_group(required=True)
    after.add_argument("--to", dest="to_rev", metavar="REV", help="the revision after the change")
    after.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="instead of --to: a directory (a working tree, or Kubernetes custom resources)",
    )
    _state_arg(p)
    p.add_argument("--now", type=_timestamp, default=None, help="compare as of this ISO-8601 time")
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=diffrender.LIMIT,
        help=f"markdown: rows per section, the rest counted (default {diffrender.LIMIT})",
    )
    _output_arg(p, "table", "json", "markdown")


def _rollout_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``patchctl rollout VERB``: progressive rollouts (docs/rollouts.md); one verb a function."""
    p = sub.add_parser(
        "rollout", help="progressive rollouts: where each stage stands; approve, resume, abort"
    )
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    _rollout_status_parser(verbs)
    _rollout_operator_parsers(verbs)


def _import_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``patchctl import ssm``: resources from AWS Systems Manager (docs/ssm-import.md)."""
    p = sub.add_parser("import", help="write resources from another patch manager's settings")
    systems = p.add_subparsers(dest="system", required=True, metavar="SYSTEM")
    p = systems.add_parser(
        "ssm",
        help="custom baselines, patch groups and maintenance windows from AWS Systems Manager",
    )
    p.add_argument("--region", help="the AWS region (default: the AWS configuration's)")
    p.add_argument("--profile", help="a named profile of the AWS configuration")
    p.add_argument(
        "--from-files",
        type=Path,
        metavar="DIR",
        help="read the JSON saved with the AWS CLI in DIR instead of calling SSM",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("ssm-import"),
        help="write the YAML here (default: %(default)s)",
    )
    _output_arg(p, "table", "json")
    p.set_defaults(handler=_import_ssm)


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``patchctl export ssm``: our resources created or updated in SSM (docs/ssm-import.md)."""
    p = sub.add_parser("export", help="create or update resources in another patch manager")
    systems = p.add_subparsers(dest="system", required=True, metavar="SYSTEM")
    p = systems.add_parser(
        "ssm", help="baselines, patch groups and maintenance windows into AWS Systems Manager"
    )
    p.add_argument("path", nargs="?", default=".", type=Path, help="resources (default: .)")
    p.add_argument("--region", help="the AWS region (default: the AWS configuration's)")
    p.add_argument("--profile", help="a named profile of the AWS configuration")
    p.add_argument(
        "--apply", action="store_true", help="do it (default: only say what it would do)"
    )
    _output_arg(p, "table", "json")
    p.set_defaults(handler=_export_ssm)


def _rollout_status_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = verbs.add_parser(
        "status", help="each stage's verdict and reason, the snapshot digest and frozen time"
    )
    p.add_argument("name", nargs="?", help="one Rollout (default: every one in force)")
    _loop_args(p)
    p.add_argument("--now", type=_timestamp, default=None, help="as of this ISO-8601 time")
    _output_arg(p, "table", "json")
    p.set_defaults(handler=_rollout_status)


def _common_evaluation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--now",
        type=_timestamp,
        default=None,
        help="evaluate as of this ISO-8601 time (default: now, UTC)",
    )
    _output_arg(p, "table", "json", "yaml")


def _output_arg(p: argparse.ArgumentParser, *choices: str, when: str = "") -> None:
    # A table unless -o says otherwise, piped or not (as kubectl): a script asks for what it
    # parses, and `patchctl ... | less` shows what the terminal shows. None, not "table", so
    # a command can tell whether -o was given (report: only with --runs).
    text = f"{when}output format (default: table, also when piped)"
    p.add_argument("-o", "--output", choices=choices, default=None, help=text)


def _machine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--root", type=Path, help="a system rooted at this directory (default: this host)"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--baseline", type=Path, help="a YAML file holding one PatchBaseline")
    which.add_argument(
        "--source", type=Path, help="a snapshot directory: the instance's effective baseline"
    )
    p.add_argument("--instance", help="instance name (default: the machine's host name)")
    p.add_argument("--no-refresh", action="store_true", help="do not refresh package lists first")
    p.add_argument("--fail-on-noncompliant", action="store_true", help="exit 3 when non-compliant")
    _common_evaluation_args(p)


def _loop_args(p: argparse.ArgumentParser, *, source_required: bool = True) -> None:
    _source_args(p, source_required=source_required)
    _state_arg(p)
    p.add_argument(
        "--stale-after", type=_hours, default=24.0, help="hours after which a scan is redone"
    )
    _s3_endpoint_arg(p)
    _ec2_endpoint_arg(p)
    _resource_file_args(p)


def _source_args(p: argparse.ArgumentParser, *, source_required: bool = True) -> None:
    p.add_argument(
        "--source",
        required=source_required,
        help="a snapshot directory, or a Git URL (file://, git://, https://, ssh://)",
    )
    p.add_argument("--ref", default="main", help="Git branch, tag or commit (default main)")
    p.add_argument("--identity-file", type=Path, help="SSH key for ssh:// Git URLs")
    p.add_argument("--known-hosts", type=Path, help="known_hosts for ssh:// Git URLs (strict)")
    verify = p.add_mutually_exclusive_group()
    verify.add_argument(
        "--verify-gpg",
        type=Path,
        metavar="GNUPGHOME",
        help="refuse revisions whose head commit is not signed by a key in this keyring",
    )
    verify.add_argument(
        "--verify-ssh",
        type=Path,
        metavar="ALLOWED_SIGNERS",
        help="refuse revisions whose head commit is not SSH-signed by an allowed signer",
    )


def _external_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--external-workers",
        action="store_true",
        help="queue each planned job for `patchctl worker` processes instead of running it here"
        " (PostgreSQL state only; --workers still bounds how many are queued or running)",
    )


def _worker_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run the jobs a leader with --external-workers queued in PostgreSQL state",
    )
    _state_arg(p)
    p.add_argument("--workers", type=_positive_int, default=10, help="jobs run at once, at most")
    p.add_argument(
        "--worker-id",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="this worker's name in the job queue (default: HOST-PID)",
    )
    p.add_argument(
        "--lease",
        type=_seconds,
        default=60.0,
        help="seconds without a heartbeat after which another worker reclaims this one's jobs",
    )
    _ssh_dir_arg(p)
    _reboot_args(p)
    p.set_defaults(handler=_worker)


def _clock_start_arg(p: argparse.ArgumentParser) -> None:
    # Bake times and windows span hours: a rehearsal (or a test) moves through them by starting
    # the loop again at a later --now, never by waiting.
    p.add_argument(
        "--now",
        type=_timestamp,
        default=None,
        help="start the loop's clock at this ISO-8601 time; it runs on from there "
        "(rehearsals and tests)",
    )


def _loop_clock(args: argparse.Namespace) -> Clock:
    """The wall clock, or one that starts at ``--now`` (:func:`clock_from`)."""
    start: datetime | None = getattr(args, "now", None)  # patch-now --wait has none
    return utc_now if start is None else clock_from(start)


def _reboot_args(p: argparse.ArgumentParser) -> None:
    """How long an SSH machine the loop rebooted may take to come back (docs/reboots.md)."""
    p.add_argument(
        "--reboot-timeout",
        type=_seconds,
        default=RebootSettings().timeout.total_seconds(),
        help="seconds an SSH machine may take to come back with a new boot id after the loop "
        "rebooted it; then its job fails (RebootTimeout)",
    )


def _reboot_settings(args: argparse.Namespace) -> RebootSettings:
    default = RebootSettings().timeout.total_seconds()
    return RebootSettings(timeout=timedelta(seconds=getattr(args, "reboot_timeout", default)))


def _resource_file_args(p: argparse.ArgumentParser) -> None:
    """The directories files named by resources must be in (docs/loop.md)."""
    _ssh_dir_arg(p)
    p.add_argument(
        "--report-dir",
        type=Path,
        metavar="DIR",
        help="ComplianceReports' directory destinations are written only inside this directory "
        "(relative names are written in it; default: reports/ beside the state database)",
    )


def _ssh_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ssh-dir",
        type=Path,
        default=default_ssh_dir(),
        metavar="DIR",
        help="ManagedInstances' identityFile and knownHostsFile, and the SSH client "
        "configuration DIR/config (Host aliases), are read only inside this directory "
        "(relative names are read in it; default: ~/.ssh of this user)",
    )


STATE_ENV = "PATCHWARDEN_STATE"


def _state_arg(p: argparse.ArgumentParser) -> None:
    # The environment carries a PostgreSQL URL with its password (the Helm chart sets it from a
    # Secret): a process's arguments are readable by every user of its host, its environment not.
    p.add_argument(
        "--state",
        metavar="PATH|sqlite:///PATH|postgresql://URL",
        default=os.environ.get(STATE_ENV) or None,
        help=f"the observed-state database (default: ${STATE_ENV}, else the user's state dir);"
        " PostgreSQL is experimental (docs/state.md)",
    )


def _s3_endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="S3 endpoint for s3:// reports (Swift, MinIO...; path-style addressing); "
        "default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or AWS's own",
    )


def _ec2_endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ec2-endpoint-url",
        metavar="URL",
        help="EC2 endpoint for ec2 InstanceSources (an emulator, a VPC endpoint); "
        "default: AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL or AWS's own",
    )


def _audit_log_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audit-log",
        type=Path,
        metavar="PATH",
        help=f"the audit log (JSON lines; default: {audit.FILENAME} beside the state database)",
    )


def _events_args(p: argparse.ArgumentParser) -> None:
    """Where transitions are announced (docs/events.md)."""
    p.add_argument(
        "--events-eventbridge",
        metavar="BUS",
        help="send events to this EventBridge bus (name or ARN; 'default' is the account's)",
    )
    p.add_argument(
        "--events-securityhub",
        action="store_true",
        help="import non-compliant instances into AWS Security Hub as findings, archived when "
        "compliant again (the credentials' account; region and endpoint: the AWS configuration)",
    )
    p.add_argument(
        "--events-webhook",
        metavar="URL",
        action="append",
        default=[],
        help="POST events as CloudEvents to this URL (repeatable)",
    )
    p.add_argument(
        "--events-webhook-header",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        type=_header,
        help=f"a header for every webhook request (repeatable); ${WEBHOOK_TOKEN_ENV} gives a "
        "bearer token without showing it in the process list",
    )
    p.add_argument(
        "--events-queue-size",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="events held per destination while it is slow or down (oldest dropped beyond)",
    )
    p.add_argument(
        "--events-endpoint-url",
        metavar="URL",
        help="EventBridge endpoint (an emulator, a VPC endpoint); default: the AWS configuration",
    )
    _chat_args(p)


def _chat_args(p: argparse.ArgumentParser) -> None:
    """Notices to people: Slack, Teams, mail (docs/notifications.md)."""
    from reconciler.report.notify.chat.messages import DEFAULT_KINDS

    secret = (
        "env:NAME or file:PATH holding the webhook URL, a secret never given on the command line"
    )
    for chat, what in (
        ("slack", "a Slack incoming webhook"),
        ("teams", "a Teams workflow webhook"),
    ):
        p.add_argument(
            f"--events-{chat}",
            metavar="env:NAME|file:PATH",
            action="append",
            default=[],
            type=_secret_ref,
            help=f"send notices to {what} (repeatable): {secret}",
        )
    p.add_argument(
        "--events-email",
        metavar="ADDRESS",
        action="append",
        default=[],
        help="mail notices to this address (repeatable; with --events-smtp, --events-smtp-from)",
    )
    for chat in ("slack", "teams", "email"):
        p.add_argument(
            f"--events-{chat}-kinds",
            metavar="KIND,...",
            type=_chat_kinds,
            help=f"the kinds --events-{chat} sends (default: {','.join(sorted(DEFAULT_KINDS))})",
        )
    p.add_argument(
        "--events-smtp", metavar="HOST[:PORT]", help="the mail server (port 25 unless given)"
    )
    p.add_argument("--events-smtp-from", metavar="ADDRESS", help="the notices' From address")
    p.add_argument(
        "--events-smtp-starttls",
        action="store_true",
        help="STARTTLS before sending, the server's certificate checked against the system's CAs",
    )
    p.add_argument(
        "--events-smtp-login",
        metavar="env:NAME|file:PATH",
        type=_secret_ref,
        help="USER:PASSWORD for the mail server, from the environment or a file (needs STARTTLS "
        "unless the server is this host)",
    )


def _secret_ref(text: str) -> tuple[str, str]:
    """``env:NAME`` or ``file:PATH``: where a secret is read, never the secret itself."""
    where, sep, name = text.partition(":")
    if not sep or where not in ("env", "file") or not name:
        from reconciler.redaction import secret_url

        shown = secret_url(text) if "://" in text else repr(text)
        raise argparse.ArgumentTypeError(
            f"{shown} is not env:NAME or file:PATH (a secret is read from there, never given here)"
        )
    return where, name


def _chat_kinds(text: str) -> frozenset[str]:
    from reconciler.report.notify.chat.messages import parse_kinds

    try:
        return frozenset(parse_kinds(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


WEBHOOK_TOKEN_ENV = "PATCHWARDEN_WEBHOOK_TOKEN"
# An http(s) Git source's credentials, kept out of the process list (--source shows there).
GIT_USERNAME_ENV, GIT_PASS_ENV = "PATCHWARDEN_GIT_USERNAME", "PATCHWARDEN_GIT_PASSWORD"


def webhook_headers(given: Iterable[tuple[str, str]], token: str | None) -> dict[str, str]:
    """The webhook's headers: the given ones, plus a bearer token from the environment unless an
    Authorization header was given (HTTP header names are case-insensitive: never send two)."""
    headers = dict(given)
    if token and not any(name.lower() == "authorization" for name in headers):
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or any(c in name for c in " :\t\r\n"):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE (e.g. X-Team=ops)")
    return name.strip(), value


def _since(text: str) -> datetime:
    """An ISO-8601 time, or a duration back from now: 30m, 12h, 7d."""
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    return _timestamp(text)


def _controller_args(p: argparse.ArgumentParser) -> None:
    """``patchctl controller`` (docs/controller.md)."""
    p.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig file (default: the Pod's service account in a cluster, else "
        "$KUBECONFIG or ~/.kube/config)",
    )
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument(
        "--namespace",
        help="the namespace whose resources are the desired state, where mirrors, Events and the "
        "Lease live (default: $POD_NAMESPACE, the Pod's, the context's, else default)",
    )
    p.add_argument(
        "--source",
        default="kubernetes",
        help="kubernetes (the default: the namespace's custom resources), or a directory or Git "
        "URL as for `patchctl run` (no status is written then)",
    )
    p.add_argument("--ref", default="main", help="Git branch, tag or commit (Git sources)")
    p.add_argument("--identity-file", type=Path, help="SSH key for ssh:// Git URLs")
    p.add_argument("--known-hosts", type=Path, help="known_hosts for ssh:// Git URLs (strict)")
    _state_arg(p)
    p.add_argument(
        "--stale-after", type=_hours, default=24.0, help="hours after which a scan is redone"
    )
    p.add_argument("--workers", type=_positive_int, default=10, help="jobs run at once, at most")
    _external_workers_arg(p)
    _s3_endpoint_arg(p)
    _ec2_endpoint_arg(p)
    _resource_file_args(p)
    p.add_argument(
        "--interval",
        type=_seconds,
        default=60.0,
        help="seconds between passes when nothing changes (a change wakes it at once)",
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default="0.0.0.0:9469",
        help="HOST:PORT for /healthz and /metrics",
    )
    p.add_argument(
        "--nodes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mirror every Node into a ManagedInstance (default: on)",
    )
    p.add_argument(
        "--node-selector",
        default="",
        metavar="SELECTOR",
        help="only Nodes matching this label selector are instances (e.g. kubernetes.io/os=linux)",
    )
    p.add_argument(
        "--node-job-config",
        type=Path,
        metavar="PATH",
        help="YAML with the node Job settings (the chart's nodeJobs values)",
    )
    p.add_argument("--lease-name", default="patchwarden-controller", help="the leader Lease")
    p.add_argument("--lease-duration", type=_seconds, default=15.0, metavar="SECONDS")
    p.add_argument("--renew-deadline", type=_seconds, default=10.0, metavar="SECONDS")
    p.add_argument("--retry-period", type=_seconds, default=2.0, metavar="SECONDS")
    p.add_argument(
        "--identity", help="this replica's name in the Lease (default: $POD_NAME or host, and pid)"
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _listen(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT (HOST may be empty), checked here so a typo is a usage error."""
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Numbers on the command line: one family of argparse types, so every count and duration is
# refused the same way (argparse's "argument --x: …", exit 2) before anything starts. A zero or
# negative interval spins, a zero staleness rescans forever, zero workers never run a job.
_YEAR = 366 * 24 * 3600.0  # the longest duration taken: beyond it timers and timedelta overflow


def _number(
    text: str, parse: Callable[[str], float], what: str, low: float, high: float = math.inf
) -> float:
    """``text`` parsed, finite, with ``low <= value <= high`` (``low`` excluded for floats:
    a duration of 0 is never meant)."""
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    exclusive = parse is float
    if not math.isfinite(value) or value < low or (exclusive and value == low) or value > high:
        bound = f"more than {low:g}" if exclusive else f"{low:g} or more"
        most = f", at most {high:.0f}" if high < math.inf else ""
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: give {what}, {bound}{most}")
    return value


def _positive_int(text: str) -> int:
    """A count: workers, openings, rows, queued events."""
    return int(_number(text, int, "a whole number", 1))


def _seconds(text: str) -> float:
    """A duration in seconds: an interval, a lease's timings."""
    return _number(text, float, "a number of seconds", 0, _YEAR)


def _seconds_or_zero(text: str) -> int:
    """A wait in whole seconds, where 0 means "do not wait"."""
    return int(_number(text, int, "a whole number of seconds", 0, _YEAR))


def _minutes(text: str) -> int:
    """A wait in whole minutes, at most a week: how long a one-off opening may wait to start."""
    return int(_number(text, int, "a whole number of minutes", 1, 7 * 24 * 60))


def _hours(text: str) -> float:
    """A duration in hours: how old a scan may get."""
    return _number(text, float, "a number of hours", 0, _YEAR / 3600)


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (2026-11-28T10:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _format(args: argparse.Namespace) -> str:
    return str(args.output or "table")


# -- commands -----------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    written = read_snapshot(args.path)
    enrolled = enrol_once(args.path, written, utc_now, ec2_endpoint_url=args.ec2_endpoint_url)
    snapshot, statuses = enrolled.snapshot, enrolled.statuses
    counts = {
        "PatchBaseline": len(snapshot.baselines),
        "PatchGroup": len(snapshot.groups),
        "MaintenanceWindow": len(snapshot.windows),
        "ManagedInstance": len(written.instances),
        "ComplianceReport": len(snapshot.reports),
        "InstanceSource": len(snapshot.instance_sources),
        "Rollout": len(snapshot.rollouts),
        "ChangeCalendar": len(snapshot.calendars),
    }
    if (args.output or "table") == "table":
        listed = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        print(f"{args.path}: valid ({listed or 'no resources'})")
        for line in enrolment_lines(statuses):
            print(line)
    else:
        document = {"path": str(args.path), "valid": True, "resources": counts}
        document["enrolled"] = [status_document(status) for status in statuses]
        render.dump(document, args.output, sys.stdout)
    return EXIT_OK


def _import_ssm(args: argparse.Namespace) -> int:
    try:
        if args.from_files is not None:
            account = read_files(args.from_files)
        else:
            account = read_account(args.region, args.profile)
    except SsmReadFailed as exc:
        raise UserError(str(exc)) from None
    predefined = {
        baseline.metadata.annotations[SSM_NAME]: name
        for name, baseline in predefined_baselines().items()
        if SSM_NAME in baseline.metadata.annotations
    }
    imported = convert(account, predefined)
    files = ssmimport.yaml_files(imported)
    # What we write must be what `patchctl validate` accepts: checked before anything is written.
    snapshot_of([(str(args.out / name), text.encode()) for name, text in files.items()])
    written = {name: args.out / name for name in files}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        written[name].write_text(text, encoding="utf-8")
    ssmimport.report(imported, written, _format(args), sys.stdout)
    return EXIT_OK


def _export_ssm(args: argparse.Namespace) -> int:
    outbound = to_ssm(read_snapshot(args.path))
    try:
        actions = export_account(outbound, args.region, args.profile, apply=args.apply)
    except SsmReadFailed as exc:
        raise UserError(str(exc)) from None
    if _format(args) == "json":
        render.dump({"applied": args.apply, "actions": actions}, "json", sys.stdout)
        return EXIT_OK
    for line in actions or ["SSM already holds these resources"]:
        print(line if args.apply else f"would {line}")
    if not args.apply and actions:
        print("dry run: nothing was changed in SSM; --apply does it")
    return EXIT_OK


def _evaluate(args: argparse.Namespace) -> int:
    now = args.now or datetime.now(UTC)
    inventories = read_inventories(args.inventory)
    if not inventories:
        raise UserError(f"{args.inventory}: no inventory documents (*.json) found")
    results: list[InstanceEvaluation] = []
    cache = DecisionCache()
    if args.baseline is not None:
        baseline = _single_baseline(args.baseline)
        for inventory in inventories:
            _check_os(baseline, inventory)
            results.append(evaluate(baseline, inventory, now, cache=cache))
    else:
        snapshot = _desired(args.source)
        for inventory in inventories:
            results.append(_evaluate_in_snapshot(snapshot, inventory, now, cache)[0])
    render.evaluations(results, _format(args), sys.stdout, show_all=args.all)
    return _exit_for(results, args.fail_on_noncompliant)


def _explain(args: argparse.Namespace) -> int:
    now = args.now or datetime.now(UTC)
    snapshot = _desired(args.source)
    inventories = [i for i in read_inventories(args.inventory) if i.instance_id == args.instance]
    if not inventories:
        raise UserError(f"no inventory for instance {args.instance!r} under {args.inventory}")
    inventory = inventories[0]
    if args.state:
        inventory = _recorded_first_seen(args, inventory)
    result, resolution = _evaluate_in_snapshot(snapshot, inventory, now, DecisionCache())
    instance = snapshot.instances.get(args.instance)
    origin = provenance(instance) if instance else None
    text = str(origin) if origin else None
    place = _rollout_place(args, snapshot, args.instance)
    gates = _gates_shown(snapshot, args.instance, result.patch_group, place)
    calendars = _calendars_shown(snapshot, args.instance, result.patch_group, place, now)
    render.explanation(
        result, resolution, args.patch, _format(args), sys.stdout, text, place, gates, calendars
    )
    return EXIT_OK


def _gates_shown(
    snapshot: Snapshot, instance: str, group: str | None, place: render.RolloutPlace | None
) -> list[render.GateShown]:
    """The gates guarding the instance's installs, each read now (as the loop reads them)."""
    if instance not in snapshot.instances:
        return []
    stage = (place.rollout, place.stage) if place else None
    guarding = gates_guarding(snapshot, instance, group, stage)
    readings = read_gates(gate for _, gate in guarding)
    return [
        render.GateShown(gate.name, whose, readings[gate.key].blocking, readings[gate.key].reason)
        for whose, gate in guarding
    ]


def _calendars_shown(
    snapshot: Snapshot,
    instance: str,
    group: str | None,
    place: render.RolloutPlace | None,
    now: datetime,
) -> list[render.CalendarShown]:
    """The change calendars guarding the instance, each read at ``now`` (--now, else now)."""
    if instance not in snapshot.instances:
        return []
    guarding = calendars_guarding(snapshot, instance, group, place.rollout if place else None)
    readings = read_calendars(snapshot, now, (name for _, name in guarding))
    shown = []
    for whose, name in guarding:
        state = reading_state(name, snapshot.calendars[name], readings.get(name), now)
        shown.append(render.CalendarShown(name, whose, state.closed, state.reason))
    return shown


def _rollout_place(
    args: argparse.Namespace, snapshot: Snapshot, instance: str
) -> render.RolloutPlace | None:
    """The instance's rollout and stage, and with ``--state`` its current cycle's snapshot."""
    for name, rollout in sorted(snapshot.rollouts.items()):
        for stage, members in zip(
            rollout.spec.stages, stage_members(rollout, snapshot), strict=True
        ):
            if instance in members:
                return render.RolloutPlace(name, stage.name, _frozen_digest(args, name))
    return None


def _frozen_digest(args: argparse.Namespace, rollout: str) -> str | None:
    if not args.state:
        return None
    path = _state_path(args)
    if not path.is_file():  # never create an empty store for a mistyped path
        raise UserError(f"--state {path}: no such file")
    with StateStore(path) as store:
        frozen = store.rollout_record(rollout).snapshot
    return frozen.digest if frozen else None


def _desired(path: Path) -> Snapshot:
    """A directory's snapshot with the machines its InstanceSources list, enrolled now."""
    return enrol_once(path, read_snapshot(path), utc_now).snapshot


def _recorded_first_seen(args: argparse.Namespace, inventory: Inventory) -> Inventory:
    """``inventory`` with the first-seen times the state store recorded (versions it never
    recorded stay without one: explain records nothing)."""
    path = _state_path(args)
    if _postgres_url(args) is None and not path.is_file():  # no empty store for a typo
        raise UserError(f"--state {path}: no such file")
    with _store(args) as store:
        return store.with_first_seen(inventory, None)


def _evaluate_in_snapshot(
    snapshot: Snapshot, inventory: Inventory, now: datetime, cache: DecisionCache
) -> tuple[InstanceEvaluation, Resolution]:
    instance = snapshot.instances.get(inventory.instance_id)
    labels = dict(instance.metadata.labels) if instance else {}
    resolution = resolve(snapshot, labels, inventory.facts.operating_system)
    if resolution.baseline is None:
        raise UserError(f"{inventory.instance_id}: {resolution.baseline_reason}")
    group = resolution.group.metadata.name if resolution.group else None
    holds = declared_holds(resolution.group, instance)
    result = evaluate(
        resolution.baseline, inventory, now, patch_group=group, cache=cache, holds=holds
    )
    return result, resolution


def _single_baseline(path: Path) -> PatchBaseline:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    snapshot = build_snapshot([(str(path), path.read_bytes())])
    if len(snapshot.baselines) != 1 or len(snapshot.locations) != 1:
        raise SnapshotInvalid(
            [Problem(str(path), 1, "", "expected exactly one PatchBaseline document")]
        )
    return next(iter(snapshot.baselines.values()))


def _check_os(baseline: PatchBaseline, inventory: Inventory) -> None:
    if baseline.spec.operating_system is not inventory.facts.operating_system:
        raise UserError(
            f"{inventory.instance_id} runs {inventory.facts.operating_system} but baseline "
            f"{baseline.metadata.name!r} is for {baseline.spec.operating_system}"
        )


def _sources(args: argparse.Namespace) -> tuple[BaselineSource, ...]:
    """The sources of the baseline(s) the machine may get (the agent picks its system's)."""
    if args.baseline is not None:
        baseline = _single_baseline(args.baseline)
        system = baseline.spec.operating_system
        return tuple(BaselineSource(system, s) for s in baseline.spec.sources)
    if not args.source:
        return ()
    snapshot = _desired(args.source)
    instance = snapshot.instances.get(args.instance or "")
    return baseline_sources(snapshot, dict(instance.metadata.labels) if instance else {})


def _scan(args: argparse.Namespace) -> int:
    transport = LocalTransport(str(args.root) if args.root else None)
    with render.progress("Scanning packages" + ("" if args.no_refresh else " (refreshing lists)")):
        inventory = transport.scan(
            instance_id=args.instance, refresh=not args.no_refresh, sources=_sources(args)
        )
    result = _evaluate_machine(args, inventory)
    render.evaluations([result], _format(args), sys.stdout, show_all=False)
    return _exit_for([result], args.fail_on_noncompliant)


def _install(args: argparse.Namespace) -> int:
    transport = LocalTransport(
        str(args.root) if args.root else None, trust_root_scripts=args.trust_root_scripts
    )
    sources = _sources(args)
    with render.progress("Scanning packages" + ("" if args.no_refresh else " (refreshing lists)")):
        inventory = transport.scan(
            instance_id=args.instance, refresh=not args.no_refresh, sources=sources
        )
    before = _evaluate_machine(args, inventory)
    baseline = _baseline_of(args, inventory)[0]
    pins = _pins_to_install(args, before, inventory)
    blocked = baseline.spec.blocked()
    result = InstallResult(changed=False, patches=(), dependencies=())
    if pins:
        with render.progress(f"Installing {len(pins)} patch(es)"):
            result = transport.install(
                InstallRequest(
                    pins,
                    blocked=blocked,
                    simulate=args.simulate,
                    reboot_option=args.reboot_option,
                    allow_reboot=args.allow_reboot,
                    lock_timeout=args.lock_timeout,
                    sources=sources,
                )
            )
    if args.simulate or not pins:
        after = before
    else:
        with render.progress("Rescanning"):
            rescanned = transport.scan(
                instance_id=inventory.instance_id, refresh=False, sources=sources
            )
        after = _evaluate_machine(args, after_install(rescanned, result, architectures(before)))
    render.installation(after, result.document(), _format(args), sys.stdout)
    failed = install_failed(result)
    return EXIT_INVALID if failed else _exit_for([after], args.fail_on_noncompliant)


def _pins_to_install(
    args: argparse.Namespace, before: InstanceEvaluation, inventory: Inventory
) -> tuple[str, ...]:
    """The baseline's approved missing patches, or those of --install-override-list."""
    path: Path | None = args.install_override_list
    if path is None:
        return tuple(pins_for(before, inventory.facts.arch))
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return override_pins(read_install_override_list(str(path), path.read_bytes()), inventory)


def _evaluate_machine(args: argparse.Namespace, inventory: Inventory) -> InstanceEvaluation:
    baseline, group = _baseline_of(args, inventory)
    return evaluate(baseline, inventory, args.now or datetime.now(UTC), patch_group=group)


def _baseline_of(
    args: argparse.Namespace, inventory: Inventory
) -> tuple[PatchBaseline, str | None]:
    """The baseline for a scanned machine: --baseline, else its effective one in --source, else
    the predefined default for its OS."""
    if args.baseline is not None:
        baseline = _single_baseline(args.baseline)
        _check_os(baseline, inventory)
        return baseline, None
    snapshot = _desired(args.source) if args.source else Snapshot(predefined=predefined_baselines())
    instance = snapshot.instances.get(inventory.instance_id)
    labels = dict(instance.metadata.labels) if instance else {}
    resolution = resolve(snapshot, labels, inventory.facts.operating_system)
    if resolution.baseline is None:
        raise UserError(f"{inventory.instance_id}: {resolution.baseline_reason}")
    return resolution.baseline, resolution.group.metadata.name if resolution.group else None


def _exit_for(results: list[InstanceEvaluation], fail_on_noncompliant: bool) -> int:
    noncompliant = any(
        r.summary.compliance_status is ComplianceStatus.NON_COMPLIANT for r in results
    )
    return EXIT_NONCOMPLIANT if noncompliant and fail_on_noncompliant else EXIT_OK


def _ssh_pool() -> SshPool:
    # Imported when a loop command runs: asyncssh costs every other command ~80 ms to load.
    from reconciler.dispatch.ssh import SshPool

    return SshPool()


def _store(args: argparse.Namespace, *, writer: bool = False) -> StateBackend:
    """The state store of ``--state``; a ``writer`` (a verb that writes and dispatches) holds
    its writer lock until it closes it, and is refused while another process holds it."""
    holder = Holder.this_process(f"patchctl {args.command}") if writer else None
    url = _postgres_url(args)
    if url is not None:
        # Imported only for PostgreSQL state: every other command is spared loading psycopg.
        from reconciler.state.postgres.store import PostgresStore

        return PostgresStore(url, writer=holder, home=StateStore.default_path().parent)
    return StateStore(_state_path(args), writer=holder)


def _postgres_url(args: argparse.Namespace) -> str | None:
    """``--state postgresql://…`` (or ``postgres://``), given whole to libpq: user, password,
    host, database and options such as ``sslmode``; a password may also come from PGPASSWORD,
    PGPASSFILE or ``?passfile=``. None for SQLite state."""
    text: str | None = args.state
    scheme = (text or "").partition("://")[0].lower()
    return text if text and "://" in text and scheme in ("postgresql", "postgres") else None


def _state_path(args: argparse.Namespace) -> Path:
    """``--state`` as a file: a path, or ``sqlite:///ABSOLUTE/PATH``; for PostgreSQL state, the
    name in this machine's state directory beside which its local files live (as
    ``PostgresStore.path``). Another URL is refused, never taken for a relative path
    (``postgresql://h/db`` would be ``postgresql:/h/db``)."""
    text: str | None = args.state
    if not text:
        return StateStore.default_path()
    if "://" not in text:
        return Path(text)
    scheme, _, rest = text.partition("://")
    if _postgres_url(args) is not None:
        return StateStore.default_path().parent / "postgresql"
    if scheme.lower() != "sqlite":
        raise UserError(
            f"--state {redacted(text)}: {scheme}:// is not a state store; give a file path,"
            " sqlite:///ABSOLUTE/PATH or postgresql://USER@HOST/DATABASE"
        )
    if not rest.startswith("/") or "?" in rest or "#" in rest:
        raise UserError(
            f"--state {text}: a SQLite URL names an absolute file and nothing else,"
            " e.g. sqlite:///var/lib/patchwarden/state.db"
        )
    return Path("/" + rest.lstrip("/"))


def _source(args: argparse.Namespace, store_path: Path, ref: str | None = None) -> Source:
    """A directory or a Git URL; Git clones live beside the state database. ``ref`` pins a Git
    source to one commit (the clone is the same)."""
    text = str(args.source)
    if "://" not in text:
        path = Path(text)
        if not path.is_dir():
            raise UserError(f"{text}: not a directory (give a directory or a Git URL)")
        return DirectorySource(path)
    verify = None
    if getattr(args, "verify_gpg", None):
        verify = SignatureVerification("gpg", args.verify_gpg)
    elif getattr(args, "verify_ssh", None):
        verify = SignatureVerification("ssh", args.verify_ssh)
    # Named after the URL without credentials: a new token reuses the clone, and the name
    # gives no hash of a password to guess at.
    key = f"{redacted(text)}#{args.ref}"
    workdir = store_path.parent / "git" / hashlib.sha256(key.encode()).hexdigest()[:16]
    username = os.environ.get(GIT_USERNAME_ENV)
    # GitPython costs every command that reads no Git repository its import (test_startup.py).
    from reconciler.sources.git import GitSource

    try:
        return GitSource(
            text,
            ref=ref or args.ref,
            workdir=workdir,
            identity_file=getattr(args, "identity_file", None),
            known_hosts_file=getattr(args, "known_hosts", None),
            verify=verify,
            credentials=None if username is None else (username, os.environ.get(GIT_PASS_ENV, "")),
        )
    except SourceError as exc:  # a URL or ref refused before anything is fetched
        raise UserError(str(exc)) from None


def _transports(pool: SshPool, ssh_dir: Path, trust_root_scripts: bool) -> TransportFor:
    """Each instance's transport; SSH ones share ``pool`` and read their files in ``ssh_dir``;
    ``trust_root_scripts`` is the operator's (:func:`_root_scripts_trusted`), and so is
    $PATCHWARDEN_TRUST_LOCAL_HOOKS=1 (docs/hooks.md)."""
    trust_local_hooks = _switch(TRUST_HOOKS_ENV, "run window tasks' hooks on this host")
    return lambda instance: transport_for(
        instance.spec.connection,
        pool=pool,
        ssh_dir=ssh_dir,
        name=instance.metadata.name,
        trust_root_scripts=trust_root_scripts,
        trust_local_hooks=trust_local_hooks,
    )


def _switch(name: str, what: str) -> bool:
    """An operator's on/off environment variable: 1 or 0 (or unset), else a UserError."""
    value = os.environ.get(name, "")
    if value not in ("", "0", "1"):
        raise UserError(
            f"{name}={value!r}: expected 1 ({what}) or 0; unset it to keep them refused"
        )
    return value == "1"


def _reconciler(
    args: argparse.Namespace,
    store: StateBackend,
    transports: TransportFor,
    *,
    clock: Clock = utc_now,
    observers: Sequence[Observer] = (),
    on_job_done: Callable[[JobRecord], None] | None = None,
) -> Reconciler:
    configure_logging()
    settings = Settings(stale_after=timedelta(hours=args.stale_after))
    git = "://" in str(args.source)
    return Reconciler(
        _source(args, Path(store.path)),
        store,
        transports,
        settings=settings,
        workers=getattr(args, "workers", 10),
        # After a restart, a refused head falls back to the last good commit (Git only: a
        # directory keeps no earlier content).
        pinned=(
            (lambda revision: _source(args, Path(store.path), revision.rpartition(":")[2]))
            if git
            else None
        ),
        s3_endpoint_url=getattr(args, "s3_endpoint_url", None),
        ec2_endpoint_url=getattr(args, "ec2_endpoint_url", None),
        report_dir=args.report_dir,
        clock=clock,
        observers=observers,
        on_job_done=on_job_done,
        reboot_settings=_reboot_settings(args),
        job_queue=_job_queue(args, store),
    )


def _job_queue(args: argparse.Namespace, store: StateBackend) -> JobQueue | None:
    """The store's job queue with ``--external-workers`` (PostgreSQL state only), else None."""
    if not getattr(args, "external_workers", False):
        return None
    _require_postgres(args, "--external-workers")
    return cast(JobQueue, store)  # PostgresStore: the queue's methods beside the backend's


def _require_postgres(args: argparse.Namespace, what: str) -> None:
    if _postgres_url(args) is None:
        raise UserError(
            f"{what} needs PostgreSQL state (--state postgresql://USER@HOST/DATABASE): the job"
            " queue workers claim from is in PostgreSQL; SQLite state runs jobs in one process"
        )


def _worker(args: argparse.Namespace) -> int:
    """``patchctl worker``: claim and run queued jobs until SIGTERM (running ones finish)."""
    _require_postgres(args, "patchctl worker")
    if args.lease < MIN_LEASE:
        # A lease shorter than a few heartbeats lets another worker reclaim a live one's job.
        raise UserError(f"--lease {args.lease:g}: give at least {MIN_LEASE:g} seconds")
    configure_logging()
    log = structlog.get_logger("patchwarden")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    pool = _ssh_pool()
    with _store(args) as store:
        transports = _transports(pool, args.ssh_dir, args.trust_root_scripts)
        runner_for = runners(
            store, transports, clock=utc_now, log=log, stopping=stopping,
            reboot_settings=_reboot_settings(args),
        )  # fmt: skip
        settings = WorkerSettings(args.worker_id, args.workers, timedelta(seconds=args.lease))
        queue = cast(JobQueue, store)
        log.info("worker started", worker=args.worker_id, slots=args.workers)
        Worker(queue, store, runner_for, settings, clock=utc_now, log=log, stopping=stopping).run()
    pool.close()
    return EXIT_OK


def _plan(args: argparse.Namespace) -> int:
    with _store(args) as store:
        now = args.now
        clock = utc_now if now is None else lambda: now
        reconciler = _reconciler(
            args,
            store,
            _transports(_ssh_pool(), args.ssh_dir, args.trust_root_scripts),
            clock=clock,
        )
        reconciler.refresh()
        # What the next pass's rollouts step would decide, recorded nowhere (plan writes nothing).
        reconciler.parts.observation.gates = reconciler.parts.rollouts.steer(write=False).gates
        reconciler.parts.observation.readings = gate_readings(reconciler.snapshot)
        if reconciler.snapshot is not None:
            reconciler.parts.observation.calendars = read_calendars(reconciler.snapshot, clock())
        current = reconciler.plan()
        if current is None or reconciler.snapshot is None:
            raise UserError("no valid snapshot: nothing to plan (see the refusal above)")
        render.plan(current, _format(args), sys.stdout, _origins(reconciler.snapshot))
        reconciler.enrolment.close()
    return EXIT_OK


def _rollout_status(args: argparse.Namespace) -> int:
    with _store(args) as store:
        now = args.now or utc_now()
        reconciler = _reconciler(
            args,
            store,
            _transports(_ssh_pool(), args.ssh_dir, args.trust_root_scripts),
            clock=lambda: now,
        )
        reconciler.refresh()
        reconciler.enrolment.close()
        snapshot = reconciler.snapshot
        if snapshot is None:
            raise UserError("no valid snapshot: no rollout to show (see the refusal above)")
        names = sorted(snapshot.rollouts) if args.name is None else [args.name]
        if args.name is not None and args.name not in snapshot.rollouts:
            known = ", ".join(sorted(snapshot.rollouts)) or "none"
            raise UserError(f"no Rollout named {args.name!r} in force (Rollouts: {known})")
        found = [rollout_status(store, snapshot, snapshot.rollouts[n], now) for n in names]
        render.rollout_status(found, _format(args), sys.stdout)
    return EXIT_OK


def _origins(snapshot: Snapshot) -> dict[str, str]:
    """instance -> ``from InstanceSource S, host H``, for the generated ones."""
    return {
        name: str(origin)
        for name, instance in snapshot.instances.items()
        if (origin := provenance(instance)) is not None
    }


@contextlib.contextmanager
def _observed_store(
    args: argparse.Namespace, *, serving: bool, writer: bool = True
) -> Iterator[tuple[StateBackend, list[Observer], LoopMetrics]]:
    """The state store and the loop's observers: the audit log, the event sinks and, when
    ``serving``, the metrics served (a one-shot run serves none). ``writer``: take the store's
    writer lock now (a controller on PostgreSQL takes it once it leads)."""
    with (
        _store(args, writer=writer) as store,
        _audit_log(args, store) as audit_log,
        _event_sinks(args) as sinks,
    ):
        metrics = LoopMetrics(store)
        metrics.track_event_sinks(sinks)
        yield store, [audit_log, *sinks, *([metrics] if serving else [])], metrics


@contextlib.contextmanager
def _observed_loop(
    args: argparse.Namespace,
    pool: SshPool,
    *,
    serving: bool = False,
    on_job_done: Callable[[JobRecord], None] | None = None,
) -> Iterator[tuple[Reconciler, StateBackend, LoopMetrics]]:
    """The loop of `reconcile` and `run` with its state store and observers."""
    with _observed_store(args, serving=serving) as (store, observers, metrics):
        reconciler = _reconciler(
            args,
            store,
            _transports(pool, args.ssh_dir, args.trust_root_scripts),
            clock=_loop_clock(args),
            observers=observers,
            on_job_done=on_job_done,
        )
        yield reconciler, store, metrics


def _reconcile(args: argparse.Namespace) -> int:
    pool = _ssh_pool()
    with (
        render.job_progress() as progress,
        _observed_loop(args, pool, on_job_done=progress) as (reconciler, store, _),
    ):
        reconciler.recover()
        summary = reconciler.reconcile(until_idle=True)
        reconciler.wait_for_exports()  # a one-shot run exports what is due before it exits
        render.reconcile_summary(summary, store.latest_scans(), _format(args), sys.stdout)
    pool.close()
    return EXIT_OK if summary.revision is not None else EXIT_INVALID


def _run(args: argparse.Namespace) -> int:
    host, port = args.listen
    pool = _ssh_pool()
    with _observed_loop(args, pool, serving=True) as (reconciler, _, metrics), _listening():
        serve(
            reconciler, interval=args.interval, host=host or "127.0.0.1", port=port, metrics=metrics
        )
    pool.close()
    return EXIT_OK


def _controller(args: argparse.Namespace) -> int:
    # The Kubernetes client costs every other command ~0.5 s to import.
    import dataclasses

    from reconciler.controller import LeaderElector, own_deployment, run

    api, namespace = _kubernetes(args)
    host, port = args.listen
    lease, node_settings = _controller_settings(args, namespace)
    # What the controller creates (its Lease, the Node mirrors) goes with its Deployment.
    owner = own_deployment(api, namespace)
    lease = dataclasses.replace(lease, owners=(owner,) if owner else ())
    pool = _ssh_pool()
    elector = LeaderElector(api, lease)
    transports, resume = _node_access(
        api, node_settings, pool, args.ssh_dir, args.trust_root_scripts, elector.may_act
    )
    # Replicas sharing a PostgreSQL store wait for the Lease as standbys without its writer
    # lock (taken at start, it would refuse them), and take the lock once they lead.
    shared = _postgres_url(args) is not None
    with _observed_store(args, serving=True, writer=not shared) as (store, observers, metrics):
        if args.source == "kubernetes":
            reconciler, events = _controller_reconciler(
                args,
                api,
                namespace,
                store,
                transports,
                observers=observers,
                leading=elector.may_act,
                resume=resume,
                owner=owner,
            )
        else:
            reconciler = _reconciler(
                args, store, transports, clock=_loop_clock(args), observers=observers
            )
            events = None
        _log_level(args.log_level)
        with _listening():
            code = run(
                reconciler,
                elector,
                interval=args.interval,
                host=host or "0.0.0.0",  # a Pod's probes and Prometheus reach it
                port=port,
                metrics=metrics,
                events=events,
                resume=resume,
                on_leading=_writer_once_leading(args, store) if shared else lambda: None,
            )
    pool.close()
    return code


def _writer_once_leading(args: argparse.Namespace, store: StateBackend) -> Callable[[], None]:
    """What a controller on PostgreSQL state does once it leads: take the writer lock
    (``StoreLocked``, one line and exit 1, while a former leader's session still holds it)."""
    from reconciler.state.postgres.store import PostgresStore

    assert isinstance(store, PostgresStore)  # _store's choice for a postgresql:// --state
    holder = Holder.this_process(f"patchctl {args.command}")
    return lambda: store.take_writer(holder)


@contextlib.contextmanager
def _listening() -> Iterator[None]:
    """A --listen address that cannot be served (in use, not this machine's) is the user's to
    fix: one line naming it, exit 1."""
    try:
        yield
    except ListenError as exc:
        raise UserError(str(exc)) from None


def _controller_settings(
    args: argparse.Namespace, namespace: str
) -> tuple[LeaseConfig, NodeSettings]:
    """The leader Lease and the settings of node Jobs, from the command line."""
    import dataclasses

    from reconciler.controller import LeaseConfig, default_identity
    from reconciler.dispatch.nodes import NodeSettings

    try:
        lease = LeaseConfig(
            name=args.lease_name,
            namespace=namespace,
            identity=args.identity or default_identity(),
            lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline,
            retry_period=args.retry_period,
        )
        values = yaml.safe_load(args.node_job_config.read_text()) if args.node_job_config else {}
        node_settings = NodeSettings.from_values(values or {})
    except (ValueError, OSError, yaml.YAMLError) as exc:
        raise UserError(str(exc)) from None
    if os.environ.get("POD_NAME") and os.environ.get("POD_NAMESPACE"):
        # Draining the controller's own node must not evict the controller doing the draining.
        own = f"{os.environ['POD_NAMESPACE']}/{os.environ['POD_NAME']}"
        node_settings = dataclasses.replace(
            node_settings, keep_pods=(*node_settings.keep_pods, own)
        )
    return lease, node_settings


def _node_access(
    api: Any,
    node_settings: NodeSettings,
    pool: SshPool,
    ssh_dir: Path,
    trust_root_scripts: bool,
    leading: Callable[[], bool],
) -> tuple[TransportFor, Callable[[], object]]:
    """The controller's transports and its ``resume_nodes``, sharing one set of node locks (a
    node a transport works on is left alone by resume), fenced by ``leading`` (a replica that
    lost the Lease starts no step on a node)."""
    from reconciler.dispatch.nodes import NodeLocks, resume_nodes

    locks = NodeLocks(may_act=leading)

    def transports(instance: ManagedInstance) -> Transport:
        return transport_for(
            instance.spec.connection,
            pool=pool,
            kubernetes=api,
            node_settings=node_settings,
            node_locks=locks,
            ssh_dir=ssh_dir,
            name=instance.metadata.name,
            trust_root_scripts=trust_root_scripts,
        )

    def resume() -> object:
        return resume_nodes(api, node_settings, locks)

    return transports, resume


def _controller_reconciler(
    args: argparse.Namespace,
    api: Any,
    namespace: str,
    store: StateBackend,
    transports: TransportFor,
    *,
    observers: list[Observer],
    leading: Callable[[], bool],
    resume: Callable[[], object],
    owner: dict[str, Any] | None = None,
) -> tuple[Reconciler, EventSink]:
    """The controller's loop on the namespace's custom resources, with its Kubernetes Events;
    ``owner``: the Node mirrors' ownerReference (the controller's Deployment)."""
    from reconciler.controller import ControllerReconciler, EventSink, NodeMirror
    from reconciler.kube.rest import Kube
    from reconciler.sources.kubernetes import KubernetesSource
    from reconciler.state.kubernetes import StatusWriter

    configure_logging()
    source = KubernetesSource(
        api, namespace, watch_nodes=args.nodes, node_selector=args.node_selector
    )

    def uid_of(kind: str, name: str) -> str | None:
        info = source.listing.get((kind, name))
        return info.uid if info else None

    events = EventSink(api, namespace, uid_of=uid_of, object_of=source.object_of)
    reconciler = ControllerReconciler(
        source,
        store,
        transports,
        writer=StatusWriter(api, namespace),
        mirror=NodeMirror(api, namespace, args.node_selector, owner) if args.nodes else None,
        leading=leading,
        resume=resume,
        gate_api=Kube(api),
        settings=Settings(stale_after=timedelta(hours=args.stale_after)),
        workers=args.workers,
        s3_endpoint_url=args.s3_endpoint_url,
        ec2_endpoint_url=args.ec2_endpoint_url,
        report_dir=args.report_dir,
        observers=[events, *observers],
        reboot_settings=_reboot_settings(args),
        job_queue=_job_queue(args, store),
        clock=_loop_clock(args),
    )
    return reconciler, events


def _log_level(level: str) -> None:
    """Log at ``level`` and above only (debug, info, warning or error)."""
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper()))
    )


def _kubernetes(args: argparse.Namespace) -> tuple[Any, str]:
    """The API client and the namespace (see :func:`reconciler.kube.connect`)."""
    from reconciler.kube import Kubeconfig, KubeconfigError, connect

    try:
        return connect(Kubeconfig(args.kubeconfig, args.context), args.namespace)
    except KubeconfigError as exc:
        raise UserError(str(exc)) from None


def _audit_path(args: argparse.Namespace) -> Path:
    if args.audit_log is not None:
        return Path(args.audit_log)
    return audit.default_path(_state_path(args))


def _audit_log(args: argparse.Namespace, store: StateBackend) -> audit.AuditLog:
    path = args.audit_log or audit.default_path(Path(store.path))
    try:
        return audit.AuditLog(path)
    except OSError as exc:
        raise UserError(
            f"cannot open the audit log {path}: {exc.strerror or exc} (choose another with "
            "--audit-log PATH)"
        ) from None


@contextlib.contextmanager
def _event_sinks(args: argparse.Namespace) -> Iterator[list[Sink]]:
    """The event sinks the options ask for; on exit each gets EVENTS_FLUSH_SECONDS to deliver
    what is still queued."""
    # Imported only when asked for: boto3 and httpx cost every other command time to load.
    from reconciler.report.notify import events

    if args.events_queue_size < 1:
        raise UserError(f"--events-queue-size must be at least 1 (got {args.events_queue_size})")
    headers = webhook_headers(args.events_webhook_header, os.environ.get(WEBHOOK_TOKEN_ENV))
    options = {"capacity": args.events_queue_size}
    sinks: list[Sink] = []
    try:
        if args.events_eventbridge:
            sinks.append(
                events.EventBridgeSink(_events_client(args), bus=args.events_eventbridge, **options)
            )
        if args.events_securityhub:
            sinks.append(events.SecurityHubSink(*_securityhub_clients(), **options))
        for url in args.events_webhook:
            if not url.startswith(("http://", "https://")) or not _has_host(url):
                raise UserError(f"--events-webhook {url}: give an http:// or https:// URL")
            sinks.append(events.WebhookSink(url, headers=headers, **options))
        sinks.extend(_chat_sinks(args, options))
        yield sinks
    finally:
        for sink in sinks:
            sink.close(EVENTS_FLUSH_SECONDS)


EVENTS_FLUSH_SECONDS = 10.0


def _chat_sinks(args: argparse.Namespace, options: dict[str, Any]) -> Iterator[Sink]:
    """Slack, Teams and mail sinks, each with its kinds; their options given alone are refused."""
    from reconciler.report.notify.chat import sinks as chat

    _chat_options_alone(args)
    for ref in args.events_slack:
        url = _webhook_url("--events-slack", ref)
        yield chat.SlackSink(url, kinds=_kinds_of(args.events_slack_kinds), **options)
    for ref in args.events_teams:
        url = _webhook_url("--events-teams", ref)
        yield chat.TeamsSink(url, kinds=_kinds_of(args.events_teams_kinds), **options)
    if args.events_email:
        kinds = _kinds_of(args.events_email_kinds)
        yield chat.EmailSink(_smtp(args), args.events_email, kinds=kinds, **options)


def _kinds_of(given: frozenset[str] | None) -> frozenset[Any]:
    from reconciler.report.notify.chat.messages import DEFAULT_KINDS

    return DEFAULT_KINDS if given is None else given


def _chat_options_alone(args: argparse.Namespace) -> None:
    """An option of a sink not asked for would be accepted and ignored: refused."""
    needs = {
        "--events-slack-kinds": (args.events_slack_kinds, args.events_slack, "--events-slack"),
        "--events-teams-kinds": (args.events_teams_kinds, args.events_teams, "--events-teams"),
        "--events-email-kinds": (args.events_email_kinds, args.events_email, "--events-email"),
        "--events-smtp": (args.events_smtp, args.events_email, "--events-email"),
        "--events-smtp-from": (args.events_smtp_from, args.events_email, "--events-email"),
        "--events-smtp-starttls": (args.events_smtp_starttls, args.events_email, "--events-email"),
        "--events-smtp-login": (args.events_smtp_login, args.events_email, "--events-email"),
        "--events-email": (args.events_email, args.events_smtp, "--events-smtp HOST[:PORT]"),
    }
    for option, (given, needed, other) in needs.items():
        if given and not needed:
            raise UserError(f"{option} needs {other}")
    if args.events_email and not args.events_smtp_from:
        raise UserError("--events-email needs --events-smtp-from ADDRESS (the notices' sender)")


def _secret(option: str, ref: tuple[str, str]) -> str:
    """The secret ``ref`` names: an environment variable's value or a file's content."""
    where, name = ref
    if where == "env":
        value = os.environ.get(name, "").strip()
        if not value:
            raise UserError(f"{option} env:{name}: the environment has no {name} (or it is empty)")
        return value
    try:
        value = Path(name).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise UserError(f"{option} file:{name}: cannot read it: {why}") from None
    if not value:
        raise UserError(f"{option} file:{name}: the file is empty")
    return value


def _webhook_url(option: str, ref: tuple[str, str]) -> str:
    from reconciler.redaction import secret_url

    url = _secret(option, ref)
    if not url.startswith(("http://", "https://")) or not _has_host(url):
        raise UserError(
            f"{option} {':'.join(ref)}: holds {secret_url(url)}, not an http:// or https:// URL"
        )
    return url


def _smtp(args: argparse.Namespace) -> Any:
    from reconciler.report.notify.chat.sinks import Smtp

    host, port = _host_port("--events-smtp", args.events_smtp, 25)
    login = None
    if args.events_smtp_login:
        user, sep, password = _secret("--events-smtp-login", args.events_smtp_login).partition(":")
        if not sep or not user:
            where = ":".join(args.events_smtp_login)
            raise UserError(f"--events-smtp-login {where}: holds no USER:PASSWORD")
        if not args.events_smtp_starttls and host not in ("localhost", "127.0.0.1", "::1"):
            raise UserError(
                "--events-smtp-login needs --events-smtp-starttls: a password is never sent in "
                f"the clear to {host}"
            )
        login = (user, password)
    return Smtp(host, args.events_smtp_from, port, starttls=args.events_smtp_starttls, login=login)


def _host_port(option: str, text: str, default: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not sep:
        host, port = text, str(default)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{option} {text}: give HOST or HOST:PORT (e.g. mail.example.com:587)")
    return host, int(port)


def _has_host(url: str) -> bool:
    """Whether ``url`` parses and names a host (``http://`` or ``http://[::1`` do not)."""
    import httpx

    try:
        return bool(httpx.URL(url).host)
    except httpx.InvalidURL:
        return False


def _events_client(args: argparse.Namespace) -> object:
    from botocore.exceptions import BotoCoreError

    from reconciler.report.notify.events import events_client

    try:
        return events_client(endpoint_url=args.events_endpoint_url)
    except BotoCoreError as exc:
        raise UserError(
            f"--events-eventbridge: {exc} (set AWS_REGION, or a region in the AWS profile)"
        ) from None
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise UserError(
            f"--events-endpoint-url: {exc}: give the endpoint as http(s)://host[:port]"
        ) from None


def _securityhub_clients() -> tuple[object, object]:
    from botocore.exceptions import BotoCoreError

    from reconciler.report.notify.events import securityhub_clients

    try:
        return securityhub_clients()
    except BotoCoreError as exc:
        raise UserError(
            f"--events-securityhub: {exc} (set AWS_REGION, or a region in the AWS profile)"
        ) from None


def _audit(args: argparse.Namespace) -> int:
    path = _audit_path(args)
    query = audit.Query(
        since=args.since, instance=args.instance, kind=args.kind, revision=args.revision
    )
    try:
        entries, corrupt = audit.read(path, query)
    except OSError as exc:
        raise UserError(f"cannot read the audit log {path}: {exc.strerror or exc}") from None
    for problem in corrupt:
        print(f"patchctl: {problem}", file=sys.stderr)
    if not path.exists():  # nothing audited yet, or a mistyped path: say which file was read
        print(f"patchctl: no audit log at {path} (yet)", file=sys.stderr)
    fmt = _format(args)
    if fmt == "jsonl":
        for entry in entries:
            sys.stdout.write(json.dumps(entry) + "\n")
    elif fmt == "table":
        render.rows(audit.table_rows(entries), fmt, sys.stdout, title=f"Audit log {path}")
    else:
        render.dump(entries, fmt, sys.stdout)
    return EXIT_OK


def _findings(args: argparse.Namespace) -> int:
    settings = findings.Settings(
        account=args.account_id,
        region=args.region or findings.DEFAULT_REGION,
        product_arn=args.product_arn,
    )
    if not (settings.account.isdigit() and len(settings.account) == 12):
        raise UserError(f"--account-id {settings.account!r}: an AWS account id is 12 digits")
    with _store(args) as store:
        latest = store.latest_scans()
        histories = {
            name: store.scan_history(name, limit=1000)
            for name, scan in latest.items()
            if scan.compliance_status == ComplianceStatus.NON_COMPLIANT
        }
    found = findings.findings(latest, histories, settings)
    if args.to is not None:
        try:
            args.to.parent.mkdir(parents=True, exist_ok=True)
            args.to.write_text(json.dumps(found, indent=2) + "\n")
        except OSError as exc:
            raise UserError(
                f"--to {args.to}: cannot write the findings ({exc.strerror or exc}): "
                "choose a file this user may write"
            ) from None
        print(f"{args.to}: {len(found)} finding(s)", file=sys.stderr)
        return EXIT_OK
    fmt = _format(args)
    if fmt == "table":
        render.rows(findings.rows(found), fmt, sys.stdout, title="Non-compliant instances (ASFF)")
    else:
        render.dump(found, fmt, sys.stdout)
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    """Both revisions judged against the recorded inventories; exit 3 when anything differs."""
    inventories = _recorded_inventories(args)
    before_name, before = _diff_side(args, "--from", args.from_rev or "main")
    if args.against is not None:
        after_name, after = str(args.against), _diff_directory("--against", args.against)
    else:
        after_name, after = _diff_side(args, "--to", args.to_rev)
    result = compare(before, after, inventories, args.now or datetime.now(UTC))
    title = f"patchctl diff: {before_name} → {after_name}"
    diffrender.diff(result, _format(args), sys.stdout, title=title, limit=args.limit)
    return EXIT_CHANGES if result.changed else EXIT_OK


def _recorded_inventories(args: argparse.Namespace) -> list[Inventory]:
    """The latest recorded inventory of every instance, with its recorded first-seen times."""
    path = _state_path(args)
    if not path.is_file():  # never create an empty store for a mistyped path
        raise UserError(f"--state {path}: no such file (the state database with the scans)")
    shared: dict[PackageFacts, PackageFacts] = {}
    with StateStore(path) as store:
        inventories = []
        for name, scan in store.latest_scans().items():
            try:
                inventory = Inventory.model_validate(scan.inventory)
            except ValueError as exc:
                words = " ".join(str(exc).split())  # pydantic's message spans lines
                raise UserError(
                    f"--state {path}: the scan of {name!r} is unreadable: {words}"
                ) from None
            inventories.append(_shared(store.with_first_seen(inventory, None), shared))
    return inventories


def _shared(inventory: Inventory, seen: dict[PackageFacts, PackageFacts]) -> Inventory:
    """``inventory`` with each package version an inventory read before has (equal in every
    field) as that one's object: the diff's tables intern versions by identity, so a fleet's
    repeated versions are then decided and stored once, not once per machine (docs/diff.md)."""
    installed = tuple(seen.setdefault(p, p) for p in inventory.installed)
    updates = tuple(seen.setdefault(p, p) for p in inventory.updates)
    return inventory.model_copy(update={"installed": installed, "updates": updates})


def _diff_side(args: argparse.Namespace, option: str, rev: str) -> tuple[str, Snapshot]:
    """The snapshot of ``--source`` at ``rev`` (Git), or of ``--source`` itself (a directory
    that is no Git clone, only with --against); bad input as one line naming ``option``."""
    if not args.source:
        raise UserError(f"diff: {option} {rev} needs --source (a Git URL or clone)")
    text = str(args.source)
    local = Path(text)
    if "://" not in text and local.is_dir() and not _git_repository(local):
        if args.from_rev is not None or args.to_rev is not None:
            raise UserError(f"--source {text}: not a Git repository, so it has no {option} {rev}")
        return text, _diff_directory("--source", local)
    url = text if "://" in text else f"file://{local.resolve()}"
    # One clone for both revisions (named by the URL and "diff"): the second only resolves.
    source = _source(argparse.Namespace(source=url, ref="diff"), _state_path(args), ref=rev)
    from reconciler.sources.git import GitSource  # GitPython: see _source

    assert isinstance(source, GitSource)  # a URL: _source gives a directory only for a path
    try:
        revision, written = source.snapshot()
        # The machines the revision's InstanceSources list (an Ansible inventory in the commit)
        snapshot = enrol_revision(revision, written, source.repository, utc_now).snapshot
    except SnapshotInvalid as exc:
        raise UserError(f"{option} {rev}: {_first_problem(exc)}") from None
    except SourceError as exc:
        raise UserError(f"{option} {rev}: {exc}") from None
    short = revision.sha[:12]
    return (short if revision.sha.startswith(rev) else f"{rev} ({short})"), snapshot


def _git_repository(path: Path) -> bool:
    """A work tree with its .git, or a bare repository."""
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _diff_directory(option: str, path: Path) -> Snapshot:
    if not path.exists():
        raise UserError(f"{option} {path}: no such directory")
    try:
        return _desired(path)
    except SnapshotInvalid as exc:
        raise UserError(f"{option} {path}: {_first_problem(exc)}") from None


def _first_problem(exc: SnapshotInvalid) -> str:
    """A refused revision in one line: its first problem (file:line: field: message), and how
    many more `patchctl validate` would list."""
    more = len(exc.problems) - 1
    first = str(exc.problems[0]) if exc.problems else "invalid"
    return first + (f" (and {more} more problem(s): run patchctl validate)" if more else "")


def _read_source(args: argparse.Namespace) -> Snapshot:
    """The snapshot of ``--source`` (a directory, or a Git URL at ``--ref``), nothing recorded."""
    snapshot = read_snapshot(Path(args.source)) if "://" not in args.source else None
    if snapshot is None:
        with _store(argparse.Namespace(state=None)) as store:
            _, snapshot = _source(args, Path(store.path)).snapshot()
    return snapshot


def _calendar_state(args: argparse.Namespace) -> int:
    snapshot = _read_source(args)
    calendar = snapshot.calendars.get(args.name)
    if calendar is None:
        known = ", ".join(sorted(snapshot.calendars)) or "none"
        raise UserError(f"no ChangeCalendar named {args.name!r} in {args.source}; known: {known}")
    at = args.at or utc_now()
    reading = read_calendars(snapshot, at, [args.name]).get(args.name)
    state = reading_state(args.name, calendar, reading, at)
    document = {
        "calendar": args.name,
        "type": calendar.spec.type,
        "at": at.isoformat(),
        "state": "CLOSED" if state.closed else "OPEN",
        "until": state.until.isoformat() if state.until else None,
        "reason": state.reason,
    }
    if _format(args) == "table":
        ahead = state.until is not None and "until" not in state.reason  # open until an event
        print(state.reason + (f" until {state.until.isoformat()}" if ahead and state.until else ""))
    else:
        render.dump(document, _format(args), sys.stdout)
    return EXIT_OK


def _windows(args: argparse.Namespace) -> int:
    snapshot = _read_source(args)
    now = args.now or datetime.now(UTC)
    rows = []
    for name in sorted(snapshot.windows):
        window = snapshot.windows[name]
        targets = ", ".join(
            [
                *window.spec.targets.patch_groups,
                *(["selector"] if window.spec.targets.selector else []),
            ]
        )
        for opening in openings(window.spec, now, limit=args.count):
            rows.append(
                {
                    "window": name,
                    "targets": targets,
                    "start": opening.start.isoformat(),
                    "end": opening.end.isoformat(),
                    "cutoff": opening.cutoff_at.isoformat(),
                    "tasks": ", ".join(f"{t.name} ({t.operation})" for t in window.spec.tasks),
                    "schedule": describe(window.spec),
                }
            )
    render.windows(rows, _format(args), sys.stdout)
    return EXIT_OK


def _compliance(args: argparse.Namespace) -> int:
    fmt = _format(args)
    with _store(args) as store:
        latest = store.latest_scans()
        if args.group:
            render.rows(
                [compliance.group_state(args.group, latest.values())],
                fmt,
                sys.stdout,
                title=f"Patch group {args.group}",
            )
        elif args.instance and args.history:
            render.rows(
                compliance.history(
                    store.scan_history(args.instance, limit=1000),
                    store.jobs(instance=args.instance),
                ),
                fmt,
                sys.stdout,
                title=f"Compliance history of {args.instance}"
                f"{_enrolled_from(store, args.instance)}",
            )
        elif args.instance:
            scan = latest.get(args.instance)
            if scan is None:
                raise UserError(f"no scan of {args.instance!r} is recorded in {store.path}")
            render.rows(
                compliance.patches(scan),
                fmt,
                sys.stdout,
                title=f"{args.instance}: {scan.operation} under {scan.baseline} at {scan.revision}"
                f"{_enrolled_from(store, args.instance)}",
            )
        elif args.history:
            raise UserError("--history needs an instance: patchctl compliance INSTANCE --history")
        else:
            rows = compliance.with_provenance(
                compliance.instances(latest), store.enrolled(), column=fmt in ("table", "csv")
            )
            render.rows(rows, fmt, sys.stdout, title="Compliance")
    return EXIT_OK


def _enrolled_from(store: StateBackend, instance: str) -> str:
    """`` (from InstanceSource S, host H)`` for a generated instance, empty for a written one."""
    found = store.enrolled().get(instance)
    if found is None:
        return ""
    origin, listed = found
    return f" ({origin})" if listed else f" ({origin}; no longer listed there)"


def _sources_status(args: argparse.Namespace) -> int:
    """Each InstanceSource the loop has read: what it lists, and whether it can be read now."""
    with _store(args) as store:
        lists, failures, enrolled = store.source_lists(), store.source_failures(), store.enrolled()
    rows = []
    for name in sorted({*lists, *failures}):
        listed, failed = lists.get(name), failures.get(name)
        rows.append(
            {
                "source": name,
                "machines": len(listed.hosts) if listed else 0,
                "listedAt": listed.at.isoformat() if listed else None,
                "instances": sum(1 for p, on in enrolled.values() if on and p.source == name),
                "error": failed[0] if failed else None,
                "failedAt": failed[1].isoformat() if failed else None,
            }
        )
    render.rows(rows, _format(args), sys.stdout, title="Instance sources")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    if args.runs:
        return _report_runs(args)
    if args.report is not None or args.output is not None:
        raise UserError("--report and -o go with --runs: patchctl report --runs --report NAME")
    with _store(args) as store:
        data = export.read_input(store, args.format)
    try:
        files = export.build_report(
            data,
            args.format,
            now=args.now or datetime.now(UTC),
            instance=args.instance,
            group=args.group,
        )
    except export.ReportError as exc:
        raise UserError(str(exc)) from None
    try:
        locations = publish(files, args.to, endpoint_url=args.s3_endpoint_url)
    except PublishError as exc:
        raise UserError(str(exc)) from None
    for location in locations:
        print(location)
    return EXIT_OK


def _report_runs(args: argparse.Namespace) -> int:
    if args.instance is not None or args.group is not None:
        raise UserError("--instance and --group go with --to; --runs lists every run (--report)")
    if args.now is not None:  # the runs are listed as recorded: no time to report them as of
        raise UserError("--now goes with --to; --runs lists the runs as recorded")
    if args.limit < 1:
        raise UserError(f"--limit {args.limit}: give a positive number")
    with _store(args) as store:
        runs = store.report_runs(args.report, limit=args.limit)
    data = [
        {
            "report": run.report,
            "opening": run.opening,
            "status": run.status.value,
            "destination": run.destination,
            "format": run.format,
            "locations": list(run.locations),
            "error": run.error,
            "revision": run.revision,
            "startedAt": run.started_at.isoformat(),
            "finishedAt": run.finished_at.isoformat(),
        }
        for run in runs
    ]
    fmt = _format(args)
    if fmt == "table":
        # For people: one time (when it finished), the files one per line.
        table = [
            {
                "report": run.report,
                "opening": run.opening,
                "status": run.status.value,
                "destination": run.destination,
                "locations": "\n".join(run.locations) or None,
                "error": run.error,
                "revision": run.revision,
                "finished": utc_stamp(run.finished_at),
            }
            for run in runs
        ]
        title = f"Report runs{f' of {args.report}' if args.report else ''}"
        render.rows(table, fmt, sys.stdout, title=title)
    else:
        render.dump(data, fmt, sys.stdout)
    return EXIT_OK


def _crds(args: argparse.Namespace) -> int:
    files = {
        name: "# Generated by `make crds` from reconciler/api; do not edit.\n"
        + yaml.safe_dump(document, sort_keys=False, width=100)
        for name, document in custom_resource_definitions().items()
    }
    return _generated(files, args.out, check=args.check, what="CRDs")


def _generated(files: dict[str, str], out: Path, *, check: bool, what: str) -> int:
    """Write generated ``files`` into ``out``, or (``check``) fail naming those that differ."""
    if check:
        stale = [str(out / n) for n, text in files.items() if not _same(out / n, text)]
        if stale:
            print(
                f"stale {what} (run `make crds` and commit): " + ", ".join(stale), file=sys.stderr
            )
            return EXIT_INVALID
        return EXIT_OK
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
    except OSError as exc:
        raise UserError(
            f"--out {out}: cannot write the {what} ({exc.strerror or exc}): choose a directory "
            "this user may write"
        ) from None
    return EXIT_OK


def _same(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text() == text


def _node_agent(args: argparse.Namespace) -> int:
    from reconciler.dispatch.nodes.agent_job import NodeAgentCall, parse_agent_args, run_node_agent

    agent_args = parse_agent_args(args.agent_args)
    if not agent_args:
        raise UserError("node-agent: give the agent's arguments after --, e.g. -- scan")
    return run_node_agent(
        NodeAgentCall(
            configmap=args.result_configmap,
            namespace=args.namespace,
            node=args.node,
            agent=args.agent,
            host_dir=args.host_dir,
            agent_args=agent_args,
            host_pid=args.host_pid,
            nsenter=not args.no_nsenter,
            kubeconfig=args.kubeconfig,
        )
    )


def _schema(args: argparse.Namespace) -> int:
    if args.document is None:
        return _kind_schemas(args)
    if args.out is not None:
        raise UserError(
            "--out writes every kind's schema: leave out `inventory` (whose schema is printed, "
            "or compared with --check FILE)"
        )
    text = json.dumps(Inventory.model_json_schema(by_alias=True), indent=2) + "\n"
    if args.check is None:
        sys.stdout.write(text)
        return EXIT_OK
    if not args.check.is_file() or args.check.read_text() != text:
        print(
            f"{args.check} is stale: run `patchctl schema inventory > {args.check}`",
            file=sys.stderr,
        )
        return EXIT_INVALID
    return EXIT_OK


def _kind_schemas(args: argparse.Namespace) -> int:
    """``patchctl schema --out DIR`` (or ``--check DIR``): one JSON Schema per kind, for editors."""
    if (args.out is None) == (args.check is None):
        raise UserError(
            "patchctl schema: give --out DIR (write every kind's schema) or --check DIR (compare "
            "with them), or `inventory` for the inventory document's"
        )
    files = {name: json.dumps(doc, indent=2) + "\n" for name, doc in editor.json_schemas().items()}
    out = args.out if args.out is not None else args.check
    return _generated(files, out, check=args.check is not None, what="JSON Schemas")


# -- patch now: one-off openings (docs/patch-now.md) ---------------------------------------------

START_WITHIN_MINUTES = 60
"""Default of ``patch-now --start-within``: a request no loop started by then is dropped
(EXPIRED), so a forgotten one never patches machines hours later by surprise."""


def _patch_now_args(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--group", metavar="G", help="the instances of this patch group")
    what.add_argument("--instance", metavar="I", help="this instance")
    what.add_argument(
        "--selector",
        metavar="S",
        help="the instances whose labels match this selector, as a window's targets.selector "
        "written as kubectl's -l (env=prod,role in (web,api),!canary)",
    )
    what.add_argument("--list", action="store_true", help="list the one-off openings, newest first")
    what.add_argument(
        "--cancel",
        metavar="ID",
        help="cancel a one-off opening: jobs not started never start, running ones finish",
    )
    _patch_now_task_args(p)
    p.add_argument(
        "--wait",
        action="store_true",
        help="run the loop here until the opening has ended, then print its outcome "
        "(exit 1 unless it succeeded)",
    )
    p.add_argument("--workers", type=_positive_int, default=10, help="with --wait: jobs at once")
    _loop_args(p, source_required=False)
    _output_arg(p, "table", "json", "yaml")
    _audit_log_arg(p)
    _events_args(p)


def _patch_now_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--operation", choices=("Scan", "Install"), default="Install")
    _one_off_budget_args(p)
    p.add_argument(
        "--hooks-from",
        metavar="WINDOW[/TASK]",
        help="copy the hooks and health checks of this window's task",
    )
    p.add_argument(
        "--gates-from",
        metavar="WINDOW[/TASK]",
        help="Install only: this window task's safety gates guard the request's installs",
    )
    p.add_argument("--note", metavar="TEXT", help="why (kept with the request and audited)")
    _override_calendar_arg(p)
    _override_halt_arg(p)
    _requested_by_arg(p)
    _start_within_arg(p)


def _one_off_budget_args(p: argparse.ArgumentParser) -> None:
    """A one-off opening's task: its reboot option and budgets (patch-now, emergency)."""
    p.add_argument(
        "--reboot-option", choices=("RebootIfNeeded", "NoReboot"), default="RebootIfNeeded"
    )
    p.add_argument(
        "--max-concurrency",
        type=lambda text: _budget("max_concurrency", text),
        default="1",
        metavar="N|N%",
        help="targets patched at once (default 1), as a window task's maxConcurrency",
    )
    p.add_argument(
        "--max-errors",
        type=lambda text: _budget("max_errors", text),
        default="1",
        metavar="N|N%",
        help="failed targets after which no new target starts (default 1), as maxErrors",
    )


def _start_within_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--start-within",
        type=_minutes,
        default=START_WITHIN_MINUTES,
        metavar="MINUTES",
        help=f"drop the request if no job of it started by then (default {START_WITHIN_MINUTES})",
    )


def _override_calendar_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--override-calendar",
        metavar="REASON",
        help="patch although a change calendar guarding the targets is closed; the reason, "
        "who asked and the calendars are audited (refused when none is closed)",
    )


def _override_halt_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--override-halt",
        metavar="REASON",
        help="patch machines of a halted rollout too; the reason, who asked and the rollouts "
        "are audited (refused when none is halted)",
    )


def _requested_by_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--requested-by",
        metavar="NAME",
        help="who asks, when not the operating-system user (both are recorded)",
    )


def _budget(field: str, text: str) -> str:
    try:
        return check_budget(field, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: {exc}") from None


# What each form of patch-now reads, beyond --state and -o: an option another form needs is
# refused there rather than accepted and ignored.
_SOURCE_OPTIONS = ("source", "ref", "identity_file", "known_hosts", "verify_gpg", "verify_ssh")
_REQUEST_OPTIONS = (
    *("operation", "reboot_option", "max_concurrency", "max_errors", "hooks_from", "note"),
    "gates_from",
    *("override_calendar", "override_halt"),
    *("start_within", "wait", *_SOURCE_OPTIONS),
)
_WAIT_OPTIONS = (
    *("workers", "stale_after", "s3_endpoint_url", "ssh_dir", "report_dir"),
    *("events_eventbridge", "events_webhook", "events_webhook_header", "events_queue_size"),
    *("events_endpoint_url", "events_securityhub"),
    *("events_slack", "events_teams", "events_email", "events_slack_kinds", "events_teams_kinds"),
    *("events_email_kinds", "events_smtp", "events_smtp_from", "events_smtp_starttls"),
    "events_smtp_login",
)


def _patch_now_unused(args: argparse.Namespace) -> None:
    """Refuse the options this form of patch-now would not read."""
    unused: tuple[str, ...]
    if args.list:
        form, unused = "--list", (*_REQUEST_OPTIONS, *_WAIT_OPTIONS, "requested_by", "audit_log")
    elif args.cancel:
        form, unused = "--cancel", (*_REQUEST_OPTIONS, *_WAIT_OPTIONS)
    elif not args.wait:
        form, unused = "a request without --wait", _WAIT_OPTIONS
    else:
        return
    probe = argparse.ArgumentParser()
    _patch_now_args(probe)
    given = [
        "--" + dest.replace("_", "-")
        for dest in unused
        if getattr(args, dest) != probe.get_default(dest)
    ]
    if given:
        raise UserError(f"patch-now: {form} takes no {', '.join(given)}")


def _patch_now(args: argparse.Namespace) -> int:
    _patch_now_unused(args)
    if args.list:
        with _store(args) as store:
            patchnow.listing(store.one_offs(), _format(args), sys.stdout)
        return EXIT_OK
    if args.cancel:
        return _patch_now_cancel(args)
    if not args.source:
        raise UserError(
            "patch-now: give --source, the desired state its targets and --hooks-from are "
            "checked against; nothing recorded"
        )
    if args.wait:
        return _patch_now_wait(args)
    with _store(args) as store, _audit_log(args, store) as log:
        in_force = _current_snapshot(args, store)
        emit = Emitter([log], utc_now, structlog.get_logger("patchwarden"), in_force)
        assert in_force.snapshot is not None
        record, instances = _record_one_off(args, in_force.snapshot, store, emit)
    patchnow.recorded(record, instances, _format(args), sys.stdout)
    return EXIT_OK


def _current_snapshot(args: argparse.Namespace, store: StateBackend) -> InForce:
    """The source's current revision, validated, without the loop: a request only reads it (a
    refused one is reported, as by ``validate``, and nothing is recorded)."""
    try:
        revision, snapshot = _source(args, Path(store.path)).snapshot()
    except SnapshotInvalid:
        raise
    except (RefusedInput, TemporaryError) as exc:
        raise UserError(f"--source {redacted(str(args.source))}: {exc}; nothing recorded") from None
    return InForce(snapshot, str(revision), revision.author)


Recorder = Callable[
    [argparse.Namespace, Snapshot, StateBackend, Emitter], tuple[OneOffRecord, list[str]]
]
"""Checks and records a one-off opening (patch-now's, or an emergency run's)."""


def _patch_now_wait(args: argparse.Namespace, record_with: Recorder | None = None) -> int:
    pool = _ssh_pool()
    with (
        render.job_progress() as progress,
        _observed_loop(args, pool, on_job_done=progress) as (loop, store, _),
    ):
        loop.refresh()
        if loop.snapshot is None:
            raise UserError("no valid snapshot: nothing recorded (see the refusal above)")
        record, _ = (record_with or _record_one_off)(args, loop.snapshot, store, loop.emit)
        loop.recover()  # this process holds the writer lock: what runs was left by a crash
        final = _run_one_off(loop, store, record.id)
        patchnow.outcome(final, store.one_off_jobs([record.id]), _format(args), sys.stdout)
    pool.close()
    return EXIT_OK if final.status is OneOffStatus.SUCCESS else EXIT_INVALID


def _run_one_off(loop: Reconciler, store: StateBackend, opening_id: str) -> OneOffRecord:
    """Passes until the opening has ended. A pass runs until nothing more can start, so one
    that starts no job and leaves it active means it waits on what no pass here changes."""
    while True:
        summary = loop.reconcile(until_idle=True)
        record = store.one_off(opening_id)
        assert record is not None  # recorded above; the store never deletes one
        if record.status not in ONE_OFF_ACTIVE:
            return record
        if not summary.jobs:
            current = loop.plan()
            why = (
                next((p.reason for p in current.one_offs if p.id == opening_id), "")
                if current
                else ""
            )
            raise UserError(
                f"{opening_id} is still {record.status} ({why}): it stays recorded for a running"
                f" loop; cancel it with patchctl patch-now --cancel {opening_id}"
            )


def _record_one_off(
    args: argparse.Namespace, snapshot: Snapshot, store: StateBackend, emit: Emitter
) -> tuple[OneOffRecord, list[str]]:
    """Check the request against ``snapshot``, record it and audit it; nothing is recorded
    when anything is wrong."""
    opening = _one_off_opening(args, snapshot, utc_now())
    instances = targeted(opening.targets, snapshot)
    opening, overrides = _overrides(args, snapshot, store, opening, instances, "patch-now")
    record = store.record_one_off(opening, now=opening.created_at)
    _emit_overrides(emit, overrides, opening, instances, "patch-now")
    emit(
        Kind.PATCH_NOW_REQUESTED,
        author=opening.requested_by,
        id=opening.id,
        operation=str(opening.task.operation),
        targets=opening.targets.describe(),
        instances=instances,
        document=dict(opening.to_wire()),
    )
    return record, instances


def _emit_overrides(
    emit: Emitter,
    overrides: dict[Kind, dict[str, Any]],
    opening: OneOffOpening,
    instances: list[str],
    run: str,
) -> None:
    """Audit (and announce) each rail a recorded request overrode (:func:`_overrides`)."""
    for kind, detail in overrides.items():
        emit(
            kind,
            author=opening.requested_by,
            id=opening.id,
            run=run,
            instances=instances,
            osUser=opening.os_user,
            **detail,
        )


def _overrides(
    args: argparse.Namespace,
    snapshot: Snapshot,
    store: StateBackend,
    opening: OneOffOpening,
    instances: list[str],
    command: str,
) -> tuple[OneOffOpening, dict[Kind, dict[str, Any]]]:
    """The rails a person may override, checked for a request on ``instances``: closed change
    calendars (--override-calendar) and, for installs, halted rollouts (--override-halt, whose
    reason the opening keeps for the planner). Returns the opening and what to audit once it
    is recorded; UserError when a rail refuses and the request gives no override, or gives one
    that would override nothing."""
    closed = calendar_refusal(snapshot, instances, opening.created_at)
    nothing = "no change calendar guarding the targets is closed"
    calendar = _override(command, "--override-calendar", args.override_calendar, closed, nothing)
    installs = opening.task.operation == Operation.INSTALL
    if not installs and args.override_halt is not None:
        raise UserError(
            f"{command}: --override-halt: a Scan installs nothing and a halt stops only "
            "installs; nothing recorded"
        )
    halted = _halted_rollouts(store, snapshot, instances) if installs else []
    nothing = "no rollout of the targets is halted"
    halt = _override(command, "--override-halt", args.override_halt, halted, nothing)
    overrides: dict[Kind, dict[str, Any]] = {}
    if calendar is not None:
        overrides[Kind.CALENDAR_OVERRIDDEN] = {"calendars": closed, "reason": calendar}
    if halt is not None:
        overrides[Kind.HALT_OVERRIDDEN] = {"rollouts": halted, "reason": halt}
        opening = opening.model_copy(update={"override_halt": halt})
    return opening, overrides


def _override(
    command: str, option: str, given: str | None, refusals: list[str], nothing: str
) -> str | None:
    """The reason of an override ``option`` (None when nothing needs one); UserError when a
    rail refuses (``refusals``) and the request gives no override, or gives one that would
    override nothing (it would be audited and mean nothing)."""
    reason = _words(option, given, 500)
    if refusals and reason is None:
        raise UserError(
            f"{command}: {'; '.join(refusals)}; give {option} REASON to patch anyway; "
            "nothing recorded"
        )
    if reason is not None and not refusals:
        raise UserError(f"{command}: {option}: {nothing}; nothing recorded")
    return reason if refusals else None


def _one_off_opening(args: argparse.Namespace, snapshot: Snapshot, now: datetime) -> OneOffOpening:
    targets = _one_off_targets(args)
    refused = refused_targets(targets, snapshot)
    if refused:
        raise UserError(f"patch-now: {refused}; nothing recorded")
    hooks_from: str | None = None
    hooks: dict[str, Any] = {}
    if args.hooks_from:
        try:
            hooks_from, hooks = hook_fields(snapshot, args.hooks_from)
        except ValueError as exc:
            raise UserError(f"--hooks-from {args.hooks_from}: {exc}; nothing recorded") from None
    task = WindowTask.model_validate(
        {
            "name": ONE_OFF_TASK,
            "operation": args.operation,
            "rebootOption": args.reboot_option,
            "maxConcurrency": args.max_concurrency,
            "maxErrors": args.max_errors,
            **hooks,
        }
    )
    os_user = _os_user()
    return OneOffOpening(
        id=f"pn-{uuid.uuid4().hex[:10]}",
        targets=targets,
        task=task,
        hooks_from=hooks_from,
        gates_from=_gates_from(args, snapshot),
        requested_by=_words("--requested-by", args.requested_by, 128) or os_user,
        os_user=os_user,
        note=_words("--note", args.note, 500),
        created_at=now,
        expires_at=now + timedelta(minutes=args.start_within),
    )


def _gates_from(args: argparse.Namespace, snapshot: Snapshot) -> str | None:
    """``--gates-from``'s ``WINDOW/TASK``, checked against the snapshot (None without it)."""
    if not args.gates_from:
        return None
    if args.operation != "Install":
        raise UserError("--gates-from: a Scan changes nothing and takes no gates; nothing recorded")
    try:
        return gating_task(snapshot, args.gates_from)[0]
    except ValueError as exc:
        raise UserError(f"--gates-from {args.gates_from}: {exc}; nothing recorded") from None


def _one_off_targets(args: argparse.Namespace) -> OneOffTargets:
    if args.group:
        return OneOffTargets(patch_groups=[args.group])
    if args.instance:
        return OneOffTargets(instances=[args.instance])
    try:
        return OneOffTargets(selector=parse_selector(args.selector))
    except ValueError as exc:
        raise UserError(f"--selector {args.selector}: {exc}; nothing recorded") from None


def _words(option: str, text: str | None, most: int) -> str | None:
    """A person's words for the record: one line, not empty, at most ``most`` characters."""
    if text is None:
        return None
    bad = control_character(text)
    if not text.strip() or bad or len(text) > most:
        why = f"contains {bad}" if bad else f"give 1 to {most} characters on one line"
        raise UserError(f"{option}: {why}; nothing recorded")
    return text


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no $USER and no passwd entry (a container's random uid)
        return f"uid {os.getuid()}"


def _patch_now_cancel(args: argparse.Namespace) -> int:
    with _store(args) as store, _audit_log(args, store) as log:
        record = store.one_off(args.cancel)
        if record is None:
            active = ", ".join(r.id for r in store.one_offs(ONE_OFF_ACTIVE)) or "none"
            raise UserError(f"no one-off opening {args.cancel}; pending or running: {active}")
        who = _words("--requested-by", args.requested_by, 128) or _os_user()
        now = utc_now()
        if not store.change_one_off(
            record.id, status=OneOffStatus.CANCELLED, now=now, only_from=ONE_OFF_ACTIVE
        ):
            ended = store.one_off(record.id) or record
            raise UserError(f"{record.id} already ended {ended.status}: nothing to cancel")
        fix = record.opening.emergency
        detail: dict[str, Any] = {
            "id": record.id,
            "status": "CANCELLED",
            "reason": f"cancelled by {who}",
        }
        if fix:
            detail.update(cve=fix.cve, instances=list(record.opening.targets.instances))
        log(
            Occurrence(
                kind=Kind.EMERGENCY_CHANGED if fix else Kind.PATCH_NOW_CHANGED,
                time=now,
                revision=None,
                author=who,
                detail=detail,
            )
        )
        final = store.one_off(record.id) or record
        patchnow.outcome(final, store.one_off_jobs([record.id]), _format(args), sys.stdout)
    return EXIT_OK


# -- rollout operator controls (docs/rollouts.md "Manual approval", "Resume and abort") ---------


def _rollout_operator_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``approve``, ``resume`` and ``abort`` under ``patchctl rollout``."""
    p = verbs.add_parser(
        "approve", help="approve the current cycle's snapshot for a stage that requires approval"
    )
    p.add_argument("name", help="the Rollout")
    p.add_argument("--stage", required=True, help="the stage with requiresApproval: true")
    p.add_argument(
        "--snapshot",
        metavar="DIGEST",
        help="refuse unless this is the current snapshot (its digest or first 7+ hex digits)",
    )
    _source_args(p)
    _rollout_operator_args(p, handler=_rollout_approve)
    p = verbs.add_parser("resume", help="a halted rollout continues; its failures are tried again")
    p.add_argument("name", help="the Rollout")
    _rollout_operator_args(p, handler=_rollout_resume)
    p = verbs.add_parser(
        "abort", help="end the current cycle: no stage installs more of its snapshot"
    )
    p.add_argument("name", help="the Rollout")
    _rollout_operator_args(p, handler=_rollout_abort)


def _rollout_operator_args(
    p: argparse.ArgumentParser, handler: Callable[[argparse.Namespace], int]
) -> None:
    p.add_argument("--reason", metavar="TEXT", help="why (recorded and audited)")
    _requested_by_arg(p)
    _state_arg(p)
    _audit_log_arg(p)
    _output_arg(p, "table", "json")
    p.set_defaults(handler=handler)


def _rollout_approve(args: argparse.Namespace) -> int:
    with _store(args) as store, _audit_log(args, store) as log:
        record = _rollout_in_cycle(store, args.name, "approve")
        in_force = _current_snapshot(args, store)
        assert in_force.snapshot is not None and record.snapshot is not None
        stage = _approval_stage(in_force.snapshot, args.name, args.stage, record)
        digest = record.snapshot.digest
        if args.snapshot is not None and not digest_matches(digest, args.snapshot):
            raise UserError(
                f"rollout {args.name}: snapshot {args.snapshot} is not the current one (cycle "
                f"{record.cycle}'s is {short_digest(digest)}); nothing recorded"
            )
        who, now = _rollout_who(args), utc_now()
        store.record_rollout_approval(args.name, stage.name, digest, now=now, by=who)
        change = _rollout_change(args, "approve", record, who, stage=stage.name)
        _rollout_audit(log, now, in_force.revision, change)
    return _rollout_print(
        args, change, f"stage {stage.name} approved for snapshot {short_digest(digest)}"
    )


def _approval_stage(
    snapshot: Snapshot, name: str, stage_name: str, record: RolloutRecord
) -> RolloutStage:
    """The stage ``patchctl rollout approve`` names, when approving it makes sense."""
    rollout = snapshot.rollouts.get(name)
    if rollout is None:
        known = ", ".join(sorted(snapshot.rollouts)) or "none"
        raise UserError(f"--source has no Rollout {name} (it has: {known}); nothing recorded")
    stages = {stage.name: stage for stage in rollout.spec.stages}
    stage = stages.get(stage_name)
    if stage is None:
        raise UserError(
            f"rollout {name} has no stage {stage_name} (stages: {', '.join(stages)}); "
            "nothing recorded"
        )
    if not stage.requires_approval:
        raise UserError(
            f"stage {stage_name} of rollout {name} needs no approval (it has no "
            "requiresApproval: true); nothing recorded"
        )
    if approved(stage, record):
        raise UserError(
            f"stage {stage_name} is already approved for snapshot "
            f"{short_digest(record.snapshot.digest if record.snapshot else '')}; nothing recorded"
        )
    return stage


def _rollout_resume(args: argparse.Namespace) -> int:
    with _store(args) as store, _audit_log(args, store) as log:
        record = _rollout_in_cycle(store, args.name, "resume")
        if record.halted is None:
            raise UserError(f"rollout {args.name} is not halted: nothing to resume")
        who, now = _rollout_who(args), utc_now()
        store.record_rollout_resume(args.name, now=now, by=who)
        change = {**_rollout_change(args, "resume", record, who), "halted": record.halted}
        _rollout_audit(log, now, None, change)
    return _rollout_print(
        args, change, f"resumed; its failures are tried again (was {record.halted})"
    )


def _rollout_abort(args: argparse.Namespace) -> int:
    with _store(args) as store, _audit_log(args, store) as log:
        record = _rollout_in_cycle(store, args.name, "abort")
        who, now = _rollout_who(args), utc_now()
        store.record_rollout_abort(args.name, now=now, by=who)
        change = _rollout_change(args, "abort", record, who)
        _rollout_audit(log, now, None, change)
    then = "the next freezes when the first stage's window next opens"
    return _rollout_print(args, change, f"cycle {record.cycle} aborted; {then}")


def _rollout_in_cycle(store: StateBackend, name: str, action: str) -> RolloutRecord:
    """The rollout's record, when it has a cycle in progress that ``action`` can change."""
    known = store.rollouts_known()
    if name not in known:
        raise UserError(
            f"no rollout {name} in the state store (rollouts with a cycle: "
            f"{', '.join(known) or 'none'}); nothing to {action}"
        )
    record = store.rollout_record(name)
    if record.aborted_at is not None:
        raise UserError(
            f"rollout {name}'s cycle {record.cycle} was aborted: nothing to {action} until the "
            "next cycle freezes"
        )
    return record


def _rollout_who(args: argparse.Namespace) -> dict[str, Any]:
    os_user = _os_user()
    return {
        "by": _words("--requested-by", args.requested_by, 128) or os_user,
        "osUser": os_user,
        "reason": _words("--reason", args.reason, 500),
    }


def _rollout_change(
    args: argparse.Namespace,
    action: str,
    record: RolloutRecord,
    who: dict[str, Any],
    stage: str | None = None,
) -> dict[str, Any]:
    digest = record.snapshot.digest if record.snapshot else None
    return {
        "rollout": args.name,
        "action": action,
        "cycle": record.cycle,
        "snapshot": digest,
        **({"stage": stage} if stage else {}),
        **who,
    }


def _rollout_audit(
    log: audit.AuditLog, now: datetime, revision: str | None, change: dict[str, Any]
) -> None:
    occurrence = Occurrence(
        kind=Kind.ROLLOUT_OPERATOR, time=now, revision=revision, author=change["by"], detail=change
    )
    log(occurrence)


def _rollout_print(args: argparse.Namespace, change: dict[str, Any], what: str) -> int:
    if _format(args) == "json":
        print(json.dumps(change, indent=2))
    else:
        print(f"rollout {args.name}: {what} (by {change['by']})")
    return EXIT_OK


# -- emergency CVE runs (docs/guardrails.md "Emergency CVE runs") --------------------------------

_EMERGENCY_REQUEST = (
    *("cve", "group", "reason", "reboot_option", "max_concurrency", "max_errors"),
    *("override_calendar", "override_halt"),
    *("start_within", "wait", *_SOURCE_OPTIONS, *_WAIT_OPTIONS),
)
"""Options only a new run reads: list, status and cancel refuse them rather than ignore them."""


def _emergency_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "verb",
        nargs="?",
        choices=("list", "status", "cancel"),
        help="list the emergency runs, show one (status ID) or cancel one (cancel ID); "
        "without it, --cve asks for a new run",
    )
    p.add_argument("id", nargs="?", help="the run, for status and cancel")
    p.add_argument("--cve", metavar="CVE-YYYY-NNNN", help="the CVE whose fixes to install now")
    p.add_argument(
        "--group",
        metavar="G",
        action="append",
        default=[],
        help="only machines of this patch group (repeat for several; default: the whole fleet)",
    )
    p.add_argument("--reason", metavar="TEXT", help="why (kept with the run and audited)")
    _one_off_budget_args(p)
    _override_calendar_arg(p)
    _override_halt_arg(p)
    _requested_by_arg(p)
    _start_within_arg(p)
    p.add_argument("--wait", action="store_true", help="run the loop here until the run has ended")
    p.add_argument("--workers", type=_positive_int, default=10, help="with --wait: jobs at once")
    _loop_args(p, source_required=False)
    _output_arg(p, "table", "json", "yaml")
    _audit_log_arg(p)
    _events_args(p)


def _emergency(args: argparse.Namespace) -> int:
    probe = argparse.ArgumentParser()
    _emergency_args(probe)
    given = [
        "--" + dest.replace("_", "-")
        for dest in _EMERGENCY_REQUEST
        if getattr(args, dest) != probe.get_default(dest)
    ]
    if args.verb is not None:
        if given:
            raise UserError(f"emergency {args.verb} takes no {', '.join(given)}")
        if (args.id is None) != (args.verb == "list"):
            raise UserError(
                f"emergency {args.verb}: "
                + ("give the run's id" if args.verb != "list" else "takes no id")
            )
        return _emergency_view(args)
    if args.id is not None or not args.cve or not args.source:
        raise UserError(
            "emergency: give --cve CVE-YYYY-NNNN and --source (or list, status ID, cancel ID); "
            "nothing recorded"
        )
    if args.wait:
        return _patch_now_wait(args, _record_emergency)
    with _store(args) as store, _audit_log(args, store) as log:
        in_force = _current_snapshot(args, store)
        emit = Emitter([log], utc_now, structlog.get_logger("patchwarden"), in_force)
        assert in_force.snapshot is not None
        record, instances = _record_emergency(args, in_force.snapshot, store, emit)
    patchnow.recorded(record, instances, _format(args), sys.stdout)
    return EXIT_OK


def _emergency_view(args: argparse.Namespace) -> int:
    with _store(args) as store:
        runs = [r for r in store.one_offs() if r.opening.emergency is not None]
        if args.verb == "list":
            patchnow.listing(runs, _format(args), sys.stdout)
            return EXIT_OK
        record = next((r for r in runs if r.id == args.id), None)
        if record is None:
            known = ", ".join(r.id for r in runs) or "none"
            raise UserError(f"no emergency run {args.id}; emergency runs: {known}")
        if args.verb == "status":
            patchnow.outcome(record, store.one_off_jobs([record.id]), _format(args), sys.stdout)
            return EXIT_OK
    args.cancel = record.id
    return _patch_now_cancel(args)


def _record_emergency(
    args: argparse.Namespace, snapshot: Snapshot, store: StateBackend, emit: Emitter
) -> tuple[OneOffRecord, list[str]]:
    """Freeze the CVE's fixes over the selected machines' latest scans, record the run as a
    one-off opening confined to them, and audit it; nothing is recorded when anything is wrong."""
    now = utc_now()
    opening = _emergency_opening(args, snapshot, store, now)
    instances = list(opening.targets.instances)
    opening, overrides = _overrides(args, snapshot, store, opening, instances, "emergency")
    fix = opening.emergency
    assert fix is not None
    record = store.record_one_off(opening, now=now)
    _emit_overrides(emit, overrides, opening, instances, "emergency")
    emit(
        Kind.EMERGENCY_REQUESTED,
        author=opening.requested_by,
        id=opening.id,
        cve=fix.cve,
        reason=fix.reason,
        groups=fix.groups,
        instances=instances,
        digest=fix.digest,
        versions=fix.versions,
        document=dict(opening.to_wire()),
    )
    return record, instances


def _halted_rollouts(store: StateBackend, snapshot: Snapshot, instances: list[str]) -> list[str]:
    """Each halted rollout (as the loop decides it: a cycle in progress, halted, not resumed
    by its resumeToken) with the targets among its members, said for a refusal."""
    known, targets = set(store.rollouts_known()), set(instances)
    found = []
    for name, rollout in sorted(snapshot.rollouts.items()):
        record = store.rollout_record(name) if name in known else None
        if record is None or record.halted is None or record.snapshot is None:
            continue
        if record.aborted_at is not None or record.resumed_by(rollout.spec.resume_token):
            continue
        mine = sorted(targets & {m for stage in stage_members(rollout, snapshot) for m in stage})
        if mine:
            found.append(f"rollout {name} is halted ({record.halted}): {', '.join(mine)}")
    return found


def _emergency_opening(
    args: argparse.Namespace, snapshot: Snapshot, store: StateBackend, now: datetime
) -> OneOffOpening:
    cve = str(args.cve).upper()
    if not CVE_ID.match(cve):
        raise UserError(f"--cve {args.cve}: give a CVE id such as CVE-2024-3094; nothing recorded")
    selected = sorted(snapshot.instances)
    if args.group:
        targets = OneOffTargets(patch_groups=list(args.group))
        refused = refused_targets(targets, snapshot)
        if refused:
            raise UserError(f"emergency: {refused}; nothing recorded")
        selected = targeted(targets, snapshot)
    latest = store.latest_scans()
    scans = {
        name: _scan_inventory(latest[name].inventory) if name in latest else None
        for name in selected
    }
    reason = _words("--reason", args.reason, 500)
    try:
        fix, instances = emergency_fix(cve, snapshot, selected, scans, now, reason, args.group)
    except ValueError as exc:
        raise UserError(f"emergency {cve}: {exc}; nothing recorded") from None
    task = WindowTask.model_validate(
        {
            "name": ONE_OFF_TASK,
            "operation": "Install",
            "rebootOption": args.reboot_option,
            "maxConcurrency": args.max_concurrency,
            "maxErrors": args.max_errors,
        }
    )
    os_user = _os_user()
    return OneOffOpening(
        id=f"em-{uuid.uuid4().hex[:10]}",
        targets=OneOffTargets(instances=list(instances)),
        task=task,
        requested_by=_words("--requested-by", args.requested_by, 128) or os_user,
        os_user=os_user,
        note=fix.reason,
        created_at=now,
        expires_at=now + timedelta(minutes=args.start_within),
        emergency=fix,
    )


def _scan_inventory(document: Any) -> Inventory | None:
    try:
        return Inventory.model_validate(document) if document is not None else None
    except ValueError:
        return None

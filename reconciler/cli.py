"""Stage: cli — ``patchctl``, the composition root: the only place adapters are chosen.

Exit codes (DESIGN §6): 0 ok, 1 invalid input or failed operation, 2 usage error, 3 non-compliant
when ``--fail-on-noncompliant`` is given. No traceback reaches a user: bad input is reported as
``file:line: field: message``; anything unexpected as one line (PATCHWARDEN_DEBUG=1 shows the
traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from reconciler import __version__
from reconciler.api.crd import custom_resource_definitions
from reconciler.api.enums import ComplianceStatus, RejectedPatchesAction
from reconciler.api.inventory import Inventory
from reconciler.api.resources import PatchBaseline
from reconciler.api.snapshot import Problem, Snapshot, SnapshotInvalid, build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.dispatch import AgentFailed, LocalTransport, transport_for
from reconciler.dispatch.outcomes import after_install, architectures, install_failed, pins_for
from reconciler.evaluation import (
    DecisionCache,
    InstanceEvaluation,
    Resolution,
    evaluate,
    resolve,
)
from reconciler.loop import Reconciler, configure_logging, serve
from reconciler.plan import Settings
from reconciler.report import compliance, csvreport, render
from reconciler.schedule import describe, openings
from reconciler.sources import (
    DirectorySource,
    GitSource,
    SignatureVerification,
    Source,
    read_inventories,
    read_snapshot,
)
from reconciler.state import StateStore

if TYPE_CHECKING:
    from reconciler.dispatch.ssh import SshPool

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_NONCOMPLIANT = 0, 1, 2, 3


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SnapshotInvalid as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"refused: {len(exc.problems)} problem(s); nothing was applied", file=sys.stderr)
        return EXIT_INVALID
    except AgentFailed as exc:
        print(f"patchctl: the agent failed: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    except UserError as exc:
        print(f"patchctl: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.: not an error of ours
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # the last line of defence: never a traceback for users
        if os.environ.get("PATCHWARDEN_DEBUG"):
            traceback.print_exc()
        print(
            f"patchctl: internal error: {type(exc).__name__}: {exc} "
            "(set PATCHWARDEN_DEBUG=1 for details and report it)",
            file=sys.stderr,
        )
        return EXIT_INVALID


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchctl", description="GitOps patch management with SSM Patch Manager semantics."
    )
    parser.add_argument("--version", action="version", version=f"patchctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="validate a directory of resources (or one file)")
    p.add_argument("path", nargs="?", default=".", type=Path)
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=None)
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
    p.add_argument("--lock-timeout", type=int, default=60, help="seconds to wait for the dpkg lock")
    p.set_defaults(handler=_install)

    p = sub.add_parser("plan", help="what the next reconcile would do now, and why the rest waits")
    _loop_args(p)
    p.add_argument("--now", type=_timestamp, default=None, help="plan as of this ISO-8601 time")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=None)
    p.set_defaults(handler=_plan)

    p = sub.add_parser(
        "reconcile", help="run the reconcile loop until nothing more can be done now"
    )
    _loop_args(p)
    p.add_argument(
        "--once", action="store_true", help="stop when converged or only waiting (the default)"
    )
    p.add_argument("--workers", type=int, default=10, help="jobs run at once, at most")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=None)
    p.set_defaults(handler=_reconcile)

    p = sub.add_parser(
        "run", help="the reconcile loop as a service (poll/watch, /healthz, /metrics)"
    )
    _loop_args(p)
    p.add_argument("--workers", type=int, default=10)
    p.add_argument(
        "--interval", type=float, default=60.0, help="seconds between passes / Git polls"
    )
    p.add_argument("--listen", default="127.0.0.1:9469", help="HOST:PORT for /healthz and /metrics")
    p.set_defaults(handler=_run)

    p = sub.add_parser("windows", help="the next openings of each maintenance window, per target")
    p.add_argument("--source", required=True, help="a snapshot directory or Git URL")
    p.add_argument("--ref", default="main")
    p.add_argument("--count", type=int, default=3, help="openings to list per window")
    p.add_argument("--now", type=_timestamp, default=None)
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=None)
    p.set_defaults(handler=_windows)

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
    p.add_argument(
        "--state", type=Path, help="the observed-state database (default: the user's state dir)"
    )
    p.add_argument("-o", "--output", choices=("table", "json", "yaml", "csv"), default=None)
    p.set_defaults(handler=_compliance)

    p = sub.add_parser(
        "report", help="write compliance reports (CSV with SSM's columns) to a directory"
    )
    p.add_argument("--to", type=Path, required=True, help="the directory to write into")
    p.add_argument("--instance", help="only this instance: its summary and detail")
    p.add_argument(
        "--state", type=Path, help="the observed-state database (default: the user's state dir)"
    )
    p.set_defaults(handler=_report)

    p = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the schema")
    p.add_argument("--out", type=Path, default=Path("crds"))
    p.add_argument(
        "--check", action="store_true", help="fail when the files differ from the schema"
    )
    p.set_defaults(handler=_crds)

    p = sub.add_parser("schema", help="print or check the JSON Schema of a document")
    p.add_argument("document", choices=("inventory",))
    p.add_argument("--check", type=Path, help="fail when this file differs from the schema")
    p.set_defaults(handler=_schema)
    return parser


def _common_evaluation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--now",
        type=_timestamp,
        default=None,
        help="evaluate as of this ISO-8601 time (default: now, UTC)",
    )
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=None)


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


def _loop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        required=True,
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
    p.add_argument(
        "--state", type=Path, help="the observed-state database (default: the user's state dir)"
    )
    p.add_argument(
        "--stale-after", type=float, default=24.0, help="hours after which a scan is redone"
    )


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (2026-11-28T10:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _format(args: argparse.Namespace) -> str:
    return str(args.output or ("table" if sys.stdout.isatty() else "json"))


# -- commands -----------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    snapshot = read_snapshot(args.path)
    counts = {
        "PatchBaseline": len(snapshot.baselines),
        "PatchGroup": len(snapshot.groups),
        "MaintenanceWindow": len(snapshot.windows),
        "ManagedInstance": len(snapshot.instances),
        "ComplianceReport": len(snapshot.reports),
    }
    if (args.output or "table") == "table":
        listed = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        print(f"{args.path}: valid ({listed or 'no resources'})")
    else:
        render.dump(
            {"path": str(args.path), "valid": True, "resources": counts}, args.output, sys.stdout
        )
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
        snapshot = read_snapshot(args.source)
        for inventory in inventories:
            results.append(_evaluate_in_snapshot(snapshot, inventory, now, cache)[0])
    render.evaluations(results, _format(args), sys.stdout, show_all=args.all)
    return _exit_for(results, args.fail_on_noncompliant)


def _explain(args: argparse.Namespace) -> int:
    now = args.now or datetime.now(UTC)
    snapshot = read_snapshot(args.source)
    inventories = [i for i in read_inventories(args.inventory) if i.instance_id == args.instance]
    if not inventories:
        raise UserError(f"no inventory for instance {args.instance!r} under {args.inventory}")
    result, resolution = _evaluate_in_snapshot(snapshot, inventories[0], now, DecisionCache())
    render.explanation(result, resolution, args.patch, _format(args), sys.stdout)
    return EXIT_OK


def _evaluate_in_snapshot(
    snapshot: Snapshot, inventory: Inventory, now: datetime, cache: DecisionCache
) -> tuple[InstanceEvaluation, Resolution]:
    instance = snapshot.instances.get(inventory.instance_id)
    labels = dict(instance.metadata.labels) if instance else {}
    resolution = resolve(snapshot, labels, inventory.facts.operating_system)
    if resolution.baseline is None:
        raise UserError(f"{inventory.instance_id}: {resolution.baseline_reason}")
    group = resolution.group.metadata.name if resolution.group else None
    return evaluate(resolution.baseline, inventory, now, patch_group=group, cache=cache), resolution


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


def _scan(args: argparse.Namespace) -> int:
    transport = LocalTransport(str(args.root) if args.root else None)
    with render.progress("Scanning packages" + ("" if args.no_refresh else " (refreshing lists)")):
        inventory = transport.scan(instance_id=args.instance, refresh=not args.no_refresh)
    result = _evaluate_machine(args, inventory)
    render.evaluations([result], _format(args), sys.stdout, show_all=False)
    return _exit_for([result], args.fail_on_noncompliant)


def _install(args: argparse.Namespace) -> int:
    transport = LocalTransport(str(args.root) if args.root else None)
    with render.progress("Scanning packages" + ("" if args.no_refresh else " (refreshing lists)")):
        inventory = transport.scan(instance_id=args.instance, refresh=not args.no_refresh)
    before = _evaluate_machine(args, inventory)
    baseline = _baseline_of(args, inventory)[0]
    pins = list(pins_for(before, inventory.facts.arch))
    blocked = (
        list(baseline.spec.rejected_patches)
        if baseline.spec.rejected_patches_action is RejectedPatchesAction.BLOCK
        else []
    )
    outcome: dict[str, object] = {"changed": False, "patches": [], "dependencies": []}
    if pins:
        with render.progress(f"Installing {len(pins)} patch(es)"):
            outcome = transport.install(
                pins,
                blocked=blocked,
                simulate=args.simulate,
                reboot_option=args.reboot_option,
                allow_reboot=args.allow_reboot,
                lock_timeout=args.lock_timeout,
            )
    if args.simulate or not pins:
        after = before
    else:
        with render.progress("Rescanning"):
            rescanned = transport.scan(instance_id=inventory.instance_id, refresh=False)
        after = _evaluate_machine(args, after_install(rescanned, outcome, architectures(before)))
    render.installation(after, outcome, _format(args), sys.stdout)
    failed = install_failed(outcome)
    return EXIT_INVALID if failed else _exit_for([after], args.fail_on_noncompliant)


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
    snapshot = (
        read_snapshot(args.source) if args.source else Snapshot(predefined=predefined_baselines())
    )
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


def _store(args: argparse.Namespace) -> StateStore:
    return StateStore(args.state or StateStore.default_path())


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
    workdir = (
        store_path.parent / "git" / hashlib.sha256(f"{text}#{args.ref}".encode()).hexdigest()[:16]
    )
    return GitSource(
        text,
        ref=ref or args.ref,
        workdir=workdir,
        identity_file=getattr(args, "identity_file", None),
        known_hosts_file=getattr(args, "known_hosts", None),
        verify=verify,
    )


def _reconciler(args: argparse.Namespace, store: StateStore, pool: SshPool) -> Reconciler:
    configure_logging()
    settings = Settings(stale_after=timedelta(hours=args.stale_after))
    git = "://" in str(args.source)
    return Reconciler(
        _source(args, Path(store.path)),
        store,
        lambda instance: transport_for(instance.spec.connection, pool=pool),
        settings=settings,
        workers=getattr(args, "workers", 10),
        # After a restart, a refused head falls back to the last good commit (Git only: a
        # directory keeps no earlier content).
        pinned=(
            (lambda revision: _source(args, Path(store.path), revision.rpartition(":")[2]))
            if git
            else None
        ),
    )


def _plan(args: argparse.Namespace) -> int:
    with _store(args) as store:
        reconciler = _reconciler(args, store, _ssh_pool())
        if args.now is not None:
            reconciler.clock = lambda: args.now
        reconciler.refresh()
        current = reconciler.plan()
        if current is None:
            raise UserError("no valid snapshot: nothing to plan (see the refusal above)")
        render.plan(current, _format(args), sys.stdout)
    return EXIT_OK


def _reconcile(args: argparse.Namespace) -> int:
    pool = _ssh_pool()
    with _store(args) as store:
        reconciler = _reconciler(args, store, pool)
        reconciler.recover()
        with render.job_progress() as progress:
            reconciler.on_job_done = progress
            summary = reconciler.reconcile(until_idle=True)
        render.reconcile_summary(summary, store.latest_scans(), _format(args), sys.stdout)
    pool.close()
    return EXIT_OK if summary.revision is not None else EXIT_INVALID


def _run(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    pool = _ssh_pool()
    with _store(args) as store:
        reconciler = _reconciler(args, store, pool)
        serve(reconciler, interval=args.interval, host=host or "127.0.0.1", port=int(port))
    pool.close()
    return EXIT_OK


def _windows(args: argparse.Namespace) -> int:
    snapshot = read_snapshot(Path(args.source)) if "://" not in args.source else None
    if snapshot is None:
        with _store(argparse.Namespace(state=None)) as store:
            _, snapshot = _source(args, Path(store.path)).snapshot()
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
                compliance.history(store.scan_history(args.instance, limit=1000)),
                fmt,
                sys.stdout,
                title=f"Compliance history of {args.instance}",
            )
        elif args.instance:
            scan = latest.get(args.instance)
            if scan is None:
                raise UserError(f"no scan of {args.instance!r} is recorded in {store.path}")
            render.rows(
                compliance.patches(scan),
                fmt,
                sys.stdout,
                title=f"{args.instance}: {scan.operation} under {scan.baseline} at {scan.revision}",
            )
        elif args.history:
            raise UserError("--history needs an instance: patchctl compliance INSTANCE --history")
        else:
            render.rows(compliance.instances(latest), fmt, sys.stdout, title="Compliance")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    with _store(args) as store:
        latest = store.latest_scans()
    if args.instance is not None:
        if args.instance not in latest:
            raise UserError(f"no scan of {args.instance!r} is recorded")
        latest = {args.instance: latest[args.instance]}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    files = {
        f"compliance-summary-{stamp}.csv": csvreport.to_csv(
            csvreport.summary_rows(latest), csvreport.SUMMARY_COLUMNS
        )
    }
    if args.instance is not None:
        files[f"compliance-detail-{args.instance}-{stamp}.csv"] = csvreport.to_csv(
            csvreport.detail_rows(latest[args.instance]), csvreport.DETAIL_COLUMNS
        )
    args.to.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.to / name).write_text(text)
        print(args.to / name)
    return EXIT_OK


def _crds(args: argparse.Namespace) -> int:
    stale = []
    for name, document in custom_resource_definitions().items():
        text = "# Generated by `make crds` from reconciler/api; do not edit.\n" + yaml.safe_dump(
            document, sort_keys=False, width=100
        )
        target = args.out / name
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(str(target))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    if stale:
        print("stale CRDs (run `make crds` and commit): " + ", ".join(stale), file=sys.stderr)
        return EXIT_INVALID
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    import json

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

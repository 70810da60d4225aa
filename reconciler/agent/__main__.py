"""Stage: agent. ``python3 -m reconciler.agent`` (or the zipapp): scan and install on this machine.

``scan`` prints the inventory document; ``install`` installs exact pins and prints an install
result with ``changed`` and a per-package outcome (between a window task's preInstall and
postInstall commands when ``--hooks`` names them); ``hooks`` runs one stage's commands (onExit,
a command health check) and prints what they did (:mod:`reconciler.agent.hooks`). The work is
done by the backend of the machine's package-manager family (``debian``: apt and dpkg; ``rpm``:
dnf/yum; ``suse``: zypper), chosen from ``ROOT/etc/os-release``; each backend module has
``scan`` and ``install`` with the signatures below. Errors are JSON too (``{"error": {...}}``,
exit 1), never a traceback. Standard library only.
"""

import argparse
import importlib
import sys
from typing import Any, Dict, List, Optional, Sequence

from reconciler.agent import AGENT_VERSION, hooks, reboot, sources
from reconciler.agent.errors import AgentError, InternalError, UnsupportedSystem
from reconciler.agent.facts import operating_system, product, read_os_release
from reconciler.agent.runner import dumps

BACKENDS = {
    "DEBIAN": "debian",
    "UBUNTU": "debian",
    "RASPBIAN": "debian",
    "AMAZON_LINUX": "rpm",
    "AMAZON_LINUX_2": "rpm",
    "AMAZON_LINUX_2022": "rpm",
    "AMAZON_LINUX_2023": "rpm",
    "REDHAT_ENTERPRISE_LINUX": "rpm",
    "CENTOS": "rpm",
    "ORACLE_LINUX": "rpm",
    "ROCKY_LINUX": "rpm",
    "ALMA_LINUX": "rpm",
    "SUSE": "suse",
}


def backend(root: str) -> Any:
    """The backend module for the system at ``root``."""
    os_name = operating_system(read_os_release(root))
    name = BACKENDS.get(os_name)
    if name is None:
        raise UnsupportedSystem("{} is not supported by this agent yet".format(os_name))
    module = "reconciler.agent." + name
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # The backend exists: failing to load it is a bug or a Python built without a module
        # it needs (lzma, say), which the machine's owner must hear about as such.
        raise InternalError(
            "the agent's {} backend cannot be loaded: {}".format(name, exc),
            {"backend": module, "module": exc.name or module},
        ) from exc


def scan(
    root: str,
    instance_id: Optional[str],
    refresh: bool,
    operation: str = "Scan",
    private_state: Optional[str] = None,
) -> Dict[str, object]:
    """The inventory document of the system at ``root``."""
    result = backend(root).scan(root, instance_id, refresh, operation, private_state)
    return dict(result)


def install(
    root: str,
    pin_texts: List[str],
    blocked: List[str],
    simulate: bool,
    reboot_option: str,
    allow_reboot: bool,
    lock_timeout: int,
    trust_root_scripts: bool = False,
    stages: Optional[Dict[str, object]] = None,
    holds: Sequence[str] = (),
) -> Dict[str, object]:
    """Install exact pins; the result says what changed, per package. A root whose packages'
    maintainer scripts would run on this host is refused unless ``trust_root_scripts``.
    ``stages`` (preInstall, postInstall commands) run around it (:mod:`hooks`). ``holds``:
    package-name patterns held besides the machine's own (its patch group's and instance's)."""

    def run(may_reboot: bool) -> Dict[str, object]:
        return dict(
            backend(root).install(
                root,
                pin_texts,
                blocked,
                simulate,
                reboot_option,
                may_reboot,
                lock_timeout,
                trust_root_scripts,
                declared=holds,
            )
        )

    if not stages:
        return run(allow_reboot)
    if simulate:
        raise hooks.BadHooks("hooks do not run with --simulate: nothing is installed to hook")
    return hooks.install_with_hooks(run, stages, root, reboot_option, allow_reboot)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchwarden-agent", description="Patchwarden agent (scan, install)"
    )
    parser.add_argument("--version", action="version", version=AGENT_VERSION)
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("scan", help="print this machine's inventory document")
    p.add_argument("--root", default="/")
    p.add_argument("--instance-id")
    p.add_argument("--no-refresh", action="store_true", help="do not refresh package lists first")
    _sources_option(p)
    p.add_argument(
        "--private-state",
        metavar="DIR",
        help="host only: keep package lists and cache in DIR (read-only scan of the host)",
    )
    p = sub.add_parser("install", help="install exact pins name=version")
    p.add_argument("--root", default="/")
    p.add_argument("--pin", action="append", default=[], required=True)
    p.add_argument(
        "--block", action="append", default=[], help="package name patterns rejected with BLOCK"
    )
    p.add_argument(
        "--hold",
        action="append",
        default=[],
        help="package name patterns held (never installed; updates needing them left out)",
    )
    p.add_argument("--simulate", action="store_true")
    p.add_argument(
        "--reboot-option", choices=("RebootIfNeeded", "NoReboot"), default="RebootIfNeeded"
    )
    p.add_argument("--allow-reboot", action="store_true", help="allow rebooting the host")
    p.add_argument("--lock-timeout", type=int, default=60)
    _sources_option(p)
    p.add_argument(
        "--trust-root-scripts",
        action="store_true",
        help="the operator trusts the --root and its repositories: a Debian root without /bin/sh "
        "may have its maintainer scripts run on this host (refused without this)",
    )
    p.add_argument(
        "--hooks",
        metavar="BASE64",
        help="base64 of JSON {preInstall: [...], postInstall: [...]}: commands {argv, "
        "timeoutSeconds} run before and after the install (before a reboot)",
    )
    p = sub.add_parser("hooks", help="run one stage's commands (onExit, a health check)")
    p.add_argument("--root", default="/")
    p.add_argument("--stage", choices=hooks.STAGES, required=True)
    p.add_argument(
        "--commands",
        metavar="BASE64",
        required=True,
        help="base64 of a JSON list of commands {argv, timeoutSeconds}, run in order until one "
        "fails",
    )
    _reboot_commands(sub)
    return parser


def _reboot_commands(sub: Any) -> None:
    """The loop's awaited reboot (reconciler/agent/reboot.py)."""
    p = sub.add_parser("boot-id", help="print this machine's boot id")
    p.add_argument("--root", default="/")
    p = sub.add_parser("reboot", help="print the boot id and reboot this host, detached")
    p.add_argument("--root", default="/")
    p.add_argument(
        "--if-boot-id", metavar="ID", help="only if the boot id is still ID (not booted since)"
    )


def _sources_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sources",
        metavar="BASE64",
        help="the baselines' sources, base64 of a JSON list of {name, products, configuration, "
        "operatingSystem}: those for this machine's system and product replace its "
        "repositories for this run",
    )


def _run(args: argparse.Namespace) -> Dict[str, object]:
    if args.command == "boot-id":
        return reboot.boot_document()
    if args.command == "reboot":
        return reboot.reboot(args.root, args.if_boot_id)
    if args.command == "hooks":
        commands = hooks.commands_of(hooks.decode(args.commands, "--commands"), "--commands")
        return hooks.run_stage(args.stage, commands, args.root)
    system = machine = ""
    if args.sources:
        release = read_os_release(args.root)
        system = operating_system(release)
        machine = product(system, release.get("VERSION_ID", ""))
    sources.use(args.sources or "", system, machine)
    if args.command == "scan":
        return scan(
            args.root,
            args.instance_id,
            refresh=not args.no_refresh,
            private_state=args.private_state,
        )
    return install(
        args.root,
        args.pin,
        args.block,
        args.simulate,
        args.reboot_option,
        args.allow_reboot,
        args.lock_timeout,
        args.trust_root_scripts,
        hooks.decode(args.hooks, "--hooks") if args.hooks else None,
        args.hold,
    )


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return 2
    try:
        document, status = _run(args), 0
    except AgentError as exc:
        document, status = {"error": exc.to_dict()}, 1
    except Exception as exc:  # the agent never prints a traceback
        message = "{}: {}".format(type(exc).__name__, exc)
        document, status = {"error": InternalError(message).to_dict()}, 1
    finally:
        sources.use("", "", "")  # one run's sources, even when the agent runs in-process
    sys.stdout.write(dumps(document) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Stage: agent. What a directory root may configure: the INI configuration files (dnf.conf,
yum.conf, zypp.conf) the agent writes for a root from the root's own, keeping only the options a
root may choose. Standard library only; may not run commands or write inside the root.

The package managers run on this host, as root. An option that names a plugin, a command or a
file on this host (dnf's pluginpath, zypp.conf's update.messages.notify, ssl client keys) would
let whoever is root inside the root run code or read files here; an option that moves caches or
logs (cachedir, logdir, history.logfile) would write outside the root. So the root's repository
definitions and the options that say which packages and how to fetch and check them are kept,
every other option is left out (and named on stderr), and the agent adds what it pins.
"""

import configparser
from typing import Dict, FrozenSet

from reconciler.agent.errors import CommandFailed
from reconciler.agent.runner import note


def private_config(
    source: str,
    target: str,
    allowed: FrozenSet[str],
    pinned: Dict[str, str],
    repos: bool = True,
) -> str:
    """Write ``target`` from ``source`` (a root's configuration file; absent is fine): its
    sections other than [main] as they are (repository definitions), the [main] options in
    ``allowed``, then ``pinned`` (without the repository sections when not ``repos``: a
    baseline's sources replace them). Returns ``target``; an unreadable ``source`` is an error
    naming it."""
    parser = ini_parser()
    try:
        parser.read(source, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise CommandFailed(
            "{} cannot be read: {}; fix the file".format(source, str(exc).splitlines()[0]),
            {"file": source},
        ) from None
    main = dict(parser.items("main")) if parser.has_section("main") else {}
    ignored = sorted(k for k in main if k not in allowed)
    if ignored:
        note("ignored from {}: {} (a root may not choose them)".format(source, ", ".join(ignored)))
    kept = {k: v for k, v in main.items() if k in allowed}
    kept.update(pinned)
    out = ini_parser()
    out.read_dict({"main": kept})
    for section in parser.sections():
        if repos and section != "main":
            out.read_dict({section: dict(parser.items(section))})
    with open(target, "w", encoding="utf-8") as handle:
        out.write(handle, space_around_delimiters=False)
    return target


def ini_parser() -> configparser.RawConfigParser:
    """A parser for dnf, yum and zypper INI files, reading them as the tools do."""
    # No [DEFAULT] magic, duplicate keys as the tools take them (the last wins), names as written.
    parser = configparser.RawConfigParser(strict=False, default_section="\0")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    return parser

"""Stage: agent. A baseline's alternative repositories (SSM's PatchSource): read from the one
``--sources`` word (base64 of a JSON list of ``{name, products, configuration,
operatingSystem}``), kept when they are from the baseline for this machine's operating system
and one of their products is this machine's (or ``*``), checked, and written as repository
definitions into the agent's private directory. Standard library only; may not write the
machine's own repository files or run commands.

As in SSM, the sources that apply replace the machine's configured repositories for the
operation; the private directory (runner.private_dir) goes when the agent exits, so nothing is
left to restore. A source's text comes from the configuration repository, and the package
managers run on this host as root: only the repository options in :data:`REPO_OPTIONS` are
accepted, anything else (a plugin, a command, a client key or CA file on this host) refuses the
whole operation, naming the source and the option.
"""

import base64
import binascii
import configparser
import json
import os
import re
from typing import Dict, FrozenSet, Iterable, List, NamedTuple

from reconciler.agent.errors import CommandFailed
from reconciler.agent.rootconf import ini_parser
from reconciler.agent.runner import private_dir

# The options of a dnf/yum/zypper repository section a source may set: where the packages are,
# whether to use it, and how to check what it serves. gpgkey is allowed for URLs only (a file://
# key would read this host's files).
REPO_OPTIONS = frozenset(
    (
        "name", "baseurl", "mirrorlist", "metalink", "enabled", "gpgcheck", "repo_gpgcheck",
        "gpgkey", "priority", "cost", "exclude", "excludepkgs", "includepkgs",
        "skip_if_unavailable", "metadata_expire", "module_hotfixes", "sslverify", "timeout",
        "retries", "autorefresh", "type", "keeppackages",
    )
)  # fmt: skip


# The options of an apt sources entry a source may set ("[key=value]" on a one-line entry, the
# same names as deb822 fields, where Types, URIs, Suites and Components say what the line says).
APT_OPTIONS = frozenset(
    (
        "arch", "architectures", "lang", "languages", "target", "targets", "pdiffs", "by-hash",
        "trusted", "signed-by", "check-valid-until", "check-date", "valid-until-min",
        "valid-until-max", "date-max-future", "enabled", "types", "uris", "suites",
        "components", "x-repolib-name",
    )
)  # fmt: skip
_ONE_LINE = re.compile(r"^deb(-src)?\s+(\[(?P<options>[^\]]*)\]\s+)?(?P<uri>\S+)\s+\S+(\s+\S+)*$")
_FIELD = re.compile(r"^(?P<key>[A-Za-z][A-Za-z0-9-]*):")
_SCHEME = re.compile(r"^[a-z0-9][a-z0-9+-]*:")


class Source(NamedTuple):
    name: str
    products: List[str]
    configuration: str
    system: str  # the operating system of the baseline it is from ("" for any)


_SELECTED = []  # type: List[Source]


def use(encoded: str, system: str, product: str) -> None:
    """Remember the sources of ``encoded`` (none when empty) for this agent run: those of the
    baseline for ``system`` (SSM's operating system) whose products name ``product`` or ``*``."""
    del _SELECTED[:]
    if not encoded:
        return
    _SELECTED.extend(
        s
        for s in decode(encoded)
        if s.system in ("", system) and ("*" in s.products or product in s.products)
    )


def selected() -> List[Source]:
    """The sources this run uses (none: the machine's own repositories)."""
    return list(_SELECTED)


def decode(encoded: str) -> List[Source]:
    """The sources in ``--sources``'s word, or an error saying what is wrong with it."""
    try:
        items = json.loads(base64.b64decode(encoded.encode("ascii"), validate=True).decode())
        return [
            Source(
                str(i["name"]),
                [str(p) for p in i["products"]],
                str(i["configuration"]),
                str(i.get("operatingSystem") or ""),
            )
            for i in items
        ]
    except (ValueError, binascii.Error, KeyError, TypeError, UnicodeError):
        raise CommandFailed(
            "--sources is not base64 of a JSON list of {name, products, configuration, "
            "operatingSystem}"
        ) from None


def repo_sections(source: Source) -> Dict[str, Dict[str, str]]:
    """The repository sections of a dnf/yum/zypper source: each section of its INI text, the
    one SSM's examples call ``[main]`` named after the source; refused when it has none or sets
    an option outside :data:`REPO_OPTIONS`."""
    parser = ini_parser()
    try:
        parser.read_string(source.configuration)
    except configparser.Error as exc:
        raise _refused(source, "is not an INI section: " + str(exc).splitlines()[0]) from None
    if not parser.sections():
        raise _refused(source, "has no [section] with a baseurl")
    out = {}  # type: Dict[str, Dict[str, str]]
    for section in parser.sections():
        options = dict(parser.items(section))
        for key, value in options.items():
            if key not in REPO_OPTIONS or (key == "gpgkey" and not _url(value)):
                raise _refused(
                    source, "sets {}= (a source may set only {})".format(key, _names(REPO_OPTIONS))
                )
        out[source.name if section == "main" else section] = options
    return out


def apt_entries(source: Source) -> str:
    """A source's apt text, checked: one-line ``deb``/``deb-src`` entries or deb822 stanzas,
    with only :data:`APT_OPTIONS` and a download method that is a method name (apt runs
    ``/usr/lib/apt/methods/<scheme>``); anything else refuses the operation."""
    text = source.configuration.strip() + "\n"
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    if all(_ONE_LINE.match(x) for x in lines):
        for line in lines:
            match = _ONE_LINE.match(line)
            assert match is not None
            _check_apt(source, (o.split("=")[0] for o in (match.group("options") or "").split()))
            _check_uri(source, match.group("uri"))
        return text
    heads = [x for x in text.splitlines() if x.strip() and x[0] not in " \t#"]
    fields = [_FIELD.match(x) for x in heads]
    if not all(fields) or not lines:
        raise _refused(source, "is neither 'deb ...' lines nor deb822 stanzas")
    _check_apt(source, (f.group("key") for f in fields if f))
    for line in text.splitlines():
        if line.lower().startswith("uris:"):
            for uri in line.split(":", 1)[1].split():
                _check_uri(source, uri)
    return text


def _check_apt(source: Source, keys: Iterable[str]) -> None:
    for key in keys:
        if key.lower() not in APT_OPTIONS:
            raise _refused(
                source, "sets {} (a source may set only {})".format(key, _names(APT_OPTIONS))
            )


def _check_uri(source: Source, uri: str) -> None:
    if not _SCHEME.match(uri):
        raise _refused(source, "names {}, which is not a method:URI (apt would run it)".format(uri))


def write_apt_parts() -> str:
    """A private sources.list.d holding each selected source's entries (``.list`` or deb822
    ``.sources``); an empty string when no source applies."""
    if not _SELECTED:
        return ""
    directory = private_dir()
    for source in _SELECTED:
        text = apt_entries(source)
        suffix = ".list" if text.lstrip().startswith("deb") else ".sources"
        with open(os.path.join(directory, source.name + suffix), "w", encoding="utf-8") as f:
            f.write(text)
    return directory


def write_repo_files(suffix: str = ".repo") -> str:
    """A private directory holding one repository file per selected source (dnf, yum and
    zypper read ``*.repo``); an empty string when no source applies."""
    if not _SELECTED:
        return ""
    directory = private_dir()
    for source in _SELECTED:
        parser = ini_parser()
        parser.read_dict(repo_sections(source))
        path = os.path.join(directory, source.name + suffix)
        with open(path, "w", encoding="utf-8") as handle:
            parser.write(handle, space_around_delimiters=False)
    return directory


def _url(value: str) -> bool:
    return all(v.startswith(("https://", "http://")) for v in value.split())


def _names(allowed: FrozenSet[str]) -> str:
    return ", ".join(sorted(allowed))


def _refused(source: Source, what: str) -> CommandFailed:
    return CommandFailed(
        "baseline source {!r} {}; fix its configuration".format(source.name, what),
        {"source": source.name},
    )

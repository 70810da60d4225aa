"""Stage: agent. The holds a machine's own package manager keeps, for the inventory's ``held``:
dnf's versionlock plugin list and zypper's locks, read from their files under the root (apt's
holds are dpkg selections, which :mod:`reconciler.agent.apt` reads with dpkg-query). Reported so
that the engine never pins a held package and a hold never surfaces as an install failure
(docs/guardrails.md). Standard library only, python3 >= 3.6; reads files, runs nothing.
"""

import os
import re
from typing import Dict, List

from reconciler.agent.facts import below

VERSIONLOCK_LIST = "/etc/dnf/plugins/versionlock.list"
ZYPP_LOCKS = "/etc/zypp/locks"
# name-[epoch:]version-release[.arch]: what `dnf versionlock add` writes (version and release
# may be globs); the name is what is left of the last two dashes.
_NEVRA = re.compile(r"^(?P<name>.+)-[^-]+-[^-]+$")


def report(document: Dict[str, object], names: List[str], tool: str) -> Dict[str, object]:
    """``document`` (an inventory) with ``held`` entries for ``names`` held by ``tool``, when
    there are any (an inventory without holds stays as it was)."""
    if names:
        document["held"] = [{"name": name, "tool": tool} for name in sorted(set(names))]
    return document


def dnf_versionlocks(root: str) -> List[str]:
    """Package names the versionlock plugin keeps at their version (``!`` lines exclude one
    version and hold nothing)."""
    names = []
    for line in _lines(below(root, VERSIONLOCK_LIST)):
        if line.startswith(("#", "!")):
            continue
        match = _NEVRA.match(line)
        if match:
            names.append(match.group("name"))
    return names


def zypper_locks(root: str) -> List[str]:
    """Package names (or globs) zypper's locks keep from being installed or changed: each
    stanza of ``/etc/zypp/locks`` with a solvable_name, of type package (the default)."""
    names = []
    stanza = {}  # type: Dict[str, str]
    for line in _lines(below(root, ZYPP_LOCKS)) + [""]:
        if not line:
            if stanza.get("solvable_name") and stanza.get("type", "package") == "package":
                names.append(stanza["solvable_name"])
            stanza = {}
            continue
        key, _, value = line.partition(":")
        stanza[key.strip()] = value.strip()
    return names


def _lines(path: str) -> List[str]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [line.strip() for line in handle.read().splitlines()]

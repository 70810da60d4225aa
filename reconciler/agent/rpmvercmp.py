"""Stage: agent. rpm's EVR (``[epoch:]version-release``): how it is spelled and how rpm orders it,
for every rpm-based backend (dnf/yum and zypper). Standard library only; it runs no command and
reads no file.

The agent imports nothing from reconciler, so this is rpm's algorithm a second time, next to
``reconciler/evaluation/versions.py``; tests/test_agent_rpm.py checks the two agree.
"""

import re
from typing import Tuple


def evr_text(epoch: str, version: str, release: str) -> str:
    """rpm's fields -> ``[epoch:]version-release``; epoch 0 (or none) is left out, as rpm does."""
    return "{}{}-{}".format(
        epoch + ":" if epoch not in ("", "0", "(none)") else "", version, release
    )


_SEGMENT = re.compile(r"~|\^|[0-9]+|[a-zA-Z]+")


def _vercmp(a: str, b: str) -> int:
    """rpm's rpmvercmp of one version or release string: -1, 0 or 1."""
    if a == b:
        return 0
    sa, sb = _SEGMENT.findall(a), _SEGMENT.findall(b)
    for x, y in zip(sa, sb):
        if x == y:
            continue
        for mark in ("~", "^"):  # "~" sorts before anything, "^" before any other segment
            if mark in (x, y):
                return -1 if x == mark else 1
        if x.isdigit() != y.isdigit():
            return 1 if x.isdigit() else -1  # a number is newer than letters
        if x.isdigit() and int(x) != int(y):
            return 1 if int(x) > int(y) else -1
        if not x.isdigit():
            return 1 if x > y else -1
    rest_a, rest_b = sa[len(sb) :], sb[len(sa) :]
    if not rest_a and not rest_b:
        return 0
    longer_is_newer = (rest_a or rest_b)[0] != "~"
    return (1 if longer_is_newer else -1) * (1 if rest_a else -1)


def compare_evr(a: str, b: str) -> int:
    """Compare two ``[epoch:]version-release`` strings as rpm does: -1, 0 or 1."""
    ea, va, ra = _evr_parts(a)
    eb, vb, rb = _evr_parts(b)
    if ea != eb:
        return 1 if ea > eb else -1
    return _vercmp(va, vb) or _vercmp(ra, rb)


def _evr_parts(evr: str) -> Tuple[int, str, str]:
    epoch, _, rest = evr.rpartition(":")
    version, _, release = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch) if epoch.isdigit() else 0, version, release


class EvrKey:
    """A sort key ordering versions as rpm does."""

    def __init__(self, evr: str) -> None:
        self.evr = evr

    def __lt__(self, other: "EvrKey") -> bool:
        return compare_evr(self.evr, other.evr) < 0

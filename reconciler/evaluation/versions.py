"""Stage: evaluation. Version ordering per package-manager family, for "the latest approved wins".

Debian versions are compared by python-debian (dpkg's algorithm). RPM has no well-kept pure-Python
implementation on PyPI, so rpm's ``rpmvercmp`` (with ``~`` and ``^``) and EVR comparison are written
here from its specification; tests check it against known orderings. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from debian.debian_support import version_compare

from reconciler.api.enums import Family

_SEGMENT = re.compile(r"(~|\^|[0-9]+|[a-zA-Z]+)")


def rpmvercmp(a: str, b: str) -> int:
    """rpm's segment-wise comparison of one version or release string: -1, 0 or 1."""
    if a == b:
        return 0
    sa, sb = _segments(a), _segments(b)
    for x, y in zip(sa, sb, strict=False):
        if x == y:
            continue
        # '~' sorts before everything, even the end of the string; '^' sorts before any other
        # segment but after the end of the string (handled below).
        if x == "~" or y == "~":
            return -1 if x == "~" else 1
        if x == "^" or y == "^":
            return -1 if x == "^" else 1
        x_num, y_num = x.isdigit(), y.isdigit()
        if x_num != y_num:
            return 1 if x_num else -1  # a number is newer than letters
        if x_num:
            xi, yi = int(x), int(y)
            if xi != yi:
                return 1 if xi > yi else -1
        elif x != y:
            return 1 if x > y else -1
    rest_a, rest_b = sa[len(sb) :], sb[len(sa) :]
    if not rest_a and not rest_b:
        return 0
    first = (rest_a or rest_b)[0]
    longer_is_newer = first != "~"
    if rest_a:
        return 1 if longer_is_newer else -1
    return -1 if longer_is_newer else 1


def _segments(value: str) -> list[str]:
    return _SEGMENT.findall(value)


def split_evr(evr: str) -> tuple[int, str, str]:
    """(epoch, version, release) from ``[epoch:]version[-release]``."""
    epoch = 0
    if ":" in evr:
        head, evr = evr.split(":", 1)
        epoch = int(head) if head.isdigit() else 0
    version, _, release = evr.partition("-") if evr.count("-") == 1 else _rpartition(evr)
    return epoch, version, release


def _rpartition(evr: str) -> tuple[str, str, str]:
    return evr.rpartition("-") if "-" in evr else (evr, "", "")


def rpm_compare(a: str, b: str) -> int:
    """Compare two RPM [epoch:]version-release strings."""
    ea, va, ra = split_evr(a)
    eb, vb, rb = split_evr(b)
    if ea != eb:
        return 1 if ea > eb else -1
    return rpmvercmp(va, vb) or rpmvercmp(ra, rb)


def dpkg_compare(a: str, b: str) -> int:
    result = version_compare(a, b)
    return (result > 0) - (result < 0)


def comparator(family: Family) -> Callable[[str, str], int]:
    """The version comparison for ``family`` (-1, 0, 1)."""
    return dpkg_compare if family is Family.APT else rpm_compare

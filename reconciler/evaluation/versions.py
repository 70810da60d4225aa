"""Stage: evaluation. Version ordering per package-manager family, for "the latest approved wins".

Debian versions are compared by python-debian (dpkg's algorithm). RPM has no well-kept pure-Python
implementation on PyPI, so rpm's ``rpmvercmp`` (with ``~`` and ``^``) and EVR comparison are written
here from its specification; tests check it against known orderings. Pure.

:func:`sort_key` gives, per family, a key function ordering versions exactly as
:func:`comparator` does (a hypothesis property in tests/test_resolve_and_versions.py proves it):
whole-fleet code (:mod:`reconciler.evaluation.tables`) computes each distinct version's key once
and sorts, instead of comparing pairs of strings again and again. The comparators stay the
reference.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from debian.debian_support import BaseVersion, version_compare

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


VersionKey = tuple[object, ...]
"""A version's sort key: keys compare as :func:`comparator` compares their versions."""


def sort_key(family: Family) -> Callable[[str], VersionKey]:
    """The key function ordering ``family``'s versions as :func:`comparator` does."""
    return dpkg_key if family is Family.APT else rpm_key


def rpm_key(evr: str) -> VersionKey:
    """rpm_compare as a key: (epoch, version's segments, release's segments)."""
    epoch, version, release = split_evr(evr)
    return (epoch, _rpm_segments_key(version), _rpm_segments_key(release))


# rpmvercmp's segment classes in its order: '~' sorts before the end of the string, '^' after
# it but before any other segment, letters before numbers.
_TILDE, _END, _CARET, _ALPHA, _NUMBER = range(5)


# Versions share most of their parts (releases such as "1.el9", upstream versions across
# architectures, dpkg tokens such as "." and "ubuntu"): the part keys are cached, bounded so that
# a long-running controller does not keep every part it ever saw.
_PART_CACHE = 1 << 16


@functools.lru_cache(maxsize=_PART_CACHE)
def _rpm_segments_key(value: str) -> VersionKey:
    # _END closes the key: the end meets the other's next segment as rpmvercmp's rest rule says.
    # map(), no appends: the fleet tables compute this for every distinct version.
    return (*map(_rpm_segment_key, _segments(value)), (_END,))


def _rpm_segment_key(segment: str) -> tuple[object, ...]:
    found = _RPM_MARKS.get(segment)
    if found is not None:
        return found
    return (_NUMBER, int(segment)) if segment.isdigit() else (_ALPHA, segment)


_RPM_MARKS: dict[str, tuple[object, ...]] = {"~": (_TILDE,), "^": (_CARET,)}


def dpkg_key(version: str) -> VersionKey:
    """dpkg_compare as a key. python-debian (without apt_pkg) compares the epoch, then the
    upstream version and the revision ("0" when absent) token by token (runs of digits or of
    other characters), padding the shorter list with "0" tokens; the key encodes exactly that.
    The version is split with python-debian's own pattern and checks (BaseVersion's), without
    building its object: this runs once per distinct version of a fleet."""
    parsed = _DPKG_VERSION.match(version)
    epoch = parsed and parsed.group("epoch")
    if not parsed or (epoch is None and ":" in parsed.group("upstream_version")):
        raise ValueError(f"Invalid version string {version!r}")  # BaseVersion's words
    return (
        int(epoch or "0"),
        _dpkg_part_key(parsed.group("upstream_version") or "0"),
        _dpkg_part_key(parsed.group("debian_revision") or "0"),
    )


_DPKG_VERSION = BaseVersion.re_valid_version
_DPKG_TOKEN = re.compile(r"\d+|\D+")
_PAD = (1, 0)  # the key of the "0" token python-debian pads the shorter list with


@functools.lru_cache(maxsize=_PART_CACHE)
def _dpkg_part_key(part: str) -> VersionKey:
    """Tokens compare position by position against the other list padded with "0" tokens, which
    tuple comparison cannot do: a run of k padding-equal tokens and the token x after it become
    one group (side, +-k, x), side saying whether x sorts after the padding. Two groups then
    compare as their positions would (a shorter run meets x against padding), and the end of the
    list, (0,), as padding meets the other's next group."""
    tokens = [_dpkg_token_key(token) for token in _DPKG_TOKEN.findall(part)]
    groups: list[tuple[object, ...]] = []
    run = 0
    for token in tokens:
        if token == _PAD:
            run += 1
            continue
        side = 1 if token > _PAD else -1
        groups.append((side, -run if side > 0 else run, token))
        run = 0
    groups.append((0,))  # trailing padding-equal tokens compare like the padding itself
    return tuple(groups)


@functools.lru_cache(maxsize=_PART_CACHE)
def _dpkg_token_key(token: str) -> tuple[int, object]:
    """A digit token compares as a number with another digit token, and as characters (each
    digit ranked 1-10, below every letter and symbol, above '~') with any other token, where its
    first character already decides."""
    if token[0].isdigit():
        return (1, int(token))
    orders = tuple(map(_char_order, token))
    return (0 if token[0] == "~" else 2, (*orders, 0))  # 0: the shorter string's padding


@functools.cache
def _char_order(char: str) -> int:
    """A character's rank in python-debian's order: '~' first, then letters, then the rest."""
    return -1 if char == "~" else ord(char) if char.isalpha() else ord(char) + 256

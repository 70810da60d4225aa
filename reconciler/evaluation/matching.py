"""Stage: evaluation. How one filter, one patch id and one date rule match one package version.

SSM's matching rules (reference §1.4-§1.6, §3.3): filter values are OR'ed and compared without
regard to case, ``*`` matches everything (even a missing property); patch ids follow each family's
formats with at most one ``*`` (every name form AWS documents: :func:`package_names`); the moment
approve-after-days counts from is a UTC timestamp with per-OS sources and fallbacks
(:func:`release_time`). Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from reconciler.api.checks import BUGZILLA_ID, CVE_ID, WINDOWS_ID
from reconciler.api.enums import (
    AMAZON_LINUX_SYSTEMS,
    BUILD_TIME_FALLBACK_SYSTEMS,
    LATER_DATE_SYSTEMS,
    Family,
    OperatingSystem,
    PatchFilterKey,
)
from reconciler.api.inventory import PackageFacts
from reconciler.api.names import COMPONENTS, RPM_FORMS, key_template
from reconciler.api.resources import PatchFilter

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# AL2022/AL2023 report Moderate as Medium; SSM treats the two as one level there (§3.1).
_SEVERITY_ALIASES = {"moderate": "medium"}


@dataclass(frozen=True, slots=True)
class FilterMatcher:
    """One compiled PatchFilter."""

    key: PatchFilterKey
    values: frozenset[str] | None  # lower-cased; None when '*' is among them
    text: str  # for reasons: "CLASSIFICATION=Security,Bugfix"

    def matches(self, properties: tuple[str, ...]) -> bool:
        if self.values is None:
            return True
        return any(p in self.values for p in properties)


def compile_filter(patch_filter: PatchFilter, os: OperatingSystem) -> FilterMatcher:
    text = f"{patch_filter.key}={','.join(patch_filter.values)}"
    if "*" in patch_filter.values:
        return FilterMatcher(patch_filter.key, None, text)
    values = {v.lower() for v in patch_filter.values}
    if os in AMAZON_LINUX_SYSTEMS and patch_filter.key is PatchFilterKey.SEVERITY:
        values = {_SEVERITY_ALIASES.get(v, v) for v in values}
    return FilterMatcher(patch_filter.key, frozenset(values), text)


def properties(
    key: PatchFilterKey, pkg: PackageFacts, product: str, os: OperatingSystem
) -> tuple[str, ...]:
    """The lower-cased values of ``key`` for ``pkg`` (empty when it has none)."""
    raw = _PROPERTY[key](pkg, product)
    values = tuple(v.lower() for v in raw if v)
    if key is PatchFilterKey.SEVERITY and os in AMAZON_LINUX_SYSTEMS:
        values = tuple(_SEVERITY_ALIASES.get(v, v) for v in values)
    return values


def _product(pkg: PackageFacts, product: str) -> tuple[str | None, ...]:
    # Windows updates name their own product; on Linux the product is the machine's.
    return (pkg.product or product,)


def _epoch(pkg: PackageFacts) -> str:
    head, sep, _ = pkg.version.partition(":")
    return head if sep and head.isdigit() else "0"


def _release(pkg: PackageFacts) -> str:
    return pkg.version.rpartition("-")[2] if "-" in pkg.version else ""


_PROPERTY: dict[PatchFilterKey, Callable[[PackageFacts, str], tuple[str | None, ...]]] = {
    PatchFilterKey.PRODUCT: _product,
    PatchFilterKey.PRODUCT_FAMILY: lambda p, _: (p.product_family,),
    PatchFilterKey.PATCH_SET: lambda p, _: (p.patch_set or "OS",),
    PatchFilterKey.CLASSIFICATION: lambda p, _: (p.classification,),
    PatchFilterKey.SEVERITY: lambda p, _: (p.severity,),
    PatchFilterKey.MSRC_SEVERITY: lambda p, _: (p.severity,),
    PatchFilterKey.PRIORITY: lambda p, _: (p.priority,),
    PatchFilterKey.SECTION: lambda p, _: (p.section,),
    PatchFilterKey.NAME: lambda p, _: (p.name,),
    PatchFilterKey.ARCH: lambda p, _: (p.arch,),
    PatchFilterKey.REPOSITORY: lambda p, _: (p.repository,),
    PatchFilterKey.ADVISORY_ID: lambda p, _: p.advisory_ids,
    PatchFilterKey.CVE_ID: lambda p, _: p.cves,
    PatchFilterKey.BUGZILLA_ID: lambda p, _: p.bugzilla_ids,
    PatchFilterKey.PATCH_ID: lambda p, _: (p.kb_id or p.name,),
    PatchFilterKey.VERSION: lambda p, _: (p.version,),
    PatchFilterKey.RELEASE: lambda p, _: (_release(p),),
    PatchFilterKey.EPOCH: lambda p, _: (_epoch(p),),
    PatchFilterKey.SECURITY: lambda p, _: ("yes" if p.security else "no",),
}

# The PackageFacts fields each key's properties read (beside the machine's product and OS): two
# versions equal on them match every filter on that key alike, so bulk deciding
# (reconciler.evaluation.verdicts) evaluates a filter once per distinct value of these fields
# (tests/test_engine_verdicts.py checks the table against _PROPERTY).
PROPERTY_FIELDS: dict[PatchFilterKey, tuple[str, ...]] = {
    PatchFilterKey.PRODUCT: ("product",),
    PatchFilterKey.PRODUCT_FAMILY: ("product_family",),
    PatchFilterKey.PATCH_SET: ("patch_set",),
    PatchFilterKey.CLASSIFICATION: ("classification",),
    PatchFilterKey.SEVERITY: ("severity",),
    PatchFilterKey.MSRC_SEVERITY: ("severity",),
    PatchFilterKey.PRIORITY: ("priority",),
    PatchFilterKey.SECTION: ("section",),
    PatchFilterKey.NAME: ("name",),
    PatchFilterKey.ARCH: ("arch",),
    PatchFilterKey.REPOSITORY: ("repository",),
    PatchFilterKey.ADVISORY_ID: ("advisory_ids",),
    PatchFilterKey.CVE_ID: ("cves",),
    PatchFilterKey.BUGZILLA_ID: ("bugzilla_ids",),
    PatchFilterKey.PATCH_ID: ("kb_id", "name"),
    PatchFilterKey.VERSION: ("version",),
    PatchFilterKey.RELEASE: ("version",),
    PatchFilterKey.EPOCH: ("version",),
    PatchFilterKey.SECURITY: ("security",),
}


# ---------------------------------------------------------------------------------------------
# Patch ids (approvedPatches / rejectedPatches)


@dataclass(frozen=True, slots=True)
class IdMatcher:
    """One compiled approved/rejected patch id."""

    text: str
    kind: str  # "name", "cve", "bugzilla", "advisory", "kb"
    pattern: re.Pattern[str]

    def matches(
        self, pkg: PackageFacts, family: Family, names: tuple[str, ...] | None = None
    ) -> bool:
        """Whether the id names ``pkg``; ``names`` saves working out package_names(pkg, family)
        again for every id of a list."""
        if self.kind == "cve":
            return any(self.pattern.match(c) for c in pkg.cves)
        if self.kind == "bugzilla":
            return any(self.pattern.match(b) for b in pkg.bugzilla_ids)
        if self.kind == "advisory":
            return any(self.pattern.match(a) for a in pkg.advisory_ids)
        if self.kind == "kb":
            return any(self.pattern.match(x) for x in (pkg.kb_id, pkg.name, *pkg.advisory_ids) if x)
        if names is None:
            names = package_names(pkg, family)
        return any(self.pattern.match(n) for n in names)

    def matches_name(self, name: str) -> bool:
        """Whether the id names the package ``name`` (for dependencies known by name only)."""
        return self.kind == "name" and bool(self.pattern.match(name))


def id_fields(matcher: IdMatcher, family: Family) -> tuple[str, ...]:
    """The PackageFacts fields ``matcher.matches`` reads in ``family``: two versions equal on them
    are named alike (name ids read package_names' components: the name alone on apt)."""
    if matcher.kind != "name":
        return _ID_FIELDS[matcher.kind]
    if family is not Family.RPM and family is not Family.SUSE:
        return ("name",)
    return ("name", "arch", "version", "advisory_ids")


_ID_FIELDS = {
    "cve": ("cves",),
    "bugzilla": ("bugzilla_ids",),
    "advisory": ("advisory_ids",),
    "kb": ("kb_id", "name", "advisory_ids"),
}


def compile_id(patch_id: str, family: Family) -> IdMatcher:
    pattern = re.compile(
        "^" + ".*".join(re.escape(part) for part in patch_id.split("*")) + "$", re.IGNORECASE
    )
    if family is Family.WINDOWS and WINDOWS_ID.match(patch_id):
        return IdMatcher(patch_id, "kb", pattern)
    if family is Family.RPM:
        if CVE_ID.match(patch_id):
            return IdMatcher(patch_id, "cve", pattern)
        if BUGZILLA_ID.match(patch_id):  # numbers-only ids are Bugzilla ids on RPM systems
            return IdMatcher(patch_id, "bugzilla", pattern)
        if _looks_like_advisory(patch_id):
            return IdMatcher(patch_id, "advisory", pattern)
    return IdMatcher(patch_id, "name", pattern)


def names_pattern(matchers: tuple[IdMatcher, ...]) -> re.Pattern[str] | None:
    """One pattern matching what any of ``matchers`` matches, when they all match by name: most
    packages are named by no id of a list, and one regex says so faster than one per id."""
    if not matchers or any(m.kind != "name" for m in matchers):
        return None
    return re.compile("|".join(f"(?:{m.pattern.pattern})" for m in matchers), re.IGNORECASE)


IdList = tuple[tuple[IdMatcher, ...], re.Pattern[str] | None]
"""A list's ids, and one pattern finding a line that a name id of the list matches whole."""


def id_list(matchers: tuple[IdMatcher, ...]) -> IdList:
    """``matchers`` with their lines pattern: :func:`named` searches the package_names() of a
    version joined by newlines, one search for every form and id instead of one match each."""
    by_name = [m.pattern.pattern for m in matchers if m.kind == "name"]
    if not by_name:
        return matchers, None
    return matchers, re.compile("|".join(f"(?:{p})" for p in by_name), re.I | re.M)


def named(ids: IdList, pkg: PackageFacts, family: Family, names: tuple[str, ...]) -> bool:
    """Whether any id of ``ids`` names ``pkg`` (``names``: its package_names())."""
    matchers, lines = ids
    if any(m.kind != "name" and m.matches(pkg, family, names) for m in matchers):
        return True
    if lines is None:
        return False
    joined = "\n".join(names)
    if joined.count("\n") != len(names) - 1:  # a name holding a newline: form by form
        return any(m.matches(pkg, family, names) for m in matchers)
    return lines.search(joined) is not None


def _looks_like_advisory(patch_id: str) -> bool:
    return bool(re.match(r"^[A-Z][A-Z0-9]*-\d{4}[:-][0-9A-Za-z]+$", patch_id))


def package_names(pkg: PackageFacts, family: Family) -> tuple[str, ...]:
    """The keys a patch id may name ``pkg`` by in ``family``: each documented form
    (:mod:`reconciler.api.names`) filled with the package's components, built once per package
    version so that matching one id is one regex over a handful of strings."""
    if family is not Family.RPM and family is not Family.SUSE:  # apt, macOS, Windows
        return (pkg.name,)
    parts = _components(pkg)
    whole = bool(parts["arch"] and parts["release"])
    keys = _rpm_keys(**parts) if whole else _partial_keys(parts)
    if family is Family.SUSE:  # the file name, and zypper's patch names (SUSE-SLE-...)
        return (*keys, *([f"{keys[4]}.rpm"] if whole else []), *pkg.advisory_ids)
    return keys


def _partial_keys(parts: dict[str, str]) -> tuple[str, ...]:
    """The forms a package without an arch or a release can fill (rare: rpm always has both)."""
    return tuple(t.format_map(parts) for t, needs in _TEMPLATES if all(map(parts.get, needs)))


def _rpm_keys(name: str, arch: str, epoch: str, version: str, release: str) -> tuple[str, ...]:
    """names.RPM_FORMS filled in, in their order, as f-strings: a few times faster than filling
    the templates (tests/test_patch_names.py checks that the two agree)."""
    vr = f"{version}-{release}"
    evr = f"{epoch}:{vr}"
    return (
        name,
        f"{name}.{arch}",
        f"{name}-{version}",
        f"{name}-{vr}",
        f"{name}-{vr}.{arch}",
        version,
        vr,
        evr,
        f"{name}-{evr}",
        f"{name}-{evr}.{arch}",
        f"{epoch}:{name}-{vr}.{arch}",
        f"{name}.{arch}:{evr}",
    )


def _components(pkg: PackageFacts) -> dict[str, str]:
    """name, arch, epoch, version and release of an RPM package version; an RPM without an epoch
    has epoch 0, which is how rpm itself writes it in name.arch:epoch:version-release."""
    epoch, colon, plain = pkg.version.partition(":")
    if not colon or not epoch.isdigit():
        epoch, plain = "0", pkg.version
    version, dash, release = plain.rpartition("-")
    if not dash:
        version, release = plain, ""
    return {
        "name": pkg.name,
        "arch": pkg.arch,
        "epoch": epoch,
        "version": version,
        "release": release,
    }


# (str.format template, the components it needs) per RPM form.
_TEMPLATES = tuple(
    (key_template(form), tuple(c for c in COMPONENTS if re.search(rf"\b{c}\b", form)))
    for form in RPM_FORMS
)


# ---------------------------------------------------------------------------------------------
# Dates


def release_time(pkg: PackageFacts, os: OperatingSystem) -> tuple[datetime | None, str]:
    """The UTC moment approve-after-days counts from for ``pkg`` on ``os``, and which date it is
    ("updated", "released" or "build time"); None means SSM's zero delay.

    Amazon Linux counts from the notice's updated date (AWS's "How package release dates and
    update dates are calculated"); RHEL, CentOS, Oracle, Rocky, Alma and SUSE from the later of
    released and updated ("released or updated"); the others from the release date. Without a
    date SSM uses the build time on Amazon Linux, RHEL and CentOS, and otherwise no delay;
    Windows gets 1970-01-01 when Microsoft gives no date (reference §3.3). The inventory holds
    the timestamps already parsed and in UTC, so this is a few comparisons per package version.
    """
    released, updated = pkg.issued, pkg.updated
    later = updated is not None and (released is None or updated > released)
    if updated is not None and (os in AMAZON_LINUX_SYSTEMS or (later and os in LATER_DATE_SYSTEMS)):
        return updated, "updated"
    if released is not None:
        return released, "released"
    if os in BUILD_TIME_FALLBACK_SYSTEMS and pkg.build_time is not None:
        return pkg.build_time, "build time"
    if os is OperatingSystem.WINDOWS:
        return _EPOCH, "released"
    return None, "no release date"


def utc_day(moment: datetime) -> date:
    """The UTC calendar day of ``moment`` (naive times are taken as UTC)."""
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()

"""Stage: api. The package-name forms an approvedPatches/rejectedPatches entry may take, per family.

AWS documents them on "Package name formats for approved and rejected patch lists"
(https://docs.aws.amazon.com/systems-manager/latest/userguide/patch-manager-approved-rejected-package-name-formats.html).
A form is a template over a package's components (``name``, ``arch``, ``epoch``, ``version``,
``release``): validation checks an entry against the components' characters
(:func:`fits_a_form`), and the engine fills the same templates with one package's components to
get the keys an entry is matched against (``reconciler.evaluation.matching``), so the two cannot
disagree. Pure data and regular expressions; may not import anything outside ``reconciler.api``.
"""

from __future__ import annotations

import re

from reconciler.api.enums import Family

COMPONENTS = ("name", "arch", "epoch", "version", "release")
_COMPONENT = re.compile(r"\b(?:" + "|".join(COMPONENTS) + r")\b")

# The twelve constructions AWS lists for Amazon Linux, RHEL, CentOS, Oracle, Rocky and Alma.
RPM_FORMS = (
    "name",
    "name.arch",
    "name-version",
    "name-version-release",
    "name-version-release.arch",
    "version",
    "version-release",
    "epoch:version-release",
    "name-epoch:version-release",
    "name-epoch:version-release.arch",
    "epoch:name-version-release.arch",
    "name.arch:epoch:version-release",
)
# SLES: AWS documents the file name (name-version-release.arch.rpm) and patch names
# (SUSE-SLE-...); SUSE packages are RPMs, so the RPM constructions name them too.
SUSE_FORMS = (*RPM_FORMS, "name-version-release.arch.rpm")
FORMS: dict[Family, tuple[str, ...]] = {
    Family.RPM: RPM_FORMS,
    Family.SUSE: SUSE_FORMS,
    Family.APT: ("name",),
    Family.MACOS: ("name",),
    Family.WINDOWS: (),
}

# What each component may contain; '*' stands for part of any component (one per entry).
_CHARACTERS = {
    "name": r"[A-Za-z0-9_+*][A-Za-z0-9_.+*-]*",
    "arch": r"[A-Za-z0-9_*]+",
    "epoch": r"[0-9*]+",
    "version": r"[A-Za-z0-9*][A-Za-z0-9_.+~^*]*",
    "release": r"[A-Za-z0-9*][A-Za-z0-9_.+~^*]*",
}
# Debian policy: lower-case letters, digits, '+', '-', '.', starting alphanumeric (AWS's own
# example, ExamplePkg33, has capitals and matching ignores case, so capitals are allowed).
_APT_NAME = re.compile(r"[A-Za-z0-9*][A-Za-z0-9+.*-]*")
# Apple's product labels and Homebrew formulae/casks: letters, digits, '@+._-' and inner spaces.
_MACOS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9@+._ ()-]*[A-Za-z0-9@+._)-])?")


def key_template(form: str) -> str:
    """``form`` as a str.format template: 'name.arch' -> '{name}.{arch}'."""
    return _COMPONENT.sub(lambda m: "{" + m.group() + "}", form)


def _form_pattern(form: str) -> re.Pattern[str]:
    parts = re.split(r"(\b(?:" + "|".join(COMPONENTS) + r")\b)", form)
    return re.compile("".join(_CHARACTERS[p] if p in _CHARACTERS else re.escape(p) for p in parts))


_RPM_PATTERNS = tuple(_form_pattern(f) for f in RPM_FORMS)
_SUSE_PATTERNS = tuple(_form_pattern(f) for f in SUSE_FORMS)


def fits_a_form(entry: str, family: Family) -> bool:
    """Whether ``entry`` can be a package named in one of ``family``'s forms (ids aside)."""
    if family is Family.RPM:
        return any(p.fullmatch(entry) for p in _RPM_PATTERNS)
    if family is Family.SUSE:
        return any(p.fullmatch(entry) for p in _SUSE_PATTERNS)
    if family is Family.APT:
        return bool(_APT_NAME.fullmatch(entry))
    if family is Family.MACOS:
        return bool(_MACOS_NAME.fullmatch(entry))
    return False


def accepted_forms(family: Family, *, rejected: bool) -> str:
    """What a refused entry should have looked like, for the validation message."""
    if family is Family.WINDOWS:
        return "KB ids (KB5034439) or Microsoft security bulletin ids (MS17-010)"
    if family is Family.APT:
        return "a package name only (openssl, or one '*': libssl*), without architecture or version"
    if family is Family.MACOS:
        return "a full package name (XProtectPlistConfigData), without wildcards"
    constructions = ", ".join(FORMS[family])
    named = f"a package named as one of {constructions} (at most one '*')"
    if family is Family.SUSE:
        return f"a patch name (SUSE-SLE-Module-Basesystem-15-SP5-2024-123) or {named}"
    if rejected:
        return named
    return (
        f"a Bugzilla id (1234567), CVE id (CVE-2024-1234), advisory id (RHSA-2024:1234) or {named}"
    )

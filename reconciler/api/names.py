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

import functools
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

# What each component may contain: (its first character, the rest).
_CHARACTERS = {
    "name": ("[A-Za-z0-9_+]", "[A-Za-z0-9_.+-]"),
    "arch": ("[A-Za-z0-9_]", "[A-Za-z0-9_]"),
    "epoch": ("[0-9]", "[0-9]"),
    "version": ("[A-Za-z0-9]", "[A-Za-z0-9_.+~^]"),
    "release": ("[A-Za-z0-9]", "[A-Za-z0-9_.+~^]"),
}
# Debian policy: lower-case letters, digits, '+', '-', '.', starting alphanumeric (AWS's own
# example, ExamplePkg33, has capitals and matching ignores case, so capitals are allowed).
_APT_NAME = re.compile(r"[A-Za-z0-9*][A-Za-z0-9+.*-]*")
# Apple's product labels and Homebrew formulae/casks: letters, digits, '@+._-' and inner spaces.
_MACOS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9@+._ ()-]*[A-Za-z0-9@+._)-])?")


def key_template(form: str) -> str:
    """``form`` as a str.format template: 'name.arch' -> '{name}.{arch}'."""
    return _COMPONENT.sub(lambda m: "{" + m.group() + "}", form)


def _tokens(form: str) -> list[tuple[str, str]]:
    """(the regex of the whole token, the regex of any part of it) per component or character."""
    tokens: list[tuple[str, str]] = []
    for piece in re.split(r"(\b(?:" + "|".join(COMPONENTS) + r")\b)", form):
        if piece in _CHARACTERS:
            first, rest = _CHARACTERS[piece]
            tokens.append((f"{first}{rest}*", f"{rest}*"))  # rest: every character first allows
        else:
            tokens += [(re.escape(c), "") for c in piece]
    return tokens


def _form_patterns(form: str) -> tuple[str, str]:
    """The regex of ``form`` itself, and of ``form`` with one '*' standing for any part of it: a
    prefix of the form (ending inside token i), '*', a suffix (starting inside token j >= i)."""
    tokens = _tokens(form)
    whole = "".join(t for t, _ in tokens)
    ends = len(tokens)
    starred = [
        "".join(t for t, _ in tokens[:i])
        + (tokens[i][1] if i < ends else "")
        + r"\*"
        + (tokens[j][1] if j < ends else "")
        + "".join(t for t, _ in tokens[j + 1 :])
        for i in range(ends + 1)
        for j in range(i, ends + 1)
    ]
    return whole, "|".join(f"(?:{s})" for s in starred)


@functools.cache
def _family_pattern(family: Family) -> re.Pattern[str] | None:
    # Compiled on first use, not at import: the alternation is large and every patchctl command
    # imports this module, most without a baseline that names an rpm package.
    if family not in (Family.RPM, Family.SUSE):
        return None
    alternatives = [p for form in FORMS[family] for p in _form_patterns(form)]
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


def fits_a_form(entry: str, family: Family) -> bool:
    """Whether ``entry`` (with at most one '*', checked before) names a package in one of
    ``family``'s forms (notice and KB ids aside)."""
    pattern = _family_pattern(family)
    if pattern is not None:
        return bool(pattern.fullmatch(entry))
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

"""Stage: agent. Which BLOCK pattern (a rejectedPatches entry) names a package a transaction
would install, for every backend. Standard library only; it runs no command and reads no file.

An entry may name a package in any form AWS documents for its family (docs/decision-engine.md):
on rpm systems ``dbus.x86_64``, ``dbus-1.12.28-1.amzn2023.0.1``, ``1:dbus-1.12.28-1...x86_64``
and the rest, on SUSE also the file name ``...x86_64.rpm``; ``*`` is the only wildcard and case
does not matter. The agent imports nothing from reconciler, so these keys are the engine's
(``reconciler/evaluation/matching.py`` ``package_names``) a second time; tests/test_patch_names.py
checks the two agree.
"""

import re
from typing import Iterable, List, Optional, Pattern


def rpm_names(name: str, arch: str, evr: str) -> List[str]:
    """The keys a rejectedPatches entry may name an rpm package by (epoch 0 when it has none);
    without an arch or a release, only the forms that need neither."""
    epoch, colon, plain = evr.partition(":")
    if not colon or not epoch.isdigit():
        epoch, plain = "0", evr
    version, dash, release = plain.rpartition("-")
    if not dash:
        version, release = plain, ""
    vr = "{}-{}".format(version, release)
    evr0 = "{}:{}".format(epoch, vr)
    keys = [  # (key, what it needs: a = arch, r = release)
        (name, ""),
        ("{}.{}".format(name, arch), "a"),
        ("{}-{}".format(name, version), ""),
        ("{}-{}".format(name, vr), "r"),
        ("{}-{}.{}".format(name, vr, arch), "ar"),
        (version, ""),
        (vr, "r"),
        (evr0, "r"),
        ("{}-{}".format(name, evr0), "r"),
        ("{}-{}.{}".format(name, evr0, arch), "ar"),
        ("{}:{}-{}.{}".format(epoch, name, vr, arch), "ar"),
        ("{}.{}:{}".format(name, arch, evr0), "ar"),
        ("{}-{}.{}.rpm".format(name, vr, arch), "ar"),
    ]
    missing = ("" if arch else "a") + ("" if release else "r")
    return [key for key, needs in keys if not any(c in missing for c in needs)]


def blocked_by(patterns: Iterable[str], names: Iterable[str]) -> Optional[str]:
    """The first of ``patterns`` that names one of ``names``, or None."""
    keys = list(names)
    for pattern in patterns:
        regex = _compile(pattern)
        if any(regex.match(key) for key in keys):
            return pattern
    return None


def _compile(pattern: str) -> Pattern[str]:
    # '*' is the only wildcard (fnmatch would also read '?' and '[...]'), as in the engine.
    body = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.compile("(?:" + body + r")\Z", re.IGNORECASE | re.DOTALL)

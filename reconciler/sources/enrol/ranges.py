"""Stage: sources (enrolment). A guard run on an Ansible inventory's text before ansible-core
reads it: ansible expands a host range such as ``h[0:99999999]`` into every host at once, so
one line of a commit could exhaust the controller's memory. This is not a parser (ansible stays
the parser): it only finds ``[start:end]`` and ``[start:end:stride]`` in the text, as ansible's
``expand_hostname_range`` reads them, and counts the hosts they would make. May not import
ansible, read files or touch state.
"""

from __future__ import annotations

import re

from reconciler.sources.enrol.base import DiscoveryRefused

MAX_RANGE_HOSTS = 10_000
"""At most this many hosts from the ranges of one inventory file, all lines together."""
_RANGE = re.compile(r"\[(\d*|[a-zA-Z]):(\d+|[a-zA-Z])(?::(\d+))?\]")


def refuse_huge_ranges(relpath: str, text: str) -> None:
    """Raise DiscoveryRefused, naming the file and line, when the ranges in ``text`` would
    expand to more than MAX_RANGE_HOSTS hosts. Ranges on one line multiply (``h[1:9]-[a:z]``),
    as they do in one host pattern."""
    total = 0
    for number, line in enumerate(text.splitlines(), start=1):
        hosts = 0
        for found in _RANGE.finditer(line):
            hosts = max(hosts, 1) * _size(found)
        total += hosts
        if total > MAX_RANGE_HOSTS:
            raise DiscoveryRefused(
                f"{relpath}:{number}: host ranges would give more than {MAX_RANGE_HOSTS:,} "
                f"hosts (this line: {hosts:,}); list fewer hosts or split the inventory"
            )


def _size(found: re.Match[str]) -> int:
    """How many hosts one range names (0 when it names none, as ansible would refuse it)."""
    start, end, stride = found.group(1) or "0", found.group(2), int(found.group(3) or 1)
    if start.isdigit() != end.isdigit():
        return 0
    first, last = (int(start), int(end)) if start.isdigit() else (ord(start), ord(end))
    return 0 if last < first else (last - first) // max(stride, 1) + 1

"""Stage: sources (enrolment) — InstanceSources: where machines are already listed.

The extension point: each kind of InstanceSource is one spec model in
:mod:`reconciler.api.resources` (a ``DiscoverySpec`` subclass, and one optional field of
``InstanceSourceSpec`` named after the kind) and one discovery function here, registered in
:data:`DISCOVERERS` under the spec model. A discovery function takes (spec, :class:`Context`),
returns ``list[DiscoveredHost]`` and raises :class:`DiscoveryFailed` (temporary: unreachable) or
:class:`DiscoveryRefused` (the listing is wrong); everything else (names, labels, connection
template, last good list, refresh interval, events) is common to every kind. May import ``api``.
"""

from reconciler.api.resources import AnsibleInventory, Ec2Instances, StaticHosts
from reconciler.sources.enrol import ansible, ec2, static
from reconciler.sources.enrol.base import (
    Context,
    DirectoryFiles,
    Discover,
    DiscoveryFailed,
    DiscoveryRefused,
    Repository,
)
from reconciler.sources.enrol.runner import (
    Enrolment,
    Refreshed,
    SourceLists,
    SourceStatus,
    enrol_once,
    enrol_revision,
)

DISCOVERERS: dict[type, Discover] = {
    StaticHosts: static.discover,
    AnsibleInventory: ansible.discover,
    Ec2Instances: ec2.discover,
}
"""Spec model -> its discovery function: one entry per kind of InstanceSource."""

__all__ = [
    "DISCOVERERS",
    "Context",
    "DirectoryFiles",
    "Discover",
    "DiscoveryFailed",
    "DiscoveryRefused",
    "Enrolment",
    "Refreshed",
    "Repository",
    "SourceLists",
    "SourceStatus",
    "enrol_once",
    "enrol_revision",
]

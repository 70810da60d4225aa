"""Stage: api. Enrolment's pure half: the machines an InstanceSource listed become ManagedInstances,
which join a snapshot beside the hand-written ones (docs/enrolment.md).

Discovery itself (reading an Ansible inventory, asking EC2) is I/O and lives in
:mod:`reconciler.sources.enrol`; this module only turns its answer, a list of
:class:`DiscoveredHost`, into resources, and decides which instance wins a name. May not import
anything outside ``reconciler.api`` and do no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from reconciler.api.resources import (
    API_VERSION,
    HOST_ANNOTATION,
    SOURCE_ANNOTATION,
    InstanceSource,
    ManagedInstance,
    SshConnection,
)
from reconciler.api.snapshot import Snapshot, format_path

_NOT_IN_NAME = re.compile(r"[^a-z0-9.-]+")
_MAX_NAME = 253


@dataclass(frozen=True)
class DiscoveredHost:
    """One machine as a source lists it; what a discovery function returns. ``None`` fields take
    the InstanceSource's connection template."""

    id: str
    """The machine's id in its source; the instance name is made from it (spec.nameTemplate)."""
    address: str
    port: int | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    identity_file: str | None = None
    become: str | None = None
    """``sudo``, or None to keep the template's."""
    become_user: str | None = None
    name: str | None = None
    """The name the source gives the machine when that is not its id (EC2's Name tag): {name}
    in spec.nameTemplate is this, else the id."""
    left_out: str | None = None
    """Why the source lists the machine but it cannot be enrolled (an EC2 instance without the
    address asked for); reported with the machines left out."""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, to keep the last good list in the state store."""
        return {**dataclasses.asdict(self), "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DiscoveredHost:
        known: dict[str, Any] = {
            f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data
        }
        return cls(**known)


@dataclass(frozen=True)
class Listed:
    """A source's last good list (kept in the state store, so a restart keeps it)."""

    kind: str
    spec: str
    """Fingerprint of the spec it was listed with: a changed spec is listed again at once."""
    hosts: tuple[DiscoveredHost, ...]
    at: datetime


@dataclass(frozen=True)
class Provenance:
    """Where a generated instance came from."""

    source: str
    host: str

    def __str__(self) -> str:
        return f"from InstanceSource {self.source}, host {self.host}"


def provenance(instance: ManagedInstance) -> Provenance | None:
    """The source and host of a generated instance; None for one written by hand."""
    annotations = instance.metadata.annotations
    source, host = annotations.get(SOURCE_ANNOTATION), annotations.get(HOST_ANNOTATION)
    return Provenance(source, host) if source is not None and host is not None else None


@dataclass(frozen=True)
class Enrolled:
    """What one source's list gives: an instance per machine, and why any machine got none."""

    source: str
    instances: tuple[ManagedInstance, ...] = ()
    problems: tuple[str, ...] = ()
    """``host ID: what is wrong``: machines left out (a name no resource can have, a bad field)."""


def instance_name(template: str, source: str, host_id: str) -> str:
    """The generated name: the template filled in, lowercased, every run of characters a
    resource name cannot hold turned into '-'; ValueError when nothing usable is left."""
    raw = template.format(source=source, name=host_id)
    name = _NOT_IN_NAME.sub("-", raw.lower())[:_MAX_NAME].strip("-.")
    if not name:
        raise ValueError(f"name template gives {raw!r}, which has no letter or digit to keep")
    return name


def enrol(source: InstanceSource, hosts: Iterable[DiscoveredHost]) -> Enrolled:
    """One ManagedInstance per host of ``source``'s list; hosts that cannot be one are problems."""
    instances: dict[str, ManagedInstance] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    for host in hosts:
        if host.left_out is not None:
            problems.append(f"host {host.id}: {host.left_out}")
            continue
        try:
            instance = _instance(source, host)
        except ValueError as exc:
            problems.append(f"host {host.id}: {exc}")
            continue
        name = instance.metadata.name
        if name in instances:
            problems.append(
                f"host {host.id}: its name {name!r} is also host {origin[name]}'s; give the "
                "hosts ids that differ in more than case and punctuation, or change nameTemplate"
            )
            continue
        instances[name], origin[name] = instance, host.id
    return Enrolled(source.metadata.name, tuple(instances.values()), tuple(problems))


def _instance(source: InstanceSource, host: DiscoveredHost) -> ManagedInstance:
    spec = source.spec
    sname = source.metadata.name
    name = instance_name(spec.name_template, sname, host.name or host.id)
    overrides = {
        "port": host.port,
        "user": host.user,
        "identity_file": host.identity_file,
        "become": host.become,
        "become_user": host.become_user,
    }
    connection = {
        **spec.connection.model_dump(exclude={"host", "type"}, exclude_none=True),
        **{k: v for k, v in overrides.items() if v is not None},
        "type": "ssh",
        "host": host.address,
    }
    try:
        return ManagedInstance.model_validate(
            {
                "api_version": API_VERSION,
                "kind": "ManagedInstance",
                "metadata": {
                    "name": name,
                    "labels": {**spec.labels, **host.labels},
                    "annotations": {SOURCE_ANNOTATION: sname, HOST_ANNOTATION: host.id},
                },
                "spec": {"connection": SshConnection.model_validate(connection)},
            }
        )
    except ValidationError as exc:
        raise ValueError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    where = format_path(tuple(errors[0]["loc"]))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {errors[0]['msg']}{more}"


def with_enrolled(snapshot: Snapshot, enrolled: Sequence[Enrolled]) -> tuple[Snapshot, list[str]]:
    """``snapshot`` with the generated instances added, and notes saying which instance won each
    contested name: a ManagedInstance written by hand wins over a generated one; between two
    sources, the one whose name sorts first. A generated instance that two patch groups select
    is left out (a hand-written one would be refused)."""
    instances = dict(snapshot.instances)
    locations, documents = dict(snapshot.locations), dict(snapshot.documents)
    notes: list[str] = []
    for result in sorted(enrolled, key=lambda e: e.source):
        where = ("InstanceSource", result.source)
        for instance in result.instances:
            name = instance.metadata.name
            note = _contest(snapshot, instances, instance)
            if note is None:
                instances[name] = instance
                locations[("ManagedInstance", name)] = snapshot.locations[where]
                documents[("ManagedInstance", name)] = snapshot.documents[where]
            else:
                notes.append(note)
    merged = dataclasses.replace(
        snapshot, instances=instances, locations=locations, documents=documents
    )
    return merged, notes


def _contest(
    snapshot: Snapshot, taken: Mapping[str, ManagedInstance], instance: ManagedInstance
) -> str | None:
    """Why the generated ``instance`` does not join; None when it does."""
    name, origin = instance.metadata.name, provenance(instance)
    if name in snapshot.instances:
        return (
            f"ManagedInstance {name}: the one written at "
            f"{snapshot.locations[('ManagedInstance', name)]} wins over the one generated {origin}"
        )
    if name in taken:
        first = provenance(taken[name])
        return f"ManagedInstance {name}: the one generated {first} wins over the one {origin}"
    groups = [g.metadata.name for g in snapshot.groups_of(instance.metadata.labels)]
    if len(groups) > 1:
        return (
            f"ManagedInstance {name} ({origin}) left out: selected by patch groups "
            f"{', '.join(groups)}; an instance belongs to at most one group"
        )
    return None

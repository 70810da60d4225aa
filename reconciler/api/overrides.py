"""Stage: api (the schema). SSM's InstallOverrideList file, as ``patchctl install
--install-override-list`` reads it.

AWS-RunPatchBaseline's InstallOverrideList is a YAML document ``patches: [{id: ...}]`` naming the
patches an Install installs instead of the baseline's approvals; they are then reported
``INSTALLED_OTHER`` unless the baseline approves them
(https://docs.aws.amazon.com/systems-manager/latest/userguide/patch-manager-aws-runpatchbaseline.html).
An ``id`` takes the forms ``approvedPatches`` takes. AWS's optional ``title`` (a version pattern)
is not implemented and so refused, never ignored. Pure: takes text, not paths.
"""

from __future__ import annotations

from pydantic import Field, ValidationError

from reconciler.api._base import Model
from reconciler.api.resources import PatchId
from reconciler.api.snapshot import Problem, SnapshotInvalid, format_path
from reconciler.api.yamldocs import YamlError, decode, documents


class OverridePatch(Model):
    """One entry of the list."""

    id: PatchId
    """The patch, named as in approvedPatches (``*`` allowed where SSM allows it)."""


class InstallOverrideList(Model):
    """The patches an Install installs instead of the baseline's approvals."""

    patches: list[OverridePatch] = Field(min_length=1, max_length=50)
    """What to install: at most 50 entries, as approvedPatches."""


def read_install_override_list(name: str, raw: bytes) -> tuple[str, ...]:
    """The ids of the InstallOverrideList file ``name``; SnapshotInvalid naming file:line."""
    try:
        found = list(documents(decode(raw)))
    except YamlError as exc:
        raise SnapshotInvalid([Problem(name, exc.line, "", exc.message)]) from None
    if len(found) != 1:
        problem = "expected one YAML document: patches: [{id: NAME}, ...]"
        raise SnapshotInvalid([Problem(name, found[1].line if found else 1, "", problem)])
    document = found[0]
    try:
        parsed = InstallOverrideList.model_validate(document.data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = tuple(error["loc"])
            message = error["msg"]
            if path and path[-1] == "title":
                message = "title (a version pattern) is not supported; name the package in id"
            problems.append(Problem(name, document.line_of(path), format_path(path), message))
        raise SnapshotInvalid(problems) from None
    return tuple(entry.id for entry in parsed.patches)

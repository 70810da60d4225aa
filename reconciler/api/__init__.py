"""Stage: api — THE schema: resource kinds, the inventory document, snapshot validation.

Everything users write and every document an agent reports is defined here, once; the CRDs in
``crds/`` and ``docs/inventory.schema.json`` are generated from these models. This package is the
innermost stage: it imports nothing else from ``reconciler``.
"""

from reconciler.api.enums import (
    ComplianceLevel,
    ComplianceStatus,
    Family,
    OperatingSystem,
    Operation,
    PatchFilterKey,
    PatchState,
    RebootOption,
    RejectedPatchesAction,
    family_of,
)
from reconciler.api.inventory import AvailableUpdate, Facts, InstalledPackage, Inventory
from reconciler.api.resources import (
    API_VERSION,
    ComplianceReport,
    MaintenanceWindow,
    ManagedInstance,
    PatchBaseline,
    PatchGroup,
)
from reconciler.api.snapshot import Problem, Snapshot, SnapshotInvalid, build_snapshot

__all__ = [
    "API_VERSION",
    "AvailableUpdate",
    "ComplianceLevel",
    "ComplianceReport",
    "ComplianceStatus",
    "Facts",
    "Family",
    "InstalledPackage",
    "Inventory",
    "MaintenanceWindow",
    "ManagedInstance",
    "OperatingSystem",
    "Operation",
    "PatchBaseline",
    "PatchFilterKey",
    "PatchGroup",
    "PatchState",
    "Problem",
    "RebootOption",
    "RejectedPatchesAction",
    "Snapshot",
    "SnapshotInvalid",
    "build_snapshot",
    "family_of",
]

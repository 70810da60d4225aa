"""Stage: defaults. SSM's predefined baselines, shipped as YAML inside the package.

``predefined_baselines()`` parses ``predefined.yaml`` with the same validation users' files get,
so a broken default can never ship silently (a test loads it). Reads package data only; may import
``reconciler.api`` and nothing else from ``reconciler``.
"""

from __future__ import annotations

import functools
from importlib import resources

from reconciler.api.resources import PatchBaseline
from reconciler.api.snapshot import build_snapshot

PREDEFINED_FILE = "predefined.yaml"


@functools.cache
def predefined_baselines() -> dict[str, PatchBaseline]:
    """Name -> predefined baseline; one of each OS is marked defaultBaseline."""
    raw = resources.files(__package__).joinpath(PREDEFINED_FILE).read_bytes()
    snapshot = build_snapshot([(f"reconciler/defaults/{PREDEFINED_FILE}", raw)])
    return dict(snapshot.baselines)

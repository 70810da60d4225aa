"""Stage: evaluation — the pure decision engine.

``evaluate(baseline, inventory, now)`` gives every patch's SSM state with its reason and the
instance's SSM counts; ``evaluate_summary`` the same counts alone, faster; ``resolve(snapshot,
labels, os)`` says which group and baseline apply. No I/O and no clock of its own: callers pass
``now``. May import ``reconciler.api`` only.
"""

from reconciler.evaluation.counts import summarize
from reconciler.evaluation.engine import Decider, DecisionCache, evaluate
from reconciler.evaluation.holds import Hold, declared_holds
from reconciler.evaluation.resolve import Resolution, resolve
from reconciler.evaluation.results import (
    Approval,
    HeldPatch,
    InstanceEvaluation,
    NotApproved,
    PatchResult,
    Summary,
)
from reconciler.evaluation.summary import evaluate_summary

__all__ = [
    "Approval",
    "Decider",
    "DecisionCache",
    "HeldPatch",
    "Hold",
    "InstanceEvaluation",
    "NotApproved",
    "PatchResult",
    "Resolution",
    "Summary",
    "declared_holds",
    "evaluate",
    "evaluate_summary",
    "resolve",
    "summarize",
]

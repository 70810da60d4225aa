"""Stage: sources (SSM import and export). AWS Systems Manager's patch baselines, patch-group
registrations and maintenance windows (with their targets and AWS-RunPatchBaseline tasks) turned
into our resources, with what could not be carried over and why, and ours sent back
(docs/ssm-import.md).

:mod:`.convert` (SSM's response shapes in, documents out) and :mod:`.outbound` (a snapshot in,
SSM's requests out) are pure; :mod:`.client` alone talks to AWS (boto3) or reads saved files.
None plans or dispatches.
"""

from __future__ import annotations

from reconciler.sources.ssm.convert import Imported, NotCarried, SsmAccount, SsmWindow, convert

__all__ = ["Imported", "NotCarried", "SsmAccount", "SsmWindow", "convert"]

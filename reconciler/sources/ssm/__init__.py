"""Stage: sources (SSM import). AWS Systems Manager's patch baselines, patch-group registrations and
maintenance windows (with their targets and AWS-RunPatchBaseline tasks) turned into our resources,
with what could not be carried over and why (docs/ssm-import.md).

:mod:`.convert` is pure (SSM's response shapes in, documents out); :mod:`.client` reads them
through boto3 or from files saved with the AWS CLI. Neither writes anything in AWS, plans or
dispatches.
"""

from __future__ import annotations

from reconciler.sources.ssm.convert import Imported, NotCarried, SsmAccount, SsmWindow, convert

__all__ = ["Imported", "NotCarried", "SsmAccount", "SsmWindow", "convert"]

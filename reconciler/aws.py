"""Stage: shared by the edges that talk to AWS (S3 publishing, EventBridge, EC2 enrolment). What
the standard AWS configuration lacks, in one set of words, so every AWS service says it alike.

Imports botocore's exception classes, lazily, and nothing from ``reconciler``; may not make a
client or a request (each edge makes its own, with its own endpoint option).
"""

from __future__ import annotations


def credentials_problem(exc: Exception) -> str | None:
    """The line for botocore finding no (or half of the) credentials in the standard chain;
    None for any other error."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if not isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return None
    return (
        f"no usable AWS credentials ({exc}): set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance or container role"
    )


def partition(region: str) -> str:
    """The ARN partition of ``region``: ``aws-cn`` for China (cn-north-1), ``aws-us-gov`` for
    GovCloud (us-gov-west-1), ``aws`` for the rest."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"

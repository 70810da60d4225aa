"""Stage: report — publishing. Report files put where they are wanted: a directory or S3, all or
nothing (``destinations``), and which scheduled ComplianceReports are due, over which instances
and under which file names (``scheduled``, pure).

Writes only the files it is given to the destination it is told; builds no content (that is
``views``) and sends no notification (that is ``notify``). Imports neither of them.
"""

from reconciler.report.publish.destinations import (
    PublishError,
    S3Location,
    make_s3_client,
    publish,
    s3_location,
)

__all__ = ["PublishError", "S3Location", "make_s3_client", "publish", "s3_location"]

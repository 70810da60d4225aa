"""Stage: kube. What a failed call to the API server means: the client's own ``ApiException``
(``.status``, ``.reason``, ``.body``) for an answer that is not 2xx, urllib3's ``HTTPError`` for a
server that could not be reached. Callers name :data:`API_FAILURES` rather than the client's
modules. Decides nothing; imports nothing from reconciler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

__all__ = ["API_FAILURES", "ApiException", "status_message", "watch_error"]

API_FAILURES = (ApiException, HTTPError, OSError)
"""Everything one call may raise when the server refuses it or cannot be reached (a loop that
must outlive an API outage catches these, and only these)."""


def status_message(exc: ApiException) -> str:
    """The API's own message for a failed call (its Status object), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or exc.reason or exc.status)


def watch_error(status: Mapping[str, Any]) -> ApiException:
    """The exception for a watch's ERROR event (its object is a Status: 410 Gone when the
    version watched from is older than the server keeps)."""
    return ApiException(
        status=int(status.get("code") or 500),
        reason=f"{status.get('reason')}: {status.get('message')}",
    )

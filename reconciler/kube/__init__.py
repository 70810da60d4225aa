"""Stage: kube — the one way to the Kubernetes API server, for sources, state, dispatch and the
controller alike. Client construction from a kubeconfig or a Pod's service account
(:mod:`.connect`), REST calls as plain JSON dicts with get/create/delete/merge-patch/list/watch
helpers (:mod:`.rest`), and what a failed call means (:mod:`.errors`).

Only this package imports the ``kubernetes`` client (and ``urllib3`` under it): an import-linter
contract holds everyone else to it, so the client's quirks (its global configuration, its typed
models, its watch that swallows 410 Gone) stay in one place. I/O only; decides nothing. May import
``reconciler.api`` (names of the custom resources), nothing above it.
"""

from reconciler.kube.connect import ApiClient, Kubeconfig, KubeconfigError, api_client, connect
from reconciler.kube.errors import API_FAILURES, ApiException, status_message
from reconciler.kube.rest import Collection, JsonObject, Kube, resource_path

__all__ = [
    "API_FAILURES",
    "ApiClient",
    "ApiException",
    "Collection",
    "JsonObject",
    "Kube",
    "Kubeconfig",
    "KubeconfigError",
    "api_client",
    "connect",
    "resource_path",
    "status_message",
]

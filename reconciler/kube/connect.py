"""Stage: kube. An API client and the namespace to work in, the way kubectl finds them: the
kubeconfig given, else the Pod's service account in a cluster, else ``$KUBECONFIG`` or
``~/.kube/config``. Every failure to read the configuration is one :class:`KubeconfigError` with
a message for a person. Decides nothing; imports nothing from reconciler.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client import ApiClient

__all__ = ["ApiClient", "Kubeconfig", "KubeconfigError", "api_client", "connect"]

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeconfigError(Exception):
    """No usable configuration: no file, not a kubeconfig, or nothing it names to reach."""


@dataclass(frozen=True)
class Kubeconfig:
    """Where to find the cluster: ``path`` (None: the service account in a Pod, else kubectl's
    default files) and the ``context`` in it (None: its current one)."""

    path: Path | None = None
    context: str | None = None

    @property
    def in_cluster(self) -> bool:
        return self.path is None and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))

    def describe(self) -> str:
        """The file a person would look at."""
        return str(self.path or os.environ.get("KUBECONFIG") or "~/.kube/config")


def api_client(where: Kubeconfig) -> ApiClient:
    """An ApiClient for ``where``; KubeconfigError when it cannot be configured."""
    with _translated(where):
        if where.in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return ApiClient(configuration)
        if where.path is not None and not where.path.is_file():
            raise KubeconfigError(f"{where.path}: no such kubeconfig file")
        path = str(where.path) if where.path else None
        api: ApiClient = config.new_client_from_config(config_file=path, context=where.context)  # type: ignore[no-untyped-call]
        return api


def connect(where: Kubeconfig, namespace: str | None = None) -> tuple[ApiClient, str]:
    """The API client and the namespace: ``namespace`` when given, else ``$POD_NAMESPACE``, the
    service account's (in a cluster) or the context's, else ``default``."""
    api = api_client(where)
    namespace = namespace or os.environ.get("POD_NAMESPACE")
    if namespace is None:
        with _translated(where):
            namespace = _default_namespace(where)
    return api, namespace or "default"


def _default_namespace(where: Kubeconfig) -> str | None:
    if where.in_cluster:
        if SERVICE_ACCOUNT_NAMESPACE.is_file():
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        return None
    path = str(where.path) if where.path else None
    contexts, active = config.list_kube_config_contexts(config_file=path)  # type: ignore[no-untyped-call]
    if where.context:
        active = next((c for c in contexts if c["name"] == where.context), active)
    found: Any = (active or {}).get("context", {}).get("namespace")
    return str(found) if found else None


@contextmanager
def _translated(where: Kubeconfig) -> Iterator[None]:
    """Turns the client's configuration failures into KubeconfigError."""
    try:
        yield
    except config.ConfigException as exc:
        raise KubeconfigError(f"cannot reach Kubernetes: {exc}") from None
    except (yaml.YAMLError, TypeError, AttributeError) as exc:
        # The client reads any YAML and fails on the first thing that is not a mapping.
        raise KubeconfigError(f"{where.describe()}: not a kubeconfig: {exc}") from None

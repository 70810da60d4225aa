"""The CRDs against a real kube-apiserver (v1.20.2, see tests/kubeapi.py): they install with
`kubectl apply -f crds/`, the examples apply on top of them, and the server itself rejects invalid
resources with a message naming the field, the way a user sees it in `kubectl apply`."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from reconciler.api.resources import GROUP, VERSION
from tests.kubeapi import KubeApi

pytestmark = pytest.mark.apiserver

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"
K8S_EXAMPLES = REPO / "examples" / "kubernetes"

PLURALS = {
    "PatchBaseline": "patchbaselines",
    "PatchGroup": "patchgroups",
    "MaintenanceWindow": "maintenancewindows",
    "ManagedInstance": "managedinstances",
    "ComplianceReport": "compliancereports",
    "InstanceSource": "instancesources",
    "Rollout": "rollouts",
    "ChangeCalendar": "changecalendars",
}


def test_server_authenticates_and_authorizes(kube_api: KubeApi) -> None:
    """The admin may do anything; any other user is refused until RBAC grants it something."""
    admin = kubernetes.client.CoreV1Api(kube_api.client())
    assert admin.list_namespace().items
    stranger = kubernetes.client.CoreV1Api(kube_api.client("system:serviceaccount:default:nobody"))
    with pytest.raises(kubernetes.client.ApiException) as refused:
        stranger.list_node()
    assert refused.value.status == 403
    assert "system:serviceaccount:default:nobody" in refused.value.body


def test_namespaces_are_fresh(kube_api: KubeApi) -> None:
    first, second = kube_api.namespace(), kube_api.namespace()
    assert first != second
    names = {
        n.metadata.name
        for n in kubernetes.client.CoreV1Api(kube_api.client()).list_namespace().items
    }
    assert {first, second} <= names


def test_kubectl_apply_crds_is_idempotent_and_established(kube_api: KubeApi) -> None:
    applied = kube_api.kubectl("apply", "-f", str(CRD_DIR))
    for path in sorted(CRD_DIR.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        assert f"customresourcedefinition.apiextensions.k8s.io/{name}" in applied.stdout
    waited = kube_api.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "-f", str(CRD_DIR)
    )
    assert waited.stdout.count("condition met") == len(PLURALS)
    resources = kube_api.kubectl("api-resources", f"--api-group={GROUP}", "-o", "name").stdout
    assert sorted(resources.split()) == sorted(f"{p}.{GROUP}" for p in PLURALS.values())


def test_examples_apply_on_top_of_the_crds(kube_api: KubeApi) -> None:
    ns = kube_api.namespace()
    applied = kube_api.kubectl("apply", "-n", ns, "-f", str(CRD_DIR), "-f", str(K8S_EXAMPLES))
    kinds = {
        doc["kind"]
        for path in sorted(K8S_EXAMPLES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    assert {"PatchBaseline", "PatchGroup", "MaintenanceWindow", "ComplianceReport"} <= kinds
    assert applied.stdout.count(" created") >= len(kinds)
    listed = kube_api.kubectl("get", "-n", ns, "patchwarden", "-o", "name").stdout.split()
    assert len(listed) >= len(kinds)
    # Applying again changes nothing: the server kept the documents as written (no pruning).
    again = kube_api.kubectl("apply", "-n", ns, "-f", str(K8S_EXAMPLES))
    assert " configured" not in again.stdout, again.stdout


# --- server-side validation -------------------------------------------------------------------

BASELINE: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "PatchBaseline",
    "metadata": {"name": "ubuntu"},
    "spec": {
        "operatingSystem": "UBUNTU",
        "approvalRules": [
            {
                "patchFilterGroup": {"patchFilters": [{"key": "PRIORITY", "values": ["Required"]}]},
                "approveAfterDays": 7,
                "complianceLevel": "HIGH",
            }
        ],
    },
}
WINDOW: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "MaintenanceWindow",
    "metadata": {"name": "nightly"},
    "spec": {
        "schedule": "cron(0 2 * * ? *)",
        "duration": 3,
        "cutoff": 1,
        "targets": {"patchGroups": ["web"]},
        "tasks": [
            {"name": "install", "operation": "Install", "maxConcurrency": "1", "maxErrors": "0"}
        ],
    },
}


def _create(kube_api: KubeApi, ns: str, body: dict[str, Any]) -> dict[str, Any]:
    api = kubernetes.client.CustomObjectsApi(kube_api.client())
    created: dict[str, Any] = api.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURALS[body["kind"]], body
    )
    return created


def _mutated(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``base`` with the dotted ``path`` (integers index lists) set to ``value``, or removed
    when ``value`` is ``...``."""
    body = copy.deepcopy(base)
    node: Any = body
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return body


def test_valid_resources_are_accepted(kube_api: KubeApi) -> None:
    ns = kube_api.namespace()
    assert _create(kube_api, ns, BASELINE)["spec"]["operatingSystem"] == "UBUNTU"
    assert _create(kube_api, ns, WINDOW)["spec"]["duration"] == 3


@pytest.mark.parametrize(
    ("base", "path", "value", "field", "says"),
    [
        (
            BASELINE,
            "spec.operatingSystem",
            "BEOS",
            "spec.operatingSystem",
            'Unsupported value: "BEOS"',
        ),
        (BASELINE, "spec.operatingSystem", ..., "spec.operatingSystem", "Required value"),
        (
            BASELINE,
            "spec.approvalRules.0.approveAfterDays",
            361,
            "spec.approvalRules[0].approveAfterDays",
            "less than or equal to 360",
        ),
        (
            BASELINE,
            "spec.approvalRules.0.complianceLevel",
            "URGENT",
            "spec.approvalRules[0].complianceLevel",
            'Unsupported value: "URGENT"',
        ),
        (WINDOW, "spec.duration", 25, "spec.duration", "less than or equal to 24"),
        (
            WINDOW,
            "spec.tasks.0.maxConcurrency",
            "150%",
            "spec.tasks[0].maxConcurrency",
            "should match",
        ),
        (
            WINDOW,
            "spec.tasks.0.operation",
            "Reboot",
            "spec.tasks[0].operation",
            'Unsupported value: "Reboot"',
        ),
        (WINDOW, "spec.schedule", ..., "spec.schedule", "Required value"),
    ],
    ids=[
        "enum",
        "required",
        "maximum",
        "nested-enum",
        "window-maximum",
        "pattern",
        "task-enum",
        "window-required",
    ],
)
def test_invalid_resources_are_rejected_naming_the_field(
    kube_api: KubeApi, base: dict[str, Any], path: str, value: Any, field: str, says: str
) -> None:
    ns = kube_api.namespace()
    with pytest.raises(kubernetes.client.ApiException) as rejected:
        _create(kube_api, ns, _mutated(base, path, value))
    assert rejected.value.status == 422
    message = yaml.safe_load(rejected.value.body)["message"]
    # v1.20 names list items without their index (spec.tasks.operation); newer servers add it.
    named = re.escape(field).replace(r"\[0\]", r"(\[0\])?")
    assert re.search(rf"is invalid: {named}: ", message), message
    assert says in message, message


def test_kubectl_shows_the_server_error(kube_api: KubeApi, tmp_path: Path) -> None:
    """What a user sees: kubectl apply fails and names the file's bad field."""
    ns = kube_api.namespace()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_mutated(BASELINE, "spec.operatingSystem", "BEOS")))
    result = kube_api.kubectl("apply", "-n", ns, "-f", str(bad), check=False)
    assert result.returncode != 0
    assert "spec.operatingSystem" in result.stderr
    assert "BEOS" in result.stderr

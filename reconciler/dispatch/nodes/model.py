"""Stage: dispatch (pure part of node patching). What the node Jobs, their result ConfigMaps and
the state annotations on a Node look like, and how pods are sorted for a drain. No I/O and no
Kubernetes client here, so every rule is unit-tested on plain dicts (the API's JSON).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from reconciler.dispatch.base import AgentFailed, root_args
from reconciler.paths import climbs, control_character

ANNOTATION_PHASE = "patchwarden.io/phase"
"""cordoned | draining | patching | rebooting: the step a node is in (recorded before it starts)."""
ANNOTATION_JOB = "patchwarden.io/job"
"""The install Job of the patching step."""
ANNOTATION_CORDONED = "patchwarden.io/cordoned-by-patchwarden"
""""true" only when Patchwarden cordoned the node (an administrator's cordon is never undone)."""
ANNOTATION_BOOT_ID = "patchwarden.io/boot-id"
"""status.nodeInfo.bootID before patching: a different one means the node has rebooted."""
ANNOTATION_SINCE = "patchwarden.io/phase-since"
"""When the current phase began (RFC 3339, UTC)."""
ANNOTATION_AGENT_BOOT_ID = "patchwarden.io/agent-boot-id"
"""On a node whose status.nodeInfo.bootID is empty: the boot id the agent read on the host
(/proc/sys/kernel/random/boot_id) before patching."""
ANNOTATION_SEEN_DOWN = "patchwarden.io/seen-not-ready"
""""true" once such a node was seen NotReady after its reboot started."""
STATE_ANNOTATIONS = (
    ANNOTATION_PHASE,
    ANNOTATION_JOB,
    ANNOTATION_CORDONED,
    ANNOTATION_BOOT_ID,
    ANNOTATION_SINCE,
    ANNOTATION_AGENT_BOOT_ID,
    ANNOTATION_SEEN_DOWN,
)
BOOT_ID_OPERATION = "BootId"
"""The node Job that runs the agent's ``boot-id`` (nodes without a bootID)."""
PHASES = ("cordoned", "draining", "patching", "rebooting")

LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT = "node-agent"
"""Value of LABEL_COMPONENT on node Jobs, their pods and result ConfigMaps."""
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_OPERATION = "patchwarden.io/operation"
ANNOTATION_NODE = "patchwarden.io/node"
"""On Jobs and ConfigMaps: the full node name (a label value is limited to 63 characters)."""

RESULT_KEY = "result.json.gz"
"""binaryData key of the agent's stdout, gzipped: an inventory of a large host can exceed the
1 MiB a ConfigMap may hold, and compresses about tenfold."""
EXIT_CODE_KEY = "exitCode"
STDERR_KEY = "stderr"
STDERR_LIMIT = 4096

_JOB_NAME_LIMIT = 63  # the Job controller copies the name into a label value (63 at most)


@dataclass(frozen=True)
class NodeSettings:
    """How node Jobs run and how long each step may take. The Helm chart's ``nodeJob`` values map
    one to one onto these fields (camelCase there, see ``from_values``)."""

    namespace: str = "patchwarden"
    """Where node Jobs and their result ConfigMaps are created."""
    image: str = "patchwarden:latest"
    """The Patchwarden image: ``patchctl`` on PATH, the agent at ``agent_path``, ``nsenter``."""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    service_account: str = "patchwarden-node-agent"
    """The Job pods' ServiceAccount: may create and update ConfigMaps in ``namespace``."""
    resources: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    tolerations: tuple[Mapping[str, Any], ...] = ({"operator": "Exists"},)
    """Every taint by default, like a DaemonSet: the install Job runs on the node we cordoned."""
    priority_class_name: str | None = None
    scan_privileged: bool = False
    """Scans need only what entering the host's namespaces needs (SYS_ADMIN, SYS_PTRACE,
    SYS_CHROOT); set true where a security module still refuses that."""
    host_dir: str = "/var/lib/patchwarden"
    """A host directory (hostPath, mounted at the same path) where the agent is put for the
    host's python3."""
    agent_path: str = "/opt/patchwarden/agent.pyz"
    """The agent zipapp inside the image."""
    agent_root: str = ""
    """The system the agent patches, as a directory on the node's host (its ``--root``); empty
    is the host itself (``/``). For image-based hosts whose packages live in a chroot, and for
    tests: the agent still runs on the host (``nsenter``) with the host's package manager
    against that tree, and never reboots the host for it."""
    host_pid: int = 1
    """The host process whose namespaces the agent enters (``nsenter -t``): the host's init.
    Only where PID 1 cannot be entered (a microVM's init holding capabilities no container
    gets) name another process of the host, such as the kubelet's."""
    job_timeout: float = 3600.0
    """Seconds a node Job may run (its activeDeadlineSeconds)."""
    drain_timeout: float = 600.0
    """Seconds to evict every pod (PodDisruptionBudgets may refuse for a while) and see them go."""
    reboot_timeout: float = 900.0
    """Seconds for a rebooted node to come back Ready with a new boot ID."""
    eviction_grace_seconds: int | None = None
    """Grace period given to evicted pods; None keeps each pod's own."""
    evict_unmanaged_pods: bool = False
    """Pods no controller owns are lost for good when evicted: by default they stop the drain
    (as with ``kubectl drain`` without ``--force``)."""
    keep_pods: tuple[str, ...] = ()
    """``namespace/name`` of pods never evicted: the controller's own pod, so that draining its
    node does not stop the controller doing the draining."""
    job_ttl_seconds: int = 86400
    """ttlSecondsAfterFinished: a safety net for Jobs a crashed controller left behind."""
    poll_seconds: float = 2.0
    """First backoff between eviction retries (doubles up to 30 s); waits for pods to go."""

    def __post_init__(self) -> None:
        """ValueError naming the value, for a root, directory or process the agent could not
        be given."""
        if self.agent_root:
            _host_path("agentRoot", self.agent_root, " (or empty for the host's /)")
        # The hostPath the agent is copied into and run from: a relative or climbing path would
        # name another host directory than the one the operator wrote.
        _host_path("hostDir", self.host_dir, "")
        if (
            isinstance(self.host_pid, bool)
            or not isinstance(self.host_pid, int)
            or self.host_pid < 1
        ):
            raise ValueError(
                f"nodeJobs.hostPid {self.host_pid!r}: must be a process id (a whole number, 1 or "
                "more; 1 is the host's init)"
            )

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> NodeSettings:
        """Settings from the Helm chart's ``nodeJob`` values (camelCase; an empty string or null
        keeps the default); ValueError names an unknown key."""
        known = {_camel(f.name): f.name for f in fields(cls)}
        renamed = {
            "serviceAccountName": "service_account",
            "jobTimeoutSeconds": "job_timeout",
            "drainTimeoutSeconds": "drain_timeout",
            "rebootTimeoutSeconds": "reboot_timeout",
            "evictionGracePeriodSeconds": "eviction_grace_seconds",
            "ttlSecondsAfterFinished": "job_ttl_seconds",
            "pollSeconds": "poll_seconds",
        }
        for name in renamed.values():
            known.pop(_camel(name), None)
        known.update(renamed)  # after: pollSeconds is both a field's camelCase and a new name
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"nodeJob: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if value is None or value == "":
                continue
            name = known[key]
            if name in ("image_pull_secrets", "tolerations", "keep_pods"):
                value = tuple(value)
            kwargs[name] = value
        return cls(**kwargs)


def _host_path(key: str, path: object, otherwise: str) -> None:
    """ValueError naming ``nodeJobs.KEY`` unless ``path`` is absolute on the node, without
    ``..`` or control characters (a number from the YAML too, not an AttributeError)."""
    absolute = isinstance(path, str) and path.startswith("/")
    if not absolute or climbs(str(path)) or control_character(str(path)):
        raise ValueError(
            f"nodeJobs.{key} {path!r}: must be an absolute path on the node without "
            f"'..' or control characters{otherwise}"
        )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# --- Jobs ---------------------------------------------------------------------------------------


def job_name(operation: str, node: str, args: Sequence[str]) -> str:
    """The Job's name: the same operation with the same arguments on the same node always gets
    the same name, so a second create is refused (409) and attached to instead of run twice."""
    digest = hashlib.sha256(json.dumps([operation, node, list(args)]).encode()).hexdigest()[:10]
    prefix = f"pw-{operation.lower()}-"
    room = _JOB_NAME_LIMIT - len(prefix) - len(digest) - 1
    short = re.sub(r"[^a-z0-9-]+", "-", node.lower())[:room].strip("-")
    return f"{prefix}{short}-{digest}" if short else f"{prefix}{digest}"


def job_labels(operation: str) -> dict[str, str]:
    return {
        LABEL_COMPONENT: COMPONENT,
        LABEL_MANAGED_BY: "patchwarden",
        LABEL_OPERATION: operation.lower(),
    }


def agent_command(
    name: str, node: str, settings: NodeSettings, agent_args: Sequence[str]
) -> list[str]:
    """The Job container's command: the node-agent wrapper runs the agent on the host and stores
    its document in the ConfigMap ``name``."""
    return [
        "patchctl",
        "node-agent",
        "--result-configmap",
        name,
        "--namespace",
        settings.namespace,
        "--node",
        node,
        "--agent",
        settings.agent_path,
        "--host-dir",
        settings.host_dir,
        *(["--host-pid", str(settings.host_pid)] if settings.host_pid != 1 else []),
        "--",
        *agent_args,
        # Every agent command takes --root; the host's / is its default, so left out then.
        *(root_args(settings.agent_root) if settings.agent_root else []),
    ]


def security_context(operation: str, settings: NodeSettings) -> dict[str, Any]:
    """Installs run privileged: package scripts (kernel, initramfs, bootloader) need the host's
    devices and every capability, which the device cgroup and the capability bounding set deny
    to any unprivileged container. Scans only enter the host's namespaces (``nsenter``), which
    takes SYS_ADMIN and SYS_CHROOT (setns into a mount namespace) and SYS_PTRACE (opening
    /proc/1/ns of a process that is not ours)."""
    if operation.lower() == "install" or settings.scan_privileged:
        return {"privileged": True, "runAsUser": 0}
    return {
        "privileged": False,
        "runAsUser": 0,
        "capabilities": {"add": ["SYS_ADMIN", "SYS_CHROOT", "SYS_PTRACE"]},
    }


def job_manifest(
    name: str, operation: str, node: str, agent_args: Sequence[str], settings: NodeSettings
) -> dict[str, Any]:
    """The batch/v1 Job that runs the agent once on ``node``: never retried (an install must
    not run twice), pinned by node name, tolerating the cordon, in the host's PID namespace."""
    labels = job_labels(operation)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_NODE: node},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, int(settings.job_timeout)),
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": _agent_pod_spec(name, operation, node, agent_args, settings),
            },
        },
    }


def _agent_pod_spec(
    name: str, operation: str, node: str, agent_args: Sequence[str], settings: NodeSettings
) -> dict[str, Any]:
    """The Job's pod: the agent container on ``node``, with the host directory mounted."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": settings.service_account,
        "hostPID": True,
        "affinity": _pinned_to(node),
        "tolerations": [dict(t) for t in settings.tolerations],
        "containers": [
            {
                "name": "agent",
                "image": settings.image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": agent_command(name, node, settings, agent_args),
                "resources": {k: dict(v) for k, v in settings.resources.items()},
                "securityContext": security_context(operation, settings),
                "volumeMounts": [{"name": "host-dir", "mountPath": settings.host_dir}],
            }
        ],
        "volumes": [
            {
                "name": "host-dir",
                "hostPath": {"path": settings.host_dir, "type": "DirectoryOrCreate"},
            }
        ],
    }
    if settings.priority_class_name:
        pod_spec["priorityClassName"] = settings.priority_class_name
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    return pod_spec


def _pinned_to(node: str) -> dict[str, Any]:
    """Node affinity for ``node`` alone: matchFields on metadata.name, as DaemonSets do, since
    the hostname label may differ from the node's name on some providers."""
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }


def job_finished(job: Mapping[str, Any] | None) -> str | None:
    """ "Complete" or "Failed" once the Job has finished, else None."""
    if job is None:
        return None
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def job_failure(job: Mapping[str, Any]) -> str:
    """Why a Job failed, from its Failed condition."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Failed":
            reason = condition.get("reason") or "Failed"
            message = condition.get("message") or ""
            return f"{reason}: {message}".rstrip(": ")
    return "Failed"


# --- the result ConfigMap -----------------------------------------------------------------------


def result_configmap(
    name: str, namespace: str, node: str, stdout: str, exit_code: int, stderr: str
) -> dict[str, Any]:
    """The ConfigMap the node-agent leaves behind: the agent's stdout (its JSON document),
    its exit code and the end of its stderr."""
    packed = gzip.compress(stdout.encode(), mtime=0)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_COMPONENT: COMPONENT, LABEL_MANAGED_BY: "patchwarden"},
            "annotations": {ANNOTATION_NODE: node},
        },
        "data": {EXIT_CODE_KEY: str(exit_code), STDERR_KEY: stderr[-STDERR_LIMIT:]},
        "binaryData": {RESULT_KEY: base64.b64encode(packed).decode()},
    }


def document_of(configmap: Mapping[str, Any], node: str) -> dict[str, Any]:
    """The agent's document from its result ConfigMap; AgentFailed when it reports an error or
    printed none (as the local and ssh transports do)."""
    data = configmap.get("data") or {}
    try:
        stdout = gzip.decompress(base64.b64decode((configmap.get("binaryData") or {})[RESULT_KEY]))
        document = json.loads(stdout)
    except (KeyError, ValueError, OSError, EOFError):
        document = None
    if not isinstance(document, dict):
        tail = str(data.get(STDERR_KEY) or "").strip().splitlines()[-1:] or [
            f"exit {data.get(EXIT_CODE_KEY, '?')}"
        ]
        raise AgentFailed("AgentCrashed", f"node {node}: the agent printed no result: {tail[0]}")
    error = document.get("error")
    if error:
        raise AgentFailed(
            error.get("code", "AgentError"), error.get("message", ""), error.get("details")
        )
    return document


# --- Nodes --------------------------------------------------------------------------------------


Fence = Callable[[str], None]
"""Called with the next step on a node before it starts; raises NotLeading when this process
may not start it (it lost the leader Lease)."""


def unfenced(step: str) -> None:
    """The fence of a caller without a leader Lease: every step may start."""


class NotLeading(AgentFailed):
    """This process lost the leader Lease: it starts no further step on the node and undoes
    nothing; the new leader resumes or rolls back the node from its annotations."""

    def __init__(self, node: str, step: str) -> None:
        super().__init__(
            "LeaseLost",
            f"node {node}: this controller lost the leader Lease before {step}; the node is left "
            "as its annotations say, for the new leader to resume or roll back",
        )


@dataclass(frozen=True)
class NodeState:
    """What the annotations on a Node say about the patching in progress there."""

    phase: str | None
    job: str | None
    cordoned_by_us: bool
    boot_id: str | None
    since: str | None
    agent_boot_id: str | None = None
    seen_down: bool = False


def node_state(node: Mapping[str, Any]) -> NodeState:
    notes = (node.get("metadata") or {}).get("annotations") or {}
    return NodeState(
        phase=notes.get(ANNOTATION_PHASE),
        job=notes.get(ANNOTATION_JOB),
        cordoned_by_us=notes.get(ANNOTATION_CORDONED) == "true",
        boot_id=notes.get(ANNOTATION_BOOT_ID),
        since=notes.get(ANNOTATION_SINCE),
        agent_boot_id=notes.get(ANNOTATION_AGENT_BOOT_ID),
        seen_down=notes.get(ANNOTATION_SEEN_DOWN) == "true",
    )


def unschedulable(node: Mapping[str, Any]) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


def boot_id(node: Mapping[str, Any]) -> str:
    return str(((node.get("status") or {}).get("nodeInfo") or {}).get("bootID") or "")


def node_ready(node: Mapping[str, Any]) -> bool:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def rebooted(node: Mapping[str, Any] | None, before: str | None) -> bool:
    """The node is back: Ready, with a boot ID other than the one recorded before the reboot."""
    return node is not None and node_ready(node) and boot_id(node) not in ("", before)


def back_without_boot_id(node: Mapping[str, Any] | None, state: NodeState, agent_now: str) -> bool:
    """Whether a node whose kubelet reports no bootID is back from the reboot recorded in
    ``state``: seen NotReady since the reboot started, Ready now, and the agent's boot id now
    (``agent_now``) is not the one it read before patching. The transition alone could be a
    network blip; the boot id alone cannot be read while the node is down."""
    return (
        node is not None
        and state.seen_down
        and node_ready(node)
        and agent_now not in ("", state.agent_boot_id or "")
    )


def clear_state_patch() -> dict[str, Any]:
    """The merge patch that removes every state annotation (null deletes a key)."""
    return {"metadata": {"annotations": dict.fromkeys(STATE_ANNOTATIONS)}}


# --- drain --------------------------------------------------------------------------------------

EVICT, SKIP, WAIT, REFUSE = "evict", "skip", "wait", "refuse"


def drain_disposition(
    pod: Mapping[str, Any], keep: frozenset[str], evict_unmanaged: bool
) -> tuple[str, str]:
    """(EVICT | SKIP | WAIT | REFUSE, why) for one pod on a node being drained. Skipped:
    DaemonSet pods (the DaemonSet would put them straight back, and they tolerate the cordon),
    mirror pods (the kubelet's static pods: the API cannot remove them), finished pods (they
    hold nothing), our own node Jobs and ``keep``. Waited for: pods already terminating (they
    still run). Refused: pods no controller owns, unless allowed, because nothing would recreate
    them."""
    meta = pod.get("metadata") or {}
    ident = f"{meta.get('namespace')}/{meta.get('name')}"
    if ident in keep:
        return SKIP, "kept (the controller's own pod)"
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return SKIP, "mirror pod"
    owners = meta.get("ownerReferences") or []
    controller = next((o for o in owners if o.get("controller")), None)
    if controller is not None and controller.get("kind") == "DaemonSet":
        return SKIP, "DaemonSet pod"
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return SKIP, "finished"
    labels = meta.get("labels") or {}
    # Both labels: "node-agent" alone is a common component name (other products' pods too).
    if labels.get(LABEL_COMPONENT) == COMPONENT and labels.get(LABEL_MANAGED_BY) == "patchwarden":
        return SKIP, "Patchwarden node Job"
    if meta.get("deletionTimestamp"):
        return WAIT, "already terminating"
    if controller is None and not evict_unmanaged:
        return REFUSE, "not managed by a controller (nothing would recreate it)"
    return EVICT, ""


def pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def eviction_body(pod: Mapping[str, Any], version: str, grace: int | None) -> dict[str, Any]:
    """An Eviction in ``version`` (policy/v1 or policy/v1beta1); the pod's UID is a
    precondition, so a pod recreated under the same name is never evicted by mistake."""
    meta = pod.get("metadata") or {}
    options: dict[str, Any] = {"preconditions": {"uid": meta.get("uid")}}
    if grace is not None:
        options["gracePeriodSeconds"] = grace
    return {
        "apiVersion": version,
        "kind": "Eviction",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "deleteOptions": options,
    }

"""The Helm chart charts/patchwarden, through the Helm v4 SDK (PyPI ``helm-python-sdk``): it lints
clean, renders with defaults and with values, its values.schema.json refuses bad values, its
Deployment is hardened, what it passes the controller is what the controller parses; and, on the
real kube-apiserver (tests/kubeapi.py), it installs and its ServiceAccount can do exactly what the
controller needs: every call it makes succeeds, and the rest is refused with 403."""

from __future__ import annotations

import filecmp
import secrets
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import pytest
import yaml
from kubernetes.client import ApiException

from reconciler.api.resources import GROUP, VERSION
from reconciler.cli import _parser, _postgres_url, _smtp, _state_path, _webhook_url
from reconciler.dispatch.nodes import NodeSettings
from reconciler.dispatch.nodes.model import job_manifest
from tests.kubeapi import KubeApi

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "patchwarden"
RELEASE, NAMESPACE = "pw", "patchwarden"
FULLNAME = "pw-patchwarden"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm.Chart, values: Doc | None = None, namespace: str = NAMESPACE) -> list[Doc]:
    out = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    return [
        doc
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def controller(docs: list[Doc]) -> Doc:
    container: Doc = one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["containers"][0]
    return container


# --- offline: files, lint, render, schema ------------------------------------------------------


def test_chart_crds_are_the_generated_crds() -> None:
    """`make crds` writes both copies; a hand edit or a forgotten regeneration fails here."""
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    copied = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copied == generated
    _, mismatch, errors = filecmp.cmpfiles(REPO / "crds", CHART / "crds", generated, shallow=False)
    assert mismatch == [] and errors == [], (
        f"charts/patchwarden/crds differ: {mismatch} (run make crds)"
    )


def test_chart_ships_the_crds(chart: helm.Chart) -> None:
    kinds = {yaml.safe_load(c["data"])["spec"]["names"]["kind"] for c in chart.crds}
    assert kinds == {
        "PatchBaseline",
        "PatchGroup",
        "MaintenanceWindow",
        "ManagedInstance",
        "ComplianceReport",
        "InstanceSource",
        "Rollout",
        "ChangeCalendar",
    }


PG_SECRET = {"existingSecret": "pw-state"}
POSTGRESQL: Doc = {
    "persistence": {"enabled": False},
    "state": {"postgresql": {**PG_SECRET, "ca": {"secret": "pw-db-ca"}}},
}
LINTED: dict[str, Doc] = {
    "defaults": {},
    "postgresql": POSTGRESQL,
    "postgresql-replicas-ca-configmap": {
        "replicaCount": 3,
        "persistence": {"enabled": False},
        "state": {"postgresql": {**PG_SECRET, "ca": {"configMap": "db-ca", "key": "root.pem"}}},
    },
    "postgresql-workers": {**POSTGRESQL, "workers": {"replicas": 4, "concurrency": 25}},
    "postgresql-require": {
        "persistence": {"enabled": False},
        "state": {"postgresql": {**PG_SECRET, "urlKey": "dsn", "sslmode": "require"}},
    },
}


LINTED["notifications"] = {
    "notifications": {
        "existingSecret": "pw-notify",
        "slack": {"urlKeys": ["slack"]},
        "email": {"to": ["ops@example.com"], "from": "pw@example.com", "smtp": {"host": "mail"}},
    }
}


@pytest.mark.parametrize("values", LINTED.values(), ids=LINTED.keys())
def test_lints_clean(values: Doc) -> None:
    report = helm.lint(str(CHART), values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_renders_with_defaults(chart: helm.Chart) -> None:
    docs = render(chart)
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("ConfigMap", FULLNAME),
            ("Deployment", FULLNAME),
            ("Service", f"{FULLNAME}-metrics"),
            ("ServiceAccount", FULLNAME),
            ("ServiceAccount", f"{FULLNAME}-node-agent"),
            ("ClusterRole", FULLNAME),
            ("ClusterRoleBinding", FULLNAME),
            ("Role", FULLNAME),
            ("RoleBinding", FULLNAME),
            ("Role", f"{FULLNAME}-node-jobs"),
            ("RoleBinding", f"{FULLNAME}-node-jobs"),
            ("Role", f"{FULLNAME}-node-agent"),
            ("RoleBinding", f"{FULLNAME}-node-agent"),
            ("PersistentVolumeClaim", f"{FULLNAME}-state"),
        ]
    ), "no ServiceMonitor by default"
    container = controller(docs)
    assert container["image"] == "ghcr.io/patchwarden/patchwarden:0.1.0"
    assert not any(a.startswith("--source") for a in container["args"]), "default source: the CRs"
    service = one(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_renders_with_values(chart: helm.Chart) -> None:
    docs = render(
        chart,
        {
            "image": {"repository": "registry.example/pw", "tag": "1.2.3"},
            "logLevel": "debug",
            "intervals": {"resyncSeconds": 30},
            "git": {
                "url": "ssh://git@git.example/fleet.git",
                "ref": "prod",
                "existingSecret": "fleet-git",
            },
            "nodes": {"selector": "kubernetes.io/os=linux"},
            "nodeJobs": {
                "namespace": "patch-jobs",
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db"}],
                "drainTimeoutSeconds": 120,
            },
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "extraArgs": ["--workers=3"],
        },
    )
    args = controller(docs)["args"]
    for expected in (
        "--source=ssh://git@git.example/fleet.git",
        "--ref=prod",
        "--identity-file=/etc/patchwarden/git/ssh-privatekey",
        "--known-hosts=/etc/patchwarden/git/known_hosts",
        "--interval=30",
        "--log-level=debug",
        "--node-selector=kubernetes.io/os=linux",
        "--workers=3",
    ):
        assert expected in args
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    git = next(v for v in pod["volumes"] if v["name"] == "git")
    assert git["secret"]["secretName"] == "fleet-git"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # Jobs, their ConfigMaps and the agent's identity move to the Jobs' namespace; the Lease stays.
    assert one(docs, "Role", f"{FULLNAME}-node-jobs")["metadata"]["namespace"] == "patch-jobs"
    assert one(docs, "Role", f"{FULLNAME}-node-agent")["metadata"]["namespace"] == "patch-jobs"
    assert one(docs, "Role", FULLNAME)["metadata"]["namespace"] == NAMESPACE
    settings = _node_settings(docs)
    assert settings.namespace == "patch-jobs"
    assert settings.image == "registry.example/pw:1.2.3", (
        "the agent image defaults to the controller's"
    )
    assert settings.drain_timeout == 120
    assert settings.tolerations == ({"key": "dedicated", "operator": "Equal", "value": "db"},)


def test_git_credentials_come_from_a_secret_through_the_environment(chart: helm.Chart) -> None:
    """A token never appears in the pod's args (readable by anyone who may get the Deployment)."""
    container = controller(
        render(
            chart,
            {"git": {"url": "https://git.example/fleet.git", "credentialsSecret": "fleet-token"}},
        )
    )
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs == {
        "PATCHWARDEN_GIT_USERNAME": {"name": "fleet-token", "key": "username"},
        "PATCHWARDEN_GIT_PASSWORD": {"name": "fleet-token", "key": "password"},
    }
    assert "--source=https://git.example/fleet.git" in container["args"]
    assert not any("fleet-token" in a for a in container["args"])
    plain = controller(render(chart, {"git": {"url": "https://git.example/fleet.git"}}))
    assert not any(e["name"].startswith("PATCHWARDEN_GIT") for e in plain["env"])


def _node_settings(docs: list[Doc]) -> NodeSettings:
    config = one(docs, "ConfigMap", FULLNAME)["data"]["node-job.yaml"]
    return NodeSettings.from_values(yaml.safe_load(config))


def test_node_job_config_is_what_the_controller_reads(chart: helm.Chart) -> None:
    """The ConfigMap is parsed by the controller's own NodeSettings (unknown keys are errors)."""
    settings = _node_settings(render(chart))
    assert settings.namespace == NAMESPACE
    assert settings.service_account == f"{FULLNAME}-node-agent"
    assert settings.agent_path == "/opt/patchwarden/agent.pyz"
    assert settings.tolerations == ({"operator": "Exists"},)
    assert settings.drain_timeout == 600
    assert (settings.agent_root, settings.host_pid) == ("", 1)  # the host's own / and init


def test_an_agent_root_reaches_every_node_jobs_agent_as_its_root(chart: helm.Chart) -> None:
    """nodeJobs.agentRoot: the Job's agent patches that tree on the host (nsenter kept)."""
    values = {"nodeJobs": {"agentRoot": "/srv/image root", "hostPid": 4242}}
    settings = _node_settings(render(chart, values))
    assert (settings.agent_root, settings.host_pid) == ("/srv/image root", 4242)
    command = job_manifest("pw-scan-n1-x", "Scan", "n1", ["scan"], settings)["spec"]["template"][
        "spec"
    ]["containers"][0]["command"]
    parsed = _parser().parse_args(command[1:])
    assert parsed.host_pid == 4242 and not parsed.no_nsenter
    assert parsed.agent_args == ["--", "scan", "--root=/srv/image root"]


def test_a_host_dir_is_where_every_node_job_mounts_and_puts_the_agent(chart: helm.Chart) -> None:
    """nodeJobs.hostDir: the Job's hostPath, mounted at the same path, is the node-agent's
    --host-dir (where it copies the agent for the host's python3)."""
    assert _node_settings(render(chart)).host_dir == "/var/lib/patchwarden"
    settings = _node_settings(render(chart, {"nodeJobs": {"hostDir": "/opt/pw state"}}))
    assert settings.host_dir == "/opt/pw state"
    pod = job_manifest("pw-scan-n1-x", "Scan", "n1", ["scan"], settings)["spec"]["template"]["spec"]
    assert pod["volumes"][0]["hostPath"]["path"] == "/opt/pw state"
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/opt/pw state"
    parsed = _parser().parse_args(pod["containers"][0]["command"][1:])
    assert str(parsed.host_dir) == "/opt/pw state"


def test_controller_args_are_what_patchctl_parses(chart: helm.Chart) -> None:
    container = controller(
        render(chart, {"git": {"url": "https://git.example/fleet.git"}, "nodes": {"mirror": False}})
    )
    env = {"POD_NAMESPACE": NAMESPACE}
    args = [a.replace("$(POD_NAMESPACE)", env["POD_NAMESPACE"]) for a in container["args"]]
    parsed = _parser().parse_args(args)
    assert parsed.command == "controller"
    assert parsed.namespace == NAMESPACE
    assert parsed.listen == ("0.0.0.0", 8080)
    assert parsed.lease_name == FULLNAME
    assert parsed.source == "https://git.example/fleet.git"
    assert parsed.nodes is False
    assert str(parsed.node_job_config) == "/etc/patchwarden/config/node-job.yaml", shlex.join(args)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(parsed.node_job_config.parent) in mounts
    state = _state_path(parsed)
    assert str(state.parent) in mounts, "the state database lives on a writable volume"
    # Files named by resources: the ssh Secret's mount, reports on the state volume.
    assert str(parsed.ssh_dir) == "/etc/patchwarden/ssh"
    assert parsed.report_dir.parent == state.parent


def test_aws_endpoints_are_the_controllers_endpoint_options(chart: helm.Chart) -> None:
    """aws.ec2EndpointUrl and aws.s3EndpointUrl: the controller's --ec2-endpoint-url and
    --s3-endpoint-url, as patchctl parses them; unset, neither option is given."""
    endpoints = {"ec2EndpointUrl": "http://ec2.lab:5000", "s3EndpointUrl": "https://minio.lab"}
    parsed = _parser().parse_args(controller(render(chart, {"aws": endpoints}))["args"])
    assert (parsed.ec2_endpoint_url, parsed.s3_endpoint_url) == (
        "http://ec2.lab:5000",
        "https://minio.lab",
    )
    default = _parser().parse_args(controller(render(chart))["args"])
    assert (default.ec2_endpoint_url, default.s3_endpoint_url) == (None, None)


def test_the_ssh_secret_is_mounted_as_the_ssh_dir(chart: helm.Chart) -> None:
    docs = render(chart, {"ssh": {"existingSecret": "fleet-ssh"}})
    container = controller(docs)
    parsed = _parser().parse_args(container["args"])
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "ssh"]
    assert (mount["mountPath"], mount["readOnly"]) == (str(parsed.ssh_dir), True)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "ssh"]
    assert volume["secret"]["secretName"] == "fleet-ssh"


NOTIFY: Doc = {
    "notifications": {
        "existingSecret": "pw-notify",
        "slack": {"urlKeys": ["slack-ops", "slack-dev"], "kinds": ["job.finished", "gate.blocked"]},
        "teams": {"urlKeys": ["teams"]},
        "email": {
            "to": ["ops@example.com", "oncall@example.com"],
            "from": "pw@example.com",
            "kinds": ["window.execution"],
            "smtp": {
                "host": "mail.example.com",
                "port": 587,
                "starttls": True,
                "loginKey": "smtp-login",
            },
        },
    }
}
NOTIFY_DIR = "/etc/patchwarden/notify"


def test_notices_read_their_secrets_from_the_mounted_secret(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """Slack, Teams and mail are configured by values; patchctl is given `file:` paths into the
    Secret mounted read-only (only the keys it reads), and reads them as the controller would."""
    docs = render(chart, NOTIFY)
    container = controller(docs)
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "notify"]
    assert (mount["mountPath"], mount["readOnly"]) == (NOTIFY_DIR, True)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "notify"]
    keys = ["slack-ops", "slack-dev", "teams", "smtp-login"]
    assert volume["secret"] == {
        "secretName": "pw-notify",
        "defaultMode": 0o440,
        "items": [{"key": key, "path": key} for key in keys],
    }
    # What the Secret would hold, where the pod would see it.
    secrets_held = {
        "slack-ops": "https://hooks.slack.com/services/T0/B0/ops-secret",
        "slack-dev": "https://hooks.slack.com/services/T0/B1/dev-secret",
        "teams": "https://example.webhook.office.com/workflows/teams-secret",
        "smtp-login": "patchwarden:smtp-secret",
    }
    for key, value in secrets_held.items():
        (tmp_path / key).write_text(value + "\n")
    args = [
        a.replace("$(POD_NAMESPACE)", NAMESPACE).replace(NOTIFY_DIR, str(tmp_path))
        for a in container["args"]
    ]
    parsed = _parser().parse_args(args)
    assert [_webhook_url("--events-slack", ref) for ref in parsed.events_slack] == [
        secrets_held["slack-ops"],
        secrets_held["slack-dev"],
    ]
    assert [_webhook_url("--events-teams", ref) for ref in parsed.events_teams] == [
        secrets_held["teams"]
    ]
    assert parsed.events_slack_kinds == {"job.finished", "gate.blocked"}
    assert parsed.events_teams_kinds is None, "Teams gets the default kinds"
    assert parsed.events_email == ["ops@example.com", "oncall@example.com"]
    assert parsed.events_email_kinds == {"window.execution"}
    smtp = _smtp(parsed)
    assert (smtp.host, smtp.port, smtp.sender, smtp.starttls, smtp.login) == (
        "mail.example.com",
        587,
        "pw@example.com",
        True,
        ("patchwarden", "smtp-secret"),
    )


def test_no_notification_secret_lands_in_the_rendered_manifests(chart: helm.Chart) -> None:
    """The chart never sees the secrets; the Secret is named only by the pod's volume, and no
    notification setting reaches the environment."""
    out = chart.render(NOTIFY, name=RELEASE, namespace=NAMESPACE, is_install=True)
    text = "\n".join(out.values())
    assert "hooks.slack.com" not in text and "smtp-secret" not in text
    assert text.count("pw-notify") == 1, "named only as the volume's secretName"
    container = controller(render(chart, NOTIFY))
    assert not any("notify" in str(e).lower() for e in container["env"])
    assert all(a.startswith(f"--events-{k}=file:{NOTIFY_DIR}/") for k, a in _secret_args(container))
    plain = controller(render(chart))
    assert not any(a.startswith("--events") for a in plain["args"])
    assert not any(m["name"] == "notify" for m in plain["volumeMounts"])


def _secret_args(container: Doc) -> list[tuple[str, str]]:
    return [
        (kind, arg)
        for arg in container["args"]
        for kind in ("slack", "teams", "smtp-login")
        if arg.startswith(f"--events-{kind}=")
    ]


NOTIFY_REFUSED: dict[str, tuple[Doc, str]] = {
    "keys-without-secret": (
        {"notifications": {"slack": {"urlKeys": ["url"]}}},
        "notifications names the keys url but notifications.existingSecret is empty",
    ),
    "secret-unused": (
        {"notifications": {"existingSecret": "pw-notify"}},
        "notifications.existingSecret is set but no key of it is used",
    ),
    "kinds-without-teams": (
        {"notifications": {"teams": {"kinds": ["gate.blocked"]}}},
        "notifications.teams.kinds is set but notifications.teams.urlKeys is empty",
    ),
    "smtp-without-to": (
        {"notifications": {"email": {"smtp": {"host": "mail.example.com"}}}},
        "notifications.email.to is empty",
    ),
    "to-without-server": (
        {"notifications": {"email": {"to": ["ops@example.com"], "from": "pw@example.com"}}},
        "notifications.email.smtp.host or notifications.email.from is empty",
    ),
    "login-in-the-clear": (
        {
            "notifications": {
                "existingSecret": "pw-notify",
                "email": {
                    "to": ["ops@example.com"],
                    "from": "pw@example.com",
                    "smtp": {"host": "mail.example.com", "loginKey": "login"},
                },
            }
        },
        "a password is never sent in the clear to mail.example.com",
    ),
}


def test_deployment_is_hardened(chart: helm.Chart) -> None:
    docs = render(chart)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = controller(docs)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    # Writable places: /tmp (an emptyDir) and the state directory (its own claim).
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"]: m["name"] for m in container["volumeMounts"] if not m.get("readOnly")
    }
    assert set(writable) == {"/tmp", "/var/lib/patchwarden"}
    assert "emptyDir" in volumes[writable["/tmp"]]
    assert volumes[writable["/var/lib/patchwarden"]]["persistentVolumeClaim"] == {
        "claimName": f"{FULLNAME}-state"
    }
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert not pod.get("hostPID") and not pod.get("hostNetwork")


def test_rbac_has_no_wildcards_and_no_secrets(chart: helm.Chart) -> None:
    for doc in render(chart, {"serviceMonitor": {"enabled": True}}):
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), (doc["metadata"]["name"], rule)
            assert "secrets" not in rule["resources"], (doc["metadata"]["name"], rule)
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


# --- persistence of the state database -------------------------------------------------------


def _state_volume(docs: list[Doc]) -> Doc:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in controller(docs)["volumeMounts"] if m["name"] == "state")
    assert mount["mountPath"] == "/var/lib/patchwarden", "where --state points"
    volume: Doc = next(v for v in pod["volumes"] if v["name"] == "state")
    return volume


def test_state_is_persisted_by_default(chart: helm.Chart) -> None:
    """A restarted pod finds its history and job claims: the state directory is a claim, and the
    old pod lets go of it before the new one starts."""
    docs = render(chart)
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{FULLNAME}-state"
    assert claim["metadata"]["namespace"] == NAMESPACE
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"] == {"requests": {"storage": "1Gi"}}
    assert "storageClassName" not in claim["spec"], "the cluster's default StorageClass"
    assert _state_volume(docs) == {
        "name": "state",
        "persistentVolumeClaim": {"claimName": f"{FULLNAME}-state"},
    }
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 65532, (
        "the volume is writable by the non-root controller"
    )


def test_persistence_values(chart: helm.Chart) -> None:
    docs = render(
        chart,
        {
            "persistence": {
                "size": "5Gi",
                "storageClassName": "fast-ssd",
                "accessModes": ["ReadWriteOncePod"],
                "annotations": {"helm.sh/resource-policy": "keep"},
            }
        },
    )
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["accessModes"] == ["ReadWriteOncePod"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    no_class = one(
        render(chart, {"persistence": {"storageClassName": "-"}}), "PersistentVolumeClaim"
    )
    assert no_class["spec"]["storageClassName"] == "", "'-': bind a pre-provisioned volume"


def test_existing_claim_is_mounted_and_none_is_created(chart: helm.Chart) -> None:
    docs = render(chart, {"persistence": {"existingClaim": "patchwarden-state"}})
    assert [d for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    assert _state_volume(docs)["persistentVolumeClaim"] == {"claimName": "patchwarden-state"}
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_without_persistence_the_state_is_an_empty_dir(chart: helm.Chart) -> None:
    docs = render(chart, {"persistence": {"enabled": False}, "replicaCount": 3})
    assert [d for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    assert _state_volume(docs) == {"name": "state", "emptyDir": {}}
    deployment = one(docs, "Deployment")
    assert "strategy" not in deployment["spec"], "standbys roll as usual"
    assert deployment["spec"]["replicas"] == 3
    notes = chart.render(
        {"persistence": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE, is_install=True
    )["patchwarden/templates/NOTES.txt"]
    assert "emptyDir: a restarted pod forgets it" in notes


@pytest.mark.parametrize("access", [["ReadWriteOnce"], ["ReadWriteMany"]])
def test_several_replicas_cannot_share_the_persisted_state(
    chart: helm.Chart, access: list[str]
) -> None:
    """SQLite's WAL needs every process on one host, so even a ReadWriteMany volume is refused
    for standbys; the message says what to set."""
    with pytest.raises(helm.HelmError) as refused:
        chart.render(
            {"replicaCount": 2, "persistence": {"accessModes": access}},
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=True,
        )
    message = str(refused.value)
    assert "replicaCount is 2 but persistence.enabled is true" in message
    assert "Set replicaCount: 1" in message and "persistence.enabled: false" in message


# --- PostgreSQL state: replicas share it --------------------------------------------------------


def _pg_env(container: Doc) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in container["env"]
        if e["name"] == "PATCHWARDEN_STATE" or e["name"].startswith("PG")
    }


def test_postgresql_url_comes_from_a_secret_through_the_environment(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The URL (password included) is never in the pod's args; patchctl takes it from
    $PATCHWARDEN_STATE, and libpq verifies the server against the CA mounted read-only."""
    docs = render(chart, POSTGRESQL)
    container = controller(docs)
    assert _pg_env(container) == {
        "PATCHWARDEN_STATE": {"secretKeyRef": {"name": "pw-state", "key": "url"}},
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": "/etc/patchwarden/postgresql/ca.crt",
    }
    assert not any(a.startswith("--state") for a in container["args"])
    url = "postgresql://pw:s3cret@db.example/patchwarden"
    monkeypatch.setenv("PATCHWARDEN_STATE", url)
    args = [a.replace("$(POD_NAMESPACE)", NAMESPACE) for a in container["args"]]
    parsed = _parser().parse_args(args)
    assert parsed.state == url and _postgres_url(parsed) == url
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "postgresql-ca"]
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/patchwarden/postgresql", True)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "postgresql-ca"]
    assert volume["secret"] == {
        "secretName": "pw-db-ca",
        "defaultMode": 0o440,
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }


def test_notes_name_the_postgresql_state(chart: helm.Chart) -> None:
    notes = chart.render(
        LINTED["postgresql-workers"], name=RELEASE, namespace=NAMESPACE, is_install=True
    )["patchwarden/templates/NOTES.txt"]
    assert "PostgreSQL, its URL in Secret pw-state" in notes and "4 worker(s)" in notes
    assert "emptyDir" not in notes


def test_postgresql_ca_from_a_configmap_and_another_url_key(chart: helm.Chart) -> None:
    values = LINTED["postgresql-replicas-ca-configmap"]
    docs = render(chart, values)
    env = _pg_env(controller(docs))
    assert env["PGSSLROOTCERT"] == "/etc/patchwarden/postgresql/root.pem"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "postgresql-ca"]
    assert volume["configMap"]["name"] == "db-ca"
    required = controller(render(chart, LINTED["postgresql-require"]))
    assert _pg_env(required) == {
        "PATCHWARDEN_STATE": {"secretKeyRef": {"name": "pw-state", "key": "dsn"}},
        "PGSSLMODE": "require",
    }, "no CA: nothing mounted, libpq's PGSSLROOTCERT unset"
    assert not any(m["name"] == "postgresql-ca" for m in required["volumeMounts"])


def test_replicas_share_postgresql_state(chart: helm.Chart) -> None:
    """With PostgreSQL more than one replica is allowed: no claim, no Recreate (standbys roll)."""
    docs = render(chart, LINTED["postgresql-replicas-ca-configmap"])
    assert [d for d in docs if d["kind"] == "PersistentVolumeClaim"] == []
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert "strategy" not in deployment["spec"]
    assert _state_volume(docs) == {"name": "state", "emptyDir": {}}, "reports only"


def _worker(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", f"{FULLNAME}-worker")


def test_workers_scale_apart_from_the_controller_on_postgresql(chart: helm.Chart) -> None:
    """The worker Deployment has its own replicas and resources, reaches the same database the
    same way (URL from the Secret, TLS), and is picked up by neither the controller's Deployment
    nor its metrics Service."""
    docs = render(chart, {**LINTED["postgresql-workers"], "ssh": {"existingSecret": "fleet-ssh"}})
    worker = _worker(docs)
    assert worker["spec"]["replicas"] == 4
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["worker", "--workers=25"]
    assert _pg_env(container) == _pg_env(controller(docs))
    assert container["resources"]["limits"] == {"memory": "512Mi"}
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts == {
        "/tmp": False,
        "/etc/patchwarden/ssh": True,
        "/etc/patchwarden/postgresql": True,
    }, "no state volume: the state is in PostgreSQL"
    assert container["securityContext"] == controller(docs)["securityContext"]
    assert (
        pod["securityContext"]
        == one(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]["securityContext"]
    )
    labels = worker["spec"]["template"]["metadata"]["labels"]
    for selector in (
        one(docs, "Deployment", FULLNAME)["spec"]["selector"]["matchLabels"],
        one(docs, "Service")["spec"]["selector"],
    ):
        assert not selector.items() <= labels.items(), selector
    assert [d for d in render(chart, POSTGRESQL) if d["metadata"]["name"].endswith("-worker")] == []


def test_worker_args_are_what_patchctl_parses_and_the_controller_queues_for_them(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker pod's command is patchctl's `worker` verb and its args parse; with workers the
    controller is started with --external-workers (it plans and queues, they run the jobs),
    without them it runs its jobs itself."""
    url = "postgresql://pw:s3cret@db.example/patchwarden"
    monkeypatch.setenv("PATCHWARDEN_STATE", url)
    docs = render(chart, LINTED["postgresql-workers"])
    container = _worker(docs)["spec"]["template"]["spec"]["containers"][0]
    parsed = _parser().parse_args(container["args"])
    assert (parsed.command, parsed.workers, parsed.state) == ("worker", 25, url)
    assert str(parsed.ssh_dir) == "/etc/patchwarden/ssh"
    for values, queued in ((LINTED["postgresql-workers"], True), (POSTGRESQL, False)):
        parsed = _parser().parse_args(controller(render(chart, values))["args"])
        assert (parsed.command, parsed.external_workers) == ("controller", queued)


def test_workers_have_no_kubernetes_api_access(chart: helm.Chart) -> None:
    """Workers reach PostgreSQL and the machines only: their ServiceAccount is bound to no role
    and no token is mounted (node Jobs stay with the controller)."""
    docs = render(chart, LINTED["postgresql-workers"])
    pod = _worker(docs)["spec"]["template"]["spec"]
    account = one(docs, "ServiceAccount", f"{FULLNAME}-worker")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False
    assert account["automountServiceAccountToken"] is False
    bound = {
        subject["name"]
        for doc in docs
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for subject in doc["subjects"]
    }
    assert f"{FULLNAME}-worker" not in bound and FULLNAME in bound


PG_REFUSED: dict[str, tuple[Doc, str]] = {
    "workers-without-postgresql": (
        {"workers": {"replicas": 2}},
        "workers.replicas is 2 but state.postgresql.existingSecret is empty",
    ),
    "persistence-too": (
        {"state": {"postgresql": {**PG_SECRET, "sslmode": "require"}}},
        "state.postgresql.existingSecret is set but persistence.enabled is true",
    ),
    "ca-without-url": (
        {"persistence": {"enabled": False}, "state": {"postgresql": {"ca": {"secret": "x"}}}},
        "state.postgresql.ca is set but state.postgresql.existingSecret is empty",
    ),
    "two-cas": (
        {
            "persistence": {"enabled": False},
            "state": {"postgresql": {**PG_SECRET, "ca": {"secret": "x", "configMap": "y"}}},
        },
        "names both a secret and a configMap",
    ),
    "verify-without-ca": (
        {"persistence": {"enabled": False}, "state": {"postgresql": PG_SECRET}},
        "state.postgresql.sslmode is verify-full but no CA is given",
    ),
}


REFUSED_RENDERS = {**PG_REFUSED, **NOTIFY_REFUSED}


@pytest.mark.parametrize(("values", "said"), REFUSED_RENDERS.values(), ids=REFUSED_RENDERS.keys())
def test_settings_that_would_be_ignored_or_refused_fail_the_render(
    chart: helm.Chart, values: Doc, said: str
) -> None:
    with pytest.raises(helm.HelmError) as refused:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert said in str(refused.value)


def test_the_replica_refusal_names_postgresql(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmError) as refused:
        chart.render({"replicaCount": 2}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert "state.postgresql.existingSecret (with persistence.enabled: false)" in str(refused.value)


BAD_VALUES: list[tuple[Doc, str]] = [
    ({"logLevel": "loud"}, "/logLevel"),
    ({"metrics": {"port": 80}}, "/metrics/port"),
    ({"nodeJobs": {"drainTimeoutSeconds": 0}}, "/nodeJobs/drainTimeoutSeconds"),
    ({"nodeJobs": {"namespace": "Not_A_Namespace"}}, "/nodeJobs/namespace"),
    ({"nodeJobs": {"agentRoot": "srv/root"}}, "/nodeJobs/agentRoot"),
    ({"nodeJobs": {"agentRoot": "/srv/../etc"}}, "/nodeJobs/agentRoot"),
    ({"nodeJobs": {"agentRoot": "/srv/root\n"}}, "/nodeJobs/agentRoot"),
    ({"nodeJobs": {"hostPid": 0}}, "/nodeJobs/hostPid"),
    ({"nodeJobs": {"hostDir": "var/lib/pw"}}, "/nodeJobs/hostDir"),
    ({"nodeJobs": {"hostDir": "/var/lib/../../etc"}}, "/nodeJobs/hostDir"),
    ({"nodeJobs": {"hostDir": "/var/lib/pw\x1b"}}, "/nodeJobs/hostDir"),
    ({"nodeJobs": {"hostDir": ""}}, "/nodeJobs/hostDir"),
    (
        {"nodeJobs": {"tolerations": [{"operator": "Sometimes"}]}},
        "/nodeJobs/tolerations/0/operator",
    ),
    (
        {"nodeJobs": {"resources": {"limits": {"memory": "lots"}}}},
        "/nodeJobs/resources/limits/memory",
    ),
    ({"git": {"url": "not a url"}}, "/git/url"),
    ({"aws": {"ec2EndpointUrl": "ec2.lab:5000"}}, "/aws/ec2EndpointUrl"),
    ({"aws": {"s3EndpointUrl": "http://minio lab"}}, "/aws/s3EndpointUrl"),
    ({"aws": {"region": "eu-west-1"}}, "region"),
    ({"intervals": {"resyncSeconds": "often"}}, "/intervals/resyncSeconds"),
    ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"replicas": 2}, "replicas"),
    ({"persistence": {"accessModes": ["ReadOnlyMany"]}}, "/persistence/accessModes/0"),
    ({"persistence": {"size": "lots"}}, "/persistence/size"),
    ({"persistence": {"existingClaim": "Bad_Claim"}}, "/persistence/existingClaim"),
    ({"persistence": {"enabled": "yes"}}, "/persistence/enabled"),
    ({"state": {"postgresql": {"sslmode": "on"}}}, "/state/postgresql/sslmode"),
    ({"state": {"postgresql": {"existingSecret": "Bad_Name"}}}, "/state/postgresql/existingSecret"),
    ({"state": {"postgresql": {"url": "postgresql://h/db"}}}, "url"),
    ({"workers": {"replicas": -1}}, "/workers/replicas"),
    ({"workers": {"concurrency": 0}}, "/workers/concurrency"),
    ({"notifications": {"slack": {"kinds": ["job.started"]}}}, "/notifications/slack/kinds/0"),
    ({"notifications": {"slack": {"urlKeys": ["a/b"]}}}, "/notifications/slack/urlKeys/0"),
    ({"notifications": {"email": {"to": ["not an address"]}}}, "/notifications/email/to/0"),
    ({"notifications": {"email": {"smtp": {"port": 0}}}}, "/notifications/email/smtp/port"),
    ({"notifications": {"email": {"smtp": {"host": "mail:25"}}}}, "/notifications/email/smtp/host"),
    ({"notifications": {"webhook": "https://x"}}, "webhook"),
]


@pytest.mark.parametrize(("values", "named"), BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_schema_rejects_bad_values(chart: helm.Chart, values: Doc, named: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert named in str(refused.value)
    with pytest.raises(helm.HelmError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_accepts_the_documented_values(chart: helm.Chart) -> None:
    chart.validate_schema({})
    chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))
    chart.validate_schema(
        {
            "git": {"url": "ssh://git@git.example/fleet.git", "existingSecret": "fleet-git"},
            "nodeJobs": {"resources": {"limits": {"cpu": 1, "memory": "1Gi"}}},
            "serviceMonitor": {"enabled": True, "interval": "1m"},
        }
    )


# --- against the real API server ----------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(kube_api: KubeApi, chart: helm.Chart) -> Iterator[str]:
    """The chart installed with defaults into a fresh namespace; yields the namespace."""
    ns = kube_api.namespace("chart")
    with helm.Config(kubeconfig_path=str(kube_api.kubeconfig), namespace=ns) as config:
        release = config.install(chart, RELEASE, {}, namespace=ns, timeout=60)
        assert release["manifest"]
        yield ns


@pytest.mark.apiserver
def test_installs_into_a_real_server(kube_api: KubeApi, installed: str) -> None:
    with helm.Config(kubeconfig_path=str(kube_api.kubeconfig), namespace=installed) as config:
        releases = config.list()
        assert [(r["name"], r["status"]) for r in releases] == [(RELEASE, "deployed")]
    apps = kubernetes.client.AppsV1Api(kube_api.client())
    deployment = apps.read_namespaced_deployment(FULLNAME, installed)
    assert deployment.spec.template.spec.security_context.run_as_non_root is True
    assert deployment.spec.template.spec.containers[0].security_context.read_only_root_filesystem
    assert deployment.spec.strategy.type == "Recreate"
    claim = kubernetes.client.CoreV1Api(kube_api.client()).read_namespaced_persistent_volume_claim(
        f"{FULLNAME}-state", installed
    )
    assert claim.spec.access_modes == ["ReadWriteOnce"]
    assert claim.spec.resources.requests == {"storage": "1Gi"}
    state = next(v for v in deployment.spec.template.spec.volumes if v.name == "state")
    assert state.persistent_volume_claim.claim_name == claim.metadata.name
    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_api.client())
    assert rbac.read_cluster_role(FULLNAME).rules
    assert {r.metadata.name for r in rbac.list_namespaced_role(installed).items} == {
        FULLNAME,
        f"{FULLNAME}-node-jobs",
        f"{FULLNAME}-node-agent",
    }


class Cluster:
    """What the tests act on: an admin client to set the scene, and the chart's ServiceAccounts."""

    def __init__(self, kube_api: KubeApi, ns: str) -> None:
        self.ns = ns
        self.admin = kube_api.client()
        self.controller = kube_api.client(f"system:serviceaccount:{ns}:{FULLNAME}")
        self.agent = kube_api.client(f"system:serviceaccount:{ns}:{FULLNAME}-node-agent")
        self.other_ns = kube_api.namespace("other")
        self.suffix = secrets.token_hex(3)
        core = kubernetes.client.CoreV1Api(self.admin)
        self.node = f"node-{self.suffix}"
        core.create_node({"metadata": {"name": self.node, "labels": {"kubernetes.io/os": "linux"}}})
        self.pod = f"app-{self.suffix}"
        core.create_namespaced_pod(
            self.other_ns,
            {
                "metadata": {"name": self.pod},
                "spec": {"nodeName": self.node, "containers": [{"name": "c", "image": "app"}]},
            },
        )
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"result-{self.suffix}"}})
        core.create_namespaced_secret(ns, {"metadata": {"name": "git"}, "stringData": {"k": "v"}})
        custom = kubernetes.client.CustomObjectsApi(self.admin)
        self.baseline = f"ubuntu-{self.suffix}"
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            "patchbaselines",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "PatchBaseline",
                "metadata": {"name": self.baseline},
                "spec": {"operatingSystem": "UBUNTU"},
            },
        )
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            self.other_ns,
            "patchbaselines",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "PatchBaseline",
                "metadata": {"name": self.baseline},
                "spec": {"operatingSystem": "UBUNTU"},
            },
        )


@pytest.fixture(scope="module")
def cluster(kube_api: KubeApi, installed: str) -> Cluster:
    return Cluster(kube_api, installed)


def _job(name: str) -> Doc:
    return {
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "agent", "image": "pw", "command": ["true"]}],
                }
            }
        },
    }


def _lease(name: str, holder: str) -> Doc:
    return {
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


def _watch_once(list_call: Callable[..., Any], *args: Any) -> None:
    """A real watch request (it is authorized before it streams); one second, then closed."""
    stream = kubernetes.watch.Watch().stream(list_call, *args, timeout_seconds=1)
    for _ in stream:
        break


# Each callable takes the Cluster and acts as the controller's ServiceAccount (c.controller) or
# the node agent's (c.agent).
ALLOWED: dict[str, Callable[[Cluster], Any]] = {
    "list nodes": lambda c: kubernetes.client.CoreV1Api(c.controller).list_node(),
    "watch nodes": lambda c: _watch_once(kubernetes.client.CoreV1Api(c.controller).list_node),
    "get a node": lambda c: kubernetes.client.CoreV1Api(c.controller).read_node(c.node),
    "cordon a node": lambda c: kubernetes.client.CoreV1Api(c.controller).patch_node(
        c.node, {"spec": {"unschedulable": True}}
    ),
    "annotate a node": lambda c: kubernetes.client.CoreV1Api(c.controller).patch_node(
        c.node, {"metadata": {"annotations": {"patchwarden.io/rollout": "draining"}}}
    ),
    "list pods on a node, all namespaces": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).list_pod_for_all_namespaces(field_selector=f"spec.nodeName={c.node}"),
    "evict a pod": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).create_namespaced_pod_eviction(
        c.pod,
        c.other_ns,
        {
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": c.pod, "namespace": c.other_ns},
        },
    ),
    "create, get, list, watch, delete a job in its namespace": lambda c: _job_lifecycle(c),
    "list, read and delete result configmaps": lambda c: _configmap_read_delete(c),
    "take and renew the lease": lambda c: _lease_lifecycle(c),
    "read its own pod and ReplicaSet (the Deployment owning its objects)": lambda c: _owner_reads(
        c
    ),
    "list and watch its custom resources": lambda c: _custom_read(c),
    "patch a custom resource's status": lambda c: kubernetes.client.CustomObjectsApi(
        c.controller
    ).patch_namespaced_custom_object_status(
        GROUP, VERSION, c.ns, "patchbaselines", c.baseline, {"status": {"observedGeneration": 1}}
    ),
    "mirror a node into a ManagedInstance": lambda c: _mirror_lifecycle(c),
    "create an event": lambda c: kubernetes.client.CoreV1Api(c.controller).create_namespaced_event(
        c.ns,
        {
            "metadata": {"name": f"ev-{c.suffix}"},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "PatchBaseline",
                "name": c.baseline,
                "namespace": c.ns,
            },
            "reason": "Ready",
            "message": "baseline accepted",
            "type": "Normal",
        },
    ),
    "the agent writes its result configmap": lambda c: _agent_result(c),
}


def _job_lifecycle(c: Cluster) -> None:
    batch = kubernetes.client.BatchV1Api(c.controller)
    name = f"scan-{c.suffix}"
    batch.create_namespaced_job(c.ns, _job(name))
    assert batch.read_namespaced_job(name, c.ns).metadata.name == name
    assert [j.metadata.name for j in batch.list_namespaced_job(c.ns).items] == [name]
    _watch_once(batch.list_namespaced_job, c.ns)
    batch.delete_namespaced_job(name, c.ns, propagation_policy="Background")


def _configmap_read_delete(c: Cluster) -> None:
    core = kubernetes.client.CoreV1Api(c.controller)
    name = f"result-{c.suffix}"
    selector = "app.kubernetes.io/component=node-agent,app.kubernetes.io/managed-by=patchwarden"
    core.list_namespaced_config_map(c.ns, label_selector=selector)  # orphaned results
    core.read_namespaced_config_map(name, c.ns)
    core.delete_namespaced_config_map(name, c.ns)


def _lease_lifecycle(c: Cluster) -> None:
    coordination = kubernetes.client.CoordinationV1Api(c.controller)
    coordination.create_namespaced_lease(c.ns, _lease(FULLNAME, "replica-a"))
    lease = coordination.read_namespaced_lease(FULLNAME, c.ns)
    lease.spec.holder_identity = "replica-b"
    coordination.replace_namespaced_lease(FULLNAME, c.ns, lease)


def _custom_read(c: Cluster) -> None:
    custom = kubernetes.client.CustomObjectsApi(c.controller)
    for plural in (
        "patchbaselines",
        "patchgroups",
        "maintenancewindows",
        "managedinstances",
        "compliancereports",
        "instancesources",
        "rollouts",
        "changecalendars",
    ):
        custom.list_namespaced_custom_object(GROUP, VERSION, c.ns, plural)
    custom.get_namespaced_custom_object(GROUP, VERSION, c.ns, "patchbaselines", c.baseline)
    _watch_once(custom.list_namespaced_custom_object, GROUP, VERSION, c.ns, "patchbaselines")


def _mirror_lifecycle(c: Cluster) -> None:
    custom = kubernetes.client.CustomObjectsApi(c.controller)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ManagedInstance",
        "metadata": {"name": c.node, "labels": {"kubernetes.io/os": "linux"}},
        "spec": {"connection": {"type": "kubernetes", "node": c.node}},
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, c.ns, "managedinstances", body)
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, c.ns, "managedinstances", c.node, {"metadata": {"labels": {"role": "db"}}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, c.ns, "managedinstances", c.node)


def _owner_reads(c: Cluster) -> None:
    """What own_deployment reads at start: its pod, then that pod's ReplicaSet."""
    admin_apps = kubernetes.client.AppsV1Api(c.admin)
    labels = {"app": f"pw-{c.suffix}"}
    template = {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    name = f"pw-{c.suffix}"
    admin_apps.create_namespaced_replica_set(
        c.ns,
        {
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": labels}, "template": template},
        },
    )
    kubernetes.client.CoreV1Api(c.admin).create_namespaced_pod(
        c.ns, {**template, "metadata": {"name": name, "labels": labels}}
    )
    kubernetes.client.CoreV1Api(c.controller).read_namespaced_pod(name, c.ns)
    kubernetes.client.AppsV1Api(c.controller).read_namespaced_replica_set(name, c.ns)


def _agent_result(c: Cluster) -> None:
    core = kubernetes.client.CoreV1Api(c.agent)
    name = f"agent-{c.suffix}"
    core.create_namespaced_config_map(c.ns, {"metadata": {"name": name}, "data": {"result": "{}"}})
    core.replace_namespaced_config_map(
        name, c.ns, {"metadata": {"name": name}, "data": {"result": '{"ok": true}'}}
    )


@pytest.mark.apiserver
@pytest.mark.parametrize("action", list(ALLOWED))
def test_service_account_can_do_what_the_controller_needs(cluster: Cluster, action: str) -> None:
    ALLOWED[action](cluster)


REFUSED: dict[str, Callable[[Cluster], Any]] = {
    "read a secret in its namespace": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).read_namespaced_secret("git", c.ns),
    "list secrets cluster-wide": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).list_secret_for_all_namespaces(),
    "delete a node": lambda c: kubernetes.client.CoreV1Api(c.controller).delete_node(c.node),
    "create a node": lambda c: kubernetes.client.CoreV1Api(c.controller).create_node(
        {"metadata": {"name": f"rogue-{c.suffix}"}}
    ),
    "delete a pod instead of evicting it": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).delete_namespaced_pod(c.pod, c.other_ns),
    "create a pod": lambda c: kubernetes.client.CoreV1Api(c.controller).create_namespaced_pod(
        c.ns, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    ),
    "create a job in another namespace": lambda c: kubernetes.client.BatchV1Api(
        c.controller
    ).create_namespaced_job(c.other_ns, _job("elsewhere")),
    "create a configmap (only the agent writes results)": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).create_namespaced_config_map(c.ns, {"metadata": {"name": "x"}}),
    "create a CRD": lambda c: kubernetes.client.ApiextensionsV1Api(
        c.controller
    ).create_custom_resource_definition(
        yaml.safe_load((CHART / "crds" / "patchwarden.io_patchgroups.yaml").read_text())
        | {"metadata": {"name": f"patchgroups.{c.suffix}.example"}}
    ),
    "change a baseline's spec": lambda c: kubernetes.client.CustomObjectsApi(
        c.controller
    ).patch_namespaced_custom_object(
        GROUP, VERSION, c.ns, "patchbaselines", c.baseline, {"spec": {"description": "mine now"}}
    ),
    "read custom resources in another namespace": lambda c: kubernetes.client.CustomObjectsApi(
        c.controller
    ).list_namespaced_custom_object(GROUP, VERSION, c.other_ns, "patchbaselines"),
    "write a status in another namespace": lambda c: kubernetes.client.CustomObjectsApi(
        c.controller
    ).patch_namespaced_custom_object_status(
        GROUP, VERSION, c.other_ns, "patchbaselines", c.baseline, {"status": {"x": 1}}
    ),
    "rewrite an event (it only creates them)": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).patch_namespaced_event(f"ev-{c.suffix}", c.ns, {"message": "rewritten"}),
    "read a pod in another namespace": lambda c: kubernetes.client.CoreV1Api(
        c.controller
    ).read_namespaced_pod(c.pod, c.other_ns),
    "list replicasets": lambda c: kubernetes.client.AppsV1Api(
        c.controller
    ).list_namespaced_replica_set(c.ns),
    "delete the lease": lambda c: kubernetes.client.CoordinationV1Api(
        c.controller
    ).delete_namespaced_lease(FULLNAME, c.ns),
    "take a lease in another namespace": lambda c: kubernetes.client.CoordinationV1Api(
        c.controller
    ).create_namespaced_lease(c.other_ns, _lease("steal", "me")),
    "grant itself more (bind cluster-admin)": lambda c: kubernetes.client.RbacAuthorizationV1Api(
        c.controller
    ).create_cluster_role_binding(
        {
            "metadata": {"name": f"escalate-{c.suffix}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": c.ns}],
        }
    ),
    "the agent reads configmaps": lambda c: kubernetes.client.CoreV1Api(
        c.agent
    ).list_namespaced_config_map(c.ns),
    "the agent lists nodes": lambda c: kubernetes.client.CoreV1Api(c.agent).list_node(),
    "the agent creates a job": lambda c: kubernetes.client.BatchV1Api(
        c.agent
    ).create_namespaced_job(c.ns, _job("agent-job")),
}


@pytest.mark.apiserver
@pytest.mark.parametrize("action", list(REFUSED))
def test_service_account_is_refused_the_rest(cluster: Cluster, action: str) -> None:
    with pytest.raises(ApiException) as refused:
        REFUSED[action](cluster)
    assert refused.value.status == 403, refused.value.body
    assert "forbidden" in refused.value.body


def test_chart_and_dockerfile_agree(chart: helm.Chart) -> None:
    """No image can be built here (no registry), so the image the chart runs is checked where the
    two meet: the user, the agent's path and the metrics port."""
    instructions = [
        line.split(None, 1)
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line and not line.startswith(("#", " "))
    ]
    by_name: dict[str, list[str]] = {}
    for name, *rest in instructions:
        by_name.setdefault(name, []).append(rest[0] if rest else "")
    docs = render(chart)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert by_name["USER"] == [
        f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    ]
    assert by_name["ENTRYPOINT"] == ['["patchctl"]']
    assert by_name["EXPOSE"] == [str(controller(docs)["ports"][0]["containerPort"])]
    agent_path = _node_settings(docs).agent_path
    assert any(line.endswith(f" {agent_path}") for line in by_name["COPY"]), by_name["COPY"]
    assert len(by_name["FROM"]) == 2, "multi-stage: build, then a runtime without the build tools"


@pytest.mark.apiserver
def test_workers_are_refused_the_kubernetes_api(kube_api: KubeApi, chart: helm.Chart) -> None:
    """Installed with PostgreSQL state and workers on a real server, the workers' ServiceAccount
    may do nothing: it reads no Secret, Node, pod, ConfigMap or custom resource, creates no Job."""
    ns = kube_api.namespace("workers")
    with helm.Config(kubeconfig_path=str(kube_api.kubeconfig), namespace=ns) as config:
        config.install(chart, "pwk", LINTED["postgresql-workers"], namespace=ns, timeout=60)
    worker = kube_api.client(f"system:serviceaccount:{ns}:pwk-patchwarden-worker")
    core, custom = kubernetes.client.CoreV1Api(worker), kubernetes.client.CustomObjectsApi(worker)
    attempts: list[Callable[[], Any]] = [
        lambda: core.list_namespaced_secret(ns),
        lambda: core.list_node(),
        lambda: core.list_namespaced_pod(ns),
        lambda: core.list_namespaced_config_map(ns),
        lambda: custom.list_namespaced_custom_object(GROUP, VERSION, ns, "patchbaselines"),
        lambda: kubernetes.client.BatchV1Api(worker).create_namespaced_job(ns, _job("w")),
    ]
    for attempt in attempts:
        with pytest.raises(ApiException) as refused:
            attempt()
        assert refused.value.status == 403, refused.value.body

"""A real single-node Kubernetes cluster for tests (issue 18 item 2; docs/kubernetes.md).

Everything is built here from Debian: etcd (``etcd-server``), the kube-apiserver, kube-controller-manager,
kube-scheduler and kubelet v1.20.2 built from Debian's ``kubernetes`` source by
``scripts/kube-apiserver build NAME`` (cached under /var/cache/patchwarden like the apiserver), the pod
sandbox's ``pause`` compiled from the same tree, and containerd + runc + the CNI plugins from Debian's
``containerd``, ``runc`` and ``containernetworking-plugins``. No registry is reached: the images pods
run are OCI archives made here with ``umoci`` and imported with ``ctr -n k8s.io images import``:

- :data:`PAUSE_IMAGE`: the pause binary alone (the sandbox image containerd is told to use);
- :data:`DEBIAN_IMAGE`: the Debian bookworm root that tests/netfleet.py builds with ``mmdebstrap``
  (python3, apt), as one layer.

Both archives are cached under /var/cache/patchwarden, keyed by what they are made of.

Layout: every server listens on 127.0.0.1 (free ports) but the API server and the kubelet, which
listen on the node's address :data:`NODE_IP` on the pod bridge; all state (etcd, certificates,
containerd's root and state, the kubelet's root dir, CNI's IPAM) lives in one pytest temp dir.
Pods get addresses from a bridge (``pwk<id>``, 10.214.0.0/24, no masquerade) that only this
machine's own network namespaces are on. kube-proxy (built like the others) runs in iptables mode
with ``--cluster-cidr`` the pod subnet and NodePorts on the node address only, so a pod's
in-cluster client reaches the API server at the ``kubernetes`` Service's ClusterIP
(:data:`KUBERNETES_SERVICE_IP`, which the API server's certificate names); the tests themselves
reach a Service through the API server's service proxy. At the end ``kube-proxy --cleanup``
removes its chains, the kubelet's ``KUBE-`` chains that were not there before are removed, and the
fixture fails if ``iptables-save`` still shows a ``KUBE-`` line it did not find at the start.

Authentication is the real one: the kubelet is ``system:node:pw-node`` in ``system:nodes`` under
``--authorization-mode=Node,RBAC``, the controller-manager signs ServiceAccount tokens (so the
ServiceAccount admission plugin stays on), the API server talks to the kubelet with a client
certificate the kubelet checks.

The kubelet sets three kernel settings as every kubelet does (``vm.overcommit_memory``,
``kernel.panic``, ``kernel.panic_on_oops``), kube-proxy one (``net.ipv4.conf.all.route_localnet``):
the fixture puts back what it found. At the end
every pod is deleted, the kubelet, containerd, its shims, the controllers, the API server and etcd
are stopped by PID, whatever is mounted under the temp dir is unmounted, and the bridge, the
pods' network namespaces and the kubelet's cgroups are removed.

Root only: :data:`NODE_SKIP` says why a node cannot run on this machine (a skip with that reason);
a missing package or binary is a failure that says what to install or build, never a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests import kubeapi
from tests.kubeapi import KubeApi, _Ca, free_port
from tests.netfleet import _run, _unmount_below, base_root
from tests.waiting import tail_of, wait_until

CACHE = Path("/var/cache/patchwarden")
NODE_NAME = "pw-node"
PAUSE_IMAGE = "patchwarden.test/pause:1"
DEBIAN_IMAGE = "patchwarden.test/debian:bookworm"
POD_SUBNET = "10.214.0.0/24"
"""Beside the test fleet's 10.213.N.0/24 (tests/netfleet.py); only this machine's pods are on it."""
NODE_IP = "10.214.0.1"
"""The node's address: the bridge's own (a kubelet refuses a loopback node IP). The kubelet
listens there, the API server reaches it there, and pods reach the host there."""
SERVICE_SUBNET = "10.96.0.0/24"
"""The API server's --service-cluster-ip-range (tests/kubeapi.py)."""
KUBERNETES_SERVICE_IP = "10.96.0.1"
"""The ``kubernetes`` Service's ClusterIP (first of the API server's service range): where a pod's
in-cluster client goes; kube-proxy routes it to the API server on :data:`NODE_IP`."""
CNI_BIN = Path("/usr/lib/cni")
POD_LOG_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"))
KERNEL_SETTINGS = (
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/conf/all/route_localnet",
)
"""What every kubelet sets at start (kubelet's setupKernelTunables) and kube-proxy 1.20's iptables
mode sets (route_localnet, for NodePorts on 127.0.0.1); put back at the end."""
START_TIMEOUT = 120.0
TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "umoci": "umoci",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "conntrack": "conntrack",
}
"""Command -> the Debian package (in the Makefile's SYSTEM_PACKAGES) that brings it."""


# --- what this machine must offer -----------------------------------------------------------


def _skip_reason() -> str:
    """Why this machine (not a missing package) cannot run a kubelet; "" when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "a kubelet needs root (cgroups, mounts, network namespaces)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs (containerd's snapshotter needs it)"
    if not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists():
        # kubelet 1.20's cgroup v2 support is incomplete (alpha): this suite runs it on cgroup v1.
        return "no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory (kubelet 1.20 runs on v1)"
    return ""


NODE_SKIP = _skip_reason()


def _require_tools() -> None:
    missing = sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None})
    if not (CNI_BIN / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        pytest.fail(
            f"missing Debian packages {', '.join(missing)}: run `make install`", pytrace=False
        )


def binary(name: str) -> Path:
    """A cached Kubernetes binary; a clear failure (never a skip) when it has not been built."""
    found = subprocess.run(
        [str(kubeapi.BUILD_SCRIPT), "path", name], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.fail(
            f"{name} is not built: run `make kube-node` (scripts/kube-apiserver build {name}) or "
            f"deselect with -m 'not apiserver'.\n{found.stderr.strip()}",
            pytrace=False,
        )
    return Path(found.stdout.strip())


# --- images ----------------------------------------------------------------------------------


def _oci_archive(
    tag: str, key: str, populate: Callable[[Path], None], config: Sequence[str]
) -> Path:
    """An OCI image archive (a tar of an OCI layout) made with umoci, cached under CACHE by
    ``key``; built under a temporary name and renamed, a lock keeps two sessions from both
    building it."""
    name = tag.rsplit("/", 1)[-1].replace(":", "-")
    final = CACHE / f"kubenode-image-{name}-{key}.tar"
    if final.exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "kubenode-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        with tempfile.TemporaryDirectory(prefix="kubenode-image-", dir=CACHE) as work:
            layout, bundle = f"{work}/layout", f"{work}/bundle"
            ref = f"{layout}:{tag.rsplit(':', 1)[-1]}"
            _run("umoci", "init", "--layout", layout)
            _run("umoci", "new", "--image", ref)
            _run("umoci", "unpack", "--image", ref, bundle)
            populate(Path(bundle) / "rootfs")
            _run("umoci", "repack", "--image", ref, bundle)
            _run("umoci", "config", "--image", ref, *config)
            _run("umoci", "gc", "--layout", layout)
            part = f"{final}.part-{os.getpid()}"
            _run("tar", "-C", layout, "-cf", part, ".")
            os.replace(part, final)
    return final


def pause_archive() -> Path:
    pause = binary("pause")
    key = hashlib.sha256(pause.read_bytes()).hexdigest()[:16]

    def populate(rootfs: Path) -> None:
        shutil.copy2(pause, rootfs / "pause")

    return _oci_archive(PAUSE_IMAGE, key, populate, ["--config.entrypoint=/pause"])


def debian_archive() -> Path:
    root = base_root()  # its name carries the hash of its mmdebstrap recipe

    def populate(rootfs: Path) -> None:
        _run("cp", "-a", f"{root}/.", str(rootfs))

    config = ["--config.cmd=/usr/bin/python3", "--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    return _oci_archive(DEBIAN_IMAGE, root.name.rsplit("-", 1)[-1], populate, config)


# --- the cluster -----------------------------------------------------------------------------


@dataclass
class KubeNode:
    """A running cluster of one node: the API (admin client, kubectl) and the node's runtime."""

    api: KubeApi
    directory: Path
    containerd_socket: Path
    bridge: str
    images: dict[str, Path] = field(default_factory=dict)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.api.kubectl(*args, check=check)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """containerd's own client on this node's containerd, in the kubelet's namespace."""
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        return _run(*argv, check=check)

    def namespace(self, prefix: str = "pwk") -> str:
        """A fresh namespace whose ``default`` ServiceAccount and its token exist (the
        controller-manager makes them; the ServiceAccount admission plugin refuses pods until
        then)."""
        name = self.api.namespace(prefix)

        def has_default() -> bool:
            try:
                # 1.20's admission wants the token Secret too, which the token controller adds.
                return bool(self.core().read_namespaced_service_account("default", name).secrets)
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    return False
                raise

        wait_until(
            f"ServiceAccount {name}/default with its token", has_default, timeout=60, every=0.2
        )
        return name

    def delete_namespace(self, name: str, timeout: float = 120) -> None:
        """Delete a namespace and wait until it is gone (its pods stopped by the kubelet): the
        node is the session's, and a pod left running would stand in the next test's drain."""
        self.core().delete_namespace(name)

        def gone() -> bool:
            try:
                self.core().read_namespace(name)
            except kubernetes.client.ApiException as error:
                if error.status == 404:
                    return True
                raise
            return False

        def left() -> str:
            pods = self.core().list_namespaced_pod(name).items
            return ", ".join(f"{p.metadata.name} {p.status.phase}" for p in pods) or "no pod"

        wait_until(f"namespace {name} deleted", gone, timeout=timeout, every=0.5, detail=left)

    def core(self) -> Any:
        return kubernetes.client.CoreV1Api(self.api._admin())

    def pod_phase(self, namespace: str, name: str) -> str:
        return str(self.core().read_namespaced_pod(name, namespace).status.phase)

    def wait_pod(
        self, namespace: str, name: str, phases: Sequence[str], timeout: float = 120
    ) -> str:
        """Wait until the pod is in one of ``phases``; fail with its status and events."""
        return wait_until(
            f"pod {namespace}/{name} in {'/'.join(phases)}",
            lambda: (phase := self.pod_phase(namespace, name)) in phases and phase,
            timeout=timeout,
            every=0.25,
            detail=lambda: self.describe(namespace, name),
        )

    def describe(self, namespace: str, name: str) -> str:
        done = self.kubectl("describe", "pod", "-n", namespace, name, check=False)
        return (done.stdout + done.stderr)[-3000:] + "\n--- kubelet:\n" + self.log("kubelet")

    def log(self, component: str) -> str:
        return tail_of(self.directory / f"{component}.log")()


@dataclass
class _Processes:
    """What the fixture started, stopped in reverse order."""

    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, directory: Path, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        process = kubeapi._spawn(directory / f"{name}.log", argv)
        self.running.append((name, process))
        return process

    def check(self, directory: Path) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}:\n{tail_of(directory / f'{name}.log')()}"
                )

    def stop(self, down_to: str = "") -> None:
        """Stop, newest first, everything started after ``down_to`` (everything by default)."""
        while self.running and self.running[-1][0] != down_to:
            kubeapi._stop(self.running.pop()[1])


def _node_secrets(directory: Path, ca: _Ca) -> dict[str, Path]:
    """The API server's files (tests/kubeapi.py), the kubelet's serving certificate and the client
    certificate the API server shows the kubelet (logs, exec)."""
    # Pods reach the API server at the Service's ClusterIP (kube-proxy) on the node's address.
    files = kubeapi._write_secrets(directory, ca, (NODE_IP, KUBERNETES_SERVICE_IP))
    for name, (common_name, groups, server) in {
        "kubelet": ("pw-node", (), True),
        "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ("system:masters",), False),
    }.items():
        cert, key = ca.issue(common_name, groups, server=server)
        files[f"{name}_cert"] = directory / f"{name}.crt"
        files[f"{name}_key"] = directory / f"{name}.key"
        files[f"{name}_cert"].write_bytes(cert)
        files[f"{name}_key"].write_bytes(key)
        files[f"{name}_key"].chmod(0o600)
    return files


def _apiserver_flags(files: dict[str, Path]) -> list[str]:
    return [
        # The Node authorizer holds the kubelet to what a node may do (its Node, its pods).
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--kubelet-client-certificate={files['apiserver-kubelet-client_cert']}",
        f"--kubelet-client-key={files['apiserver-kubelet-client_key']}",
        "--kubelet-preferred-address-types=InternalIP",
        # The `kubernetes` Service's Endpoints name the API server (tests/kubeapi.py's lone
        # server writes none): kube-proxy sends the ClusterIP there, for pods' in-cluster clients.
        "--endpoint-reconciler-type=lease",
    ]


def _controllers(
    processes: _Processes, directory: Path, files: dict[str, Path], admin: Path
) -> None:
    processes.start(
        directory,
        "kube-controller-manager",
        [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={admin}",
            f"--service-account-private-key-file={files['sa_key']}",
            f"--root-ca-file={files['ca']}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--port=0",
        ],
    )
    processes.start(
        directory,
        "kube-scheduler",
        [
            str(binary("kube-scheduler")),
            f"--kubeconfig={admin}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--port=0",
        ],
    )


def _containerd_config(directory: Path, bridge: str) -> Path:
    cni = directory / "cni"
    cni.mkdir()
    (cni / "10-patchwarden.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "patchwarden-node",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": bridge,
                        "isGateway": True,  # the host (and the API server's proxy) reach pods
                        "ipMasq": False,  # pods talk to this machine only: no NAT rule
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_SUBNET}]],
                            # Service ClusterIPs through the node (kube-proxy); nothing else.
                            "routes": [{"dst": SERVICE_SUBNET}],
                            "dataDir": str(directory / "cni-ipam"),
                        },
                    }
                ],
            }
        )
    )
    config = directory / "containerd.toml"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    config.write_text(
        f"""version = 2
root = "{directory / "containerd-root"}"
state = "{directory / "containerd-state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{directory / "containerd.sock"}"
[ttrpc]
  address = "{directory / "containerd.sock.ttrpc"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{directory / "containerd-opt"}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # The kubelet asks for oom_score_adj -998 (pause) and below: lowering it needs
  # CAP_SYS_RESOURCE, which this machine's root lacks (runc's init then dies with "can't get
  # final child's PID from pipe: EOF"). Kept no lower than containerd's own, as rootless does.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [{cri}.containerd]
    snapshotter = "overlayfs"
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni}"
"""
    )
    return config


def _make_bridge(bridge: str) -> None:
    """The CNI bridge plugin takes the bridge as it finds it; made first, so the API server can
    listen on the node address and the kubelet has it before any pod exists."""
    _run("ip", "link", "add", bridge, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/{POD_SUBNET.split('/')[1]}", "dev", bridge)
    _run("ip", "link", "set", bridge, "up")


def _start_containerd(processes: _Processes, directory: Path, bridge: str) -> Path:
    config = _containerd_config(directory, bridge)
    socket = directory / "containerd.sock"
    processes.start(directory, "containerd", ["containerd", "--config", str(config)])

    def answers() -> bool:
        processes.check(directory)
        return _run("ctr", "--address", str(socket), "version", check=False).returncode == 0

    wait_until(
        "containerd answering", answers, timeout=START_TIMEOUT, every=0.2, error=RuntimeError
    )
    return socket


def _kubelet_config(directory: Path, files: dict[str, Path]) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": free_port(),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "tlsCertFile": str(files["kubelet_cert"]),
        "tlsPrivateKeyFile": str(files["kubelet_key"]),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(files["ca"])},
        },
        # Only a client with a certificate of the test CA gets this far (the API server).
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "resolvConf": "",  # pods need no DNS here, and the host's resolver is not theirs
        # The imported images cannot be pulled again: never collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "serializeImagePulls": False,
    }
    path = directory / "kubelet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start_kubelet(
    processes: _Processes, directory: Path, api: KubeApi, files: dict[str, Path], socket: Path
) -> None:
    kubeconfig = api.kubeconfig_for(f"system:node:{NODE_NAME}", ["system:nodes"])
    processes.start(
        directory,
        "kubelet",
        [
            str(binary("kubelet")),
            f"--config={_kubelet_config(directory, files)}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={directory / 'kubelet'}",
            f"--cert-dir={directory / 'kubelet-pki'}",
            f"--volume-plugin-dir={directory / 'volume-plugins'}",
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{socket}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            f"--pod-infra-container-image={PAUSE_IMAGE}",
            "--v=2",
        ],
    )


def _start_kube_proxy(processes: _Processes, directory: Path, api: KubeApi) -> None:
    """kube-proxy in iptables mode (real authentication: ``system:kube-proxy``, which the
    bootstrap RBAC binds to ``system:node-proxier``), confined to what the test owns: the pod
    CIDR, NodePorts on the node address only, conntrack limits and timeouts left as they are."""
    kubeconfig = api.kubeconfig_for("system:kube-proxy")
    processes.start(
        directory,
        "kube-proxy",
        [
            str(binary("kube-proxy")),
            f"--kubeconfig={kubeconfig}",
            "--proxy-mode=iptables",
            f"--cluster-cidr={POD_SUBNET}",
            f"--hostname-override={NODE_NAME}",
            f"--bind-address={NODE_IP}",
            f"--nodeport-addresses={NODE_IP}/32",
            f"--healthz-bind-address=127.0.0.1:{free_port()}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--v=2",
        ],
    )


def _kube_rules() -> set[str]:
    """The iptables lines (all tables, counters dropped) that name a ``KUBE-`` chain."""
    out = _run("iptables-save").stdout
    return {
        f"{table} {line.split(' [')[0]}"
        for table, line in _tabled(out.splitlines())
        if "KUBE-" in line
    }


def _tabled(lines: Sequence[str]) -> Iterator[tuple[str, str]]:
    table = ""
    for line in lines:
        if line.startswith("*"):
            table = line[1:]
        elif line and not line.startswith(("#", "COMMIT")):
            yield table, line


def _remove_kube_rules(before: set[str]) -> None:
    """After ``kube-proxy --cleanup`` (its own chains): the chains the kubelet makes
    (KUBE-FIREWALL, KUBE-MARK-DROP, KUBE-KUBELET-CANARY...) that were not there before; then
    fail, naming them, if any line is left over."""
    new = sorted(_kube_rules() - before)
    for entry in (e for e in new if " -A " in f" {e.split(' ', 1)[1]}"):
        table, rule = entry.split(" ", 1)
        _run("iptables", "-t", table, "-D", *shlex.split(rule)[1:], check=False)
    for entry in (e for e in new if e.split(" ", 1)[1].startswith(":")):
        table, chain = entry.split(" ", 1)
        _run("iptables", "-t", table, "-F", chain[1:].split()[0], check=False)
        _run("iptables", "-t", table, "-X", chain[1:].split()[0], check=False)
    left = sorted(_kube_rules() - before)
    if left:
        raise RuntimeError("iptables rules left behind:\n" + "\n".join(left))


def _node_ready(api: KubeApi) -> bool:
    core = kubernetes.client.CoreV1Api(api._admin())
    try:
        node = core.read_node(NODE_NAME)
    except kubernetes.client.ApiException as error:
        if error.status == 404:
            return False
        raise
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def _kernel_settings() -> dict[str, str]:
    return {name: (Path("/proc/sys") / name).read_text().strip() for name in KERNEL_SETTINGS}


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _pod_logs() -> set[Path]:
    """The two directories where kubelet 1.20 keeps container logs (not movable), if they
    exist, and what is in them."""
    return {
        *(d for d in POD_LOG_DIRS if d.is_dir()),
        *(p for d in POD_LOG_DIRS if d.is_dir() for p in d.iterdir()),
    }


def _remove_pod_logs(before: set[Path]) -> None:
    """What the kubelet added there (the directories too, when it made them)."""
    for path in sorted(_pod_logs() - before, key=lambda p: len(p.parts), reverse=True):
        _run("rm", "-rf", "--", str(path), check=False)


@contextlib.contextmanager
def running_node(directory: Path) -> Iterator[KubeNode]:
    """The whole cluster, up and the node Ready; everything taken down on the way out."""
    _require_tools()
    images = {PAUSE_IMAGE: pause_archive(), DEBIAN_IMAGE: debian_archive()}
    kernel, netns_before, logs_before = _kernel_settings(), _netns(), _pod_logs()
    rules_before = _kube_rules()
    bridge = f"pwk{secrets.token_hex(3)}"
    processes = _Processes()
    ca = _Ca.create()
    files = _node_secrets(directory, ca)
    node: KubeNode | None = None
    try:
        _make_bridge(bridge)
        etcd, etcd_url = kubeapi._start_etcd(directory)
        processes.running.append(("etcd", etcd))
        apiserver, server = kubeapi._start_apiserver(
            binary("kube-apiserver"), directory, etcd_url, files, _apiserver_flags(files), NODE_IP
        )
        processes.running.append(("kube-apiserver", apiserver))
        admin = kubeapi._admin_kubeconfig(directory, server, files["ca"])
        api = KubeApi(server=server, ca=files["ca"], kubeconfig=admin, directory=directory, _ca=ca)
        _controllers(processes, directory, files, admin)
        socket = _start_containerd(processes, directory, bridge)
        node = KubeNode(api, directory, socket, bridge, images)
        for image, archive in images.items():
            # The layout names the tag only; --base-name makes it the full name pods use.
            node.ctr("images", "import", "--base-name", image.rsplit(":", 1)[0], str(archive))
        _start_kubelet(processes, directory, api, files, socket)
        _start_kube_proxy(processes, directory, api)
        wait_until(
            f"node {NODE_NAME} Ready",
            lambda: processes.check(directory) or _node_ready(api),
            timeout=START_TIMEOUT,
            every=0.5,
            error=RuntimeError,
            detail=lambda: tail_of(directory / "kubelet.log")(),
        )
        yield node
    finally:
        if node is not None:
            _drain_pods(node)
            processes.stop(down_to="containerd")
            _kill_tasks(node)
        processes.stop()
        _run(str(binary("kube-proxy")), "--cleanup", check=False)
        _clean_runtime(directory, bridge, netns_before)
        _remove_pod_logs(logs_before)
        for name, value in kernel.items():
            (Path("/proc/sys") / name).write_text(value)
        _remove_kube_rules(rules_before)


@pytest.fixture(scope="session")
def kube_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeNode]:
    """One real node for the session (tests/kubenode.py); skipped only where the machine cannot
    run a kubelet, saying why (:data:`NODE_SKIP`)."""
    if NODE_SKIP:
        pytest.skip(NODE_SKIP)
    with running_node(tmp_path_factory.mktemp("kube-node")) as node:
        try:
            yield node
        finally:
            node.api.close()


def _drain_pods(node: KubeNode) -> None:
    """Delete every pod through the API and wait until the kubelet has stopped them (their
    sandboxes' network namespaces and mounts go with them)."""
    core = node.core()
    try:
        node.kubectl(
            "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false"
        )
        wait_until(
            "every pod gone",
            lambda: not core.list_pod_for_all_namespaces().items,
            timeout=90,
            every=0.5,
            error=RuntimeError,
        )
    except (RuntimeError, subprocess.SubprocessError, kubernetes.client.ApiException):
        pass  # the teardown below kills what is left by PID


def _kill_tasks(node: KubeNode) -> None:
    """Containers the kubelet did not stop (a failed drain): killed through containerd, so their
    shims exit too."""
    with contextlib.suppress(RuntimeError):
        for task in node.ctr("tasks", "list", "--quiet").stdout.split():
            node.ctr("tasks", "kill", "--signal", "SIGKILL", task)
            wait_until(
                f"task {task} stopped",
                lambda task=task: node.ctr("tasks", "delete", task, check=False).returncode == 0,
                timeout=30,
                every=0.2,
                error=RuntimeError,
            )


def _clean_runtime(directory: Path, bridge: str, netns_before: set[str]) -> None:
    """What outlives the processes: containerd's shims (and their containers), mounts under the
    temp dir, the pods' network namespaces, the bridge, the kubelet's cgroups."""
    marker = str(directory).encode()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            if argv.startswith(b"/usr/bin/containerd-shim") and marker in argv:
                os.kill(int(pid), 9)
    _unmount_below(directory)
    for name in sorted(_netns() - netns_before):
        if name.startswith("cni-"):
            _run("ip", "netns", "delete", name, check=False)
    _run("ip", "link", "delete", bridge, check=False)
    _remove_cgroups("kubepods")


def _remove_cgroups(name: str) -> None:
    """Remove the kubelet's (now empty) cgroup tree in every v1 hierarchy, deepest first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / name
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()

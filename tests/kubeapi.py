"""A real Kubernetes API server for tests: kube-apiserver v1.20.2 (built from Debian's source
package by ``scripts/kube-apiserver build``) on Debian's etcd, both on free loopback ports, all
state in one scratch directory, killed by PID at the end of the session.

Recipe: shared/testbeds/README.md §4. There is no controller-manager, scheduler or kubelet:
namespaces never finish deleting (so every test takes a fresh one from ``namespace()``), Jobs and
Deployments never create pods, and nothing fills in status a controller would. The ServiceAccount
admission plugin is disabled, because without the token controller no pod could be created at all.

Authentication: the admin kubeconfig carries a static token (group ``system:masters``); every other
user gets a client certificate signed by the server's client CA, so ``client(user)`` and
``kubeconfig_for(user)`` authenticate *as* that user (a stronger check than impersonation, and one a
subprocess using the Python client can use too). A ServiceAccount user
(``system:serviceaccount:NS:NAME``) also gets the groups the server gives real ServiceAccounts.

Usage::

    @pytest.mark.apiserver
    def test_x(kube_api: KubeApi) -> None:
        ns = kube_api.namespace()
        core = kubernetes.client.CoreV1Api(kube_api.client())
        sa = kube_api.client("system:serviceaccount:%s:ctrl" % ns)
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import secrets
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "crds"
BUILD_SCRIPT = REPO / "scripts" / "kube-apiserver"
ETCD = "/usr/bin/etcd"
ADMIN_TOKEN = "patchwarden-admin-" + secrets.token_hex(8)
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def apiserver_binary() -> Path:
    """The cached kube-apiserver; a clear failure (never a skip) when it has not been built."""
    override = os.environ.get("KUBE_APISERVER")
    if override:
        return Path(override)
    found = subprocess.run([str(BUILD_SCRIPT), "path"], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        pytest.fail(
            "kube-apiserver is not built: run `make kube-apiserver` (or scripts/kube-apiserver "
            f"build, ~4 min once) or deselect with -m 'not apiserver'.\n{found.stderr.strip()}",
            pytrace=False,
        )
    return Path(found.stdout.strip())


# --- certificates ---------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class _Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> _Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "patchwarden-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
        addresses: Sequence[str] = (),
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a client (CN = user, O = groups) or the server (valid
        for localhost and 127.0.0.1, and ``addresses`` too)."""
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def groups_of(user: str, groups: Sequence[str]) -> tuple[str, ...]:
    """The groups the server would give ``user``: a ServiceAccount is in the ServiceAccount
    groups (as with a real token or impersonation); ``system:authenticated`` is added by the
    server itself."""
    parts = user.split(":")
    extra: tuple[str, ...] = ()
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        extra = ("system:serviceaccounts", f"system:serviceaccounts:{parts[2]}")
    return tuple(dict.fromkeys((*groups, *extra)))


# --- the server -----------------------------------------------------------------------------


@dataclass
class KubeApi:
    """A running API server: URL, CA, an admin kubeconfig and credentials for any user."""

    server: str
    ca: Path
    kubeconfig: Path
    directory: Path
    _ca: _Ca = field(repr=False)
    _kubeconfigs: dict[tuple[str, tuple[str, ...]], Path] = field(default_factory=dict)
    _clients: list[kubernetes.client.ApiClient] = field(default_factory=list)
    _admin_client: kubernetes.client.ApiClient | None = None
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def kubeconfig_for(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` (in ``groups``) with a client certificate."""
        all_groups = groups_of(user, groups)
        key = (user, all_groups)
        if key not in self._kubeconfigs:
            cert, private = self._ca.issue(user, all_groups)
            index = len(self._kubeconfigs)
            path = self.directory / "kubeconfigs" / f"user-{index}.yaml"
            path.parent.mkdir(exist_ok=True)
            (path.parent / f"user-{index}.crt").write_bytes(cert)
            key_file = path.parent / f"user-{index}.key"
            key_file.write_bytes(private)
            key_file.chmod(0o600)
            credentials = {
                "client-certificate": str(path.parent / f"user-{index}.crt"),
                "client-key": str(key_file),
            }
            path.write_text(yaml.safe_dump(_kubeconfig(self.server, self.ca, user, credentials)))
            path.chmod(0o600)
            self._kubeconfigs[key] = path
        return self._kubeconfigs[key]

    def client(
        self, user: str | None = None, groups: Sequence[str] = ()
    ) -> kubernetes.client.ApiClient:
        """An API client: the admin by default, else acting as ``user`` (e.g.
        ``system:serviceaccount:NS:NAME``) so RBAC decides what it may do."""
        path = self.kubeconfig if user is None else self.kubeconfig_for(user, groups)
        api = kubernetes.config.new_client_from_config(config_file=str(path))
        self._clients.append(api)
        return api

    def _admin(self) -> kubernetes.client.ApiClient:
        """One shared admin client for the fixture's own calls (each ApiClient owns a pool)."""
        if self._admin_client is None:
            self._admin_client = self.client()
        return self._admin_client

    def namespace(self, prefix: str = "pw") -> str:
        """A fresh namespace, created. Never reuse one: deletion never completes on this server."""
        name = f"{prefix}-{next(self._serial)}-{secrets.token_hex(3)}"
        core = kubernetes.client.CoreV1Api(self._admin())
        core.create_namespace(kubernetes.client.V1Namespace(metadata={"name": name}))
        return name

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl as the admin (the preinstalled 1.32 prints a version-skew warning: harmless)."""
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def close(self) -> None:
        for api in self._clients:
            api.close()
        self._clients.clear()
        self._admin_client = None


def _kubeconfig(server: str, ca: Path, user: str, credentials: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_ready(
    url: str, context: ssl.SSLContext, process: subprocess.Popen[bytes], log: Path
) -> None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited with {process.returncode}:\n{_tail(log)}")
        with urllib.request.urlopen(request, context=context, timeout=2) as response:
            return bool(response.status == 200)

    wait_until(
        url,
        ready,
        timeout=START_TIMEOUT,
        every=0.2,
        ignore=(OSError,),  # urllib's URLError is one
        error=RuntimeError,
        detail=lambda: _tail(log),
    )


def _spawn(log: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr into ``log`` (the child keeps its own descriptor)."""
    with log.open("wb") as sink:
        return subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)


def _start_etcd(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    if not os.path.exists(ETCD):
        pytest.fail("etcd is not installed: run `make install` (Debian etcd-server)", pytrace=False)
    client, peer = free_port(), free_port()
    log = directory / "etcd.log"
    process = _spawn(
        log,
        [
            ETCD,
            "--name=t",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=t=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    url = f"http://127.0.0.1:{client}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"etcd exited with {process.returncode}:\n{_tail(log)}")
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return b'"true"' in response.read()

    try:
        wait_until(
            "etcd healthy",
            healthy,
            timeout=START_TIMEOUT,
            every=0.1,
            ignore=(OSError,),
            error=RuntimeError,
            detail=lambda: _tail(log),
        )
    except RuntimeError:
        _stop(process)
        raise
    return process, url


def _write_secrets(directory: Path, ca: _Ca, addresses: Sequence[str] = ()) -> dict[str, Path]:
    """The API server's certificates and keys; its serving certificate is valid for ``addresses``
    too (a server pods reach)."""
    files = {
        "ca": directory / "ca.crt",
        "tls_cert": directory / "apiserver.crt",
        "tls_key": directory / "apiserver.key",
        "sa_key": directory / "sa.key",
        "sa_pub": directory / "sa.pub",
        "tokens": directory / "tokens.csv",
    }
    files["ca"].write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    cert, key = ca.issue("kube-apiserver", server=True, addresses=addresses)
    files["tls_cert"].write_bytes(cert)
    files["tls_key"].write_bytes(key)
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["sa_key"].write_bytes(_pem_key(signing))
    files["sa_pub"].write_bytes(
        signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    files["tokens"].write_text(f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"\n')
    for path in files.values():
        path.chmod(0o600)
    return files


API_ONLY = ("--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount")
"""The flags for a server alone: no token controller runs beside it, so the ServiceAccount plugin
would refuse every pod. A cluster with a controller-manager and a kubelet (tests/kubenode.py)
passes its own instead."""


def _start_apiserver(
    binary: Path,
    directory: Path,
    etcd: str,
    files: dict[str, Path],
    extra: Sequence[str] = API_ONLY,
    address: str = "127.0.0.1",
) -> tuple[subprocess.Popen[bytes], str]:
    """The API server on ``address`` (it serves and advertises there); waits until ready."""
    port = free_port()
    log = directory / "kube-apiserver.log"
    process = _spawn(
        log,
        [
            str(binary),
            f"--etcd-servers={etcd}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--secure-port={port}",
            f"--cert-dir={directory / 'certs'}",
            f"--tls-cert-file={files['tls_cert']}",
            f"--tls-private-key-file={files['tls_key']}",
            f"--client-ca-file={files['ca']}",
            f"--token-auth-file={files['tokens']}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={files['sa_pub']}",
            f"--service-account-signing-key-file={files['sa_key']}",
            "--service-cluster-ip-range=10.96.0.0/24",
            "--endpoint-reconciler-type=none",
            # As in every real cluster (kubeadm, kind, k3s, managed): node install Jobs are
            # privileged, and the default (false) refuses them at admission.
            "--allow-privileged=true",
            *extra,
        ],
    )
    server = f"https://{address}:{port}"
    context = ssl.create_default_context(cafile=str(files["ca"]))
    try:
        _wait_ready(f"{server}/readyz", context, process, log)
    except BaseException:
        _stop(process)
        raise
    return process, server


def _admin_kubeconfig(directory: Path, server: str, ca: Path) -> Path:
    path = directory / "admin.kubeconfig"
    path.write_text(yaml.safe_dump(_kubeconfig(server, ca, "admin", {"token": ADMIN_TOKEN})))
    path.chmod(0o600)
    return path


def install_crds(api: KubeApi, timeout: float = 30.0) -> list[str]:
    """Create (or replace) every CRD in crds/ and wait until each is Established."""
    ext = kubernetes.client.ApiextensionsV1Api(api._admin())
    names = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        names.append(name)
        try:
            ext.create_custom_resource_definition(body)
        except kubernetes.client.ApiException as error:
            if error.status != 409:
                raise RuntimeError(f"{path.name} does not install: {error.body}") from error
            current = ext.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, body)

    def unestablished() -> list[str]:
        return [name for name in sorted(names) if not _established(ext, name)]

    wait_until(
        "the CRDs Established",
        lambda: not unestablished(),
        timeout=timeout,
        every=0.1,
        error=RuntimeError,
        detail=lambda: ", ".join(unestablished()),
    )
    return names


def _established(ext: Any, name: str) -> bool:
    conditions = ext.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    """kube-apiserver + etcd for the whole session, with the project CRDs installed."""
    binary = apiserver_binary()
    directory = tmp_path_factory.mktemp("kube-api")
    ca = _Ca.create()
    files = _write_secrets(directory, ca)
    etcd, etcd_url = _start_etcd(directory)
    try:
        apiserver, server = _start_apiserver(binary, directory, etcd_url, files)
    except BaseException:
        _stop(etcd)
        raise
    api = KubeApi(
        server=server,
        ca=files["ca"],
        kubeconfig=_admin_kubeconfig(directory, server, files["ca"]),
        directory=directory,
        _ca=ca,
    )
    try:
        install_crds(api)
        yield api
    finally:
        api.close()
        _stop(apiserver)
        _stop(etcd)

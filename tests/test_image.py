"""`make image` (scripts/image, issue 18 item 1): the OCI archive built here from Debian's packages
runs its entrypoint, says what the Dockerfile says, carries the locked Python packages, is the same
bytes when built again, and is named so that ``ctr images import`` tags it.

The first run builds the Debian root with mmdebstrap (minutes; cached under
/var/cache/patchwarden like the test fleet's root), later ones only the project's layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import __version__
from tests.waiting import tail_of, wait_until

ROOT = Path(__file__).resolve().parent.parent
NAME = f"patchwarden.io/patchwarden:{__version__}"
TOOLS = ("mmdebstrap", "umoci", "tar", "unshare", "chroot")


def _skip_reason() -> str:
    if os.geteuid() != 0:
        return "building the image needs root (mmdebstrap's root mode, overlay, chroot)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or not list(Path("/usr/share/python-wheels").glob("pip-*.whl")):
        return f"building the image needs {missing or 'python3-pip-whl'} (make install)"
    return ""


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_skip_reason()), reason=_skip_reason() or "-"),
]


def _build(out: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, ROOT / "scripts/image", "build", "--out", out],
        capture_output=True,
        text=True,
        check=False,
        timeout=60 * 60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("image") / f"patchwarden-{__version__}.oci.tar"
    return out, _build(out)


def _blob(archive: tarfile.TarFile, digest: str) -> Any:
    member = archive.extractfile("blobs/" + digest.replace(":", "/"))
    assert member is not None
    return json.loads(member.read())


@pytest.fixture(scope="module")
def oci(built: tuple[Path, list[str]]) -> dict[str, Any]:
    """index.json, the manifest and the image config, read from the archive."""
    with tarfile.open(built[0]) as archive:
        index_file = archive.extractfile("index.json")
        assert index_file is not None
        index = json.loads(index_file.read())
        manifest = _blob(archive, index["manifests"][0]["digest"])
        config = _blob(archive, manifest["config"]["digest"])
    return {"index": index, "manifest": manifest, "config": config}


@pytest.fixture(scope="module")
def rootfs(built: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive unpacked as a runtime would: umoci applies the layers into a bundle."""
    work = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(built[0]) as archive:
        archive.extractall(work / "layout", filter="tar")
    subprocess.run(
        ["umoci", "unpack", "--image", f"{work / 'layout'}:{__version__}", work / "bundle"],
        check=True,
        capture_output=True,
    )
    return work / "bundle/rootfs"


def _in_image(rootfs: Path, config: dict[str, Any], *argv: str, root: bool = False) -> str:
    """Run ``argv`` in the unpacked root as the image would: its user (or root, as node Jobs
    run), its working directory, only its environment; no container runtime."""
    user = "0:0" if root else config["User"]
    uid, gid = user.split(":")
    done = subprocess.run(
        ["unshare", f"--root={rootfs}", f"--wd={config['WorkingDir']}",
         "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
         "env", "-i", *config["Env"], *argv],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_make_image_prints_the_archive_and_its_name_with_the_manifest_digest(
    built: tuple[Path, list[str]], oci: dict[str, Any]
) -> None:
    out, printed = built
    digest = oci["index"]["manifests"][0]["digest"]
    assert printed == [str(out), f"{NAME}@{digest}"]


def test_building_again_gives_the_same_bytes(built: tuple[Path, list[str]], tmp_path: Path) -> None:
    again = tmp_path / "again.oci.tar"
    assert _build(again)[1] == built[1][1]
    first = hashlib.sha256(built[0].read_bytes()).hexdigest()
    assert hashlib.sha256(again.read_bytes()).hexdigest() == first


def test_the_index_names_the_image_for_ctr_images_import(oci: dict[str, Any]) -> None:
    [manifest] = oci["index"]["manifests"]
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["annotations"] == {
        "io.containerd.image.name": NAME,
        "org.opencontainers.image.ref.name": __version__,
    }
    assert oci["config"]["os"] == "linux" and oci["config"]["architecture"] == "amd64"
    assert len(oci["manifest"]["layers"]) == 2  # Debian + locked wheels, then the project


def test_the_entrypoint_runs_as_the_image_user_without_a_container_runtime(
    rootfs: Path, oci: dict[str, Any]
) -> None:
    config = oci["config"]["config"]
    assert config["User"] == "65532:65532"
    assert (
        _in_image(rootfs, config, *config["Entrypoint"], "--version").strip().endswith(__version__)
    )
    assert "usage" in _in_image(rootfs, config, "python3", "-m", "reconciler.agent", "--help")
    agent = "/opt/patchwarden/agent.pyz"
    assert "usage" in _in_image(rootfs, config, "python3", agent, "--help")
    assert _in_image(rootfs, config, "id", "-un").strip() == "patchwarden"


def test_the_node_job_finds_what_it_runs(rootfs: Path, oci: dict[str, Any]) -> None:
    """The Job's container runs ``patchctl node-agent`` as root and enters the host with
    ``nsenter`` (reconciler/dispatch/nodes/agent_job.py); git and ssh serve Git sources."""
    config = oci["config"]["config"]
    assert "--host-dir" in _in_image(rootfs, config, "patchctl", "node-agent", "--help", root=True)
    for tool in ("nsenter", "git", "ssh"):
        assert _in_image(rootfs, config, "sh", "-c", f"command -v {tool}", root=True).strip()
    assert not (rootfs / "usr/bin/apt-get").exists()  # nothing the controller does not need
    assert not (rootfs / "usr/bin/pip").exists() and not (rootfs / "usr/local/bin/pip").exists()


# --- the Dockerfile says the same -------------------------------------------------------------


def _locked() -> dict[str, set[str]]:
    """Each package's locked versions: one, or one per Python version where the lock's markers
    pin it twice (numpy); the image's pip keeps the one whose marker matches its python3."""
    pins: dict[str, set[str]] = {}
    for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and "==" in line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins.setdefault(_canonical(name.split("[")[0]), set()).add(
                rest.split()[0].split(";")[0]
            )
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_holds_the_locked_python_packages(rootfs: Path) -> None:
    site = rootfs / "usr/local/lib/python3.11/dist-packages"
    installed = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").rpartition("-")
        installed[_canonical(name)] = version
    locked = _locked()
    assert installed.pop("patchwarden") == __version__
    assert {n: v for n, v in installed.items() if v not in locked.get(n, set())} == {}
    # the runtime closure only: the dev tools of the lock stay out
    assert not {"pytest", "mypy", "ruff", "moto", "ansible-core"} & installed.keys()


def _instructions() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            word, _, rest = line.strip().partition(" ")
            if word.upper() == "FROM":
                stages.append([])
            if stages:
                stages[-1].append((word.upper(), rest.strip()))
    return stages


def _dockerfile() -> dict[str, Any]:
    said: dict[str, Any] = {"Env": [], "ExposedPorts": {}}
    for word, rest in _instructions()[-1]:
        if word == "ENV":
            said["Env"] += shlex.split(rest)
        elif word == "EXPOSE":
            said["ExposedPorts"].update(
                {port if "/" in port else f"{port}/tcp": {} for port in rest.split()}
            )
        elif word in ("USER", "WORKDIR"):
            said["User" if word == "USER" else "WorkingDir"] = rest
        elif word in ("ENTRYPOINT", "CMD"):
            said[word.title()] = json.loads(rest)
    return said


def test_the_dockerfile_and_the_image_describe_the_same_container(oci: dict[str, Any]) -> None:
    config = oci["config"]["config"]
    said = _dockerfile()
    # PATH comes from the Dockerfile's base image (python:3.11-slim), ours from scripts/image
    env = [e for e in config["Env"] if not e.startswith("PATH=")]
    assert sorted(env) == sorted(said.pop("Env"))
    assert {key: config[key] for key in said} == said


def test_the_dockerfile_installs_the_same_locked_requirements() -> None:
    runs = " ".join(rest for stage in _instructions() for word, rest in stage if word == "RUN")
    assert "scripts/image requirements" in runs and "--require-hashes" in runs


# --- containerd imports and runs it --------------------------------------------------------------

CONTAINERD_SKIP = next(
    (f"needs {tool} (Debian's containerd and runc)" for tool in ("containerd", "ctr", "runc")
     if shutil.which(tool) is None),
    "",
)  # fmt: skip


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[list[str]]:
    """A containerd of the test's own (its root, state and socket in tmp_path; no CRI plugin),
    never the host's: the ``ctr`` command line that talks to it."""
    sock = tmp_path / "containerd.sock"
    config = tmp_path / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{tmp_path / "root"}"\nstate = "{tmp_path / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
    )
    log = tmp_path / "containerd.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(["containerd", "--config", config], stdout=out, stderr=out)
    ctr = ["ctr", "--address", str(sock), "--namespace", "k8s.io"]
    try:
        wait_until(
            "containerd answers",
            lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0,
            detail=tail_of(log),
        )
        yield ctr
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


@pytest.mark.skipif(bool(CONTAINERD_SKIP), reason=CONTAINERD_SKIP or "-")
def test_ctr_images_import_names_it_and_runc_runs_it_as_the_image_user(
    built: tuple[Path, list[str]], containerd: list[str]
) -> None:
    """What the kubelet's node does with the archive (docs/kubernetes.md "Build the image")."""
    imported = subprocess.run(
        [*containerd, "images", "import", built[0]], capture_output=True, text=True, check=False
    )
    assert imported.returncode == 0, imported.stderr
    listed = subprocess.run(
        [*containerd, "images", "ls", "--quiet"], capture_output=True, text=True, check=True
    )
    assert listed.stdout.split() == [NAME]

    def run(name: str, *argv: str) -> str:
        done = subprocess.run(
            [*containerd, "run", "--rm", NAME, name, *argv],
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert run("pw-version", "patchctl", "--version").split() == ["patchctl", __version__]
    assert run("pw-user", "id", "-u").strip() == "65532"

"""Files named by resources stay inside the directories the operator configured (issue 12, item 2).

A ManagedInstance's ``knownHostsFile``/``identityFile`` and a ComplianceReport's directory
``destination`` come from whoever may commit; the controller reads and writes them as itself. The
attack: ``knownHostsFile: /etc/shadow`` used to put the file's first line into the job error, the
JSON log, the audit log and the state database. Here it runs through ``patchctl reconcile``
against a real sshd, and the secret must appear nowhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.api.resources import SshConnection
from reconciler.dispatch import AgentFailed, transport_for
from reconciler.state import StateStore
from tests.sshd import Sshd, have_sshd, start_sshd
from tests.test_report_schedule import Fleet, report_yaml

SECRET = "root:$6$pw-secret-7f3a9c$Zq0xLeakedHashThatMustNeverBeShown:19000:0:99999:7:::"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


def instance_yaml(name: str, root: Path, port: int, **files: str) -> str:
    fields = "".join(f"    {field}: {value}\n" for field, value in files.items())
    return (
        "apiVersion: patchwarden.io/v1alpha1\nkind: ManagedInstance\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n  connection:\n    type: ssh\n    host: 127.0.0.1\n"
        f"    port: {port}\n    root: {root}\n{fields}"
    )


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(not have_sshd(), reason="needs root, sshd and python3")
def test_a_known_hosts_file_naming_a_secret_leaks_it_nowhere(
    sshd: Sshd, tmp_path: Path, system_root: Path
) -> None:
    """Outside --ssh-dir (absolute, or a symlink out of it): refused, never read. Inside it but
    not a known_hosts or key file: refused without quoting it. Relative names are read inside
    --ssh-dir and reach the real sshd."""
    shadow = tmp_path / "etc" / "shadow"
    shadow.parent.mkdir()
    shadow.write_text(SECRET + "\n")
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    shutil.copy(sshd.client_key_file, ssh_dir / "id_ed25519")
    shutil.copy(sshd.known_hosts_file, ssh_dir / "known_hosts")
    (ssh_dir / "copied-shadow").write_text(SECRET + "\n")
    (ssh_dir / "escape").symlink_to(shadow)
    config = tmp_path / "config"
    config.mkdir()
    key, known = "id_ed25519", "known_hosts"
    (config / "instances.yaml").write_text(
        "---\n".join(
            [
                instance_yaml("absolute", system_root, sshd.port, knownHostsFile=str(shadow)),
                instance_yaml("symlink", system_root, sshd.port, knownHostsFile="escape"),
                instance_yaml("bad-hosts", system_root, sshd.port, knownHostsFile="copied-shadow"),
                instance_yaml(
                    "bad-key",
                    system_root,
                    sshd.port,
                    identityFile="copied-shadow",
                    knownHostsFile=known,
                ),
                instance_yaml(
                    "good", system_root, sshd.port, identityFile=key, knownHostsFile=known
                ),
            ]
        )
    )
    state = tmp_path / "state" / "state.db"
    logins = sshd.accepted_logins()
    run = patchctl(
        "reconcile",
        "--source",
        str(config),
        "--state",
        str(state),
        "--ssh-dir",
        str(ssh_dir),
        "-o",
        "json",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sshd.accepted_logins() > logins, "the relative names were read inside --ssh-dir"

    with StateStore(state) as store:
        jobs = store.latest_jobs()
    errors = {name: (job.result or {}).get("error", {}) for name, job in jobs.items()}
    assert errors["good"] == {}
    assert errors["absolute"]["code"] == errors["symlink"]["code"] == "SshFileRefused"
    assert errors["absolute"]["message"] == (
        f"ManagedInstance absolute: spec.connection.knownHostsFile {shadow} is outside the SSH "
        f"directory {ssh_dir}: put the file there (a relative name is read inside it), or start "
        "patchctl with --ssh-dir naming the directory that holds it"
    )
    assert "spec.connection.knownHostsFile escape is outside" in errors["symlink"]["message"]
    assert errors["bad-hosts"]["code"] == "SshHostKeyRejected"
    assert errors["bad-hosts"]["message"].endswith(
        f"spec.connection.knownHostsFile {ssh_dir / 'copied-shadow'}: it is not an OpenSSH "
        "known_hosts file: check the file and the field"
    )
    assert errors["bad-key"]["code"] == "SshAuthFailed"
    assert "spec.connection.identityFile" in errors["bad-key"]["message"]

    # Every sink: the command's output and JSON log, the audit log, the state store's bytes.
    assert "pw-secret" not in run.stdout + run.stderr
    written = [p for p in state.parent.rglob("*") if p.is_file()]
    assert state.parent / "audit.jsonl" in written
    for path in written:
        assert b"pw-secret" not in path.read_bytes(), path


def test_transport_for_reads_ssh_files_only_inside_the_ssh_dir(tmp_path: Path) -> None:
    ssh_dir = tmp_path / "ssh"
    (ssh_dir / "keys").mkdir(parents=True)
    (ssh_dir / "known_hosts").write_text("")
    (tmp_path / "elsewhere").write_text("")
    (ssh_dir / "keys" / "out").symlink_to(tmp_path / "elsewhere")

    def built(path: str) -> str | None:
        connection = SshConnection(type="ssh", host="h", known_hosts_file=path)
        transport = transport_for(connection, ssh_dir=ssh_dir)
        return transport.endpoint.known_hosts_file  # type: ignore[attr-defined, no-any-return]

    assert built("known_hosts") == str(ssh_dir / "known_hosts")
    assert built(str(ssh_dir / "known_hosts")) == str(ssh_dir / "known_hosts")
    for outside in (str(tmp_path / "elsewhere"), "keys/out", "/etc/passwd"):
        with pytest.raises(AgentFailed) as refused:
            built(outside)
        assert refused.value.code == "SshFileRefused", outside
        assert f"is outside the SSH directory {ssh_dir}" in str(refused.value)


def test_a_report_destination_outside_the_report_dir_is_refused(tmp_path: Path) -> None:
    """Nothing is written outside --report-dir; the run is FAILED with the field, the allowed
    directory and what to do. A relative destination is written inside it."""
    outside = tmp_path / "outside"
    reports = report_yaml("escape", outside, "rate(1 hour)", format="json") + report_yaml(
        "inside", "weekly", "rate(1 hour)", format="json"
    )
    now = datetime(2026, 11, 28, 10, 20, tzinfo=UTC)
    fleet = Fleet(tmp_path, reports, now)
    fleet.report_dir = tmp_path / "reports"
    fleet.loop = fleet.new_loop()
    fleet.passes(now)
    (failed,) = fleet.store.report_runs("escape")
    assert failed.error == (
        f"spec.destination {outside} is outside the report directory {tmp_path / 'reports'}: "
        "give a directory inside it (a relative name is written there), or start patchctl with "
        "--report-dir naming a directory that holds it"
    )
    assert not outside.exists()
    (written,) = fleet.store.report_runs("inside")
    assert written.error is None
    assert [Path(p).parent for p in written.locations] == [tmp_path / "reports" / "weekly"]
    assert json.loads(Path(written.locations[0]).read_text())

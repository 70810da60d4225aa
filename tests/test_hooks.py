"""A window task's hooks and health checks (issue 14 item 4, docs/hooks.md), end to end through
the reconcile loop on real Debian roots (real apt and dpkg, tests/aptlab.py), over the local
transport and a real sshd, with HTTP checks against a real HTTP server on loopback. Retries wait
through the loop's injected ``wait``, which records the intervals instead of sleeping.

What a user notices: what dpkg installed (and when, relative to each hook), the job's status and
error, the outputs stored with the job, ``patchctl compliance --history`` and ``patchctl audit``,
and a window that stops starting targets once failed health checks spend its maxErrors.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.snapshot import SnapshotInvalid, build_snapshot
from reconciler.defaults import predefined_baselines
from reconciler.dispatch import AgentFailed, LocalTransport, SshPool, transport_for
from reconciler.loop import Reconciler
from reconciler.loop.hooks import JobHooks
from reconciler.report.notify.audit import AuditLog, default_path
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.sources import DirectorySource
from reconciler.state import JobRecord, StateStore
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import (
    BASELINE_YAML,
    ManualClock,
    documents,
    local_instance_yaml,
    make_fleet,
    ssh_instance_yaml,
    versions,
    window_yaml,
)
from tests.sshd import Sshd, have_sshd, start_sshd

ROOT = Path(__file__).resolve().parent.parent
PATCHCTL = [sys.executable, "-m", "reconciler"]
BEFORE = [p for p in INSTALLED if p.name in ("pwtest-lib", "pwtest-tool")]
UNPATCHED = {"pwtest-lib": "1.0-1", "pwtest-tool": "2.0-1"}
PATCHED = {"pwtest-lib": "1.0-2", "pwtest-tool": "2.1-1"}
NOON = "cron(0 12 * * ? *)"
IN_WINDOW = datetime(2026, 11, 28, 12, 30, tzinfo=UTC)


def logs(stage: str) -> str:
    """A hook command that appends ``stage`` and pwtest-lib's installed version, as dpkg on the
    hook's machine reads it, to ``hooks.log`` in the instance's root."""
    script = (
        'v=$(dpkg-query --admindir="$PATCHWARDEN_ROOT/var/lib/dpkg" -W -f="\\${Version}" '
        f'pwtest-lib); echo "{stage} $PATCHWARDEN_STAGE $v" >> "$PATCHWARDEN_ROOT/hooks.log"'
    )
    return json.dumps(["/bin/sh", "-c", script])


def hook_lines(root: Path) -> list[str]:
    log = root / "hooks.log"
    return log.read_text().splitlines() if log.exists() else []


@dataclass
class Lab:
    """A fleet of Debian roots under one window, its loop, and what it told observers."""

    roots: dict[str, Path]
    loop: Reconciler
    state: Path
    waits: list[float] = field(default_factory=list)
    heard: list[Occurrence] = field(default_factory=list)

    @property
    def store(self) -> StateStore:
        return self.loop.store

    def installs(self) -> list[JobRecord]:
        return [job for job in self.store.jobs() if job.operation == "Install"]

    def job_of(self, name: str) -> JobRecord:
        (job,) = [job for job in self.installs() if job.instance == name]
        return job


@pytest.fixture
def lab_factory(tmp_path: Path, apt_repo: Repo) -> Iterator[Any]:
    labs: list[Lab] = []

    def make(
        names: list[str],
        task_fields: str,
        *,
        instances: str = "",
        transports: Any = None,
        **window: Any,
    ) -> Lab:
        roots = make_fleet(tmp_path / "fleet", apt_repo, names, BEFORE)
        config = tmp_path / "config"
        config.mkdir()
        machines = instances or documents(*(local_instance_yaml(n, r) for n, r in roots.items()))
        window.setdefault("max_concurrency", "1")
        text = window_yaml("noon", NOON, task_fields=task_fields, **window)
        (config / "fleet.yaml").write_text(documents(BASELINE_YAML, text, machines))
        state = tmp_path / "state" / "state.db"
        state.parent.mkdir()
        audit = AuditLog(default_path(state))
        waits: list[float] = []
        heard: list[Occurrence] = []
        loop = Reconciler(
            DirectorySource(config),
            StateStore(state),
            transports
            or (
                lambda i: transport_for(
                    i.spec.connection, trust_root_scripts=True, trust_local_hooks=True
                )
            ),
            clock=ManualClock(IN_WINDOW),
            observers=[audit, heard.append],
            wait=waits.append,
        )
        lab = Lab(roots, loop, state, waits, heard)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.store.close()


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PATCHCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


class Answers(BaseHTTPRequestHandler):
    """Answers GETs with the statuses the server was given, in turn (the last one repeats)."""

    def do_GET(self) -> None:
        server: Any = self.server
        with server.lock:
            status = server.statuses.pop(0) if len(server.statuses) > 1 else server.statuses[0]
            server.paths.append(self.path)
        body = f"status {status} from the test server\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    server.statuses, server.paths, server.lock = [200], [], threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# --- the schema --------------------------------------------------------------------------------

TASK = """\
apiVersion: patchwarden.io/v1alpha1
kind: MaintenanceWindow
metadata: {name: noon}
spec:
  schedule: cron(0 12 * * ? *)
  duration: 3
  cutoff: 1
  targets: {selector: {matchLabels: {role: web}}}
  tasks:
    - name: patch
      operation: OPERATION
"""


def problems(fields: str, operation: str = "Install") -> list[str]:
    text = TASK.replace("OPERATION", operation) + fields
    with pytest.raises(SnapshotInvalid) as caught:
        build_snapshot([("w.yaml", text.encode())], predefined_baselines())
    return [str(p) for p in caught.value.problems]


def test_a_task_with_hooks_and_checks_of_each_kind_is_valid() -> None:
    fields = """\
      hooks:
        preInstall: [{argv: [/usr/bin/systemctl, stop, app], timeoutSeconds: 60}]
        postInstall: [{argv: [/usr/bin/true]}]
        onExit: [{argv: [/usr/bin/systemctl, start, app]}]
      healthChecks:
        - {name: app, command: {argv: [/usr/bin/curl, -fsS, localhost:8080]}, retries: 3}
        - {name: web, http: {url: "https://{host}:8443/healthz", expectedStatus: 204}}
"""
    snapshot = build_snapshot(
        [("w.yaml", (TASK.replace("OPERATION", "Install") + fields).encode())],
        predefined_baselines(),
    )
    (task,) = snapshot.windows["noon"].spec.tasks
    assert task.hooks is not None and task.hooks.pre_install[0].timeout_seconds == 60
    assert [c.name for c in task.health_checks] == ["app", "web"]
    assert task.health_checks[1].http is not None
    assert not task.health_checks[1].http.insecure_skip_tls_verify  # TLS verified by default


@pytest.mark.parametrize(
    ("fields", "operation", "says"),
    [
        (
            "      hooks: {onExit: [{argv: [/bin/true]}]}\n",
            "Scan",
            "w.yaml:12: spec.tasks[0].hooks: hooks apply to Install tasks only; remove them",
        ),
        (
            "      healthChecks: [{name: a, command: {argv: [/bin/true]}}]\n",
            "Scan",
            "w.yaml:12: spec.tasks[0].healthChecks: healthChecks apply to Install tasks only",
        ),
        (
            "      hooks: {preinstall: [{argv: [/bin/true]}]}\n",
            "Install",
            "spec.tasks[0].hooks.preinstall",
        ),
        (
            "      healthChecks: [{name: a}]\n",
            "Install",
            "give exactly one of command (on the machine) or http (a GET)",
        ),
        (
            "      healthChecks: [{name: a, http: {url: 'http://{name}/'}}]\n",
            "Install",
            "the only placeholder is {host}",
        ),
        (
            "      healthChecks: [{name: a, http: {url: 'ftp://{host}/'}}]\n",
            "Install",
            "must start with http:// or https://",
        ),
        (
            "      healthChecks: [{name: a, http: {url: 'https://u:secret@{host}/'}}]\n",
            "Install",
            "must not carry credentials",
        ),
        (
            "      healthChecks: [{name: a, http: {url: 'http://{host}/'}},"
            " {name: a, command: {argv: [/bin/true]}}]\n",
            "Install",
            "health check names must be unique: a",
        ),
        (
            "      hooks: {preInstall: [{argv: [/bin/true], timeoutSeconds: 0}]}\n",
            "Install",
            "spec.tasks[0].hooks.preInstall[0].timeoutSeconds",
        ),
        ("      hooks: {preInstall: [{argv: []}]}\n", "Install", "preInstall[0].argv"),
    ],
    ids=[
        "hooks-on-scan",
        "checks-on-scan",
        "misspelt-stage",
        "check-of-no-kind",
        "unknown-placeholder",
        "not-http",
        "credentials",
        "duplicate-names",
        "zero-timeout",
        "empty-argv",
    ],
)
def test_a_hook_or_check_that_cannot_be_honoured_is_refused_naming_its_field(
    fields: str, operation: str, says: str
) -> None:
    found = problems(fields, operation)
    assert len(found) == 1 and says in found[0], found


# --- the agent ----------------------------------------------------------------------------------


def agent_stage(stage: str, commands: list[dict[str, Any]]) -> dict[str, Any]:
    word = base64.b64encode(json.dumps(commands).encode()).decode()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler.agent",
            "hooks",
            f"--stage={stage}",
            f"--commands={word}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.stderr == ""
    document: dict[str, Any] = json.loads(run.stdout)
    return document


def test_the_agent_keeps_the_end_of_a_flood_and_kills_a_command_that_outlives_its_timeout() -> None:
    flood = "head -c 100000 /dev/zero | tr '\\0' x; echo; echo the-last-words"
    # The timed-out command's child holds its pipes open: the whole group must die.
    stuck = "sleep 600 & sleep 600"
    run = agent_stage(
        "onExit",
        [
            {"argv": ["/bin/sh", "-c", flood], "timeoutSeconds": 30},
            {"argv": ["/bin/sh", "-c", stuck], "timeoutSeconds": 1},
            {"argv": ["/bin/true"], "timeoutSeconds": 30},
        ],
    )
    first, second = run["commands"]  # the third never ran: the stage stops at a failure
    assert run["ok"] is False
    assert first["exitCode"] == 0 and first["stdout"].endswith("the-last-words\n")
    assert len(first["stdout"].encode()) == 4096 and first["stdoutCutBytes"] == 100016 - 4096
    assert second["exitCode"] == 124 and second["timedOut"] is True
    assert "timed out after 1s and was killed" in second["stderr"]
    assert second["seconds"] < 30


def test_the_agent_reports_a_program_that_does_not_exist_without_a_traceback() -> None:
    run = agent_stage("healthCheck", [{"argv": ["no-such-program-pw"], "timeoutSeconds": 5}])
    (command,) = run["commands"]
    assert command["exitCode"] == 127 and "cannot run no-such-program-pw" in command["stderr"]


# --- the loop, on real Debian roots -------------------------------------------------------------

ALL_HOOKS = f"""\
      hooks:
        preInstall: [{{argv: {logs("pre")}}}]
        postInstall: [{{argv: {logs("post")}}}]
        onExit: [{{argv: {logs("exit")}}}]
"""


@needs_apt
def test_hooks_run_around_the_install_in_order_and_are_shown_in_history_and_audit(
    lab_factory: Any,
) -> None:
    lab = lab_factory(["web-1"], ALL_HOOKS)

    summary = lab.loop.reconcile()

    assert summary.jobs == {"Scan succeeded": 1, "Install succeeded": 1}
    root = lab.roots["web-1"]
    assert versions(root) == PATCHED
    # preInstall saw the old version, postInstall and onExit the new one.
    assert hook_lines(root) == [
        "pre preInstall 1.0-1",
        "post postInstall 1.0-2",
        "exit onExit 1.0-2",
    ]
    job = lab.job_of("web-1")
    assert job.result is not None
    assert [(h["stage"], h["ok"]) for h in job.result["hooks"]] == [
        ("preInstall", True),
        ("postInstall", True),
        ("onExit", True),
    ]
    heard = [o.detail["stage"] for o in lab.heard if o.kind is Kind.HOOK_RAN]
    assert heard == ["preInstall", "postInstall", "onExit"]
    lab.store.close()

    history = patchctl("compliance", "web-1", "--history", "--state", str(lab.state), "-o", "json")
    assert history.returncode == 0, history.stderr
    rows = json.loads(history.stdout)
    assert rows[-1]["operation"] == "Install"
    assert rows[-1]["hooks"] == "preInstall ok; postInstall ok; onExit ok"
    audit = patchctl(
        "audit", "--instance", "web-1", "--kind", "job.hook", "--state", str(lab.state)
    )
    assert audit.returncode == 0, audit.stderr
    for stage in ("preInstall ok", "postInstall ok", "onExit ok"):
        assert stage in audit.stdout


@needs_apt
def test_a_failed_pre_install_installs_nothing_fails_the_job_with_its_output_and_on_exit_runs(
    lab_factory: Any,
) -> None:
    refuse = ["/bin/sh", "-c", "head -c 50000 /dev/zero | tr '\\0' y; echo 'not today' >&2; exit 3"]
    lab = lab_factory(
        ["web-1"],
        f"""\
      hooks:
        preInstall: [{{argv: {json.dumps(refuse)}}}]
        onExit: [{{argv: {logs("exit")}}}]
""",
    )

    summary = lab.loop.reconcile()

    root = lab.roots["web-1"]
    assert summary.jobs == {"Scan succeeded": 1, "Install failed": 1}
    assert versions(root) == UNPATCHED
    assert hook_lines(root) == ["exit onExit 1.0-1"]  # onExit ran all the same
    job = lab.job_of("web-1")
    assert job.status == "failed" and job.result is not None
    error = job.result["error"]
    assert error["code"] == "PreInstallFailed"
    assert "exited 3: not today" in error["message"]
    pre, on_exit = job.result["hooks"]
    (command,) = pre["commands"]
    assert (pre["stage"], pre["ok"], on_exit["stage"], on_exit["ok"]) == (
        "preInstall",
        False,
        "onExit",
        True,
    )
    assert len(command["stdout"]) == 4096 and command["stdoutCutBytes"] == 50000 - 4096
    lab.store.close()

    history = patchctl("compliance", "web-1", "--history", "--state", str(lab.state), "-o", "json")
    rows = json.loads(history.stdout)
    assert rows[-1]["complianceStatus"] is None  # no scan: the install never ran
    assert rows[-1]["hooks"].startswith("preInstall FAILED: /bin/sh -c")
    assert rows[-1]["hooks"].endswith("exit 3: not today; onExit ok")


@needs_apt
def test_failed_http_checks_fail_their_jobs_and_halt_the_window_once_max_errors_is_spent(
    lab_factory: Any, http_server: Any
) -> None:
    http_server.statuses = [503]
    port = http_server.server_address[1]
    lab = lab_factory(
        ["web-1", "web-2", "web-3", "web-4"],
        f"""\
      healthChecks:
        - name: app
          http: {{url: "http://{{host}}:{port}/healthz"}}
          retries: 2
          intervalSeconds: 7
""",
        max_errors="1",
    )

    summary = lab.loop.reconcile()

    # Two failures exceed maxErrors 1: no third target starts.
    assert summary.jobs == {"Scan succeeded": 4, "Install failed": 2}
    failed = lab.installs()
    assert {job.status for job in failed} == {"failed"}
    assert sum(versions(root) == PATCHED for root in lab.roots.values()) == 2
    assert sum(versions(root) == UNPATCHED for root in lab.roots.values()) == 2
    assert any("exceed maxErrors 1" in reason for _, reason in summary.waits)
    # Each check was tried three times, with the interval waited through the injected wait.
    assert lab.waits == [7, 7, 7, 7]
    assert http_server.paths == ["/healthz"] * 6
    job = failed[0]
    assert job.result is not None
    assert job.result["error"]["code"] == "HealthCheckFailed"
    assert job.result["error"]["message"] == (
        f"health check app after the install: GET http://127.0.0.1:{port}/healthz: "
        "HTTP 503, expected 200"
    )
    (check,) = job.result["hooks"]
    assert check["attempts"] == 3 and check["http"]["status"] == 503
    assert "body" not in check["http"]  # never read: see docs/hooks.md


@needs_apt
def test_an_http_check_that_recovers_within_its_retries_passes(
    lab_factory: Any, http_server: Any
) -> None:
    http_server.statuses = [503, 502, 200]
    port = http_server.server_address[1]
    lab = lab_factory(
        ["web-1"],
        f"""\
      healthChecks:
        - {{name: app, http: {{url: "http://{{host}}:{port}/"}}, retries: 5, intervalSeconds: 2}}
""",
    )

    summary = lab.loop.reconcile()

    assert summary.jobs == {"Scan succeeded": 1, "Install succeeded": 1}
    assert lab.waits == [2, 2]
    (check,) = lab.job_of("web-1").result["hooks"]  # type: ignore[index]
    assert (check["ok"], check["attempts"], check["http"]["status"]) == (True, 3, 200)


@needs_apt
def test_a_local_connection_refuses_hooks_without_the_operators_word(lab_factory: Any) -> None:
    lab = lab_factory(
        ["web-1"],
        ALL_HOOKS,
        transports=lambda i: transport_for(i.spec.connection, trust_root_scripts=True),
    )

    summary = lab.loop.reconcile()

    assert summary.jobs == {"Scan succeeded": 1, "Install failed": 1}
    assert versions(lab.roots["web-1"]) == UNPATCHED and hook_lines(lab.roots["web-1"]) == []
    error = lab.job_of("web-1").result["error"]  # type: ignore[index]
    assert error["code"] == "HooksRefused"
    assert "PATCHWARDEN_TRUST_LOCAL_HOOKS=1" in error["message"]


def test_an_operator_switch_that_is_neither_0_nor_1_is_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [*PATCHCTL, "reconcile", "--source", str(tmp_path), "--state", str(tmp_path / "s.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PATCHWARDEN_TRUST_LOCAL_HOOKS": "yes"},
    )
    assert run.returncode == 1
    assert run.stderr.endswith(
        "patchctl: PATCHWARDEN_TRUST_LOCAL_HOOKS='yes': expected 1 (run window tasks' hooks on "
        "this host) or 0; unset it to keep them refused\n"
    ), run.stderr


# --- over SSH -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not have_sshd():
        pytest.skip("needs /usr/sbin/sshd, python3 and root")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@needs_apt
def test_over_ssh_hooks_and_a_command_check_run_on_the_machine_and_a_failing_check_fails(
    lab_factory: Any, tmp_path: Path, sshd: Sshd
) -> None:
    names = ["remote-1"]
    fleet = tmp_path / "fleet"
    check = [
        "/bin/sh",
        "-c",
        "echo checked >> \"$PATCHWARDEN_ROOT/hooks.log\"; echo 'app down' >&2; exit 1",
    ]
    with SshPool() as pool:
        lab = lab_factory(
            names,
            f"""\
      hooks:
        postInstall: [{{argv: {logs("post")}}}]
        onExit: [{{argv: {logs("exit")}}}]
      healthChecks:
        - {{name: app, command: {{argv: {json.dumps(check)}, timeoutSeconds: 20}}, retries: 1}}
""",
            instances=ssh_instance_yaml(
                "remote-1",
                fleet / "remote-1",
                port=sshd.port,
                identity_file=sshd.client_key_file,
                known_hosts_file=sshd.known_hosts_file,
            ),
            transports=lambda i: transport_for(
                i.spec.connection, pool=pool, ssh_dir=sshd.directory, trust_root_scripts=True
            ),
        )
        logins = sshd.accepted_logins()
        summary = lab.loop.reconcile()

    root = lab.roots["remote-1"]
    assert sshd.accepted_logins() > logins
    assert summary.jobs == {"Scan succeeded": 1, "Install failed": 1}
    assert versions(root) == PATCHED
    assert hook_lines(root) == [
        "post postInstall 1.0-2",
        "checked",
        "checked",
        "exit onExit 1.0-2",
    ]
    job = lab.job_of("remote-1")
    assert job.result is not None
    assert job.result["error"] == {
        "code": "HealthCheckFailed",
        "message": "health check app after the install: command /bin/sh -c echo checked >> "
        "\"$PATCHWARDEN_ROOT/hooks.log\"; echo 'app down' >&2; exit 1 exited 1: app down",
    }
    assert lab.waits == [10]  # the default interval, once between the two attempts


@needs_apt
def test_a_failed_post_install_fails_the_job_after_the_install_and_on_exit_still_runs(
    lab_factory: Any,
) -> None:
    broken = ["/bin/sh", "-c", "echo 'migration failed' >&2; exit 2"]
    lab = lab_factory(
        ["web-1"],
        f"""\
      hooks:
        postInstall: [{{argv: {json.dumps(broken)}}}, {{argv: {logs("never")}}}]
        onExit: [{{argv: {logs("exit")}}}]
""",
    )

    summary = lab.loop.reconcile()

    root = lab.roots["web-1"]
    assert summary.jobs == {"Scan succeeded": 1, "Install failed": 1}
    assert versions(root) == PATCHED  # installed, then the hook failed
    assert hook_lines(root) == ["exit onExit 1.0-2"]  # the second postInstall command never ran
    job = lab.job_of("web-1")
    assert job.result is not None and job.result["install"]["changed"] is True
    assert job.result["error"] == {
        "code": "PostInstallFailed",
        "message": "postInstall command /bin/sh -c echo 'migration failed' >&2; exit 2 "
        "exited 2: migration failed",
    }


@pytest.fixture
def https_server(tmp_path: Path, http_server: Any) -> Any:
    """The test HTTP server behind TLS with a self-signed certificate for 127.0.0.1."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    http_server.socket = context.wrap_socket(http_server.socket, server_side=True)
    return http_server


@needs_apt
@pytest.mark.parametrize("skip_verify", [False, True], ids=["verified", "insecure"])
def test_an_https_check_verifies_the_certificate_unless_told_not_to(
    lab_factory: Any, https_server: Any, skip_verify: bool
) -> None:
    port = https_server.server_address[1]
    lab = lab_factory(
        ["web-1"],
        f"""\
      healthChecks:
        - name: tls
          http: {{url: "https://{{host}}:{port}/", insecureSkipTlsVerify: {str(skip_verify).lower()}}}
""",
    )

    summary = lab.loop.reconcile()

    job = lab.job_of("web-1")
    assert job.result is not None
    (check,) = job.result["hooks"]
    if skip_verify:
        assert summary.jobs == {"Scan succeeded": 1, "Install succeeded": 1}
        assert check["http"]["status"] == 200
    else:  # a self-signed certificate is not in the controller's trust store
        assert summary.jobs == {"Scan succeeded": 1, "Install failed": 1}
        assert check["http"]["status"] is None
        assert "CERTIFICATE_VERIFY_FAILED" in check["http"]["error"]
        assert https_server.paths == []  # the request never reached the server


@needs_apt
def test_a_hooks_terminal_escapes_reach_history_and_audit_tables_as_text(
    lab_factory: Any,
) -> None:
    """A machine's output is shown, never interpreted: an OSC 8 hyperlink a hook prints."""
    escape = "printf '\\033]8;;http://evil.invalid\\007click\\033]8;;\\007' >&2; exit 1"
    lab = lab_factory(
        ["web-1"],
        f"      hooks: {{preInstall: [{{argv: {json.dumps(['/bin/sh', '-c', escape])}}}]}}\n",
    )
    lab.loop.reconcile()
    lab.store.close()

    for run in (
        patchctl("compliance", "web-1", "--history", "--state", str(lab.state)),
        patchctl("audit", "--instance", "web-1", "--state", str(lab.state)),
    ):
        assert run.returncode == 0, run.stderr
        assert "\x1b" not in run.stdout and "\x07" not in run.stdout
        assert "\\x1b" in run.stdout and "\\x07" in run.stdout  # shown as text


def test_after_a_reboot_the_checks_run_again_then_on_exit(tmp_path: Path) -> None:
    """What the loop calls once it has waited for a machine's reboot (issue 14 item 3): the
    checks again, marked ``after: reboot``, then onExit; on a real root through the local
    transport."""
    root = tmp_path / "machine"
    root.mkdir()
    snapshot = build_snapshot(
        [
            (
                "w.yaml",
                (
                    TASK.replace("OPERATION", "Install")
                    + """\
      hooks: {onExit: [{argv: [/bin/sh, -c, 'echo exit >> "$PATCHWARDEN_ROOT/log"']}]}
      healthChecks:
        - {name: up, command: {argv: [/bin/sh, -c, 'echo check >> "$PATCHWARDEN_ROOT/log"']}}
"""
                ).encode(),
            ),
            ("i.yaml", local_instance_yaml("web-1", root).encode()),
        ],
        predefined_baselines(),
    )
    (task,) = snapshot.windows["noon"].spec.tasks
    heard: list[tuple[Kind, dict[str, Any]]] = []
    hooks = JobHooks(
        task,
        snapshot.instances["web-1"],
        LocalTransport(str(root), trust_hooks=True),
        job="job-1",
        emit=lambda kind, **detail: heard.append((kind, detail)),  # type: ignore[arg-type]
        wait=lambda seconds: None,
    )

    hooks.after_install()
    hooks.at_exit(rebooted=True)

    assert (root / "log").read_text() == "check\ncheck\nexit\n"
    failed, result = hooks.result({"summary": {}})
    assert not failed and "error" not in result
    assert [(e["stage"], e.get("after")) for e in result["hooks"]] == [
        ("healthCheck", "install"),
        ("healthCheck", "reboot"),
        ("onExit", None),
    ]
    assert [kind for kind, _ in heard] == [Kind.HOOK_RAN] * 3


def test_a_kubernetes_node_refuses_hooks_before_anything_is_drained_or_installed() -> None:
    """A node's agent runs in a Job's pod: hooks there would run in the pod, not on the node."""
    node = """\
apiVersion: patchwarden.io/v1alpha1
kind: ManagedInstance
metadata: {name: node-1, labels: {role: web}}
spec: {connection: {type: kubernetes, node: node-1}}
"""
    text = TASK.replace("OPERATION", "Install") + "      hooks: {onExit: [{argv: [/bin/true]}]}\n"
    snapshot = build_snapshot(
        [("w.yaml", text.encode()), ("n.yaml", node.encode())], predefined_baselines()
    )
    (task,) = snapshot.windows["noon"].spec.tasks
    untouched: Any = object()  # no transport method may be called
    hooks = JobHooks(
        task,
        snapshot.instances["node-1"],
        untouched,
        job="j",
        emit=print,
        wait=print,  # type: ignore[arg-type]
    )
    with pytest.raises(AgentFailed) as refused:
        hooks.refuse_unsupported()
    assert refused.value.code == "HooksUnsupported"
    assert "use http health checks, or remove them" in refused.value.message

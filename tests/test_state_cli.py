"""The state store as ``patchctl`` users meet it (issue 12, items 3 and 11): one writer at a time,
readers beside it, and a store that cannot be used is one line saying what to do.

Every command runs as a user runs it, a real ``patchctl`` process; the service holding the store
is a real ``patchctl run``, and the read-only file system is a real tmpfs remounted read-only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.state import Holder, StateStore
from reconciler.state.postgres.store import PostgresStore
from tests.filesystems import fill, remount_read_only, tmpfs
from tests.git_servers import free_port
from tests.postgres import Postgres, terminate_lock_session
from tests.waiting import accepting, tail_of, wait_until

PATCHCTL = [sys.executable, "-m", "reconciler"]


def patchctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PATCHCTL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit 1 and said why in exactly one line of its own words."""
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("patchctl: "), run.stderr
    assert "internal error" not in lines[0] and "Traceback" not in run.stderr
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working directory with an empty snapshot (a loop with nothing to patch)."""
    (tmp_path / "empty").mkdir()
    return tmp_path


@contextmanager
def running(work: Path, state: str, interval: str) -> Iterator[subprocess.Popen[bytes]]:
    """``patchctl run`` on ``state``, once it has taken the store and finished a pass; its
    stderr in ``work / "run.log"``; killed at the end if still running."""
    port, log = free_port(), work / "run.log"
    argv = ["run", "--source", "empty", "--state", state, "--interval", interval]
    with log.open("wb") as err:
        process = subprocess.Popen(
            [*PATCHCTL, *argv, "--listen", f"127.0.0.1:{port}"],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_until("patchctl run to listen", lambda: accepting(port), detail=tail_of(log))
        wait_until("the first pass", lambda: b"snapshot accepted" in log.read_bytes())
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def service(work: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``patchctl run`` on ``state.db``, once it has taken the store and finished a pass."""
    with running(work, "state.db", "3600") as process:
        yield process


# --- item 3: one writer, readers beside it ---------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder_while_readers_read(
    work: Path, service: subprocess.Popen[bytes]
) -> None:
    for verb in (["reconcile"], ["run", "--listen", f"127.0.0.1:{free_port()}"]):
        refused = patchctl(*verb, "--source", "empty", "--state", "state.db", cwd=work)
        line = one_line_error(refused)
        assert f"patchctl run (pid {service.pid} on {socket.gethostname()})" in line
        assert "state.db is in use" in line and "stop it first" in line
    # The refused commands touched nothing: the service's pass is the only one recorded.
    with StateStore(work / "state.db") as store:
        assert len(store.revisions()) == 1

    # Readers are not writers: they read beside the running service.
    compliance = patchctl("compliance", "--state", "state.db", "-o", "json", cwd=work)
    assert compliance.returncode == 0, compliance.stderr
    assert json.loads(compliance.stdout) == []
    plan = patchctl("plan", "--source", "empty", "--state", "state.db", "-o", "json", cwd=work)
    assert plan.returncode == 0, plan.stderr
    report = patchctl("report", "--runs", "--state", "state.db", "-o", "json", cwd=work)
    assert report.returncode == 0, report.stderr
    assert service.poll() is None  # and the service runs on


def test_the_lock_goes_with_its_holder_even_when_killed(
    work: Path, service: subprocess.Popen[bytes]
) -> None:
    os.killpg(service.pid, signal.SIGKILL)  # no clean-up runs: the kernel releases the flock
    service.wait()
    after = patchctl("reconcile", "--source", "empty", "--state", "state.db", cwd=work)
    assert after.returncode == 0, after.stderr


def test_a_service_stopped_by_sigterm_lets_the_next_writer_in(
    work: Path, service: subprocess.Popen[bytes]
) -> None:
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=60) == 0
    after = patchctl("reconcile", "--source", "empty", "--state", "state.db", cwd=work)
    assert after.returncode == 0, after.stderr


# --- item 11: a store that cannot be used says what to do --------------------------------------


def test_a_corrupt_file_is_one_line_saying_what_to_do(work: Path) -> None:
    (work / "state.db").write_bytes(b"not a database " * 400)
    line = one_line_error(patchctl("compliance", "--state", "state.db", cwd=work))
    assert "state.db is not a Patchwarden state database, or is damaged" in line
    assert "restore it from a backup, or move it aside" in line


def test_a_directory_is_one_line_naming_the_file_to_give(work: Path) -> None:
    (work / "states").mkdir()
    line = one_line_error(patchctl("reconcile", "--source", "empty", "--state", "states", cwd=work))
    assert "states is a directory: --state takes the database file" in line
    assert list((work / "states").iterdir()) == []  # nothing written inside
    assert not (work / "states.lock").exists()  # refused before the lock is taken


def test_a_newer_schema_is_one_line_asking_for_an_upgrade(work: Path) -> None:
    with sqlite3.connect(work / "state.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    line = one_line_error(patchctl("report", "--runs", "--state", "state.db", cwd=work))
    assert "state.db: the state file has schema version 99" in line
    assert "upgrade patchwarden" in line


@pytest.fixture
def read_only(work: Path) -> Iterator[Path]:
    """A store written by a reconcile on a tmpfs, then the tmpfs remounted read-only."""
    with tmpfs(work / "ro") as mount:
        done = patchctl("reconcile", "--source", "empty", "--state", "ro/state.db", cwd=work)
        assert done.returncode == 0, done.stderr
        remount_read_only(mount)
        yield mount


def test_a_read_only_store_is_one_line_asking_for_write_access(work: Path, read_only: Path) -> None:
    line = one_line_error(patchctl("compliance", "--state", "ro/state.db", cwd=work))
    assert "ro/state.db cannot be opened for writing: give this user write access" in line
    line = one_line_error(
        patchctl("reconcile", "--source", "empty", "--state", "ro/state.db", cwd=work)
    )
    assert "ro/state.db.lock: Read-only file system" in line


def test_a_store_on_a_full_file_system_is_one_line_asking_for_space(work: Path) -> None:
    with tmpfs(work / "small", "1m"):
        done = patchctl("reconcile", "--source", "empty", "--state", "small/state.db", cwd=work)
        assert done.returncode == 0, done.stderr
        fill(work / "small")
        line = one_line_error(
            patchctl("reconcile", "--source", "empty", "--state", "small/state.db", cwd=work)
        )
        assert "small/state.db cannot be written: its file system is full" in line
        assert "free space" in line


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("mysql://db/patchwarden", "mysql:// is not a state store"),
        ("sqlite://state.db", "a SQLite URL names an absolute file"),
        ("sqlite:///state.db?mode=ro", "a SQLite URL names an absolute file"),
    ],
)
def test_a_state_url_never_becomes_a_relative_path(work: Path, given: str, said: str) -> None:
    before = sorted(work.iterdir())
    line = one_line_error(patchctl("reconcile", "--source", "empty", "--state", given, cwd=work))
    assert said in line and "sqlite:///" in line  # what to give instead
    assert sorted(work.iterdir()) == before  # no "postgresql:" directory, no file


def test_a_postgresql_url_is_the_state_store(
    work: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole URL goes to libpq (options such as connect_timeout and sslmode pass through);
    nothing is made of it in the working directory, and local files go to the state directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(work / "xdg"))
    before = sorted(work.iterdir())
    url = f"{postgres_url}?connect_timeout=10&sslmode=disable"
    done = patchctl("reconcile", "--source", "empty", "--state", url, cwd=work)
    assert done.returncode == 0, done.stderr
    with PostgresStore(postgres_url) as store:
        assert len(store.revisions()) == 1
    assert sorted(work.iterdir()) == sorted([*before, work / "xdg"])


def test_the_state_url_may_come_from_the_environment(
    work: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$PATCHWARDEN_STATE (the Helm chart sets it from a Secret) is --state when none is given,
    so a password never has to be in a process's arguments; --state still wins."""
    monkeypatch.setenv("XDG_STATE_HOME", str(work / "xdg"))
    monkeypatch.setenv("PATCHWARDEN_STATE", postgres_url)
    done = patchctl("reconcile", "--source", "empty", cwd=work)
    assert done.returncode == 0, done.stderr
    with PostgresStore(postgres_url) as store:
        assert len(store.revisions()) == 1
    given = patchctl("reconcile", "--source", "empty", "--state", "given.db", cwd=work)
    assert given.returncode == 0, given.stderr
    assert (work / "given.db").exists()


def test_libpq_tls_settings_from_the_environment_are_obeyed(
    work: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart sets PGSSLMODE and PGSSLROOTCERT: libpq obeys them, so a server that cannot
    prove itself is refused (the test server has no TLS), in one line."""
    monkeypatch.setenv("PATCHWARDEN_STATE", postgres_url)
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(work / "ca.crt"))
    line = one_line_error(patchctl("reconcile", "--source", "empty", cwd=work))
    assert "the state store postgresql://***@127.0.0.1" in line
    assert "SSL" in line or "ca.crt" in line, line


@pytest.mark.parametrize(
    "options", ["", "?sslmode=bogus", "?no_such_option=1"], ids=["unreachable", "bad", "unknown"]
)
def test_a_postgresql_url_that_cannot_be_used_is_one_line_without_its_password(
    work: Path, options: str
) -> None:
    url = f"postgresql://patchwarden:s3cret@127.0.0.1:{free_port()}/state{options}"
    line = one_line_error(patchctl("reconcile", "--source", "empty", "--state", url, cwd=work))
    assert "s3cret" not in line
    assert "the state store postgresql://***@127.0.0.1:" in line


def test_tls_options_in_the_url_reach_libpq(
    work: Path, postgres_url: str, tls_postgres_server: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sslmode`` and ``sslrootcert`` are libpq's: a server without TLS is refused when the URL
    requires it, and a TLS server is used when its certificate verifies, refused when not."""
    monkeypatch.setenv("XDG_STATE_HOME", str(work / "xdg"))
    plain = one_line_error(
        patchctl(
            "reconcile", "--source", "empty", "--state", f"{postgres_url}?sslmode=require", cwd=work
        )
    )
    assert "server does not support SSL, but SSL was required" in plain
    url = tls_postgres_server.fresh_database()
    trusted = tls_postgres_server.directory / "server.crt"
    verified = f"{url}?sslmode=verify-full&sslrootcert={trusted}"
    done = patchctl("reconcile", "--source", "empty", "--state", verified, cwd=work)
    assert done.returncode == 0, done.stderr
    other = work / "other.crt"  # a certificate of no one the server knows
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", work / "other.key",
         "-out", other, "-days", "2", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    refused = one_line_error(
        patchctl(
            "reconcile",
            "--source",
            "empty",
            "--state",
            f"{url}?sslmode=verify-full&sslrootcert={other}",
            cwd=work,
        )
    )
    assert "certificate verify failed" in refused


def test_a_sqlite_url_names_the_same_file_as_its_path(work: Path) -> None:
    url = f"sqlite://{work / 'kept' / 'state.db'}"
    done = patchctl("reconcile", "--source", "empty", "--state", url, cwd=work)
    assert done.returncode == 0, done.stderr
    with StateStore(work / "kept" / "state.db") as store:
        assert len(store.revisions()) == 1
    listed = patchctl("compliance", "--state", str(work / "kept" / "state.db"), cwd=work)
    assert listed.returncode == 0, listed.stderr


def test_a_new_store_is_private_whatever_the_umask(work: Path) -> None:
    """Every machine's inventory and job errors are in the store: no other user may read it,
    even when patchctl runs under umask 000 (it was created 0644, beside an 0600 audit log)."""
    done = subprocess.run(
        [
            "sh",
            "-c",
            'umask 000 && exec "$@"',
            "sh",
            *PATCHCTL,
            "reconcile",
            "--source",
            "empty",
            "--state",
            str(work / "new" / "state.db"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    modes = {
        p.name: p.stat().st_mode & 0o777 for p in (work / "new").iterdir() if "state" in p.name
    }
    assert modes and all(mode == 0o600 for mode in modes.values()), modes
    assert (work / "new").stat().st_mode & 0o077 == 0


def test_a_service_whose_postgresql_lock_session_is_cut_stops_with_one_line(
    work: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``patchctl run`` on PostgreSQL: an administrator ends the session of its writer lock.
    The service does not go on without the lock: its next pass stops it, exit 1, saying why."""
    monkeypatch.setenv("XDG_STATE_HOME", str(work / "xdg"))
    with running(work, postgres_url, "1") as process:
        terminate_lock_session(postgres_url)
        assert process.wait(timeout=60) == 1, tail_of(work / "run.log")()
    log = work / "run.log"
    last = log.read_text().splitlines()[-1]
    assert last.startswith("patchctl: lost the writer lock of the state store postgresql://")
    assert "stopping as writer" in last and "Traceback" not in log.read_text()
    with PostgresStore(postgres_url, writer=Holder(7, "ctl-2", "patchctl run")) as next_writer:
        assert len(next_writer.revisions()) == 1  # the next writer takes over the same history

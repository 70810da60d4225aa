"""What only the PostgreSQL state store has, on a real PostgreSQL 15 (tests/postgres.py): its
migrations and the writer lock as an advisory lock. The store's behaviour is tested on both
backends by tests/test_state.py (docs/state.md, "PostgreSQL")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from reconciler.state import (
    SCHEMA_VERSION,
    Holder,
    StoreLocked,
    StoreUnusable,
    StoreWriteFailed,
    WriterLost,
)
from reconciler.state.postgres import AdvisoryLock
from reconciler.state.postgres.schema import LATEST
from reconciler.state.postgres.store import PLANNING_JOBS, PostgresStore
from tests.postgres import Postgres, terminate_lock_session
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
FIRST = Holder(pid=4242, host="ctl-1", command="patchctl run")
_T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_both_backends_are_at_one_schema_version() -> None:
    assert LATEST == SCHEMA_VERSION


def test_a_new_database_is_migrated_once_by_any_number_of_openers(postgres_url: str) -> None:
    opened: list[int] = []

    def open_one() -> None:
        with PostgresStore(postgres_url) as store:
            opened.append(store.schema_version())

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert opened == [SCHEMA_VERSION] * 4
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


def test_a_database_from_a_newer_program_is_refused(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreUnusable, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        PostgresStore(postgres_url)


def test_one_writer_at_a_time_and_the_refusal_names_the_holder(postgres_url: str) -> None:
    first = AdvisoryLock(postgres_url, "pg-state")
    first.acquire(FIRST)
    try:
        with pytest.raises(StoreLocked, match=r"pg-state is in use by patchctl run \(pid 4242 on"):
            AdvisoryLock(postgres_url, "pg-state").acquire(Holder(7, "ctl-2", "patchctl run"))
    finally:
        first.release()
    second = AdvisoryLock(postgres_url, "pg-state")
    second.acquire(Holder(7, "ctl-2", "patchctl controller"))  # released: the next one gets in
    second.release()
    second.release()  # idempotent


def test_a_killed_holder_leaves_no_stale_lock(postgres_url: str) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from reconciler.state import Holder;"
            " from reconciler.state.postgres import AdvisoryLock;"
            " lock = AdvisoryLock(sys.argv[1], 's');"
            " lock.acquire(Holder(1, 'h', 'patchctl run'));"
            " print('held', flush=True); sys.stdin.read()",
            postgres_url,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StoreLocked, match=r"patchctl run \(pid 1 on h\)"):
            AdvisoryLock(postgres_url, "s").acquire(FIRST)
    finally:
        holder.kill()
        holder.wait()
    lock = AdvisoryLock(postgres_url, "s")
    # The server notices the closed socket by itself; no timeout to wait out, only its reaction.
    wait_until("the killed holder's lock is free", lambda: _takes(lock), ignore=(StoreLocked,))
    lock.release()


def test_two_stores_on_one_server_do_not_exclude_each_other(postgres_server: Postgres) -> None:
    one = AdvisoryLock(postgres_server.fresh_database(), "one")
    other = AdvisoryLock(postgres_server.fresh_database(), "other")
    one.acquire(FIRST)
    try:
        other.acquire(FIRST)
        other.release()
    finally:
        one.release()


def test_an_unreachable_server_is_one_line_without_the_password(postgres_server: Postgres) -> None:
    url = f"postgresql://patchwarden:s3cret@127.0.0.1:{_closed_port()}/state?connect_timeout=5"
    with pytest.raises(StoreUnusable) as refused:
        AdvisoryLock(url, "postgresql://***@127.0.0.1/state").acquire(FIRST)
    message = str(refused.value)
    assert "s3cret" not in message and "\n" not in message
    assert message.startswith("cannot reach the state store postgresql://***@127.0.0.1/state")


def _takes(lock: AdvisoryLock) -> bool:
    lock.acquire(FIRST)
    return True


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the probe is


def test_a_writer_store_holds_the_lock_and_readers_open_beside_it(postgres_url: str) -> None:
    with PostgresStore(postgres_url, writer=FIRST) as writer:
        with pytest.raises(StoreLocked, match=r"patchctl run \(pid 4242 on ctl-1\)"):
            PostgresStore(postgres_url, writer=Holder(7, "ctl-2", "patchctl reconcile"))
        with PostgresStore(postgres_url) as reader:  # readers take no lock
            writer.record_revision(revision="a", accepted=True, problems=[], now=_T0)
            assert [r.revision for r in reader.revisions()] == ["a"]
    with PostgresStore(postgres_url, writer=Holder(7, "ctl-2", "patchctl reconcile")):
        pass  # closed: the lock is free for the next writer


def test_a_lost_session_fails_one_call_and_the_next_one_reconnects(postgres_url: str) -> None:
    """The server ends the store's session (a restart, a cut network, an administrator): the
    call that finds out fails as a write that may pass later, nothing of it kept; the next one
    works on a new session, as a running service's next pass would."""
    with PostgresStore(postgres_url) as store:
        store.record_revision(revision="a", accepted=True, problems=[], now=_T0)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreWriteFailed, match="cannot use the state store"):
            store.record_revision(revision="b", accepted=True, problems=[], now=_T0)
        store.record_revision(revision="c", accepted=True, problems=[], now=_T0)
        assert [r.revision for r in store.revisions()] == ["c", "a"]


def _refused(store: PostgresStore) -> str | None:
    try:
        store.record_revision(revision="after", accepted=True, problems=[], now=_T0)
    except WriterLost as exc:
        return str(exc)
    return None


def test_a_writer_whose_lock_session_is_cut_stops_writing_and_another_takes_over(
    postgres_url: str,
) -> None:
    """The lock's session is ended under a living writer: it notices before its next write and
    refuses every write after (another process may be the writer now), and the lock is free for
    the next writer."""
    with PostgresStore(postgres_url, writer=FIRST) as writer:
        writer.record_revision(revision="before", accepted=True, problems=[], now=_T0)
        terminate_lock_session(postgres_url)
        said = wait_until("the writer notices", lambda: _refused(writer))
        assert "lost the writer lock of the state store" in said and "stopping as writer" in said
        assert "Start this command again" in said and "\n" not in said
        with PostgresStore(postgres_url, writer=Holder(7, "ctl-2", "patchctl run")) as second:
            second.record_revision(revision="second", accepted=True, problems=[], now=_T0)
            with pytest.raises(WriterLost):  # still refused: the lock is not its own any more
                writer.revisions()
            assert second.revisions()[0].revision == "second"


def _keepalive(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, int, int, int]:
    """The kernel's keepalive settings of a session's socket: on, idle, interval, count."""
    probe = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return (
            probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        )
    finally:
        probe.close()  # the duplicate only


def test_the_store_and_its_lock_notice_a_silent_peer_within_a_minute(postgres_url: str) -> None:
    """A partition that sends nothing must not leave the lock's idle session open for the
    kernel's default two hours: both sessions probe the server after 30 s of silence."""
    with PostgresStore(postgres_url, writer=FIRST) as store:
        assert store._conn is not None and store._writer is not None
        assert store._writer._conn is not None
        assert _keepalive(store._conn) == (1, 30, 10, 3)
        assert _keepalive(store._writer._conn) == (1, 30, 10, 3)


def test_keepalives_set_in_the_url_are_kept(postgres_url: str) -> None:
    with PostgresStore(f"{postgres_url}?keepalives_idle=5&keepalives_count=9") as store:
        assert store._conn is not None
        assert _keepalive(store._conn) == (1, 5, 10, 9)


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_planning_jobs_use_indexes_not_a_scan_of_the_history(postgres_url: str) -> None:
    """PostgreSQL's counterpart of tests/test_state.py's EXPLAIN QUERY PLAN check (it failed
    before the query returned whole rows per part: a hash join over a scan of all jobs): over a long
    history (analysed, so the planner knows its size) every part of the planner's read is an
    index search, none a scan of all jobs."""
    with (
        PostgresStore(postgres_url) as store,
        psycopg.connect(postgres_url, autocommit=True) as conn,
    ):
        conn.execute(
            'INSERT INTO jobs (id, key, instance, operation, "window", task, opening,'
            " revision, status, payload, created_at)"
            " SELECT 'j' || n, 'k' || n, 'web-' || (n % 500), 'Install', 'nightly',"
            " 'patch', 'o' || (n / 500), 'r', CASE WHEN n % 1000 = 0 THEN 'running'"
            " ELSE 'succeeded' END, '{}', to_char(timestamp '2024-01-01' + n * interval"
            " '1 minute', 'YYYY-MM-DD\"T\"HH24:MI:SS.US+00:00')"
            " FROM generate_series(1, 50000) AS n"
        )
        conn.execute("ANALYZE")
        params = ("2024-02-01T00:00:00.000000+00:00", ["nightly"], ["o7"])
        ((plan,),) = conn.execute("EXPLAIN (FORMAT JSON) " + PLANNING_JOBS, params).fetchall()
        text = "\n".join(r[0] for r in conn.execute("EXPLAIN " + PLANNING_JOBS, params))
        assert len(store.planning_jobs(openings=[("nightly", "o7")], failed_scans_since=_T0))
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    scans = [n for n in nodes if n.get("Relation Name") == "jobs"]
    assert scans and not [n for n in scans if n["Node Type"] == "Seq Scan"], text
    used = {n.get("Index Name") for n in scans}
    assert {"jobs_by_status_time", "jobs_by_window"} <= used, used

"""A real PostgreSQL 15 for tests (Debian's ``postgresql-15``): one server per test session on
127.0.0.1, an ephemeral port, its cluster and socket in a scratch directory, and a fresh database
per test, copied from an empty template (``CREATE DATABASE … TEMPLATE`` copies files: fast).

``initdb`` refuses to run as root, so the cluster belongs to the ``postgres`` user the package
creates; the tests (root) reach it over TCP as the ``postgres`` superuser, trust authentication on
loopback only. fsync is off: the server is thrown away at session end, its durability is not under
test. Recipe: shared/testbeds/README.md (PostgreSQL 15).

``state_store`` gives a state store on each backend in turn (SQLite, then PostgreSQL): a test
that takes it runs on both; one marked ``postgres_pending(why)`` is skipped on PostgreSQL.

Skips (with the reason) when not root, or when the package or psycopg is missing; a server that is
installed but does not start fails loudly with its log, never skips.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.state import StateStore
from tests.waiting import wait_until

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
TEMPLATE = "patchwarden_template"


def unavailable() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "PostgreSQL tests run as root (the cluster is started as the postgres user)"
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return "PostgreSQL 15 is not installed (Debian package postgresql-15; make install)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return "there is no postgres user (Debian package postgresql-15 creates it)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (scripts/bootstrap)"
    return None


@dataclass
class Postgres:
    """A running server: ``url(database)`` names a database on it."""

    directory: Path
    port: int
    _names: Iterator[int]

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """A new, empty database (from the template); returns its URL."""
        name = f"test_{next(self._names)}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
        return self.url(name)

    def execute(self, statement: str) -> None:
        """One statement on the ``postgres`` database, outside a transaction (as CREATE DATABASE
        must be)."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(statement.encode())

    def start(self) -> None:
        """Start the server on its cluster and port (again, after :meth:`stop`); returns when it
        accepts connections. Raises RuntimeError with the server's words when it does not."""
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        data, log = self.directory / "data", self.directory / "server.log"
        done = _as_postgres(BIN / "pg_ctl", "start", "-D", data, "-l", log, "-o", options)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {done.stderr[-2000:]}\n{self.log()}")
        try:
            wait_until("PostgreSQL accepts connections", lambda: accepting(self), detail=self.log)
        except BaseException:
            self.stop()
            raise

    def stop(self, mode: str = "immediate") -> None:
        """Stop: ``immediate`` as by a crash (with fsync and synchronous commit off, the last
        commits may be lost), ``fast`` cuts every session but keeps what was committed, as a
        network partition does from the clients' side."""
        _as_postgres(BIN / "pg_ctl", "stop", "-D", self.directory / "data", "-m", mode)

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def _as_postgres(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", USER, "--", *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def accepting(server: Postgres, options: str = "") -> bool:
    """Whether the server accepts connections now (with these URL ``options``)."""
    import psycopg

    try:
        psycopg.connect(server.url("postgres") + options, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def start_postgres(directory: Path) -> Postgres:
    """initdb a cluster in ``directory`` (made the postgres user's), start it, make the template.

    Raises RuntimeError with the server's words when it does not come up."""
    entry = pwd.getpwnam(USER)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    data = directory / "data"
    done = _as_postgres(BIN / "initdb", "-D", data, "-A", "trust", "-U", USER, "-E", "UTF8")
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
    server = Postgres(directory, _free_port(), itertools.count(1))
    server.start()
    try:
        server.execute(f"CREATE DATABASE {TEMPLATE}")
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def _session_server() -> Iterator[Postgres]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    # Not under pytest's tmp_path: that directory is root's 0700, which postgres cannot enter.
    directory = Path(tempfile.mkdtemp(prefix="patchwarden-pg-"))
    try:
        server = start_postgres(directory)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """One PostgreSQL 15 for the session, stopped (and its directory removed) at the end."""
    with _session_server() as server:
        yield server


@pytest.fixture(scope="session")
def tls_postgres_server() -> Iterator[Postgres]:
    """A second server, for the few tests of TLS: it also speaks TLS, with a self-signed
    certificate for 127.0.0.1 (``directory / "server.crt"``, the CA a client is to trust)."""
    with _session_server() as server:
        enable_tls(server)
        yield server


def enable_tls(server: Postgres) -> None:
    """Make a key and a self-signed certificate for 127.0.0.1 (openssl, in the server's
    directory, the postgres user's: the server refuses a key others can read) and turn on TLS;
    returns when a TLS session can be made."""
    key, cert = server.directory / "server.key", server.directory / "server.crt"
    made = _as_postgres(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out",
        cert, "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    )  # fmt: skip
    if made.returncode != 0:
        raise RuntimeError(f"openssl failed: {made.stderr[-2000:]}")
    key.chmod(0o600)
    for setting in (f"ssl_cert_file = '{cert}'", f"ssl_key_file = '{key}'", "ssl = on"):
        server.execute(f"ALTER SYSTEM SET {setting}")
    server.execute("SELECT pg_reload_conf()")
    wait_until("PostgreSQL speaks TLS", lambda: accepting(server, "?sslmode=require"))


@pytest.fixture
def postgres_url(postgres_server: Postgres) -> str:
    """The URL of a fresh, empty database of the session's server, for this test alone."""
    return postgres_server.fresh_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A new state store on each backend: a SQLite file (``tmp_path / "state.db"``), then a
    fresh database of the session's PostgreSQL. A test marked ``postgres_pending`` cannot run
    on PostgreSQL yet; its skip says why."""
    if request.param == "sqlite":
        with StateStore(tmp_path / "state.db") as opened:
            yield opened
        return
    waiting = request.node.get_closest_marker("postgres_pending")
    if waiting is not None:
        pytest.skip(f"not on PostgreSQL yet (issue 16): {waiting.args[0]}")
    from reconciler.state.postgres.store import PostgresStore

    with PostgresStore(request.getfixturevalue("postgres_url")) as opened:
        yield opened


def pending(why: str) -> pytest.MarkDecorator:
    """Skip this ``state_store`` test on PostgreSQL, saying why."""
    return pytest.mark.postgres_pending(why)


def another(store: Any) -> Any:
    """A second store on the same database (as another process would open it)."""
    return opened_at(location(store))


def location(store: Any) -> str:
    """Where ``store`` keeps its state, as text another process can open (``opened_at``)."""
    from reconciler.state.postgres.store import PostgresStore

    if isinstance(store, PostgresStore):
        assert store._conn is not None
        return store._conn.info.dsn
    return str(store.path)


def opened_at(where: str, **options: Any) -> Any:
    """A store on ``where`` (a :func:`location`): a libpq string or a SQLite file's path."""
    if where.endswith(".db"):
        return StateStore(where, **options)
    from reconciler.state.postgres.store import PostgresStore

    return PostgresStore(where, **options)


_LOCK_SESSION = (
    "SELECT {} FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def terminate_lock_session(url: str) -> None:
    """What an administrator (or a failover) does: end the session holding the writer lock."""
    import psycopg

    from reconciler.state.postgres.lock import LOCK_KEY

    with psycopg.connect(url, autocommit=True) as admin:
        (ended,) = admin.execute(
            _LOCK_SESSION.format("pg_terminate_backend(pid)"), (LOCK_KEY,)
        ).fetchone()
        assert ended


def writer_lock_held(url: str) -> bool:
    """Whether some session holds the writer lock of the database at ``url`` now."""
    import psycopg

    from reconciler.state.postgres.lock import LOCK_KEY

    with psycopg.connect(url, autocommit=True) as admin:
        return admin.execute(_LOCK_SESSION.format("pid"), (LOCK_KEY,)).fetchone() is not None


@contextmanager
def raw_sql(store: Any) -> Iterator[tuple[Any, type[Exception]]]:
    """A connection of its own to the store's database and the error its triggers raise: what
    anyone with SQL access could try, beside the store."""
    import sqlite3

    import psycopg

    where = location(store)
    if isinstance(store, StateStore):
        with sqlite3.connect(where) as conn:
            yield conn, sqlite3.IntegrityError
        return
    with psycopg.connect(where, autocommit=True) as conn:
        yield conn, psycopg.IntegrityError

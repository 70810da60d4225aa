"""Takeover on a real PostgreSQL 15 (issue 16, items 3 and 5): a leader SIGKILLed with an install
running, and the standby that takes the writer lock after it, on real Debian roots (dpkg.log
counts every install).

The standby continues from the shared state: it rescans only the machine whose job the dead
leader left in flight (reconciled by its key: abandoned, then rescanned), rescans no machine the
dead leader scanned within staleAfter, and installs nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.state.postgres.store import PostgresStore
from tests.aptlab import Repo
from tests.conftest import needs_apt
from tests.fleet import at_now, make_fleet, open_window_yaml
from tests.git_servers import Upstream
from tests.test_loop_e2e import (
    BEFORE,
    PATCHCTL,
    _kill_at_first_install,
    assert_installed_once,
    commit_fleet,
    file_url,
    installs,
    patchctl,
    upstream,  # noqa: F401  (the fleet's Git repository, a fixture)
)

pytestmark = needs_apt


def _reconcile(url: str, state: str) -> dict[str, Any]:
    run = patchctl("reconcile", "--source", url, "--state", state, "-o", "json", *at_now())
    assert run.returncode == 0, run.stdout + run.stderr
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def _scans(store: PostgresStore, instance: str) -> int:
    return sum(1 for r in store.scan_history(instance) if r.operation == "Scan")


def test_a_standby_takes_over_a_killed_leader_without_installing_or_scanning_twice(
    tmp_path: Path,
    apt_repo: Repo,
    upstream: Upstream,  # noqa: F811  (the fixture imported above)
    postgres_url: str,
) -> None:
    roots = make_fleet(tmp_path / "fleet", apt_repo, [f"web-{i}" for i in range(1, 5)], BEFORE)
    source = file_url(upstream)
    commit_fleet(upstream, roots)
    _reconcile(source, postgres_url)  # the leader's earlier pass: every machine scanned
    commit_fleet(upstream, roots, open_window_yaml(max_concurrency="1"))
    leader = [*PATCHCTL, "reconcile", "--source", source, "--state", postgres_url, *at_now()]

    interrupted = _kill_at_first_install(leader, tmp_path / "leader.log")

    with PostgresStore(postgres_url) as store:
        in_flight = store.jobs(status="running")
        assert [(j.instance, j.operation) for j in in_flight] == [(interrupted, "Install")]
        assert {name: _scans(store, name) for name in roots} == dict.fromkeys(roots, 1)

    _reconcile(source, postgres_url)  # the standby, on the same database

    with PostgresStore(postgres_url) as store:
        # The dead leader's in-flight job, reconciled by its key: abandoned, not run again...
        (job,) = in_flight
        assert store.job(job.id).status == "abandoned"  # type: ignore[union-attr]
        assert store.claimed_keys([job.key]) == {job.key}
        # ...its machine rescanned to learn what the kill left there, and only that machine:
        # the others were scanned within staleAfter by the dead leader.
        assert _scans(store, interrupted) == 2
        for name in set(roots) - {interrupted}:
            assert _scans(store, name) == 1, f"{name} was rescanned by the standby"
        done = {j.instance for j in installs(store) if j.status == "succeeded"}
        assert done >= set(roots) - {interrupted}

    assert_installed_once(roots, interrupted)  # dpkg's own log on each root

"""End to end on the multi-host test fleet (tests/netfleet.py, docs/test-fleet.md): ten machines,
each with its own address, sshd and Debian root, listed by hand as ManagedInstances (root logins
over SSH) in a real Git repository; one ``patchctl reconcile`` scans them, installs the approved
updates inside the open window and converges them (issue 14 item 6).

What a user would notice: dpkg on each machine has installed exactly the approved updates, once;
the report and the store say every machine is COMPLIANT under the commit; a second run does
nothing.

Then the flow issue 14 asks for, on the same fleet (reset between tests): an Ansible inventory
(groups, children, ``ansible_user=admin``, ``ansible_become=true``) enrolled by an InstanceSource;
one reconcile installs with sudo, reboots the machines whose update asks for it (a postinst writing
/run/reboot-required, as a kernel's does), waits for their new boot ids, runs hooks and health
checks, and converges; a health check failing on some machines halts the window once maxErrors is
spent; and a ``patchctl run`` killed with SIGKILL while a machine is down is finished by a restart
without a second install.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.api.enums import JobStatus
from reconciler.state import StateStore
from tests.fleet import API, BASELINE, BASELINE_YAML, documents, dpkg_installs, open_window_yaml
from tests.git_servers import Upstream
from tests.netfleet import ADMIN, FLEET_SKIP, INSTALLED, REBOOTING, Fleet, Machine, default_repo
from tests.test_fleet_reboots import KERNEL, kill_run_mid_reboot
from tests.test_loop_e2e import file_url, patchctl, reconcile_cli, revision_of

pytestmark = pytest.mark.skipif(bool(FLEET_SKIP), reason=FLEET_SKIP or "-")

MACHINES = 10
# The fleet's machines start with lib 1.0-1, tool 2.0-1 and other 1.0-1: lib and tool have
# security updates, other only a non-security one, which the baseline does not approve.
AFTER = {"pwtest-lib": "1.0-2", "pwtest-tool": "2.1-1", "pwtest-other": "1.0-1"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("e2e-fleet")
    repo = default_repo(directory / "repo", extra_security=[REBOOTING])
    # A short scheduled reboot: the agent's "shutdown -r +1" need not cost the fleet's 3 s each.
    with Fleet(
        directory, MACHINES, repo=repo, installed=[*INSTALLED, KERNEL], scheduled_delay=0.5
    ) as machines:
        yield machines


def without_reboot(machines: Iterable[Machine]) -> None:
    """Remove the package whose update asks for a reboot: these machines need none."""
    for machine in machines:
        machine.ssh("dpkg --purge pwtest-kernel")


def test_one_reconcile_scans_installs_and_converges_ten_machines_over_ssh(
    fleet: Fleet, tmp_path: Path
) -> None:
    without_reboot(fleet.machines)  # this test converges root logins without reboots
    upstream = Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")
    upstream.write("fleet.yaml", documents(BASELINE_YAML, open_window_yaml(max_concurrency="5")))
    upstream.write("instances.yaml", documents(*(fleet.instance_yaml(m) for m in fleet.machines)))
    sha = upstream.commit("ten machines, root over SSH")
    state = tmp_path / "state" / "state.db"
    ssh_dir = ("--ssh-dir", str(fleet.directory))

    report = reconcile_cli(file_url(upstream), state, *ssh_dir)

    names = [m.name for m in fleet.machines]
    assert report["revision"] == revision_of(sha) and report["refused"] == []
    assert report["jobs"] == {"Scan succeeded": MACHINES, "Install succeeded": MACHINES}
    assert report["converged"] is True
    assert {row["instance"]: row["complianceStatus"] for row in report["instances"]} == {
        name: "COMPLIANT" for name in names
    }
    for machine in fleet.machines:
        assert AFTER.items() <= machine.versions().items(), machine.name
        installs = dpkg_installs(machine.root)
        assert installs[("pwtest-lib", "1.0-2")] == installs[("pwtest-tool", "2.1-1")] == 1
        assert ("pwtest-other", "1.1-1") not in installs
    with StateStore(state) as store:
        latest = store.latest_scans()
        assert sorted(latest) == names
        for name, record in latest.items():
            assert record.evaluation["summary"]["complianceStatus"] == "COMPLIANT", name
            assert (record.revision, record.baseline) == (revision_of(sha), BASELINE), name
            assert record.inventory["facts"]["hostname"] == name  # each machine answered itself

    again = reconcile_cli(file_url(upstream), state, *ssh_dir)
    assert again["jobs"] == {} and again["converged"] is True
    for machine in fleet.machines:
        assert dpkg_installs(machine.root)[("pwtest-lib", "1.0-2")] == 1


# --- enrolled from an Ansible inventory, patched as admin with sudo ---------------------------

SOURCE = "lab"
HOOK_LOG = "var/log/patchwarden-e2e-hooks.log"
WEB_PORT = 8080
# Each hook appends its stage and the user it ran as: root (uid 0) only through sudo.
RECORD = json.dumps(["/bin/sh", "-c", f'echo "$PATCHWARDEN_STAGE $(id -un)" >> /{HOOK_LOG}'])
STAGES = ["preInstall root", "postInstall root", "onExit root"]
HOOKS = f"""\
      hooks:
        preInstall: [{{argv: {RECORD}}}]
        postInstall: [{{argv: {RECORD}}}]
        onExit: [{{argv: {RECORD}}}]
"""


def health_check(argv: list[str]) -> str:
    return f"""\
      healthChecks:
        - {{name: app, command: {{argv: {json.dumps(argv)}, timeoutSeconds: 30}}}}
"""


def enrolled_fleet(
    tmp_path: Path, fleet: Fleet, group: str, task_fields: str, **window: str
) -> str:
    """A Git repository whose InstanceSource enrols the fleet from an Ansible inventory (groups
    ``web`` m[01:05], ``db`` m[06:08] and ``cache`` m[09:10] as host ranges with host_vars, all
    children of ``fleet``; admin
    with become), enrolling only ``group``'s hosts, a patch group selecting them by their label
    ``ansible.group/<group>`` and an open Install window; its URL."""
    upstream = Upstream.create(tmp_path / "srv", "fleet", tmp_path / "scratch")
    m = fleet.machines
    fleet.ansible_inventory(
        upstream.work / "hosts.ini",
        {"web": m[:5], "db": m[5:8], "cache": m[8:]},
        user=ADMIN,
        become=True,
        children={"fleet": ["web", "db", "cache"]},
        ranges=True,
    )
    source = (
        f"{API}\nkind: InstanceSource\nmetadata:\n  name: {SOURCE}\nspec:\n"
        # The inventory keeps its OpenSSH options for Ansible's own runs; enrolment takes the
        # known_hosts file from the connection template instead.
        f"  ansibleInventory:\n    path: hosts.ini\n    groups: [{group}]\n"
        "    ignoreVariables: [ansible_ssh_common_args]\n"
        f"  connection:\n    knownHostsFile: {fleet.known_hosts_file}\n"
    )
    selected = BASELINE_YAML.replace(
        "matchLabels: {fleet: e2e}", f'matchLabels: {{ansible.group/{group}: "true"}}'
    )
    assert selected != BASELINE_YAML
    window = open_window_yaml(task_fields=task_fields, **window)
    upstream.write("fleet.yaml", documents(source, selected, window))
    upstream.commit("the lab's inventory, enrolled")
    return file_url(upstream)


@pytest.fixture
def machines(fleet: Fleet) -> list[Machine]:
    """The fleet as it started it: every test below installs (and some reboot)."""
    fleet.reset()
    return fleet.machines


def logins(machine: Machine, user: str) -> int:
    """How many SSH logins as ``user`` the machine's sshd has accepted, in all its boots."""
    log = (machine.directory / "sshd.log").read_text(errors="replace")
    return log.count(f"Accepted publickey for {user} ")


def cli_json(*args: str) -> Any:
    run = patchctl(*args, "-o", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def test_an_ansible_inventory_is_enrolled_patched_with_sudo_rebooted_checked_and_converged(
    fleet: Fleet, machines: list[Machine], tmp_path: Path
) -> None:
    web, db = machines[:5], machines[5:]
    without_reboot(db)  # only the web machines have the update that asks for a reboot
    check = ["/bin/sh", "-c", "dpkg-query -W -f='${Version}' pwtest-lib | grep -qx 1.0-2"]
    url = enrolled_fleet(tmp_path, fleet, "fleet", HOOKS + health_check(check), max_concurrency="3")
    state = tmp_path / "state" / "state.db"
    boots = {m.name: (m.boot_id, m.boots) for m in machines}
    root_logins = {m.name: logins(m, "root") for m in machines}

    report = reconcile_cli(url, state, "--ssh-dir", str(fleet.directory))

    assert report["jobs"] == {"Scan succeeded": MACHINES, "Install succeeded": MACHINES}
    assert report["converged"] is True
    for machine in machines:
        assert AFTER.items() <= machine.versions().items(), machine.name
        # Every login was admin's (sshd's own log), never root's ...
        assert logins(machine, "root") == root_logins[machine.name]
        assert logins(machine, ADMIN) > 0
        # ... and the agent ran as root through admin's sudo: so did its hooks, which wrote this file.
        log = machine.root / HOOK_LOG
        assert log.stat().st_uid == 0
        assert log.read_text().splitlines() == STAGES, machine.name
        boot_id, count = boots[machine.name]
        if machine in web:  # rebooted once, by the loop, which waited for the new boot id
            assert machine.versions()["pwtest-kernel"] == "1.0-2"
            assert dpkg_installs(machine.root)[("pwtest-kernel", "1.0-2")] == 1
            assert (machine.boots, machine.boot_id != boot_id) == (count + 1, True)
        else:
            assert "pwtest-kernel" not in machine.versions()
            assert (machine.boots, machine.boot_id) == (count, boot_id)
    with StateStore(state) as store:
        for job in (j for j in store.jobs() if j.operation == "Install"):
            assert job.result is not None
            reboot = job.result["install"]["reboot"]
            assert bool(reboot.get("performed")) is (fleet[job.instance] in web), job.instance
            checks = [h for h in job.result["hooks"] if h.get("name") == "app"]
            after = ["install", "reboot"] if fleet[job.instance] in web else ["install"]
            assert [(c["after"], c["ok"]) for c in checks] == [(a, True) for a in after]

    rows = cli_json("compliance", "--state", str(state))
    assert {r["instanceId"]: r["complianceStatus"] for r in rows} == {
        m.name: "COMPLIANT" for m in machines
    }
    shown = patchctl("compliance", "m01", "--state", str(state))
    assert f"(from InstanceSource {SOURCE}, host m01)" in shown.stdout
    plan = cli_json(
        "plan", "--source", url, "--state", str(state), "--ssh-dir", str(fleet.directory)
    )
    enrolled = {w["instance"]: w.get("enrolled") for w in [*plan["actions"], *plan["waits"]]}
    assert enrolled == {m.name: f"from InstanceSource {SOURCE}, host {m.name}" for m in machines}


def test_a_health_check_failing_on_enrolled_machines_halts_the_window_once_max_errors_is_spent(
    fleet: Fleet, machines: list[Machine], tmp_path: Path
) -> None:
    web = machines[:5]
    without_reboot(web)
    # Healthy on m01 only (each machine answers with its own hostname). The loop starts targets
    # in the order their scans finish, so four unhealthy machines make sure the second failure,
    # which exceeds maxErrors 1, comes while at least two machines have not been started.
    check = [
        "/bin/sh",
        "-c",
        'case "$(hostname)" in m01) ;; *) echo "app down on $(hostname)" >&2; exit 1;; esac',
    ]
    # The machine's own web server, started before the install, answers the controller's GET
    # (an HTTP check reaching the enrolled machine's address, {host}).
    serve = [
        "/bin/sh",
        "-c",
        f"setsid python3 -m http.server {WEB_PORT} --directory /srv >/dev/null 2>&1 </dev/null &",
    ]
    web_check = (
        f'        - {{name: web, http: {{url: "http://{{host}}:{WEB_PORT}/"}}, '
        "retries: 5, intervalSeconds: 1}\n"
    )
    url = enrolled_fleet(
        tmp_path,
        fleet,
        "web",
        f"      hooks:\n        preInstall: [{{argv: {json.dumps(serve)}}}]\n"
        + health_check(check)
        + web_check,
        max_concurrency="1",
        max_errors="1",
    )
    state = tmp_path / "state" / "state.db"

    report = reconcile_cli(url, state, "--ssh-dir", str(fleet.directory))

    assert report["jobs"].pop("Install failed") == 2
    assert report["jobs"] in ({"Scan succeeded": 5}, {"Scan succeeded": 5, "Install succeeded": 1})
    assert any("exceed maxErrors 1" in w["reason"] for w in report["waits"]), report["waits"]
    with StateStore(state) as store:
        installs = sorted(
            (j for j in store.jobs() if j.operation == "Install"), key=lambda j: j.created_at
        )
    assert installs[-1].status == JobStatus.FAILED  # nothing started after the second failure
    started = {j.instance for j in installs}
    for machine in web:
        patched = machine.versions()["pwtest-lib"] == "1.0-2"
        assert patched is (machine.name in started), machine.name
    assert len(started) <= 3  # two or more machines were never started
    for job in installs:  # every started machine's web server answered the controller
        assert job.result is not None
        gets = [h for h in job.result["hooks"] if h.get("name") == "web"]
        assert [(h["ok"], h["http"]["status"]) for h in gets] == [(True, 200)]
    for job in (j for j in installs if j.status == JobStatus.FAILED):
        name = job.instance
        assert job.result is not None
        assert job.result["error"]["code"] == "HealthCheckFailed"
        assert job.result["error"]["message"].endswith(f"exited 1: app down on {name}")
        history = cli_json("compliance", name, "--history", "--state", str(state))
        assert f"app down on {name}" in history[-1]["hooks"], history[-1]
        audit = patchctl("audit", "--instance", name, "--state", str(state))
        assert audit.returncode == 0 and f"app down on {name}" in audit.stdout, audit.stderr


def test_a_run_killed_while_an_enrolled_machine_reboots_is_finished_by_a_restart_without_a_second_install(
    fleet: Fleet, machines: list[Machine], tmp_path: Path
) -> None:
    cache = machines[8:]
    url = enrolled_fleet(tmp_path, fleet, "cache", HOOKS, max_concurrency="1")
    state = tmp_path / "state" / "state.db"
    common = ["--source", url, "--state", str(state), "--ssh-dir", str(fleet.directory)]
    down = kill_run_mid_reboot(fleet, cache, common, state, tmp_path / "run.log")
    fleet[down].wait_up()  # released: it boots while no controller runs

    report = reconcile_cli(url, state, "--ssh-dir", str(fleet.directory))

    assert report["converged"], report
    with StateStore(state) as store:
        installs = [j for j in store.jobs() if j.operation == "Install"]
        assert sorted(j.instance for j in installs) == ["m09", "m10"]
        assert {j.status for j in installs} == {JobStatus.SUCCEEDED}
        for job in installs:
            latest = store.latest_scan(job.instance)
            assert latest is not None and latest.compliance_status == "COMPLIANT"
    for machine in cache:
        # dpkg's own log: the reboot-asking update was installed once, by one install job.
        assert dpkg_installs(machine.root)[("pwtest-kernel", "1.0-2")] == 1, machine.name
        assert AFTER.items() <= machine.versions().items()
        # One install's hooks; the killed job's onExit ran once, after the restart's wait.
        assert (machine.root / HOOK_LOG).read_text().splitlines() == STAGES, machine.name

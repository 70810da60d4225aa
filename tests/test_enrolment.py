"""Enrolment (issue 14 item 1): InstanceSources generate ManagedInstances.

Real sources throughout: a directory and a Git repository (file://) holding the resources, real
ansible-core reading the inventories and the real ``ansible-inventory`` command from the venv to
compare with; the loop's state in a real SQLite store; no clock but the injected one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.api.resources import (
    HOST_ANNOTATION,
    SOURCE_ANNOTATION,
    ManagedInstance,
    SshConnection,
)
from reconciler.loop import Reconciler
from reconciler.report.notify.metrics import LoopMetrics
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.sources import DirectorySource, GitSource, read_snapshot
from reconciler.sources.enrol import enrol_once
from reconciler.state import StateStore
from tests.git_servers import Upstream
from tests.test_cli_evaluate import patchctl
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"
T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
API = "apiVersion: patchwarden.io/v1alpha1"

# Groups, children (two levels), ranges with leading zeros, alphabetic ranges, per-host and
# per-group variables, become with and without a user, group_vars from a file beside it.
INI_INVENTORY = """\
[web]
web[01:12].example.com
web-extra ansible_host=192.0.2.50 ansible_port=2200

[db]
db[a:c] ansible_user=postgres ansible_become=yes ansible_become_user=postgres

[cache]
cache1 ansible_host=192.0.2.70 ansible_become=no

[backend:children]
db
cache

[prod:children]
web
backend

[prod:vars]
ansible_user=admin
ansible_ssh_private_key_file=keys/prod_ed25519

[ungrouped_host_section]
"""
GROUP_VARS_WEB = "ansible_become: true\n"
YAML_INVENTORY = """\
all:
  children:
    edge:
      hosts:
        edge[1:3]:
          ansible_port: 2022
      vars:
        ansible_become: true
        ansible_become_method: sudo
    core:
      children:
        routers:
          hosts:
            rtr-a:
              ansible_host: 198.51.100.1
              ansible_user: netops
"""


def source_yaml(name: str, body: str, extra: str = "") -> str:
    return (
        f"{API}\nkind: InstanceSource\nmetadata:\n  name: {name}\nspec:\n{body}"
        "  connection:\n    user: patchwarden\n    knownHostsFile: known_hosts\n"
        f"  labels:\n    enrolled: 'yes'\n{extra}"
    )


def ansible_list(inventory: Path) -> dict[str, dict[str, object]]:
    """host -> {"groups": every group it is in, through children too; "vars": its variables},
    as the real ``ansible-inventory -i FILE --list`` says."""
    done = subprocess.run(
        [str(ANSIBLE_INVENTORY), "-i", str(inventory), "--list"],
        capture_output=True,
        text=True,
        check=True,
        cwd=inventory.parent,
    )
    listed = json.loads(done.stdout)
    hostvars = listed.pop("_meta")["hostvars"]

    def members(group: str) -> set[str]:
        entry = listed.get(group, {})
        found = set(entry.get("hosts", []))
        for child in entry.get("children", []):
            found |= members(child)
        return found

    groups = {g for g in listed if g not in ("all", "ungrouped")}
    everyone = members("all")
    return {
        host: {
            "groups": {g for g in groups if host in members(g)},
            "vars": hostvars.get(host, {}),
        }
        for host in everyone
    }


def as_flag(value: object) -> bool:
    return value is True or str(value).lower() in ("yes", "true", "1", "on")


def assert_enrolled_as_ansible_sees_it(
    instances: dict[str, ManagedInstance], listed: dict[str, dict[str, object]], source: str
) -> None:
    generated = {
        i.metadata.annotations[HOST_ANNOTATION]: i
        for i in instances.values()
        if i.metadata.annotations.get(SOURCE_ANNOTATION) == source
    }
    assert set(generated) == set(listed)
    for host, seen in listed.items():
        instance, variables = generated[host], seen["vars"]
        assert isinstance(variables, dict)
        connection = instance.spec.connection
        assert isinstance(connection, SshConnection)
        become = as_flag(variables.get("ansible_become", False))
        assert (host, connection.host) == (host, variables.get("ansible_host", host))
        assert (host, connection.port) == (host, variables.get("ansible_port", 22))
        assert (host, connection.user) == (host, variables.get("ansible_user", "patchwarden"))
        assert (host, connection.identity_file) == (
            host,
            variables.get("ansible_ssh_private_key_file"),
        )
        assert (host, connection.become) == (host, "sudo" if become else None)
        expected_user = variables.get("ansible_become_user") if become else None
        assert (host, connection.become_user) == (host, expected_user)
        assert connection.known_hosts_file == "known_hosts"  # the template's
        groups = {
            k.removeprefix("ansible.group/")
            for k, v in instance.metadata.labels.items()
            if k.startswith("ansible.group/") and v == "true"
        }
        assert (host, groups) == (host, seen["groups"])
        assert instance.metadata.labels["enrolled"] == "yes"


def test_an_ini_and_a_yaml_inventory_are_enrolled_exactly_as_ansible_inventory_lists_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "hosts.ini").write_text(INI_INVENTORY)
    (tmp_path / "inventory" / "group_vars").mkdir()
    (tmp_path / "inventory" / "group_vars" / "web.yml").write_text(GROUP_VARS_WEB)
    (tmp_path / "network.yaml").write_text(YAML_INVENTORY)
    (tmp_path / "sources.yaml").write_text(
        source_yaml("ini", "  ansibleInventory:\n    path: inventory/hosts.ini\n")
        + "---\n"
        + source_yaml("yaml", "  ansibleInventory:\n    path: network.yaml\n")
    )
    written = read_snapshot(tmp_path)  # the YAML inventory and group_vars are not resources
    enrolled = enrol_once(tmp_path, written, lambda: T0)
    ini = ansible_list(tmp_path / "inventory" / "hosts.ini")
    assert len(ini) == 12 + 1 + 3 + 1  # the ranges are expanded
    assert_enrolled_as_ansible_sees_it(dict(enrolled.snapshot.instances), ini, "ini")
    network = ansible_list(tmp_path / "network.yaml")
    assert_enrolled_as_ansible_sees_it(dict(enrolled.snapshot.instances), network, "yaml")
    # Leading zeros of a range survive in the names, as in the inventory.
    assert "web07.example.com" in enrolled.snapshot.instances


def test_an_inventory_in_a_git_revision_is_enrolled_by_the_loop(tmp_path: Path) -> None:
    upstream = Upstream.create(tmp_path / "served", "fleet", tmp_path / "scratch")
    upstream.write("hosts.ini", INI_INVENTORY)
    upstream.write("group_vars/web.yml", GROUP_VARS_WEB)
    upstream.write("fleet.yaml", source_yaml("ini", "  ansibleInventory:\n    path: hosts.ini\n"))
    upstream.commit("inventory")
    source = GitSource(f"file://{upstream.bare}", workdir=tmp_path / "clone")
    with StateStore(tmp_path / "state.db") as store:
        loop = Reconciler(source, store, lambda _: pytest.fail("nothing is dispatched"))
        loop.refresh()
        assert loop.snapshot is not None
        listed = ansible_list(upstream.work / "hosts.ini")
        assert_enrolled_as_ansible_sees_it(dict(loop.snapshot.instances), listed, "ini")
        # A new commit that drops hosts: the loop lists the inventory of that revision.
        upstream.write("hosts.ini", INI_INVENTORY.replace("web[01:12]", "web[01:02]"))
        upstream.commit("fewer web servers")
        loop.refresh()
        assert "web03.example.com" not in loop.snapshot.instances
        assert "web02.example.com" in loop.snapshot.instances
        loop.enrolment.close()


def test_validate_names_the_source_line_of_an_inventory_ansible_cannot_read(
    tmp_path: Path,
) -> None:
    (tmp_path / "hosts.ini").write_text("[web]\nweb1 ansible_become=yes ansible_become_method=su\n")
    (tmp_path / "fleet.yaml").write_text(
        source_yaml("inv", "  ansibleInventory:\n    path: hosts.ini\n")
    )
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "fleet.yaml:6: spec.ansibleInventory: host web1: ansible_become_method: 'su': only sudo "
        "is supported (become: sudo)",
        "refused: 1 problem(s); nothing was applied",
    ]


@pytest.mark.parametrize(
    ("variable", "says"),
    [
        ("ansible_ssh_common_args='-o ProxyJump=bastion'", "OpenSSH options are not passed on"),
        ("ansible_password=hunter2", "passwords are not taken from inventories"),
        ("ansible_become_flags=-H", "sudo runs as `sudo -n`"),
    ],
)
def test_inventory_variables_enrolment_cannot_carry_over_are_refused_not_ignored(
    tmp_path: Path, variable: str, says: str
) -> None:
    """An inventory that reaches or elevates on a machine in a way a ManagedInstance cannot say is
    refused, naming the host and the variable, never enrolled as if the variable were absent."""
    (tmp_path / "hosts.ini").write_text(f"[web]\nweb1 {variable}\n")
    (tmp_path / "fleet.yaml").write_text(
        source_yaml("inv", "  ansibleInventory:\n    path: hosts.ini\n")
    )
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 1
    name = variable.split("=")[0]
    assert run.stderr.splitlines()[0].startswith(
        f"fleet.yaml:6: spec.ansibleInventory: host web1: {name}: {says}"
    )
    assert "hunter2" not in run.stderr


def test_ignore_variables_lets_an_inventory_keep_its_openssh_options_for_ansible(
    tmp_path: Path,
) -> None:
    """Named in ignoreVariables, an inventory's OpenSSH options are ignored (they stay for
    Ansible's own runs); a password stays refused whatever the list says."""
    (tmp_path / "hosts.ini").write_text(
        "[web]\nweb1 ansible_host=192.0.2.7\n\n[all:vars]\n"
        "ansible_ssh_common_args='-o StrictHostKeyChecking=yes'\n"
    )
    spec = (
        "  ansibleInventory:\n    path: hosts.ini\n    ignoreVariables: [ansible_ssh_common_args]\n"
    )
    (tmp_path / "fleet.yaml").write_text(source_yaml("inv", spec))
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert "1 ManagedInstance(s) generated" in run.stdout
    bad = spec.replace("ansible_ssh_common_args]", "ansible_password]")
    (tmp_path / "fleet.yaml").write_text(source_yaml("inv", bad))
    refused = patchctl("validate", str(tmp_path))
    assert refused.returncode == 1
    assert "ignoreVariables" in refused.stderr


def test_an_inventory_template_is_refused_not_rendered(tmp_path: Path) -> None:
    """Jinja in a variable enrolment reads (here a lookup that would run a command) is refused:
    enrolment takes values, and ansible never renders it."""
    (tmp_path / "hosts.ini").write_text(
        "[web]\nweb1 ansible_host=\"{{ lookup('pipe', 'touch /tmp/rendered') }}\"\n"
    )
    (tmp_path / "fleet.yaml").write_text(
        source_yaml("inv", "  ansibleInventory:\n    path: hosts.ini\n")
    )
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 1
    assert run.stderr.splitlines()[0] == (
        "fleet.yaml:6: spec.ansibleInventory: host web1: ansible_host: \"{{ lookup('pipe', "
        "'touch /tmp/rendered') }}\" is a template; enrolment takes values, not templates"
    )


@pytest.mark.parametrize(
    ("inventory", "line", "this_line"),
    [
        ("[web]\nweb1\nh[0:99999999]\n", 3, "100,000,000"),
        ("all:\n  hosts:\n    'a[0:99]-[0:99]':\n    'b[a:z]':\n", 4, "26"),
    ],
    ids=["ini", "yaml, two ranges in one pattern"],
)
def test_an_inventory_whose_ranges_would_give_too_many_hosts_is_refused_before_ansible_reads_it(
    tmp_path: Path, inventory: str, line: int, this_line: str
) -> None:
    """ansible expands a range eagerly, so ``h[0:99999999]`` would exhaust the controller's
    memory: the inventory is refused first, naming its file and line."""
    name = "hosts.ini" if inventory.startswith("[") else "hosts.yaml"
    (tmp_path / name).write_text(inventory)
    (tmp_path / "fleet.yaml").write_text(
        source_yaml("inv", f"  ansibleInventory:\n    path: {name}\n")
    )
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"fleet.yaml:6: spec.ansibleInventory: {name}:{line}: host ranges would give more than "
        f"10,000 hosts (this line: {this_line}); list fewer hosts or split the inventory",
        "refused: 1 problem(s); nothing was applied",
    ]


STATIC = """\
  static:
    hosts:
      - name: web-1
        address: 192.0.2.1
      - name: Web_2
        address: 192.0.2.2
        port: 2222
        user: ops
        labels: {role: db}
"""


def test_validate_shows_what_a_static_source_enrols_and_which_instance_wins(
    tmp_path: Path,
) -> None:
    (tmp_path / "fleet.yaml").write_text(source_yaml("lab", STATIC))
    (tmp_path / "web-1.yaml").write_text(
        f"{API}\nkind: ManagedInstance\nmetadata:\n  name: web-1\n"
        "spec:\n  connection: {type: ssh, host: web-1.internal}\n"
    )
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1:] == [
        "InstanceSource lab (static): 2 machine(s), 1 ManagedInstance(s) generated",
        "  ManagedInstance web-1: the one written at web-1.yaml:4 wins over the one generated "
        "from InstanceSource lab, host web-1",
    ]
    enrolled = enrol_once(tmp_path, read_snapshot(tmp_path), lambda: T0).snapshot
    web2 = enrolled.instances["web-2"]  # normalised: lowercase, '_' -> '-'
    assert web2.metadata.annotations == {SOURCE_ANNOTATION: "lab", HOST_ANNOTATION: "Web_2"}
    assert web2.metadata.labels == {"enrolled": "yes", "role": "db"}
    assert isinstance(web2.spec.connection, SshConnection)
    assert (web2.spec.connection.port, web2.spec.connection.user) == (2222, "ops")
    assert enrolled.instances["web-1"].spec.connection.host == "web-1.internal"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "  static:\n    hosts: [{name: a, address: b}]\n  ansibleInventory: {path: h.ini}\n",
            "spec: give exactly one of static, ansibleInventory, ec2 (got static, ansibleInventory)",
        ),
        ("  labels: {}\n", "spec: give exactly one of static, ansibleInventory, ec2 (got none)"),
        (
            "  static:\n    hosts: [{name: a, address: b}]\n  connection: {host: x}\n",
            "spec.connection.host: a connection template has no host: each machine's address "
            "comes from the source",
        ),
        (
            "  static:\n    hosts: [{name: a, address: b}]\n  nameTemplate: '{host}'\n",
            "spec.nameTemplate: use {name} (the machine's id in the source) and optionally "
            "{source} (this InstanceSource's name), as in '{source}-{name}'; got '{host}'",
        ),
    ],
    ids=["two kinds", "no kind", "host in template", "bad name template"],
)
def test_a_malformed_instance_source_is_refused_with_file_line_and_field(
    tmp_path: Path, spec: str, message: str
) -> None:
    (tmp_path / "fleet.yaml").write_text(
        f"{API}\nkind: InstanceSource\nmetadata:\n  name: s\nspec:\n{spec}"
    )
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 1
    (problem, summary) = run.stderr.splitlines()
    assert problem.split(": ", 1)[1] == message
    assert problem.startswith("fleet.yaml:")
    assert summary == "refused: 1 problem(s); nothing was applied"


def test_a_hand_written_instance_may_not_claim_to_come_from_a_source(tmp_path: Path) -> None:
    """The provenance annotations are the loop's to set: on an instance written by hand they
    would fake its origin in plan and compliance, so validate refuses them, naming each line."""
    (tmp_path / "web-1.yaml").write_text(
        f"{API}\nkind: ManagedInstance\nmetadata:\n  name: web-1\n  annotations:\n"
        f"    {SOURCE_ANNOTATION}: ec2-prod\n    {HOST_ANNOTATION}: i-0abc\n"
        "spec:\n  connection: {type: ssh, host: web-1.internal}\n"
    )
    run = patchctl("validate", str(tmp_path))
    assert run.returncode == 1
    fix = "only an InstanceSource sets this annotation, on the instances it generates; remove it"
    assert run.stderr.splitlines() == [
        f"web-1.yaml:6: metadata.annotations.{SOURCE_ANNOTATION}: {fix} from this hand-written "
        "instance",
        f"web-1.yaml:7: metadata.annotations.{HOST_ANNOTATION}: {fix} from this hand-written "
        "instance",
        "refused: 2 problem(s); nothing was applied",
    ]


def refreshed_until(loop: Reconciler, heard: list[Occurrence], kind: Kind) -> Occurrence:
    """Refresh until the loop has taken in a listing that ended in ``kind``."""
    count = len(heard)

    def taken() -> Occurrence | None:
        loop.refresh()
        return next((o for o in heard[count:] if o.kind is kind), None)

    return wait_until(f"an occurrence {kind}", taken)


def test_a_source_that_fails_keeps_its_last_good_list_across_a_restart_and_says_so(
    tmp_path: Path,
) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "hosts.ini").write_text("[web]\nweb[1:3]\n")
    (fleet / "fleet.yaml").write_text(
        source_yaml("inv", "  ansibleInventory:\n    path: hosts.ini\n", "  refreshMinutes: 5\n")
    )
    now = [T0]
    heard: list[Occurrence] = []
    metrics = LoopMetrics()

    def loop(store: StateStore) -> Reconciler:
        return Reconciler(
            DirectorySource(fleet),
            store,
            lambda _: pytest.fail("nothing is dispatched"),
            clock=lambda: now[0],
            observers=[heard.append, metrics],
        )

    with StateStore(tmp_path / "state.db") as store:
        first = loop(store)
        first.refresh()
        assert first.snapshot is not None
        assert sorted(first.snapshot.instances) == ["web1", "web2", "web3"]
        (fleet / "hosts.ini").write_text("[web\nweb[1:3]\n")  # broken
        first.refresh()  # within refreshMinutes: not read again yet
        assert [o.kind for o in heard] == [Kind.INSTANCE_SOURCE_LISTED, Kind.SNAPSHOT_ACCEPTED]
        now[0] = T0 + timedelta(minutes=5)
        # Due now: listed in the background, taken in by a later pass (the loop never waits).
        failed = refreshed_until(first, heard, Kind.INSTANCE_SOURCE_FAILED)
        assert sorted(first.snapshot.instances) == ["web1", "web2", "web3"]  # kept
        assert failed.kind is Kind.INSTANCE_SOURCE_FAILED and failed.transition
        assert failed.detail["source"] == "inv"
        assert failed.detail["keptFrom"] == T0.isoformat()
        assert "ansible cannot read the inventory" in failed.detail["error"]
        (status,) = first.enrolment.statuses()
        assert status.error == failed.detail["error"]
        assert status.listed is not None and status.listed.at == T0
        scrape = metrics.render().decode()
        assert 'patchwarden_instance_source_up{source="inv"} 0.0' in scrape
        assert 'patchwarden_instance_source_hosts{source="inv"} 3.0' in scrape
        assert 'patchwarden_instance_source_refresh_failures_total{source="inv"} 1.0' in scrape
        first.enrolment.close()
    # A restart while the inventory is still broken: the stored list is enrolled.
    now[0] = T0 + timedelta(minutes=20)
    with StateStore(tmp_path / "state.db") as store:
        again = loop(store)
        again.refresh()
        assert again.snapshot is not None
        assert sorted(again.snapshot.instances) == ["web1", "web2", "web3"]
        assert store.source_failures()["inv"][0].startswith("ansible cannot read")
        # Fixed, without web2: it is no longer targeted.
        (fleet / "hosts.ini").write_text("[web]\nweb1\nweb3\n")
        now[0] += timedelta(minutes=5)
        listed = refreshed_until(again, heard, Kind.INSTANCE_SOURCE_LISTED)
        assert sorted(again.snapshot.instances) == ["web1", "web3"]
        assert listed.kind is Kind.INSTANCE_SOURCE_LISTED
        assert listed.detail["removed"] == ["web2"] and listed.detail["added"] == []
        assert store.source_failures() == {}
        again.enrolment.close()


def test_plan_and_compliance_say_where_a_generated_instance_comes_from(tmp_path: Path) -> None:
    """``plan`` names the source and host of each generated instance; ``sources`` lists what
    each source enrolled; a machine dropped from its source is no longer planned, and its
    compliance history still says where it came from."""
    fleet, state = tmp_path / "fleet", str(tmp_path / "state.db")
    fleet.mkdir()
    (fleet / "fleet.yaml").write_text(source_yaml("lab", STATIC))
    plan = patchctl("plan", "--source", str(fleet), "--state", state, "-o", "json")
    assert plan.returncode == 0, plan.stderr
    actions = {a["instance"]: a for a in json.loads(plan.stdout)["actions"]}
    assert actions["web-2"]["enrolled"] == "from InstanceSource lab, host Web_2"
    assert actions["web-1"]["enrolled"] == "from InstanceSource lab, host web-1"
    (fleet / "fleet.yaml").write_text(source_yaml("lab", STATIC.split("      - name: Web_2")[0]))
    plan = patchctl("plan", "--source", str(fleet), "--state", state, "-o", "json")
    assert [a["instance"] for a in json.loads(plan.stdout)["actions"]] == ["web-1"]
    sources = patchctl("sources", "--state", state, "-o", "json")
    assert sources.returncode == 0, sources.stderr
    (row,) = json.loads(sources.stdout)
    assert (row["source"], row["machines"], row["instances"], row["error"]) == ("lab", 1, 1, None)
    history = patchctl("compliance", "web-2", "--history", "--state", state)
    assert history.returncode == 0, history.stderr
    assert history.stdout.startswith(
        "Compliance history of web-2 (from InstanceSource lab, host Web_2; no longer listed there)"
    )


def test_without_ansible_core_the_error_says_what_to_install(tmp_path: Path) -> None:
    """ansible-core is an optional extra: where it cannot be imported, the source's error says
    which extra to install (an ``ansible`` package that fails to import stands in for none)."""
    fake = tmp_path / "site" / "ansible"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed here')\n")
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    (fleet / "hosts.ini").write_text("[web]\nweb1\n")
    (fleet / "fleet.yaml").write_text(
        source_yaml("inv", "  ansibleInventory:\n    path: hosts.ini\n")
    )
    run = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate", str(fleet)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=120,
        env={**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}:{ROOT}"},
    )
    assert run.returncode == 1
    assert run.stderr.splitlines()[0] == (
        "fleet.yaml:6: spec.ansibleInventory: ansibleInventory needs ansible-core: "
        "pip install 'patchwarden[ansible]'"
    )

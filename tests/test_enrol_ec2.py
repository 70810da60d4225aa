"""Enrolment from EC2: the ``ec2`` kind of InstanceSource lists instances by region and filters,
connects to the address asked for, and turns tags into labels (SSM's ``Patch Group`` tag into the
patch-group label).

EC2 is moto's server (``ThreadedMotoServer``): an EMULATOR of the EC2 API, not EC2 itself, used
because no real AWS account is reachable from the tests; boto3 talks to it over HTTP exactly as to
AWS (SigV4, the region from the credential scope, DescribeInstances' pagination). With moto's IAM
checks switched on it refuses a user without ec2:DescribeInstances as AWS does. Throttling cannot be
provoked in moto, so it is not tested here.

The AWS configuration of the host (``~/.aws``, instance metadata) is never read: every test gets
its own environment, with the endpoint given the standard way (``AWS_ENDPOINT_URL_EC2``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from reconciler.api.enrolment import DiscoveredHost
from reconciler.api.resources import GROUP_LABEL, Ec2Instances, LocalConnection, ManagedInstance
from reconciler.dispatch import transport_for
from reconciler.loop import Reconciler
from reconciler.report.notify.occurrences import Kind, Occurrence
from reconciler.sources import DirectorySource
from reconciler.sources.enrol import Context
from reconciler.sources.enrol.ec2 import Ec2RefreshFailed, discover
from reconciler.state import StateStore
from tests import awslab
from tests.aptlab import Repo
from tests.conftest import INSTALLED, needs_apt
from tests.fleet import BASELINE_YAML, ManualClock, documents, make_fleet, versions, window_yaml
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "ec2-prod"
IMAGE = "ami-12c6146b"  # in moto's catalogue of every region
KEYS = {"AWS_ACCESS_KEY_ID": "moto-key", "AWS_SECRET_ACCESS_KEY": "moto-secret"}


@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    with awslab.moto_server() as url:
        yield url


@dataclass
class Ec2Lab:
    """An emptied moto account, and the instances a test launches in it."""

    url: str

    def client(self, region: str) -> Any:
        return boto3.client("ec2", region_name=region, endpoint_url=self.url)

    def vpc(self, region: str) -> tuple[str, str]:
        """A new VPC and a subnet of it that gives instances no public address."""
        ec2 = self.client(region)
        vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.1.0/24")["Subnet"]["SubnetId"]
        return vpc, subnet

    def launch(
        self, region: str, tags: Mapping[str, str] | None = None, subnet: str | None = None
    ) -> str:
        """One instance (in the default VPC, with a public address, unless ``subnet``)."""
        options: dict[str, Any] = {"SubnetId": subnet} if subnet else {}
        if tags:
            pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
            options["TagSpecifications"] = [{"ResourceType": "instance", "Tags": pairs}]
        reply = self.client(region).run_instances(ImageId=IMAGE, MinCount=1, MaxCount=1, **options)
        return str(reply["Instances"][0]["InstanceId"])

    def describe(self, region: str, instance: str) -> dict[str, Any]:
        reply = self.client(region).describe_instances(InstanceIds=[instance])
        return dict(reply["Reservations"][0]["Instances"][0])


@pytest.fixture
def ec2(moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ec2Lab:
    awslab.isolated_aws(monkeypatch, tmp_path)
    for name, value in {**KEYS, "AWS_ENDPOINT_URL_EC2": moto_server}.items():
        monkeypatch.setenv(name, value)
    return Ec2Lab(awslab.moto_reset(moto_server))


def spec(**fields: Any) -> Ec2Instances:
    return Ec2Instances.model_validate({"regions": ["eu-west-1"], **fields})


def list_ec2(source: str, given: Ec2Instances, **options: Any) -> list[DiscoveredHost]:
    return discover(given, Context(source, None), **options)


def by_id(hosts: list[DiscoveredHost]) -> dict[str, DiscoveredHost]:
    """The hosts enrolled (those left out are not), by instance id."""
    return {h.id: h for h in hosts if h.left_out is None}


def left_out(hosts: list[DiscoveredHost]) -> dict[str, str]:
    return {h.id: h.left_out for h in hosts if h.left_out is not None}


# --- what is listed ------------------------------------------------------------------------------


def test_instances_of_every_region_are_listed_with_their_patch_group(ec2: Ec2Lab) -> None:
    web = ec2.launch("eu-west-1", {"Name": "web-1", "Patch Group": "web"})
    db = ec2.launch("us-east-1", {"Name": "DB server", "PatchGroup": "db"})
    ec2.launch("ap-southeast-2", {"Name": "elsewhere"})

    hosts = list_ec2(SOURCE, spec(regions=["eu-west-1", "us-east-1"]))

    machines = by_id(hosts)
    assert set(machines) == {web, db}
    # The id is the instance id (provenance); the name comes from the Name tag, made a
    # resource name as the framework makes every name.
    assert (machines[web].name, machines[db].name) == ("web-1", "db-server")
    assert machines[web].labels == {GROUP_LABEL: "web"}
    assert machines[db].labels == {GROUP_LABEL: "db"}
    assert machines[web].address == ec2.describe("eu-west-1", web)["PrivateIpAddress"]
    assert machines[db].address == ec2.describe("us-east-1", db)["PrivateIpAddress"]
    assert left_out(hosts) == {}


def test_tag_filters_select_instances_by_any_of_their_values(ec2: Ec2Lab) -> None:
    web = ec2.launch("eu-west-1", {"Patch Group": "web-eu", "Environment": "prod"})
    db = ec2.launch("eu-west-1", {"Patch Group": "db", "Environment": "prod"})
    ec2.launch("eu-west-1", {"Patch Group": "web-eu", "Environment": "test"})
    ec2.launch("eu-west-1", {"Patch Group": "cache", "Environment": "prod"})

    filters = {"tag:Environment": ["prod"], "tag:Patch Group": ["web*", "db"]}

    assert set(by_id(list_ec2(SOURCE, spec(filters=filters)))) == {web, db}


def test_a_stopped_instance_is_not_enrolled_unless_its_state_is_asked_for(ec2: Ec2Lab) -> None:
    running = ec2.launch("eu-west-1")
    stopped = ec2.launch("eu-west-1")
    ec2.client("eu-west-1").stop_instances(InstanceIds=[stopped])

    assert set(by_id(list_ec2(SOURCE, spec()))) == {running}
    asked = spec(filters={"instanceState": ["stopped"]})
    assert set(by_id(list_ec2(SOURCE, asked))) == {stopped}


def test_a_vpc_filter_keeps_the_instances_of_that_vpc(ec2: Ec2Lab) -> None:
    vpc, subnet = ec2.vpc("eu-west-1")
    inside = ec2.launch("eu-west-1", subnet=subnet)
    ec2.launch("eu-west-1")  # the default VPC

    assert set(by_id(list_ec2(SOURCE, spec(filters={"vpcId": [vpc]})))) == {inside}


@pytest.mark.parametrize(
    ("address", "field"),
    [
        ("privateIp", "PrivateIpAddress"),
        ("publicIp", "PublicIpAddress"),
        ("privateDns", "PrivateDnsName"),
        ("publicDns", "PublicDnsName"),
    ],
)
def test_the_address_asked_for_is_the_host_and_an_instance_without_one_is_left_out(
    ec2: Ec2Lab, address: str, field: str
) -> None:
    public = ec2.launch("eu-west-1")
    _, subnet = ec2.vpc("eu-west-1")
    private = ec2.launch("eu-west-1", subnet=subnet)

    hosts = list_ec2(SOURCE, spec(address=address))

    machines = by_id(hosts)
    assert machines[public].address == ec2.describe("eu-west-1", public)[field]
    if address.startswith("public"):
        # Never enrolled with an empty host: left out, and the refresh says which and why.
        assert private not in machines
        assert left_out(hosts) == {
            private: f"has no {address} address (spec.ec2.address): not enrolled"
        }
    else:
        assert machines[private].address == ec2.describe("eu-west-1", private)[field]


def test_tag_labels_map_tags_and_the_patch_group_tag_unless_named(ec2: Ec2Lab) -> None:
    team = ec2.launch("eu-west-1", {"Environment": "prod", "Patch Group": "web", "Team": "a"})
    mapping = {"Environment": "example.com/environment", "Team": "team"}

    machines = by_id(list_ec2(SOURCE, spec(tagLabels=mapping)))
    assert machines[team].labels == {
        "example.com/environment": "prod",
        "team": "a",
        GROUP_LABEL: "web",
    }
    # Named in tagLabels, Patch Group goes where it says (and nowhere else).
    moved = by_id(list_ec2(SOURCE, spec(tagLabels={"Patch Group": "ssm/patch-group"})))
    assert moved[team].labels == {"ssm/patch-group": "web"}


def test_instances_sharing_a_name_tag_are_named_by_their_ids(ec2: Ec2Lab) -> None:
    first = ec2.launch("eu-west-1", {"Name": "web"})
    second = ec2.launch("us-east-1", {"Name": "WEB"})  # the same resource name
    other = ec2.launch("us-east-1", {"Name": "db"})
    unnamed = ec2.launch("us-east-1", {"Name": "--"})

    machines = by_id(list_ec2(SOURCE, spec(regions=["eu-west-1", "us-east-1"])))

    names = {i: h.name for i, h in machines.items()}
    assert names == {first: None, second: None, other: "db", unnamed: None}


def test_every_page_of_instances_is_read(ec2: Ec2Lab) -> None:
    # moto pages by reservation, and each launch is one.
    launched = {ec2.launch("eu-west-1") for _ in range(7)}

    assert set(by_id(list_ec2(SOURCE, spec(), page_size=5))) == launched


# --- failures ------------------------------------------------------------------------------------


def test_no_credentials_fail_the_refresh_with_a_line_per_region(
    ec2: Ec2Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in KEYS:
        monkeypatch.delenv(name)
    with pytest.raises(Ec2RefreshFailed) as refused:
        list_ec2(SOURCE, spec(regions=["eu-west-1", "us-east-1"]))
    assert refused.value.reasons() == [
        f"InstanceSource ec2-prod, region {region}: no usable AWS credentials (Unable to locate "
        "credentials): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run "
        "with an instance or container role"
        for region in ("eu-west-1", "us-east-1")
    ]


def test_credentials_without_describe_instances_are_refused_by_name(
    ec2: Ec2Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    ec2.launch("eu-west-1")
    awslab.moto_api(ec2.url, "reset-auth", b"2")  # moto checks IAM after the next two requests
    try:
        iam = boto3.client("iam", region_name="us-east-1", endpoint_url=ec2.url)
        iam.create_user(UserName="auditor")
        key = iam.create_access_key(UserName="auditor")["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        with pytest.raises(Ec2RefreshFailed) as refused:
            list_ec2(SOURCE, spec())
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNUNKNOWN00")
        with pytest.raises(Ec2RefreshFailed) as unknown:
            list_ec2(SOURCE, spec())
    finally:
        awslab.moto_api(ec2.url, "reset-auth", b"inf")
    assert refused.value.reasons() == [
        "InstanceSource ec2-prod, region eu-west-1: access denied (User: "
        "arn:aws:iam::123456789012:user/auditor is not authorized to perform: "
        "ec2:DescribeInstances): the credentials need ec2:DescribeInstances"
    ]
    assert unknown.value.reasons() == [
        "InstanceSource ec2-prod, region eu-west-1: the credentials were refused (AuthFailure): "
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the role) for "
        "this region"
    ]


def test_an_endpoint_that_does_not_answer_fails_the_refresh(
    ec2: Ec2Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    ec2.launch("eu-west-1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", dead)
    with pytest.raises(Ec2RefreshFailed) as failed:
        list_ec2(SOURCE, spec())
    assert failed.value.reasons() == [
        f"InstanceSource ec2-prod, region eu-west-1: cannot reach the EC2 endpoint {dead}: check "
        "the network, and --ec2-endpoint-url / AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL if you set "
        "one"
    ]


def test_one_failing_region_fails_the_refresh_whole(ec2: Ec2Lab) -> None:
    """The instances of the regions that answered are not returned alone: the caller keeps its
    last good list rather than dropping the machines of the region it could not read."""
    ec2.launch("eu-west-1")
    # moto has no backend for a region it does not know: it answers with an HTML error page,
    # as a misconfigured proxy would.
    with pytest.raises(Ec2RefreshFailed) as failed:
        list_ec2(SOURCE, spec(regions=["eu-west-1", "xx-nowhere-1"]))
    assert failed.value.reasons() == [
        f"InstanceSource ec2-prod, region xx-nowhere-1: the EC2 endpoint {ec2.url} did not "
        "answer as EC2 does: check that it is EC2's (--ec2-endpoint-url / AWS_ENDPOINT_URL_EC2 / "
        "AWS_ENDPOINT_URL if you set one)"
    ]


# --- the spec ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"filters": {"Environment": ["prod"]}},
            "unknown filter 'Environment': give tag:<Key> (for example 'tag:Patch Group'), vpcId "
            "or instanceState (did you mean 'tag:Environment'?)",
        ),
        (
            {"filters": {"instanceState": ["runing"]}},
            "instanceState 'runing' is not an EC2 state: one of pending, running, shutting-down, "
            "terminated, stopping, stopped (did you mean 'running'?)",
        ),
        (
            {"filters": {"vpcId": ["default"]}},
            "vpcId 'default' is not a VPC id: give vpc- and 8-17 hex digits",
        ),
        ({"filters": {"tag:Team": []}}, "filter 'tag:Team' needs at least one value"),
        (
            {"tagLabels": {"Team": "Team Name"}},
            "tag 'Team' maps to 'Team Name', which is not a label key",
        ),
        ({"address": "ipv6"}, "Input should be 'privateIp', 'publicIp', 'privateDns'"),
        ({"regions": ["Europe"]}, "String should match pattern"),
        ({"regions": ["eu-west-1", "eu-west-1"]}, "eu-west-1 is listed twice: name each region"),
        ({"endpointUrl": "http://localhost"}, "Extra inputs are not permitted"),
    ],
)
def test_a_spec_that_cannot_be_listed_is_refused_with_what_to_do(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        spec(**fields)
    assert message in str(refused.value)


# --- enrolled: patchctl and the loop -------------------------------------------------------------

INSTANCE_SOURCE = f"""\
apiVersion: patchwarden.io/v1alpha1
kind: InstanceSource
metadata:
  name: {SOURCE}
spec:
  ec2:
    regions: [eu-west-1]
    filters:
      tag:Environment: [prod]
  refreshMinutes: 5
"""


def test_patchctl_validate_enrols_ec2_instances_and_refuses_an_unknown_filter(
    ec2: Ec2Lab, tmp_path: Path
) -> None:
    ec2.launch("eu-west-1", {"Name": "web-1", "Environment": "prod", "Patch Group": "web"})
    ec2.launch("eu-west-1", {"Name": "test-1", "Environment": "test"})
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "sources.yaml").write_text(INSTANCE_SOURCE)

    valid = patchctl("validate", str(tmp_path / "fleet"), "-o", "json")
    assert valid.returncode == 0, valid.stderr
    [listed] = json.loads(valid.stdout)["enrolled"]
    assert {k: v for k, v in listed.items() if k != "listedAt"} == {
        "source": SOURCE,
        "kind": "ec2",
        "machines": 1,
        "instances": ["web-1"],
        "error": None,
        "failedAt": None,
        "notes": [],
    }

    bad = INSTANCE_SOURCE.replace("tag:Environment", "Environment")
    (tmp_path / "fleet" / "sources.yaml").write_text(bad)
    refused = patchctl("validate", str(tmp_path / "fleet"))
    assert refused.returncode != 0
    assert refused.stdout + refused.stderr == (
        "sources.yaml:8: spec.ec2.filters: unknown filter 'Environment': give tag:<Key> (for "
        "example 'tag:Patch Group'), vpcId or instanceState (did you mean 'tag:Environment'?)\n"
        "refused: 1 problem(s); nothing was applied\n"
    )


def test_ec2_endpoint_url_lists_instances_where_the_aws_configuration_names_no_endpoint(
    ec2: Ec2Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As --s3-endpoint-url for S3: the option alone reaches the EC2 endpoint (moto's emulator
    here), for the one-shot validate and the loop's commands (plan), and a bad one is refused
    in one line naming the option."""
    web = ec2.launch("eu-west-1", {"Name": "web-1", "Environment": "prod"})
    monkeypatch.delenv("AWS_ENDPOINT_URL_EC2")
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "sources.yaml").write_text(INSTANCE_SOURCE)
    endpoint = ("--ec2-endpoint-url", ec2.url)

    valid = patchctl("validate", str(tmp_path / "fleet"), *endpoint, "-o", "json")
    assert valid.returncode == 0, valid.stderr
    assert [e["instances"] for e in json.loads(valid.stdout)["enrolled"]] == [["web-1"]]

    args = ["plan", "--source", str(tmp_path / "fleet"), "--state", str(tmp_path / "state.db")]
    planned = patchctl(*args, *endpoint, "-o", "json")
    assert planned.returncode == 0, planned.stderr
    actions = json.loads(planned.stdout)["actions"]
    assert [(a["instance"], a["enrolled"]) for a in actions] == [
        ("web-1", f"from InstanceSource {SOURCE}, host {web}")
    ]

    bad = patchctl("validate", str(tmp_path / "fleet"), "--ec2-endpoint-url", "not a url")
    assert bad.returncode != 0
    assert "--ec2-endpoint-url" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


def patchctl(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "reconciler", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


@dataclass
class Heard:
    """The occurrences of a loop, as an observer hears them."""

    occurrences: list[Occurrence] = field(default_factory=list)

    def __call__(self, occurrence: Occurrence) -> None:
        self.occurrences.append(occurrence)

    def of(self, kind: Kind) -> list[Occurrence]:
        return [o for o in self.occurrences if o.kind is kind]


@needs_apt
def test_the_loop_patches_ec2_instances_drops_a_terminated_one_and_keeps_the_list_on_failure(
    ec2: Ec2Lab, apt_repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machines behind the EC2 instances are Debian roots in directories (real apt and
    dpkg): the test routes each generated instance's connection to its root, since moto's
    instances run nothing."""
    tags = {"Environment": "prod", "Patch Group": "fleet"}
    ids = {name: ec2.launch("eu-west-1", {**tags, "Name": name}) for name in ("web-1", "web-2")}
    roots = make_fleet(tmp_path / "machines", apt_repo, list(ids), INSTALLED)
    # The fleet's group selects by its own label; here the Patch Group tag puts instances in it.
    baseline = BASELINE_YAML.split("---")[0]
    group = "apiVersion: patchwarden.io/v1alpha1\nkind: PatchGroup\nmetadata: {name: fleet}\n"
    group += "spec: {baselines: {DEBIAN: debian-security}}\n"
    window = window_yaml("noon", "cron(0 12 * * ? *)")
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "all.yaml").write_text(
        documents(baseline, group, window, INSTANCE_SOURCE)
    )
    clock = ManualClock(datetime(2026, 11, 28, 12, 30, tzinfo=UTC))
    heard = Heard()
    store = StateStore(tmp_path / "state.db")

    def machine(instance: ManagedInstance) -> Any:
        local = LocalConnection(type="local", root=str(roots[instance.metadata.name]))
        return transport_for(local, trust_root_scripts=True)

    loop = Reconciler(
        DirectorySource(tmp_path / "fleet"), store, machine, clock=clock, observers=[heard]
    )
    loop.reconcile()
    assert {n: versions(r)["pwtest-lib"] for n, r in roots.items()} == {
        "web-1": "1.0-2",
        "web-2": "1.0-2",
    }
    generated = loop.snapshot.instances["web-2"] if loop.snapshot else None
    assert (
        generated is not None
        and generated.metadata.annotations["patchwarden.io/instance-source-host"] == ids["web-2"]
    )

    # Terminated: at the next refresh it is no longer enrolled, and its history stays.
    ec2.client("eu-west-1").terminate_instances(InstanceIds=[ids["web-2"]])
    clock.advance_to(clock.now + timedelta(minutes=10))
    wait_until("web-2 no longer enrolled", lambda: instances_after_refresh(loop) == {"web-1"})
    plan = loop.plan()
    assert plan is not None and all(a.instance == "web-1" for a in plan.actions)
    assert store.scan_history("web-2")

    # EC2 unreachable: the refresh fails, says so, and the last good list stays in force.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{probe.getsockname()[1]}")
    clock.advance_to(clock.now + timedelta(minutes=10))
    wait_until(
        "a failed refresh",
        lambda: instances_after_refresh(loop) and heard.of(Kind.INSTANCE_SOURCE_FAILED),
    )
    assert instances_after_refresh(loop) == {"web-1"}
    [failed] = heard.of(Kind.INSTANCE_SOURCE_FAILED)
    assert failed.detail["error"].startswith(
        "InstanceSource ec2-prod, region eu-west-1: cannot reach the EC2 endpoint"
    )
    [status] = loop.enrolment.statuses()
    assert status.error == failed.detail["error"] and status.instances == ("web-1",)


def instances_after_refresh(loop: Reconciler) -> set[str]:
    loop.refresh()
    return set(loop.snapshot.instances) if loop.snapshot else set()

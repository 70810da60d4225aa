"""Stage: sources — instance discovery. The machines an ``ec2`` InstanceSource lists: EC2's
DescribeInstances in each region, with the source's filters, every page.

An I/O edge: it reads EC2 and turns what it reads into machines (a resource name, an address, labels
and the instance id for provenance); it decides nothing about patching and writes nothing, in AWS
or here. Credentials come from boto3's standard chain (environment, shared files, ``AWS_PROFILE``,
container and instance roles), never from the repository; the endpoint from ``endpoint_url``
(``--ec2-endpoint-url``), else ``AWS_ENDPOINT_URL_EC2`` / ``AWS_ENDPOINT_URL`` or the profile's
``endpoint_url``, which botocore itself reads.

A refresh is whole or nothing: when any region fails, :class:`Ec2RefreshFailed` says why in one
line per region (naming the source and the region), and nothing of the others is returned, so the
caller keeps its last good list instead of dropping the machines of the region it could not read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.api.ec2 import Ec2Spec, valid_label_value, valid_name
from reconciler.aws import credentials_problem
from reconciler.errors import TemporaryError

ADDRESS_FIELDS = {
    "privateIp": "PrivateIpAddress",
    "publicIp": "PublicIpAddress",
    "privateDns": "PrivateDnsName",
    "publicDns": "PublicDnsName",
}
"""``address`` -> the DescribeInstances field holding it."""

# EC2's own names for the filters the spec spells in camelCase.
_FILTER_NAMES = {"vpcId": "vpc-id", "instanceState": "instance-state-name"}
_NAME_TAG = "Name"


class Ec2RefreshFailed(TemporaryError):
    """One or more regions could not be read; ``reasons()`` has one line per region."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        super().__init__("; ".join(self.lines))

    def reasons(self) -> list[str]:
        return list(self.lines)


@dataclass(frozen=True)
class Ec2Machine:
    """One instance to enrol: its generated resource name, where SSH connects, its labels."""

    name: str
    host: str
    labels: Mapping[str, str]
    instance_id: str
    region: str

    @property
    def provenance(self) -> str:
        return f"instance {self.instance_id} ({self.region})"


@dataclass(frozen=True)
class Ec2Listing:
    """What one refresh found: the machines enrolled, and a line for each instance that matched
    the filters but is not enrolled (no such address, a tag that cannot be a label)."""

    machines: tuple[Ec2Machine, ...]
    skipped: tuple[str, ...]


def list_ec2(
    source: str,
    spec: Ec2Spec,
    *,
    endpoint_url: str | None = None,
    page_size: int | None = None,
    timeout: float = 10.0,
) -> Ec2Listing:
    """The instances of ``spec`` (the InstanceSource named ``source``) in all its regions."""
    failures: list[str] = []
    found: list[tuple[str, Mapping[str, Any]]] = []
    for region in spec.regions:
        try:
            instances = _region(region, spec, endpoint_url, page_size, timeout)
        except _RegionFailed as exc:
            failures.append(f"InstanceSource {source}, region {region}: {exc}")
            continue
        found.extend((region, instance) for instance in instances)
    if failures:
        raise Ec2RefreshFailed(failures)
    return _listing(spec, found)


class _RegionFailed(Exception):
    """What went wrong in one region, in our words."""


def _region(
    region: str, spec: Ec2Spec, endpoint_url: str | None, page_size: int | None, timeout: float
) -> list[Mapping[str, Any]]:
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    try:
        client = ec2_client(region, endpoint_url=endpoint_url, timeout=timeout)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise _RegionFailed(
            f"{exc}: give the EC2 endpoint as http(s)://host[:port] (--ec2-endpoint-url, "
            "AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL)"
        ) from None
    try:
        return _describe(client, spec, page_size)
    except (BotoCoreError, ClientError, ResponseParserError) as exc:
        raise _RegionFailed(_problem(exc, client.meta.endpoint_url)) from None


def ec2_client(region: str, *, endpoint_url: str | None = None, timeout: float = 10.0) -> Any:
    """An EC2 client for ``region`` from the standard AWS configuration (see the module
    docstring); botocore's standard retries back off on throttling."""
    import boto3
    from botocore.config import Config

    retries: Any = {"mode": "standard", "max_attempts": 3}
    config = Config(connect_timeout=timeout, read_timeout=3 * timeout, retries=retries)
    session = boto3.session.Session()
    return session.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config)


def ec2_filters(spec: Ec2Spec) -> list[dict[str, Any]]:
    """The spec's filters as DescribeInstances takes them (instanceState defaulting to running)."""
    named = {**spec.filters, "instanceState": list(spec.states())}
    return [
        {"Name": _FILTER_NAMES.get(name, name), "Values": list(values)}
        for name, values in named.items()
    ]


def _describe(client: Any, spec: Ec2Spec, page_size: int | None) -> list[Mapping[str, Any]]:
    paging = {"PageSize": page_size} if page_size else {}
    pages = client.get_paginator("describe_instances").paginate(
        Filters=ec2_filters(spec), PaginationConfig=paging
    )
    instances: list[
        Mapping[str, Any]
    ] = []  # read every page before returning: a failure on page 3 fails the region
    for page in pages:
        for reservation in page.get("Reservations", []):
            instances.extend(reservation.get("Instances", []))
    return instances


def _problem(exc: Exception, endpoint: str) -> str:
    """What went wrong, and what to do about it, in one line."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
    )
    from botocore.parsers import ResponseParserError

    missing = credentials_problem(exc)
    if missing is not None:
        return missing
    if isinstance(exc, EndpointConnectionError):
        return (
            f"cannot reach the EC2 endpoint {endpoint}: check the network, and "
            "--ec2-endpoint-url / AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL if you set one"
        )
    if isinstance(exc, ResponseParserError):
        # Not botocore's own error class: a proxy's HTML page, a server that is not EC2.
        return (
            f"the EC2 endpoint {endpoint} did not answer as EC2 does: check that it is EC2's "
            "(--ec2-endpoint-url / AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL if you set one)"
        )
    if not isinstance(exc, ClientError):
        return f"DescribeInstances failed: {_one_line(str(exc))} (endpoint {endpoint})"
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    text = _one_line(str(error.get("Message") or exc))
    if code in ("AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken"):
        return (
            f"the credentials were refused ({code}): check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or the role) for this region"
        )
    if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
        return f"access denied ({text}): the credentials need ec2:DescribeInstances"
    if code in ("RequestLimitExceeded", "Throttling", "ThrottlingException"):
        return (
            f"EC2 throttled DescribeInstances ({code}) after retries: the next refresh tries "
            "again; lengthen the refresh interval if this repeats"
        )
    return f"EC2 refused DescribeInstances: {code}: {text}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- from instances to machines -------------------------------------------------------------------


def _listing(spec: Ec2Spec, found: Sequence[tuple[str, Mapping[str, Any]]]) -> Ec2Listing:
    names = {id(i): _name_tag(i) for _, i in found}
    shared = {n for n, count in Counter(names.values()).items() if n is not None and count > 1}
    machines: list[Ec2Machine] = []
    skipped: list[str] = []
    for region, instance in found:
        instance_id = str(instance.get("InstanceId", ""))
        where = f"instance {instance_id} ({region})"
        host = instance.get(ADDRESS_FIELDS[spec.address]) or ""
        labels, problem = _labels(spec, instance)
        if not host:
            skipped.append(f"{where}: has no {spec.address} address; not enrolled")
        elif problem:
            skipped.append(f"{where}: {problem}; not enrolled")
        else:
            tagged = names[id(instance)]
            name = tagged if tagged and tagged not in shared else instance_id
            machines.append(Ec2Machine(name, str(host), labels, instance_id, region))
    skipped.extend(
        f"the Name tag {n!r} is on several instances: each is named by its id"
        for n in sorted(shared)
    )
    return Ec2Listing(tuple(machines), tuple(skipped))


def _tags(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value", "")) for t in instance.get("Tags") or []}


def _name_tag(instance: Mapping[str, Any]) -> str | None:
    """The instance's Name tag when it is a valid resource name (else it is named by its id)."""
    name = _tags(instance).get(_NAME_TAG)
    return name if name is not None and valid_name(name) else None


def _labels(spec: Ec2Spec, instance: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
    """The labels its tags give, or why they cannot be labels."""
    tags = _tags(instance)
    labels: dict[str, str] = {}
    for tag, label in spec.label_of_tag().items():
        value = tags.get(tag)
        if value is None or label in labels:
            continue
        if not valid_label_value(value):
            return {}, (
                f"its tag {tag!r} is {value!r}, which cannot be the value of label {label} "
                "(at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter "
                "or digit): change the tag"
            )
        labels[label] = value
    return labels, None

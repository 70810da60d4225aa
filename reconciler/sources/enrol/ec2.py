"""Stage: sources (enrolment). The ``ec2`` kind of InstanceSource: EC2's DescribeInstances in each
region, with the source's filters, every page; each instance a DiscoveredHost whose id is the
instance id, named by its Name tag, labelled from its tags.

An I/O edge: it reads EC2 and writes nothing, in AWS or here; turning hosts into ManagedInstances
is :mod:`reconciler.api.enrolment`'s job. Credentials come from boto3's standard chain
(environment, shared files, ``AWS_PROFILE``, container and instance roles), never from the
repository; the endpoint is AWS's unless ``--ec2-endpoint-url`` (``Context.ec2_endpoint_url``) or
the AWS configuration names another (``AWS_ENDPOINT_URL_EC2``, ``AWS_ENDPOINT_URL``, a profile's
``endpoint_url``, which botocore itself reads), as ``--s3-endpoint-url`` does for S3.

A refresh is whole or nothing: when any region fails, :class:`Ec2RefreshFailed` says why in one
line per region (naming the source and the region) and nothing of the others is returned, so the
framework keeps the last good list instead of dropping the machines of the region it could not
read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.api.ec2 import ADDRESSES, FILTERS
from reconciler.api.enrolment import DiscoveredHost, instance_name
from reconciler.api.resources import Ec2Instances
from reconciler.aws import credentials_problem
from reconciler.sources.enrol.base import Context, DiscoveryFailed

_NAME_TAG = "Name"
_ENDPOINT_HELP = "--ec2-endpoint-url / AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL if you set one"


class Ec2RefreshFailed(DiscoveryFailed):
    """One or more regions could not be read; ``reasons()`` has one line per region."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        super().__init__("; ".join(self.lines))

    def reasons(self) -> list[str]:
        return list(self.lines)


def discover(
    spec: Ec2Instances, context: Context, *, page_size: int | None = None, timeout: float = 10.0
) -> list[DiscoveredHost]:
    """The instances ``spec`` selects in all its regions (``page_size``: DescribeInstances'
    MaxResults, AWS's default when None)."""
    failures: list[str] = []
    found: list[Mapping[str, Any]] = []
    for region in spec.regions:
        try:
            client = _client(region, context.ec2_endpoint_url, timeout)
            found.extend(_describe_in(client, spec, page_size))
        except _RegionFailed as exc:
            failures.append(f"InstanceSource {context.source}, region {region}: {exc}")
    if failures:
        raise Ec2RefreshFailed(failures)
    return _hosts(spec, found)


class _RegionFailed(Exception):
    """What went wrong in one region, in our words."""


def _client(region: str, endpoint_url: str | None, timeout: float) -> Any:
    try:
        return ec2_client(region, endpoint_url=endpoint_url, timeout=timeout)
    except ValueError as exc:  # botocore: "Invalid endpoint: ..."
        raise _RegionFailed(
            f"{exc}: give the EC2 endpoint as http(s)://host[:port] in --ec2-endpoint-url, "
            "AWS_ENDPOINT_URL_EC2 or AWS_ENDPOINT_URL"
        ) from None


def _describe_in(client: Any, spec: Ec2Instances, page_size: int | None) -> list[Mapping[str, Any]]:
    from botocore.exceptions import BotoCoreError, ClientError
    from botocore.parsers import ResponseParserError

    try:
        return _describe(client, spec, page_size)
    except (BotoCoreError, ClientError, ResponseParserError) as exc:
        raise _RegionFailed(_problem(exc, client.meta.endpoint_url)) from None


def ec2_client(region: str, *, endpoint_url: str | None = None, timeout: float = 10.0) -> Any:
    """An EC2 client for ``region`` from the standard AWS configuration, at ``endpoint_url``
    when given (see the module docstring); botocore's standard retries back off on throttling."""
    import boto3
    from botocore.config import Config

    retries: Any = {"mode": "standard", "max_attempts": 3}
    config = Config(connect_timeout=timeout, read_timeout=3 * timeout, retries=retries)
    session = boto3.session.Session()
    return session.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config)


def ec2_filters(spec: Ec2Instances) -> list[dict[str, Any]]:
    """The spec's filters as DescribeInstances takes them (instanceState defaulting to running)."""
    named = {**spec.filters, "instanceState": list(spec.states())}
    return [
        {"Name": FILTERS.get(name, name), "Values": list(values)} for name, values in named.items()
    ]


def _describe(client: Any, spec: Ec2Instances, page_size: int | None) -> list[Mapping[str, Any]]:
    paging = {"PageSize": page_size} if page_size else {}
    pages = client.get_paginator("describe_instances").paginate(
        Filters=ec2_filters(spec), PaginationConfig=paging
    )
    # Every page is read before returning: a failure on page 3 fails the region.
    instances: list[Mapping[str, Any]] = []
    for page in pages:
        for reservation in page.get("Reservations", []):
            instances.extend(reservation.get("Instances", []))
    return instances


def _problem(exc: Exception, endpoint: str) -> str:
    """What went wrong, and what to do about it, in one line."""
    from botocore.exceptions import ClientError, EndpointConnectionError
    from botocore.parsers import ResponseParserError

    missing = credentials_problem(exc)
    if missing is not None:
        return missing
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach the EC2 endpoint {endpoint}: check the network, and {_ENDPOINT_HELP}"
    if isinstance(exc, ResponseParserError):
        # Not botocore's own error class: a proxy's HTML page, a server that is not EC2.
        return (
            f"the EC2 endpoint {endpoint} did not answer as EC2 does: check that it is EC2's "
            f"({_ENDPOINT_HELP})"
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
            "again; raise spec.refreshMinutes if this repeats"
        )
    return f"EC2 refused DescribeInstances: {code}: {text}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


# -- from instances to hosts ----------------------------------------------------------------------


def _hosts(spec: Ec2Instances, found: Sequence[Mapping[str, Any]]) -> list[DiscoveredHost]:
    names = _unique_names(found)
    hosts = []
    for instance in found:
        instance_id = str(instance.get("InstanceId", ""))
        address = str(instance.get(ADDRESSES[spec.address]) or "")
        missing = (
            None if address else f"has no {spec.address} address (spec.ec2.address): not enrolled"
        )
        hosts.append(
            DiscoveredHost(
                id=instance_id,
                address=address,
                labels=_labels(spec, instance),
                name=names.get(instance_id),
                left_out=missing,
            )
        )
    return hosts


def _unique_names(found: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Instance id -> its Name tag, for the tags that give a resource name no other instance of
    the list gets (the others are named by their ids: a name must say which machine it is)."""
    named: dict[str, str] = {}
    for instance in found:
        tag = _tags(instance).get(_NAME_TAG)
        if tag is None:
            continue
        try:
            named[str(instance.get("InstanceId"))] = instance_name("{name}", "", tag)
        except ValueError:
            continue  # no letter or digit in it: the id names the instance
    counts = Counter(named.values())
    return {i: name for i, name in named.items() if counts[name] == 1}


def _tags(instance: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value", "")) for t in instance.get("Tags") or []}


def _labels(spec: Ec2Instances, instance: Mapping[str, Any]) -> dict[str, str]:
    """The labels its tags give (the first tag mapped to a label wins)."""
    tags = _tags(instance)
    labels: dict[str, str] = {}
    for tag, label in spec.label_of_tag().items():
        if tag in tags and label not in labels:
            labels[label] = tags[tag]
    return labels

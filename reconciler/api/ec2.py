"""Stage: api (the schema). The ``ec2`` kind of InstanceSource: which EC2 instances to enrol, by
region and DescribeInstances filters, which of their addresses to connect to, and which of their
tags become labels (SSM's ``Patch Group`` tag the patch-group label, as SSM reads it).

No keys and no endpoint here: credentials and the endpoint come from the standard AWS
configuration, as for the other AWS services Patchwarden talks to (docs/enrolment.md). Pure: may
not import anything outside ``reconciler.api`` (reading EC2 is ``reconciler.sources.ec2``'s job).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, TypeAdapter, ValidationError, field_validator

from reconciler.api._base import Model
from reconciler.api.checks import did_you_mean
from reconciler.api.resources import GROUP_LABEL, Name

Region = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")]
"""An AWS region name, for example eu-west-1 or us-gov-west-1."""
TagKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""An EC2 tag key (1-128 characters)."""

INSTANCE_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")
"""EC2's instance-state-name values."""
FILTER_NAMES = ("tag:<Key>", "vpcId", "instanceState")
"""The filters an ec2 InstanceSource takes (mapped to DescribeInstances' filter names)."""
DEFAULT_STATES = ("running",)
"""The instanceState filter when none is given: a stopped machine cannot be patched."""
PATCH_GROUP_TAGS = ("Patch Group", "PatchGroup")
"""The tags SSM reads an instance's patch group from (both spellings, the first wins)."""

_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
# A Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name of at most 63.
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

FilterValues = list[Annotated[str, StringConstraints(min_length=1, max_length=255)]]


_NAME = TypeAdapter(Name)


def valid_name(value: str) -> bool:
    """Whether ``value`` can name a resource (so a Name tag can name the generated instance)."""
    try:
        _NAME.validate_python(value)
    except ValidationError:
        return False
    return True


def valid_label_value(value: str) -> bool:
    """Whether ``value`` can be a label value (Kubernetes' rule: at most 63 letters, digits, '-',
    '_' and '.', starting and ending with a letter or digit), as selectors compare them."""
    return bool(_LABEL_VALUE.fullmatch(value))


class Ec2Spec(Model):
    """EC2 instances to enrol: those DescribeInstances returns for these regions and filters."""

    regions: list[Region] = Field(min_length=1, max_length=40)
    """The AWS regions to list instances in, for example [eu-west-1, us-east-1]."""
    filters: dict[str, FilterValues] = Field(default_factory=dict)
    """DescribeInstances filters, all of which must hold (each matches any of its values, EC2's
    wildcards * and ? allowed): ``tag:<Key>: [values]``, ``vpcId: [vpc-...]`` and
    ``instanceState: [states]`` (default [running])."""
    address: Literal["privateIp", "publicIp", "privateDns", "publicDns"] = "privateIp"
    """Which address SSH connects to; an instance without one is skipped and reported."""
    tag_labels: dict[TagKey, str] = Field(default_factory=dict)
    """EC2 tag -> label of the generated ManagedInstance. ``Patch Group`` (or ``PatchGroup``)
    maps to patchwarden.io/patch-group unless named here."""

    @field_validator("regions")
    @classmethod
    def _once_each(cls, regions: list[str]) -> list[str]:
        twice = sorted({r for r in regions if regions.count(r) > 1})
        if twice:
            raise ValueError(f"{twice[0]} is listed twice: name each region once")
        return regions

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, filters: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in filters.items():
            _check_filter(name, values)
        return filters

    @field_validator("tag_labels")
    @classmethod
    def _label_keys(cls, mapping: dict[str, str]) -> dict[str, str]:
        for tag, label in mapping.items():
            if not _LABEL_KEY.fullmatch(label):
                raise ValueError(
                    f"tag {tag!r} maps to {label!r}, which is not a label key: use [prefix/]name, "
                    "the name at most 63 letters, digits, '-', '_' or '.' (for example "
                    "example.com/environment)"
                )
        return mapping

    def label_of_tag(self) -> dict[str, str]:
        """Every tag that becomes a label, in the order they are read: ``tagLabels`` first, then
        SSM's patch-group tags unless ``tagLabels`` names them."""
        defaults = {tag: GROUP_LABEL for tag in PATCH_GROUP_TAGS if tag not in self.tag_labels}
        return {**self.tag_labels, **defaults}

    def states(self) -> tuple[str, ...]:
        """The instance states enrolled."""
        return tuple(self.filters.get("instanceState", DEFAULT_STATES))


def _check_filter(name: str, values: list[str]) -> None:
    if not values:
        raise ValueError(f"filter {name!r} needs at least one value")
    if name.startswith("tag:"):
        if not 1 <= len(name) - len("tag:") <= 128:
            raise ValueError(f"filter {name!r}: a tag key is 1-128 characters after 'tag:'")
    elif name == "vpcId":
        bad = [v for v in values if not _VPC_ID.fullmatch(v)]
        if bad:
            raise ValueError(f"vpcId {bad[0]!r} is not a VPC id: give vpc- and 8-17 hex digits")
    elif name == "instanceState":
        bad = [v for v in values if v not in INSTANCE_STATES]
        if bad:
            hint = did_you_mean(bad[0], INSTANCE_STATES)
            raise ValueError(
                f"instanceState {bad[0]!r} is not an EC2 state: one of "
                f"{', '.join(INSTANCE_STATES)}{hint}"
            )
    else:
        # A bare tag key ("Environment") is the usual slip: suggest its tag: form too.
        hint = did_you_mean(name, ("vpcId", "instanceState", "tag:" + name))
        raise ValueError(
            f"unknown filter {name!r}: give tag:<Key> (for example 'tag:Patch Group'), vpcId "
            f"or instanceState{hint}"
        )

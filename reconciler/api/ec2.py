"""Stage: api (the schema). EC2's vocabulary for the ``ec2`` kind of InstanceSource (its model,
``Ec2Instances``, is in :mod:`reconciler.api.resources` with the other kinds): the filters it
takes, EC2's instance states, the addresses an instance has, SSM's patch-group tags.

Pure: may not import anything outside the standard library (``resources`` imports it), and no I/O
(reading EC2 is :mod:`reconciler.sources.enrol.ec2`'s job).
"""

from __future__ import annotations

import difflib
import re

INSTANCE_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")
"""EC2's instance-state-name values."""
DEFAULT_STATES = ("running",)
"""The instanceState filter when none is given: a stopped machine cannot be patched."""
FILTERS = {"vpcId": "vpc-id", "instanceState": "instance-state-name"}
"""The filters an ec2 InstanceSource takes besides ``tag:<Key>`` -> DescribeInstances' names."""
ADDRESSES = {
    "privateIp": "PrivateIpAddress",
    "publicIp": "PublicIpAddress",
    "privateDns": "PrivateDnsName",
    "publicDns": "PublicDnsName",
}
"""``address`` -> the DescribeInstances field holding it."""
PATCH_GROUP_TAGS = ("Patch Group", "PatchGroup")
"""The tags SSM reads an instance's patch group from (both spellings; the first wins)."""

_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
# A Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name of at most 63.
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def check_filter(name: str, values: list[str]) -> None:
    """ValueError saying what to write when ``name: values`` is not a filter we take."""
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
            raise ValueError(
                f"instanceState {bad[0]!r} is not an EC2 state: one of "
                f"{', '.join(INSTANCE_STATES)}{_hint(bad[0], INSTANCE_STATES)}"
            )
    else:
        # A bare tag key ("Environment") is the usual slip: its tag: form is offered too.
        hint = _hint(name, (*FILTERS, f"tag:{name}"))
        raise ValueError(
            f"unknown filter {name!r}: give tag:<Key> (for example 'tag:Patch Group'), vpcId "
            f"or instanceState{hint}"
        )


def check_label_key(tag: str, label: str) -> None:
    """ValueError when ``label``, the label ``tag`` maps to, cannot be a label key."""
    if not _LABEL_KEY.fullmatch(label):
        raise ValueError(
            f"tag {tag!r} maps to {label!r}, which is not a label key: use [prefix/]name, "
            "the name at most 63 letters, digits, '-', '_' or '.' (for example "
            "example.com/environment)"
        )


def _hint(value: str, choices: tuple[str, ...]) -> str:
    # checks.did_you_mean's rule; that module imports resources, which imports this one.
    close = difflib.get_close_matches(value.lower(), [c.lower() for c in choices], n=1)
    chosen = [c for c in choices if close and c.lower() == close[0]]
    return f" (did you mean {chosen[0]!r}?)" if chosen else ""

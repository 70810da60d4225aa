"""The Security Hub event sink (docs/events.md "Security Hub"), against moto's server: an EMULATOR
of the AWS APIs (``tests/awslab.py``), because no real Security Hub can be reached from the tests.
moto implements ``BatchImportFindings`` and ``GetFindings`` (its GetFindings ignores filters: the
sink matches Ids itself), not ``BatchUpdateFindings``, which the sink does not call."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from reconciler.report.notify.events import Retry, SecurityHubSink
from reconciler.report.notify.occurrences import Kind, Occurrence
from tests import awslab, difflab

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
ACCOUNT = "123456789012"  # moto's
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
REVISION = "main@sha1:" + "a" * 40
FAST = Retry(attempts=3, base=0.01, cap=0.05)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with awslab.moto_server() as url:
        yield url


def clients(url: str, region: str) -> tuple[Any, Any]:
    options = {"region_name": region, "endpoint_url": url, **CREDENTIALS}
    return boto3.client("securityhub", **options), boto3.client("sts", **options)


def compliance(status: str, at: datetime, instance: str = "web-1") -> Occurrence:
    summary = {"complianceStatus": status, "missingCount": 0, "installedCount": 40}
    if status == "NON_COMPLIANT":
        summary.update(missingCount=3, failedCount=1, complianceSeverity="HIGH")
    return Occurrence(
        kind=Kind.COMPLIANCE_CHANGED,
        time=at,
        revision=REVISION,
        instance=instance,
        job="17",
        detail={
            "status": status,
            "previous": None,
            "group": "web",
            "baseline": "ubuntu-prod",
            "operation": "Scan",
            "summary": summary,
        },
    )


def push(url: str, region: str, *occurrences: Occurrence) -> SecurityHubSink:
    sink = SecurityHubSink(*clients(url, region), retry=FAST)
    for occurrence in occurrences:
        sink(occurrence)
    assert sink.flush(10)
    sink.close(1)
    return sink


def hub(url: str, region: str = "us-east-1") -> dict[str, dict[str, Any]]:
    found = clients(url, region)[0].get_findings(MaxResults=100)["Findings"]
    return {f["Resources"][0]["Id"]: f for f in found}


def test_a_non_compliant_instance_becomes_a_finding_archived_when_compliant_again(
    moto_url: str,
) -> None:
    awslab.moto_reset(moto_url)
    first = push(moto_url, "us-east-1", compliance("NON_COMPLIANT", T0))
    assert (first.sent, first.failed) == (1, 0)
    finding = hub(moto_url)["web-1"]
    assert finding["Id"] == f"patchwarden/{ACCOUNT}/us-east-1/instance/web-1"
    assert finding["ProductArn"] == (
        f"arn:aws:securityhub:us-east-1:{ACCOUNT}:product/{ACCOUNT}/default"
    )
    assert finding["AwsAccountId"] == ACCOUNT
    assert (finding["RecordState"], finding["Compliance"]) == ("ACTIVE", {"Status": "FAILED"})
    assert finding["Severity"] == {"Label": "HIGH", "Original": "HIGH"}
    assert finding["PatchSummary"]["MissingCount"] == 3
    assert finding["ProductFields"]["patchwarden/revision"] == REVISION
    assert finding["Resources"][0]["Partition"] == "aws"

    later = T0 + timedelta(days=2)
    push(moto_url, "us-east-1", compliance("COMPLIANT", later))
    (resolved,) = hub(moto_url).values()  # the same finding, updated: not a second one
    assert resolved["Id"] == finding["Id"]
    assert (resolved["RecordState"], resolved["Compliance"]) == ("ARCHIVED", {"Status": "PASSED"})
    assert resolved["CreatedAt"] == "2026-11-28T12:00:00.000Z"  # kept from the first import
    assert resolved["UpdatedAt"] == "2026-11-30T12:00:00.000Z"
    assert resolved["PatchSummary"]["MissingCount"] == 0
    assert resolved["Title"].endswith("web-1 compliant again")


def test_a_compliant_instance_without_a_finding_gets_none_and_other_events_are_not_sent(
    moto_url: str,
) -> None:
    awslab.moto_reset(moto_url)
    window = Occurrence(
        kind=Kind.WINDOW_EXECUTION_CHANGED,
        time=T0,
        revision=REVISION,
        detail={"window": "nightly", "opening": "2026-11-28T12:00:00Z", "status": "IN_PROGRESS"},
    )
    sink = push(moto_url, "us-east-1", window, compliance("COMPLIANT", T0, "db-1"))
    assert (sink.sent, sink.failed, sink.dropped) == (1, 0, 0)  # db-1 looked up, nothing to do
    assert hub(moto_url) == {}


@pytest.mark.parametrize(
    ("region", "partition"), [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")]
)
def test_the_partition_follows_the_region(moto_url: str, region: str, partition: str) -> None:
    awslab.moto_reset(moto_url)
    push(moto_url, region, compliance("NON_COMPLIANT", T0))
    finding = hub(moto_url, region)["web-1"]
    assert finding["ProductArn"] == (
        f"arn:{partition}:securityhub:{region}:{ACCOUNT}:product/{ACCOUNT}/default"
    )
    assert finding["Resources"][0]["Partition"] == partition
    assert finding["Id"] == f"patchwarden/{ACCOUNT}/{region}/instance/web-1"


def test_security_hub_down_is_retried_then_counted_as_failed() -> None:
    """Nothing listens on the endpoint: patching goes on, the sink counts the event as failed."""
    sink = SecurityHubSink(*clients("http://127.0.0.1:9", "us-east-1"), retry=FAST)
    sink(compliance("NON_COMPLIANT", T0))
    assert sink.flush(30)
    sink.close(1)
    assert (sink.sent, sink.failed, sink.retries) == (0, 1, 2)


def test_patchctl_without_a_region_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    awslab.isolated_aws(monkeypatch, tmp_path)
    done = difflab.patchctl(
        *("reconcile", "--source", str(tmp_path), "--state", str(tmp_path / "state.db")),
        "--events-securityhub",
    )
    assert done.returncode == 1
    assert done.stderr.startswith("patchctl: --events-securityhub: ")
    assert "set AWS_REGION" in done.stderr and done.stderr.count("\n") == 1

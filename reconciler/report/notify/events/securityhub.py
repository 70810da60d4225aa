"""Stage: report — notifications. Compliance transitions to AWS Security Hub as ASFF findings, in
the shape ``patchctl findings`` writes (``report.views.findings``): an instance that turns
NON_COMPLIANT is imported (``BatchImportFindings``, up to 100 findings a call) as an ACTIVE finding
with compliance FAILED; one compliant again is re-imported under the same Id, ARCHIVED with
compliance PASSED (what a finding provider may change; ``Workflow`` belongs to the customer's
``BatchUpdateFindings``, and Security Hub sets it to RESOLVED for an archived finding's
investigators as it does for any archived one). The finding's creation time is read back with
``GetFindings``; an instance that never had a finding gets none.

The account is the credentials' (STS ``GetCallerIdentity``, asked once): Security Hub accepts a
finding only from the account in its ``AwsAccountId``. The partition (``aws``, ``aws-cn``,
``aws-us-gov``) comes from the client's region. Queued and retried by ``delivery.Sink`` like every
sink; every other event is not queued. Touches no other AWS service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from reconciler.report.notify.events.delivery import Failure, Sink
from reconciler.report.notify.events.eventbridge import sink_client
from reconciler.report.notify.events.shapes import COMPLIANCE, Event
from reconciler.report.views import findings

MAX_FINDINGS = 100
"""BatchImportFindings takes at most 100 findings per call."""

PERMANENT_ERRORS = frozenset({"InvalidInput", "InvalidInputException", "AccessDeniedException"})
"""A finding refused for what it says or who sends it: another attempt gets the same answer."""


def securityhub_clients(*, timeout: float = 10.0) -> tuple[Any, Any]:
    """boto3 Security Hub and STS clients from the standard AWS configuration (an emulator through
    ``AWS_ENDPOINT_URL_SECURITYHUB`` / ``AWS_ENDPOINT_URL_STS``)."""
    return sink_client("securityhub", timeout=timeout), sink_client("sts", timeout=timeout)


class SecurityHubSink(Sink):
    """An Observer importing compliance transitions into Security Hub as findings."""

    batch_size = MAX_FINDINGS

    def __init__(
        self, client: Any, sts: Any, *, product_arn: str | None = None, **options: Any
    ) -> None:
        self.client, self.sts, self.product_arn = client, sts, product_arn
        self.region = str(client.meta.region_name)
        self._settings: findings.Settings | None = None
        super().__init__(f"securityhub:{self.region}", **options)

    def offer(self, event: Event) -> None:
        if event.detail_type == COMPLIANCE:  # nothing else has a finding
            super().offer(event)

    def settings(self) -> findings.Settings:
        if self._settings is None:
            account = str(self.sts.get_caller_identity()["Account"])
            self._settings = findings.Settings(
                account=account, region=self.region, product_arn=self.product_arn
            )
        return self._settings

    def deliver(self, batch: Sequence[Event]) -> Sequence[Failure]:
        settings = self.settings()
        latest = {_instance(e): e for e in batch}  # the last word per instance in this batch
        created = self._created({i for i, e in latest.items() if not _noncompliant(e)}, settings)
        to_import: dict[str, dict[str, Any]] = {}
        for instance, event in latest.items():
            seen = _observation(instance, event)
            if _noncompliant(event):
                to_import[instance] = findings.observed(seen, event.time, settings)
            elif instance in created:
                to_import[instance] = findings.resolved(seen, created[instance], settings)
        if not to_import:
            return []
        response = self.client.batch_import_findings(Findings=list(to_import.values()))
        return _failed(latest, to_import, response)

    def _created(self, instances: set[str], settings: findings.Settings) -> dict[str, datetime]:
        """When each instance's finding was created, for those that have one."""
        if not instances:
            return {}
        ids = {findings.finding_id(i, settings): i for i in instances}
        response = self.client.get_findings(
            Filters={"Id": [{"Value": i, "Comparison": "EQUALS"} for i in sorted(ids)]},
            MaxResults=MAX_FINDINGS,
        )
        # Matched by Id here too: an emulator may not apply the filter.
        return {
            ids[f["Id"]]: _parse(f["CreatedAt"]) for f in response["Findings"] if f["Id"] in ids
        }

    def _close(self) -> None:
        for client in (self.client, self.sts):
            close = getattr(client, "close", None)
            if close is not None:
                close()


def _instance(event: Event) -> str:
    return str(event.detail["resource-id"])


def _noncompliant(event: Event) -> bool:
    return event.detail.get("compliance-status") == "non_compliant"


def _observation(instance: str, event: Event) -> findings.Observation:
    """A compliance event's facts; the event is emitted when the scan finished."""
    detail = event.detail
    return findings.Observation(
        instance=instance,
        baseline=str(detail.get("patch-baseline-id") or ""),
        revision=str(detail.get("revision") or ""),
        operation=str(detail.get("operation") or "Scan"),
        group=detail.get("patch-group"),
        summary=dict(detail.get("summary") or {}),
        started_at=event.time,
        finished_at=event.time,
        job_id=detail.get("job-id"),
    )


def _failed(
    latest: Mapping[str, Event], sent: Mapping[str, Mapping[str, Any]], response: Mapping[str, Any]
) -> list[Failure]:
    by_id = {finding["Id"]: latest[instance] for instance, finding in sent.items()}
    failures = []
    for failed in response.get("FailedFindings") or ():
        event = by_id.get(failed.get("Id", ""))
        if event is not None:
            code = str(failed.get("ErrorCode", ""))
            reason = f"{code}: {failed.get('ErrorMessage', '')}"
            failures.append(Failure(event, reason, retryable=code not in PERMANENT_ERRORS))
    return failures


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))

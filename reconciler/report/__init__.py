"""Stage: report — what people and machines see, split by job:

- :mod:`~reconciler.report.views`: views and renderers (compliance rows, tables, JSON/YAML, CSV,
  the HTML dashboard, ASFF findings, report files); pure.
- :mod:`~reconciler.report.publish`: putting report files where they are wanted (a directory, S3)
  and when (scheduled ComplianceReports).
- :mod:`~reconciler.report.notify`: telling others what happened as it happens (the occurrence
  stream, the audit log, Prometheus metrics, EventBridge and webhook events).

Reads evaluation results and the observed state; never decides anything. May import every inner
stage; ``views`` imports neither of the other two, and ``publish`` and ``notify`` do not import
each other (import-linter holds both).
"""

"""Stage: report — notifications. Chat and mail: Slack, Microsoft Teams (workflow webhooks) and
SMTP mail as sinks on the occurrence stream, queued and retried as event sinks are
(docs/notifications.md). ``messages`` says what a notice says (pure, no third-party import),
``sinks`` sends it (httpx, smtplib). Imports nothing outside ``report`` but the shared redaction.
"""

"""Stage: report — notifications. What happened, told as it happens: the loop's one stream of
occurrences (``occurrences``) and its subscribers: the append-only audit log (``audit``),
Prometheus metrics (``metrics``) and events to EventBridge and CloudEvents webhooks (``events``).

Observers only: never blocks or steers the loop and decides nothing. Each subscriber owns its one
edge (its file, its registry, its endpoints) and touches no other; may use ``views`` for how a
value is shown, never ``publish``.
"""

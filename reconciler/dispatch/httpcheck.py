"""Stage: dispatch — an I/O edge (network). A window task's HTTP(S) health check, made from the
controller (docs/hooks.md): one GET per attempt, redirects not followed, TLS verified against the
controller's trust store unless the check says ``insecureSkipTlsVerify``, and the answer's body
never read: only its status is kept. The URL comes from the configuration repository, which may
not learn what the controller can reach and it cannot (a cloud metadata endpoint's credentials
would otherwise land in the job's result and the audit log). Decides nothing: the loop judges
the attempt and retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.api.hooks import HOST, HttpCheck
from reconciler.redaction import redacted


@dataclass(frozen=True)
class HttpAttempt:
    """One GET: the status (None when no answer came), or the error."""

    url: str
    status: int | None
    error: str = ""

    def document(self) -> dict[str, object]:
        return {"url": self.url, "status": self.status, "error": self.error}


def url_for(check: HttpCheck, address: str) -> str:
    """The check's URL for the machine at ``address`` (an IPv6 address in brackets)."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return check.url.replace(HOST, host)


def http_get(check: HttpCheck, address: str) -> HttpAttempt:
    """GET the check's URL for the machine at ``address``; never raises for a network error."""
    url = url_for(check, address)
    # Imported here: every patchctl command imports this module, only hooks' checks use it.
    import httpx

    try:
        client = httpx.Client(
            verify=not check.insecure_skip_tls_verify,
            timeout=float(check.timeout_seconds),
            follow_redirects=False,
            trust_env=False,  # the controller's proxy settings are not the machine's network
        )
        with client, client.stream("GET", url) as answer:
            return HttpAttempt(url, answer.status_code)
    except httpx.HTTPError as exc:
        return HttpAttempt(url, None, error=redacted(f"{type(exc).__name__}: {exc}"))

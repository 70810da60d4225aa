"""Stage: shared. Credentials out of every text meant for people or records: logs, error
messages, the state store, the audit log, events.

The one redaction function, :func:`redacted`, for URLs and for free text holding URLs (git's
stderr, an exception's message); and :func:`secret_url` for a URL that is a secret whole (a chat
webhook's). Pure: imports nothing from ``reconciler`` and does no I/O.
"""

from __future__ import annotations

import re

MASK = "***"

# A scheme and everything up to the next blank or quote: a URL inside a message or a JSON line.
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^\s'\"<>`]+)")
# ssh's user name says who logs in, not how: it stays readable; a password never does.
_USER_IS_PUBLIC = frozenset({"ssh", "git+ssh", "ssh+git"})


def redacted(text: str) -> str:
    """``text`` with the credentials of every URL in it masked, fit for any sink.

    The user information goes whole (``https://***@host/``: a token is often the user name,
    ``https://TOKEN@host``), except an ssh user name, kept without its password
    (``ssh://git:***@host``). Queries and fragments go too (``?***``): tokens live there
    sometimes. Text without such URLs comes back unchanged.
    """
    return _URL.sub(_masked, text)


def _masked(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    end = next((i for i, char in enumerate(rest) if char in "/?#"), len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")  # the last @: a password may hold one
    if at:
        user, colon, _ = userinfo.partition(":")
        if scheme.lower() not in _USER_IS_PUBLIC:
            user, colon = MASK, ""
        authority = f"{user}:{MASK}@{host}" if colon else f"{user}@{host}"
    path, hashmark, _ = tail.partition("#")
    path, question, _ = path.partition("?")
    tail = path + (f"?{MASK}" if question else "") + (f"#{MASK}" if hashmark else "")
    return f"{scheme}://{authority}{tail}"


def secret_url(url: str) -> str:
    """A URL that is itself the credential (a Slack or Teams webhook: whoever has it may post),
    shown as its scheme and host only: ``https://hooks.slack.com/***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return MASK
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rpartition("@")[2]
    return f"{scheme}://{host}/{MASK}"

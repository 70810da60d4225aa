"""Stage: agent. The one text form of an instant in the agent's documents: UTC, whole seconds,
``2025-11-09T18:00:00Z`` (what ``reconciler/api/times.py`` writes, which the agent cannot import).
Standard library only; reads the clock only when asked for now, touches no file."""

import calendar
import time
from typing import Optional

STAMP = "%Y-%m-%dT%H:%M:%SZ"


def utc_stamp(seconds: Optional[float] = None) -> str:
    """``seconds`` since the epoch (now when None) as ``2025-11-09T18:00:00Z``."""
    return time.strftime(STAMP, time.gmtime(seconds))


def stamp_seconds(stamp: str) -> float:
    """Seconds since the epoch of a ``utc_stamp`` text; ValueError when it is not one."""
    return calendar.timegm(time.strptime(stamp, STAMP))  # UTC, not local time

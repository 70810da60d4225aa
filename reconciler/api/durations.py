"""Stage: api (the schema). Durations written as minutes, hours or days ("30m", "48h", "2d"): a
rollout stage's ``bakeTime`` and a gate's ``blockedThreshold`` take the same form. Pure: no I/O;
imports nothing."""

from __future__ import annotations

DURATION = r"^(0|[1-9][0-9]{0,3})[mhd]$"
DURATION_HELP = 'give minutes, hours or days: "30m", "48h", "2d"'
_UNITS = {"m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """Seconds in a duration such as ``48h`` (the pattern was checked by the model)."""
    return int(value[:-1]) * _UNITS[value[-1]]

"""Stage: schedule. The value-list grammar every cron field shares.

A field is a comma-separated list of items; an item is ``*``, ``N``, ``N-M`` or a name (``JAN``,
``TUE``), optionally followed by ``/STEP``. AWS's extra day tokens (``?``, ``L``, ``W``, ``#``) are
handled by ``cron.py`` before a field reaches this grammar.

AWS's ``cron(...)`` is Quartz's grammar (``quartz=True`` fields), which differs from standard cron
in two ways: a range may wrap past the end of its field (``20-2`` hours is 20-23 and 0-2, as in
AWS's example ``cron(0/30 20-2 ? * MON-FRI *)``; ``FRI-MON``; ``NOV-FEB``), Year excepted; and a
step may not exceed the field's largest value (``*/60`` minutes).
Pure; imports nothing from reconciler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

_NUMBER = re.compile(r"^[0-9]+$")


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One cron field: its name in error messages, its range, and the names it accepts."""

    label: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    """``names[i]`` stands for the value ``name_base + i`` (``JAN`` is 1, AWS's ``SUN`` is 1)."""
    name_base: int = 0
    open_high: int | None = None
    """Where ``*`` and ``N/STEP`` end, when that is below ``high`` (cron's 7 is only a name)."""
    quartz: bool = False
    """AWS's (Quartz's) rules: ranges wrap around, a step is at most ``high``."""

    @property
    def top(self) -> int:
        """The last value an open-ended item reaches."""
        return self.high if self.open_high is None else self.open_high

    def error(self, text: str, problem: str) -> ValueError:
        """A user-facing error that names this field and what was written in it."""
        return ValueError(f"{self.label} field {text!r}: {problem}")


SECONDS = FieldSpec("Seconds", 0, 59)
MINUTES = FieldSpec("Minutes", 0, 59)
HOURS = FieldSpec("Hours", 0, 23)
DAY_OF_MONTH = FieldSpec("Day-of-month", 1, 31)
MONTH = FieldSpec(
    "Month",
    1,
    12,
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
    1,
)
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
AWS_DAY_OF_WEEK = FieldSpec("Day-of-week", 1, 7, _DAY_NAMES, 1, quartz=True)
"""AWS numbers the days 1 (SUN) to 7 (SAT)."""
PLAIN_DAY_OF_WEEK = FieldSpec("Day-of-week", 0, 7, _DAY_NAMES, 0, open_high=6)
"""Standard cron numbers them 0 (SUN) to 6 (SAT), and accepts 7 for Sunday too; ``1/2`` is
MON, WED, FRI (as croniter reads it), not Sunday again as 7."""
YEAR = FieldSpec("Year", 1970, 2199)
"""Quartz refuses a Year range that runs backwards and puts no bound on its step: not ``quartz``."""
AWS_SECONDS = replace(SECONDS, quartz=True)
AWS_MINUTES = replace(MINUTES, quartz=True)
AWS_HOURS = replace(HOURS, quartz=True)
AWS_DAY_OF_MONTH = replace(DAY_OF_MONTH, quartz=True)
AWS_MONTH = replace(MONTH, quartz=True)


def parse_values(spec: FieldSpec, text: str) -> frozenset[int]:
    """The values ``text`` selects in ``spec``'s range, or ValueError naming the field."""
    if not text:
        raise spec.error(text, "is empty")
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(spec, text, item))
    return frozenset(values)


def parse_value(spec: FieldSpec, text: str, token: str) -> int:
    """One number or name of ``spec`` (``token`` is part of the field ``text``)."""
    upper = token.upper()
    if upper in spec.names:
        return spec.name_base + spec.names.index(upper)
    if not token:
        raise spec.error(text, "has an empty value: check the commas, dashes and slashes")
    if token == "?":
        raise spec.error(text, "'?' is only allowed as the whole Day-of-month or Day-of-week field")
    if not _NUMBER.match(token):
        raise spec.error(text, f"{token!r} is not a number{_names_hint(spec)}")
    value = int(token)
    if not spec.low <= value <= spec.high:
        raise spec.error(text, f"{value} is outside {spec.low}-{spec.high}{_names_hint(spec)}")
    return value


def _parse_item(spec: FieldSpec, text: str, item: str) -> range | list[int]:
    base, slash, step_text = item.partition("/")
    step = _parse_step(spec, text, step_text) if slash else 1
    if base == "*":
        return range(spec.low, spec.top + 1, step)
    first_text, dash, last_text = base.partition("-")
    first = parse_value(spec, text, first_text)
    if dash:
        last = parse_value(spec, text, last_text)
        if first > last:
            return _wrapped(spec, text, base, first, last, step)
        return range(first, last + 1, step)
    # "5/15" means every 15 from 5 to the end of the range, as in AWS's "0/15".
    return range(first, (max(spec.top, first) if slash else first) + 1, step)


def _wrapped(spec: FieldSpec, text: str, base: str, first: int, last: int, step: int) -> list[int]:
    """``first-last`` past the end of the field and round to its start, as Quartz counts it:
    ``20-2/3`` hours is 20, 23 and 2 (the step carries on across the wrap)."""
    if not spec.quartz:
        hint = "" if spec is YEAR else " (only AWS's cron(...) form wraps a range)"
        raise spec.error(text, f"the range {base!r} runs backwards; write it low-high{hint}")
    size = spec.high - spec.low + 1
    return [spec.low + (v - spec.low) % size for v in range(first, last + size + 1, step)]


def _parse_step(spec: FieldSpec, text: str, step_text: str) -> int:
    if not _NUMBER.match(step_text) or int(step_text) == 0:
        raise spec.error(text, f"the step after '/' must be a positive number, not {step_text!r}")
    step = int(step_text)
    # Quartz (so AWS) refuses a step past the field's largest value rather than firing once.
    if spec.quartz and step > spec.high:
        raise spec.error(
            text,
            f"the step {step} is larger than the field: {spec.label} runs {spec.low}-{spec.high}, "
            f"so a step is at most {spec.high}",
        )
    return step


def _names_hint(spec: FieldSpec) -> str:
    if not spec.names:
        return ""
    return f" (or one of {spec.names[0]}-{spec.names[-1]})"

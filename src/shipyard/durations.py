"""Durations as people write them: `30d`, `12h`, `45m`, `30s`."""

from __future__ import annotations

from datetime import timedelta

from shipyard.errors import InvalidInput

_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """A positive whole number of days, hours, minutes or seconds."""
    number = text[:-1]
    # ASCII digits only (isdigit() also passes '²', which int() refuses), and few of them.
    whole = number.isascii() and number.isdigit() and len(number) <= 9
    if len(text) < 2 or text[-1] not in _UNITS or not whole or int(number) < 1:
        raise InvalidInput(f"{what} {text!r} is not like 30d, 12h, 45m or 30s")
    return timedelta(**{_UNITS[text[-1]]: int(text[:-1])})


def duration_seconds(text: str, what: str = "duration") -> float:
    return parse_duration(text, what).total_seconds()

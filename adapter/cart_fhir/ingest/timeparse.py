"""Parse FHIR date/dateTime/instant strings into Moments, without guessing partial dates."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

from ..model import Moment

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PARTIAL = re.compile(r"^\d{4}(-\d{2})?$")


class TimeError(ValueError):
    """Not a FHIR dateTime the graders can place on a calendar day."""


def parse_moment(value: object, default_tz: timezone) -> Moment:
    """A FHIR date/dateTime/instant; bare dates and offset-less times are taken in `default_tz`."""
    if not isinstance(value, str):
        raise TimeError(f"expected a FHIR dateTime string, got {value!r}")
    if len(value) > 10:  # the common case: a full dateTime (fromisoformat checks the rest)
        try:
            dt = datetime.fromisoformat(value)
        except ValueError as exc:
            raise TimeError(f"{value!r} is not a valid FHIR dateTime") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=default_tz)  # FHIR requires an offset with a time; the caller warns
        return Moment(dt)
    if _DATE.match(value):
        try:
            d = date.fromisoformat(value)
        except ValueError as exc:
            raise TimeError(f"{value!r} is not a valid date") from exc
        return Moment(datetime(d.year, d.month, d.day, tzinfo=default_tz), date_only=True)
    if _PARTIAL.match(value):
        raise TimeError(f"{value!r} is a partial date (year or month only): it cannot be placed on a day")
    raise TimeError(f"{value!r} is not a valid FHIR dateTime")


def has_offset(value: str) -> bool:
    """Does a FHIR dateTime string carry its UTC offset (or is it a bare date, which needs none)?"""
    if len(value) <= 10:
        return True
    return value[-1] == "Z" or (len(value) >= 6 and value[-6] in "+-" and value[-3] == ":")

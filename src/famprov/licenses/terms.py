"""License terms in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def years_after(start: datetime, years: int) -> datetime:
    """The same calendar date and time ``years`` later, in UTC.

    A term that starts on 29 February ends on 28 February when the end year
    has no 29 February.
    """
    start = start.astimezone(UTC)
    try:
        return start.replace(year=start.year + years)
    except ValueError:
        return start.replace(year=start.year + years, day=28)

"""License terms in UTC, and the statuses of a license over its term."""

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


INVITED, ACTIVE, EXPIRED, REVOKED = "invited", "active", "expired", "revoked"
LIVE = (INVITED, ACTIVE)


def effective_status(status: str, expires_at: datetime, now: datetime) -> str:
    """A live license whose term is over is expired, written so or not."""
    if status in LIVE and expires_at <= now:
        return EXPIRED
    return status

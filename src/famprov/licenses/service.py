"""What happens when a partner grants a license, from query to commit.

`GrantService.grant` runs the checks in the order the contract fixes:

1. required parameters present and not blank            400
2. partner known and enabled, hash verifies             401
   (the abuse limits around it, `famprov.throttle`)     429
3. field syntax, lengths, characters                    400
4. idempotency and conflicts (in the write)             409
5. the partner's license quota (in the write)           403

Steps 4 and 5 run in the batching writer's transaction, in the writer
process (`famprov.licenses.recording`), where the license and its
invitation are written together, and no caller hears 200 before the commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL

from famprov import logs
from famprov.clock import Clock
from famprov.errors import (
    PartnerAuthError,
)
from famprov.keys import Keyring
from famprov.licenses import fields
from famprov.licenses.plans import DEFAULT_PLAN
from famprov.licenses.recording import Grant, GrantJob, decode_outcome, encode_job
from famprov.partners.service import PartnerDirectory, authenticate
from famprov.store.writer import BatchWriter

if TYPE_CHECKING:
    from famprov.throttle.service import Allowance, Throttle


def vault_url(public_url: str, token: str) -> str:
    """The link that lets the person create their account."""
    return f"{public_url}/invite/{token}"


class GrantService:
    """The partner-facing grant operation, and the writer that records it."""

    def __init__(
        self,
        database: URL,
        directory: PartnerDirectory,
        keyring: Keyring,
        clock: Clock,
        *,
        throttle: Throttle,
        batch_size: int = 256,
        writers: int = 1,
        log_format: str = "json",
        log_level: str = "info",
        after_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._throttle = throttle
        self._writer: BatchWriter[GrantJob, Grant] = BatchWriter(
            database,
            "famprov.licenses.recording:batch_recorder",
            argument=keyring,
            encode=encode_job,
            decode=decode_outcome,
            clock=clock.now,
            processes=writers,
            max_batch=batch_size,
            log_format=log_format,
            log_level=log_level,
            after_commit=after_commit,
        )

    async def start(self) -> None:
        await self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    async def grant(
        self, params: dict[str, str], client: str | None = None
    ) -> tuple[Grant, Allowance | None]:
        """Grant the person in ``params`` a license, or raise why not.

        ``client`` is the caller's address, for the limits on failed
        authentications; the allowance is what the partner may still send.
        """
        raw = fields.require(params)
        throttle = self._throttle
        checks = throttle.admit(client, raw.partner_name)
        partner = await self._directory.get(raw.partner_name)
        try:
            email = authenticate(partner, raw.email, raw.hash, self._clock.now())
        except PartnerAuthError:
            await throttle.failed(checks)
            raise
        assert partner is not None
        # From here on every log line of this request names the partner.
        logs.note(partner=partner.name)
        allowance = await throttle.charge(checks, partner)
        person = fields.validate(raw, email)
        job = GrantJob(partner.id, raw.transaction_id, person, DEFAULT_PLAN)
        return await self._writer.write(job), allowance

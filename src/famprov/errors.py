"""The domain errors of famprov.

Services raise these; the HTTP layer maps each class to a status and a JSON
body in one place (`famprov.api.errors`), and the CLI prints the message.
The ``message`` of an API-facing error is part of the wire contract.

    FamprovError
    ├── InvalidRequestError              400
    │   ├── MissingFieldsError           400 (text fixed by the vendor API)
    │   ├── DuplicateParameterError      400
    │   └── InvalidFieldError            400
    ├── PartnerAuthError                 401 (text fixed by the vendor API)
    ├── ConflictError                    409
    │   ├── TransactionConflictError     409
    │   └── ExistingLicenseError         409
    ├── QuotaExceededError               403
    ├── RateLimitedError                 429 (with Retry-After and RateLimit fields)
    │   ├── PartnerRateError             429
    │   └── FailedAuthLimitError         429
    ├── NotFoundError                    404 (operator tools, unknown vault URL)
    ├── InvitationGoneError              410 (revoked or expired license's link)
    └── OperatorError                    CLI only: refused operator input
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from famprov.throttle.rates import Policy


class FamprovError(Exception):
    """Base of every error famprov raises on purpose."""

    message: str = "Internal error"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class InvalidRequestError(FamprovError):
    """The request cannot be served as sent."""


class MissingFieldsError(InvalidRequestError):
    message = "Invalid request - Missing required fields"


class DuplicateParameterError(InvalidRequestError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Invalid request - Duplicate parameter: {name}")


class InvalidFieldError(InvalidRequestError):
    """One field breaks its rules; the message names the field."""


class PartnerAuthError(FamprovError):
    """Unknown partner, disabled partner or a hash that does not verify.

    All of these answer alike so that nothing tells a caller which partner
    names exist.
    """

    message = "Invalid Hash Value - UnAuthorized"


class ConflictError(FamprovError):
    """The request contradicts what the store already holds."""


class TransactionConflictError(ConflictError):
    message = "Invalid request - transaction_id already used with different details"


class ExistingLicenseError(ConflictError):
    def __init__(self, order_number: str) -> None:
        self.order_number = order_number
        super().__init__(
            "Invalid request - email already holds an active license from this "
            f"partner: order {order_number}"
        )


class QuotaExceededError(FamprovError):
    message = "Invalid request - Partner license quota reached"


class RateLimitedError(FamprovError):
    """Over one of the abuse limits (`famprov.throttle`): try again later."""

    def __init__(self, policy: Policy, wait: float) -> None:
        self.policy = policy
        self.wait = wait
        super().__init__()


class PartnerRateError(RateLimitedError):
    """An authenticated partner sends faster than its request rate."""

    message = "Too many requests - Partner request rate exceeded"


class FailedAuthLimitError(RateLimitedError):
    """The address, or the partner name as sent, failed to authenticate too
    often lately. Known and unknown names answer alike."""

    message = "Too many requests - Too many failed authentications"


class NotFoundError(FamprovError):
    """An operator named something the store does not hold."""


class InvitationGoneError(FamprovError):
    """A vault URL whose license was revoked or has expired.

    Revoked and expired answer alike, and say nothing of the license: the
    link's holder learns only that it no longer works.
    """

    message = "This invitation is no longer valid"


class OperatorError(FamprovError):
    """An operator command was given input it refuses."""

"""The fields of a grant request, and the rules each must meet.

These checks run after the hash has verified, so that a caller who cannot
authenticate learns nothing from them, and on the values exactly as received.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import email_validator
from email_validator import EmailNotValidError, validate_email

from famprov.errors import InvalidFieldError, MissingFieldsError

REQUIRED = ("transaction_id", "first_name", "email", "hash", "partner_name")
OPTIONAL = ("last_name",)
PARAMETERS = frozenset(REQUIRED + OPTIONAL)

MAX_EMAIL = 254
MAX_NAME = 100
MAX_TRANSACTION_ID = 128

# Characters no name, email or reference may hold: controls, invisible
# format characters (zero-width space, soft hyphen, byte-order mark, the
# bidirectional controls that make text display in another order than it
# reads), line and paragraph separators, lone surrogates, private-use and
# unassigned code points. The zero-width joiner and non-joiner stay: some
# scripts spell names with them.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")
MAX_LOCAL_PART = 64
_SPECIAL_USE = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)


@dataclass(frozen=True, slots=True)
class RawGrant:
    """The parameters of a grant as received, all required ones present."""

    transaction_id: str
    first_name: str
    last_name: str | None
    email: str
    hash: str
    partner_name: str


@dataclass(frozen=True, slots=True)
class Person:
    """The validated person a license is for."""

    email: str
    email_key: str
    needs_smtputf8: bool
    first_name: str
    last_name: str | None


def require(params: dict[str, str]) -> RawGrant:
    """Check step 1: every required parameter present and not blank."""
    for name in REQUIRED:
        if not params.get(name, "").strip():
            raise MissingFieldsError()
    return RawGrant(
        transaction_id=params["transaction_id"],
        first_name=params["first_name"],
        # An optional value of only white space is absent, as a required
        # one would be missing.
        last_name=params["last_name"] if params.get("last_name", "").strip() else None,
        email=params["email"],
        hash=params["hash"],
        partner_name=params["partner_name"],
    )


def validate(raw: RawGrant, verified_email: str) -> Person:
    """Check step 3: field syntax, lengths and characters."""
    check_text("transaction_id", raw.transaction_id, MAX_TRANSACTION_ID)
    check_text("first_name", raw.first_name, MAX_NAME)
    if raw.last_name is not None:
        check_text("last_name", raw.last_name, MAX_NAME)
    email, key, smtputf8 = normalise_email(verified_email)
    return Person(email, key, smtputf8, raw.first_name, raw.last_name)


def check_text(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidFieldError(
            f"Invalid request - Invalid {field}: at most {limit} characters"
        )
    if value != value.strip():
        raise InvalidFieldError(
            f"Invalid request - Invalid {field}: leading or trailing white space"
        )
    if has_forbidden(value):
        raise InvalidFieldError(
            f"Invalid request - Invalid {field}: control characters"
        )


def has_forbidden(value: str) -> bool:
    if value.isascii():
        # The only ASCII characters that are not printable are the controls.
        return not value.isprintable()
    return any(
        unicodedata.category(c) in _FORBIDDEN_CATEGORIES and c not in _JOINERS
        for c in value
    )


# A plain ASCII address: dot-atom local part, letter-digit-hyphen labels, an
# alphabetic top-level domain. For these the result of `email_validator` is
# known in advance (the domain lowercased, nothing else changed), and
# checking them here costs a tenth as much. Anything else, and anything this
# path is unsure of, goes to `email_validator`; a property test holds the
# two to the same answers.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_PLAIN_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _plain_ascii(email: str) -> tuple[str, str, bool] | None:
    local, _, domain = email.rpartition("@")
    if not domain.isascii() or len(local) > MAX_LOCAL_PART or len(domain) > 253:
        return None
    domain = domain.lower()
    if not (_PLAIN_LOCAL.fullmatch(local) and _PLAIN_DOMAIN.fullmatch(domain)):
        return None
    labels = domain.split(".")
    if any(label[2:4] == "--" for label in labels):
        return None  # Punycode, or what only looks like it
    if any(domain == name or domain.endswith("." + name) for name in _SPECIAL_USE):
        return None
    return f"{local}@{domain}", f"{local.casefold()}@{domain}", False


def _invalid_email() -> InvalidFieldError:
    return InvalidFieldError("Invalid request - Invalid email address")


def normalise_email(email: str) -> tuple[str, str, bool]:
    """Return the email to store and send to, its comparison key, and
    whether delivery needs SMTPUTF8.

    White space around the address is an error, never trimmed: a partner
    whose export holds ``ann@example.com `` must hear about it.
    """
    if len(email) > MAX_EMAIL or email != email.strip() or has_forbidden(email):
        raise _invalid_email()
    plain = _plain_ascii(email)
    if plain is not None:
        return plain
    try:
        checked = validate_email(email, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        raise _invalid_email() from None
    if len(checked.local_part.encode()) > MAX_LOCAL_PART:
        raise _invalid_email()
    key = f"{checked.local_part.casefold()}@{checked.ascii_domain}"
    return checked.normalized, key, checked.ascii_email is None

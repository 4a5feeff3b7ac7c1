"""The v1 request hash: hex SHA-256 of the UTF-8 bytes of ``email + salt``.

This is what the vendor's sample computes with CryptoJS and what ``hashlib``
computes from the same string. The check runs on the email exactly as
received: any folding, trimming or normalisation first would change the bytes
and refuse a partner whose hash is correct, or accept one whose is not.
"""

from __future__ import annotations

import hashlib
import hmac
import re

HASH_HEX_LENGTH = 64
_HEX = re.compile(f"[0-9a-fA-F]{{{HASH_HEX_LENGTH}}}")

# Verified against in place of a salt the partner lacks: of an unknown or
# disabled partner, and the previous salt of one outside a rotation's
# overlap. Every request computes two hashes, whoever it names. Each is as
# long as the salts famprov generates (43 characters), so that it hashes as
# many blocks.
_DUMMY_SALT = "famprov-no-such-partner-0000000000000000000"
_DUMMY_PREVIOUS_SALT = "famprov-no-previous-salt-000000000000000000"


def compute_hash(email: str, salt: str) -> str:
    """Return the lowercase hex hash a partner sends for ``email``."""
    return hashlib.sha256((email + salt).encode("utf-8")).hexdigest()


def is_well_formed(hash_hex: str) -> bool:
    return _HEX.fullmatch(hash_hex) is not None


def verify_hash(
    email: str, salt: str | None, hash_hex: str, previous: str | None = None
) -> bool:
    """Whether ``hash_hex`` is the hash of ``email`` with ``salt`` or with
    ``previous``; hex digits compare case-insensitively.

    Both hashes are always computed and compared in constant time, a dummy
    salt standing in for a missing one, so that an unknown partner, a known
    one and one in a rotation's overlap cost the same.
    """
    given = hash_hex.lower() if is_well_formed(hash_hex) else "x" * HASH_HEX_LENGTH
    current = compute_hash(email, _DUMMY_SALT if salt is None else salt)
    former = compute_hash(email, _DUMMY_PREVIOUS_SALT if previous is None else previous)
    matches_current = hmac.compare_digest(current, given)
    matches_former = hmac.compare_digest(former, given)
    return (matches_current and salt is not None) or (
        matches_former and previous is not None
    )

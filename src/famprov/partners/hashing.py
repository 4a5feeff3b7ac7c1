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

# Verified against when the partner is unknown or disabled, so that such a
# request does the same work as one with a wrong hash: as long as the salts
# famprov generates (43 characters), so that it hashes as many blocks.
_DUMMY_SALT = "famprov-no-such-partner-0000000000000000000"


def compute_hash(email: str, salt: str) -> str:
    """Return the lowercase hex hash a partner sends for ``email``."""
    return hashlib.sha256((email + salt).encode("utf-8")).hexdigest()


def is_well_formed(hash_hex: str) -> bool:
    return _HEX.fullmatch(hash_hex) is not None


def verify_hash(email: str, salt: str | None, hash_hex: str) -> bool:
    """Compare in constant time; hex digits compare case-insensitively."""
    expected = compute_hash(email, _DUMMY_SALT if salt is None else salt)
    given = hash_hex.lower() if is_well_formed(hash_hex) else "x" * HASH_HEX_LENGTH
    return hmac.compare_digest(expected, given) and salt is not None

"""The operator's secret keys, and the secrets the store keeps sealed with them.

Salts and vault tokens are stored sealed: AES-256-GCM under the operator's
key (``FAMPROV_SECRET_KEY``), so that a copy of the database alone yields no
salt and no working vault URL. A vault token is also stored as its SHA-256
digest, which the invitation page looks it up by.

``FAMPROV_SECRET_KEY`` holds one key or several, newest first: the newest
seals, any of them opens. Each sealed value names the key that sealed it by
a key id (4 bytes of a hash of the key), so opening never tries keys in turn
and a missing key is named in the error. Every value is sealed with what it
belongs to (``context``) as associated data: a sealed value copied to
another row or column does not open there.

A sealed value is URL-safe base64 (no padding) of::

    version (1 byte) | key id (4) | nonce (12) | ciphertext | tag (16)

AES-GCM rather than Fernet: a Fernet seal or open costs about 19 µs here,
AES-GCM about 1.6 µs (docs/security.md), and the grant path seals every new
vault token.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from famprov.errors import FamprovError

if TYPE_CHECKING:
    from famprov.config import Settings

KEY_BYTES = 32
KEY_ID_BYTES = 4
NONCE_BYTES = 12
_VERSION = b"\x01"
_HEADER = 1 + KEY_ID_BYTES + NONCE_BYTES
# 32 random bytes hold about 30 distinct values; fewer than this is a key
# typed by hand, not drawn.
_MIN_DISTINCT_BYTES = 16
ENVIRONMENT = "FAMPROV_SECRET_KEY"
HOW_TO_MAKE = "make one with `famprov keys generate` (32 random bytes, URL-safe base64)"


class SecretKeyError(FamprovError):
    """No usable key, or a stored secret that no key given opens.

    The message names keys by their id only, never a key or a secret.
    """


def generate_key() -> str:
    """A fresh key: 32 random bytes, URL-safe base64 without padding."""
    return _encode(os.urandom(KEY_BYTES))


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"famprov key id\x00" + key).digest()[:KEY_ID_BYTES]


def parse_keys(text: str, source: str = ENVIRONMENT) -> list[bytes]:
    """The keys in ``text`` (separated by commas, spaces or lines), newest
    first; raise `SecretKeyError` naming the position of a bad one."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise SecretKeyError(f"{source} holds no key: {HOW_TO_MAKE}")
    keys = []
    for number, part in enumerate(parts, 1):
        which = f"key {number} of {source}" if len(parts) > 1 else source
        try:
            key = base64.b64decode(
                part + "=" * (-len(part) % 4), altchars=b"-_", validate=True
            )
        except (binascii.Error, ValueError):
            raise SecretKeyError(
                f"{which} is not URL-safe base64: {HOW_TO_MAKE}"
            ) from None
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"{which} is not {KEY_BYTES} bytes: {HOW_TO_MAKE}")
        if len(set(key)) < _MIN_DISTINCT_BYTES:
            raise SecretKeyError(f"{which} is not random: {HOW_TO_MAKE}")
        if key not in keys:
            keys.append(key)
    return keys


class Keyring:
    """The operator's keys, newest first; seals with the newest, opens with
    the one a value names. Prints its key ids only."""

    __slots__ = ("_ciphers", "_keys", "_newest", "source")

    def __init__(self, keys: Sequence[bytes], source: str = ENVIRONMENT) -> None:
        if not keys:
            raise SecretKeyError(f"{source} holds no key: {HOW_TO_MAKE}")
        self._keys = tuple(keys)
        self._ciphers = {key_id(key): AESGCM(key) for key in reversed(self._keys)}
        self._newest = key_id(self._keys[0])
        self.source = source

    @classmethod
    def from_text(cls, text: str, source: str = ENVIRONMENT) -> Keyring:
        return cls(parse_keys(text, source), source)

    @property
    def newest_id(self) -> str:
        return self._newest.hex()

    @property
    def ids(self) -> list[str]:
        return [key_id(key).hex() for key in self._keys]

    def seal(self, plaintext: str, context: str) -> str:
        """``plaintext`` sealed with the newest key, bound to ``context``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._newest].encrypt(
            nonce, plaintext.encode(), context.encode()
        )
        return _encode(_VERSION + self._newest + nonce + sealed)

    def open(self, sealed: str, context: str) -> str:
        """The plaintext of a value `seal` made with ``context``."""
        blob = _decode(sealed)
        kid = blob[1 : 1 + KEY_ID_BYTES]
        cipher = self._ciphers.get(kid) if blob[:1] == _VERSION else None
        if cipher is None:
            raise SecretKeyError(
                f"a secret in the store is sealed with key {kid.hex()}, which "
                f"{self.source} does not hold (it holds {', '.join(self.ids)}): "
                "give the key that sealed it too, newest first"
            )
        try:
            plaintext = cipher.decrypt(
                blob[1 + KEY_ID_BYTES : _HEADER], blob[_HEADER:], context.encode()
            )
        except InvalidTag:
            raise SecretKeyError(
                f"a secret in the store does not open with key {kid.hex()}: it "
                "was altered or moved, or sealed by another key of the same id"
            ) from None
        return plaintext.decode()

    def is_newest(self, sealed: str) -> bool:
        """Whether ``sealed`` is under the newest key already."""
        return _decode(sealed)[1 : 1 + KEY_ID_BYTES] == self._newest

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # For the writer process, over its private socket pair only.
        return (Keyring, (self._keys, self.source))


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _decode(sealed: str) -> bytes:
    try:
        blob = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    except (binascii.Error, ValueError):
        blob = b""
    if len(blob) <= _HEADER:
        raise SecretKeyError("a secret in the store is not a sealed value")
    return blob


# What each sealed value belongs to: the associated data it is sealed with.


def salt_context(partner_name: str) -> str:
    return f"partners.salt\x00{partner_name}"


def token_context(order_number: str) -> str:
    return f"licenses.vault_token\x00{order_number}"


def token_digest(token: str) -> str:
    """What a vault token is looked up by: SHA-256, URL-safe base64.

    Unkeyed on purpose: a token is 256 random bits, so its digest reveals
    nothing guessable, and lookups outlive any key rotation.
    """
    return _encode(hashlib.sha256(token.encode()).digest())


# Where the keys come from.


def load_keyring(settings: Settings) -> Keyring:
    """The keys of ``settings``: ``FAMPROV_SECRET_KEY``, else on the embedded
    store the key file beside it (created on first use); else refuse."""
    if settings.secret_key is not None:
        return Keyring.from_text(settings.secret_key.get_secret_value())
    if not settings.is_embedded:
        raise SecretKeyError(
            f"set {ENVIRONMENT}: a PostgreSQL store keeps its salts and vault "
            f"tokens sealed with the operator's key; {HOW_TO_MAKE} and give "
            "the same to every host sharing the database"
        )
    database = settings.database.database
    if not database or database == ":memory:":
        # An in-memory store lives as long as the process, and so may its key.
        return Keyring([os.urandom(KEY_BYTES)], "an in-memory key")
    path = key_file(settings)
    if path is None:
        raise SecretKeyError(
            f"set {ENVIRONMENT}: famprov makes a key file beside a SQLite "
            f"file named by its path only, not by a file: URI; {HOW_TO_MAKE}"
        )
    if not path.exists() and _holds_sealed_secrets(Path(database)):
        # A new key would open nothing the store holds: the file was lost,
        # or the store was sealed with a key given in the environment.
        raise SecretKeyError(
            f"the key file {path} is missing, and the store beside it holds "
            f"secrets sealed with a key: put the key file back, or set "
            f"{ENVIRONMENT} to the key that sealed them"
        )
    return read_key_file(path, create=True)


# The migration that sealed the plaintext salts and vault tokens; a store
# before it holds none sealed.
SEALING_REVISION = "0003"


def _holds_sealed_secrets(database: Path) -> bool:
    """Whether the SQLite store at ``database`` holds sealed secrets (it is
    past the migration that sealed them, and has a partner): then only the
    key that sealed them will do."""
    if not database.exists() or database.stat().st_size == 0:
        return False
    try:
        with contextlib.closing(
            sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        ) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            if row is None or str(row[0]) < SEALING_REVISION:
                return False
            return conn.execute("SELECT 1 FROM partners LIMIT 1").fetchone() is not None
    except sqlite3.Error:
        return False  # no famprov tables yet


def key_file(settings: Settings) -> Path | None:
    """The embedded store's key file: the database file's name plus ``.key``."""
    database = settings.database.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    return path.with_name(path.name + ".key")


def read_key_file(path: Path, *, create: bool = False) -> Keyring:
    """The keys in ``path``, one a line, newest first; made when missing."""
    source = f"the key file {path}"
    if create and not path.exists():
        _create_key_file(path)
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretKeyError(f"{source} may be read by other users: `chmod 600 {path}`")
    return Keyring.from_text(path.read_text(encoding="ascii"), source)


def _create_key_file(path: Path) -> None:
    """Write a new key whole, mode 0600, unless another process just did."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.new")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as out:
            out.write(generate_key() + "\n")
            out.flush()
            os.fsync(out.fileno())
        # The link fails when another process was first: its key stands.
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)

"""Small pure functions, tested directly."""

from __future__ import annotations

import hashlib
import itertools
import string
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest
from email_validator import validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from famprov.api.partner_v1 import parse_query
from famprov.errors import DuplicateParameterError, InvalidRequestError
from famprov.licenses import fields
from famprov.licenses.numbers import OrderNumbers, new_key
from famprov.licenses.recording import new_identities
from famprov.licenses.terms import years_after
from famprov.logs import Secret, redact_email, redact_emails
from famprov.partners.hashing import compute_hash, verify_hash
from famprov.partners.service import generate_salt


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2028-02-29T10:00:00+00:00", "2029-02-28T10:00:00+00:00"),
        ("2027-02-28T10:00:00+00:00", "2028-02-28T10:00:00+00:00"),
        ("2026-12-31T23:59:59+00:00", "2027-12-31T23:59:59+00:00"),
    ],
)
def test_one_year_term(start: str, end: str) -> None:
    assert years_after(datetime.fromisoformat(start), 1).isoformat() == end


def test_term_is_computed_in_utc_whatever_the_offset() -> None:
    # 1 March 01:00 at +02:00 is 28 February 23:00 UTC in a non-leap year.
    start = datetime(2027, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert years_after(start, 1) == datetime(2028, 2, 28, 23, 0, tzinfo=UTC)


def test_hash_is_the_vendor_recipe() -> None:
    expected = hashlib.sha256(b"ann@example.com" + b"salt-value").hexdigest()
    assert compute_hash("ann@example.com", "salt-value") == expected
    assert verify_hash("ann@example.com", "salt-value", expected.upper())
    assert not verify_hash("ann@example.com", None, expected)


@given(email=st.text(min_size=1, max_size=254), salt=st.text(min_size=1, max_size=64))
def test_hash_verifies_for_any_text_and_only_for_it(email: str, salt: str) -> None:
    digest = compute_hash(email, salt)
    assert verify_hash(email, salt, digest)
    assert not verify_hash(email + "x", salt, digest)


def test_redact_email() -> None:
    assert redact_email("ann@example.com") == "a***@example.com"
    assert redact_email("no-at-sign") == "***"


def test_a_mail_servers_reply_is_logged_with_its_addresses_redacted() -> None:
    reply = "550 5.1.1 <ann.lee@example.com>: rejected; also zoë@bücher.example"
    assert redact_emails(reply) == (
        "550 5.1.1 <a***@example.com>: rejected; also z***@bücher.example"
    )


def test_secret_hides_itself() -> None:
    secret = Secret("hunter2-hunter2")
    assert "hunter2" not in repr(secret) + str(secret) + f"{secret}"
    assert secret.reveal() == "hunter2-hunter2"


def test_parse_query_decodes_raw_and_percent_encoded_utf8() -> None:
    parsed = parse_query("first_name=Zo%C3%AB&last_name=Lë&email=a+b".encode())
    assert parsed == {"first_name": "Zoë", "last_name": "Lë", "email": "a b"}


def test_parse_query_refuses_repeats_and_bad_bytes() -> None:
    with pytest.raises(DuplicateParameterError):
        parse_query(b"email=a&email=b")
    with pytest.raises(InvalidRequestError):
        parse_query(b"email=%ff")
    with pytest.raises(InvalidRequestError):
        parse_query(b"&".join(b"x%d=1" % i for i in range(100)))


def test_parse_query_ignores_unknown_parameters() -> None:
    assert parse_query(b"email=a&extra=1&extra=2") == {"email": "a"}


def test_vault_tokens_begin_with_their_order_number() -> None:
    numbers = OrderNumbers(new_key())
    reserved = [(license_id, numbers.of(license_id)) for license_id in range(1, 2001)]
    identities = list(new_identities(reserved))
    assert [(i, n) for i, n, _ in identities] == reserved
    tokens = [token for _, _, token in identities]
    # The order number's digits, then 256 random bits.
    assert all(len(token) == 12 + 43 for token in tokens)
    assert all(t[:12] == n.replace("-", "") for _, n, t in identities)
    assert len({token[12:] for token in tokens}) == 2000


def test_order_numbers_are_shaped_unique_and_lead_back_to_their_id() -> None:
    numbers = OrderNumbers(new_key())
    ids = [*range(1, 5001), *range(10**12 - 500, 10**12)]
    given = [numbers.of(license_id) for license_id in ids]
    assert len(set(given)) == len(ids)
    assert all(
        len(n) == 13 and n[8] == "-" and n.replace("-", "").isdigit() for n in given
    )
    assert [numbers.license_id(n) for n in given] == ids
    with pytest.raises(ValueError, match="run out"):
        numbers.of(10**12)


def test_order_numbers_of_consecutive_ids_look_drawn_at_random() -> None:
    numbers = OrderNumbers(new_key())
    values = [int(numbers.of(i).replace("-", "")) for i in range(1, 2001)]
    # Neither growing nor close together: each step goes up about as often
    # as down, and the numbers fill the twelve digits.
    ups = sum(b > a for a, b in itertools.pairwise(values))
    assert 850 < ups < 1150
    assert min(values) < 10**10
    assert max(values) > 99 * 10**10
    # Each leading digit about equally often.
    leading = Counter(str(v).zfill(12)[0] for v in values)
    assert len(leading) == 10
    assert min(leading.values()) > 120
    # Another store's key gives other numbers.
    other = OrderNumbers(new_key())
    assert sum(numbers.of(i) == other.of(i) for i in range(1, 2001)) == 0


@pytest.mark.parametrize(
    "text", ["", "12345678-123", "123456781234", "1234567-81234", "1234567a-1234",
             "١٢٣٤٥٦٧٨-١٢٣٤", "12345678-12345"],
)  # fmt: skip
def test_what_is_not_shaped_as_an_order_number_has_no_id(text: str) -> None:
    assert OrderNumbers(new_key()).license_id(text) is None


def test_the_order_number_key_never_shows() -> None:
    key = new_key()
    assert key not in repr(OrderNumbers(key))


_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_near_local = st.text(alphabet=_ATEXT + '.@ "', min_size=0, max_size=70)
_near_label = st.text(
    alphabet=string.ascii_letters + string.digits + "-_", min_size=0, max_size=65
)
_near_domain = st.lists(_near_label, min_size=1, max_size=5).map(".".join)
_near_email = st.builds(lambda a, b: f"{a}@{b}", _near_local, _near_domain)


@settings(max_examples=3000)
@given(email=st.one_of(st.emails(), _near_email))
def test_fast_email_path_gives_email_validators_answer(email: str) -> None:
    fast = fields._plain_ascii(email)
    if fast is None:
        return  # email_validator decides these
    checked = validate_email(email, check_deliverability=False, allow_smtputf8=True)
    key = f"{checked.local_part.casefold()}@{checked.ascii_domain}"
    assert fast == (checked.normalized, key, False)


def test_fast_email_path_takes_plain_addresses() -> None:
    assert fields._plain_ascii("Ann.Lee+x@Example.COM") == (
        "Ann.Lee+x@example.com",
        "ann.lee+x@example.com",
        False,
    )
    assert fields._plain_ascii("ann@bücher.example") is None
    assert fields._plain_ascii("ann@xn--bcher-kva.example") is None
    assert fields._plain_ascii("ann@host.localhost") is None


def _stdlib_reading(raw: bytes) -> dict[str, str]:
    """The query as the standard library's parse_qsl reads it, famprov's
    parameters only, the first of each."""
    from urllib.parse import parse_qsl

    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
    out: dict[str, str] = {}
    for name, value in pairs:
        name = name.encode("latin-1").decode()
        if name in fields.PARAMETERS and name not in out:
            out[name] = value.encode("latin-1").decode()
    return out


_query_piece = st.one_of(
    st.sampled_from([*sorted(fields.PARAMETERS), "x", "e%6dail", "first+name"]).map(
        str.encode
    ),
    st.binary(max_size=12),
    st.text(max_size=12).map(lambda t: t.encode()),
)
_query = st.lists(
    st.tuples(_query_piece, st.sampled_from([b"=", b"", b"=="]), _query_piece),
    max_size=8,
).map(lambda pairs: b"&".join(k + eq + v for k, eq, v in pairs))


@settings(max_examples=2000)
@given(raw=_query)
def test_parse_query_reads_as_the_standard_library_does(raw: bytes) -> None:
    try:
        ours = parse_query(raw)
    except DuplicateParameterError:
        return
    except InvalidRequestError:
        with pytest.raises(UnicodeDecodeError):
            _stdlib_reading(raw)
        return
    assert ours == _stdlib_reading(raw)


def test_generated_salts_never_look_like_an_option() -> None:
    salts = [generate_salt() for _ in range(2000)]
    assert all(salt[0].isalnum() for salt in salts)
    assert len(set(salts)) == len(salts)
    assert all(len(salt) == 43 for salt in salts)

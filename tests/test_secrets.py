"""Secrets at rest: salts and vault tokens sealed in the store, the keys
that seal them, and salt rotation; through HTTP and the CLI, on both stores."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from pydantic import SecretStr
from sqlalchemy import Engine

from famprov.cli import main
from famprov.clock import FixedClock, SystemClock
from famprov.config import Settings
from famprov.keys import Keyring, generate_key, key_file, key_id, parse_keys
from famprov.licenses.plans import DEFAULT_PLAN
from famprov.logs import Secret
from famprov.partners import hashing
from famprov.partners.service import Partner as PartnerRecord
from famprov.partners.service import authenticate
from famprov.store import open_engine
from famprov.store.migrate import downgrade, head, upgrade
from support import (
    FAMPROV,
    SALT,
    SECRET_KEY,
    V1_PATH,
    LiveServer,
    Partner,
    current_key,
    mail_files,
    only,
    wait_for,
)
from test_invitations import read_mail
from test_writer_process import writer_processes

OTHER_KEY = "3q9xWkqHx2L3kE3bTr6fN0pA8vQm1sYcJd4uZo7eRiU"


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def grant(
    http: httpx.Client, partner: Partner, n: int, **fields: str
) -> httpx.Response:
    params = partner.params(
        transaction_id=f"t-{n}", email=f"person{n}@example.com", **fields
    )
    return http.get(V1_PATH, params=params)


def token_of(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    return str(answer.json()["vault_url"]).rsplit("/invite/", 1)[1]


def forms(secret: str) -> set[bytes]:
    """``secret`` as a byte scan could find it: as text, hex and base64, and
    for a token (URL-safe base64 itself) its random bytes in those forms."""
    raw = [secret.encode()]
    with contextlib.suppress(ValueError):
        raw.append(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))
    found = set()
    for data in raw:
        found |= {
            data,
            data.hex().encode(),
            data.hex().upper().encode(),
            base64.b64encode(data).rstrip(b"="),
            base64.urlsafe_b64encode(data).rstrip(b"="),
        }
    return {form for form in found if len(form) >= 16}


def store_bytes(settings: Settings) -> bytes:
    """Every byte the store holds: SQLite's file and its write-ahead log, or
    a plain ``pg_dump`` of the test's PostgreSQL schema."""
    url = settings.database
    if settings.is_embedded:
        database = Path(str(url.database))
        wal = database.with_name(database.name + "-wal")
        return database.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    options = str(url.query["options"])
    schema = options.removeprefix("-csearch_path=")
    dump = subprocess.run(
        [
            "pg_dump",
            "--host",
            str(url.host),
            "--port",
            str(url.port or 5432),
            "--username",
            str(url.username),
            "--schema",
            schema,
            str(url.database),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert f"CREATE TABLE {schema}.licenses".encode() in dump.stdout
    return dump.stdout


def mail_text(path: Path) -> str:
    """A delivered message's plain text, decoded (a long link may be folded
    by its transfer encoding)."""
    body = read_mail(path).get_body(("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


def assert_none_in(data: bytes, secrets: list[str]) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in data, f"a secret found in the store, as {form!r}"


def test_the_store_holds_no_salt_and_no_token_in_plaintext(
    settings: Settings, server: LiveServer, http: httpx.Client, partner: Partner
) -> None:
    tokens = [token_of(grant(http, partner, n)) for n in range(5)]
    # A replay, an invitation opened and accepted, invitations delivered.
    assert token_of(grant(http, partner, 0)) == tokens[0]
    assert http.get(f"/invite/{tokens[1]}").status_code == 200
    wait_for(lambda: len(mail_files(settings)) == 5)
    # The mail holds the link: it is how the person gets it.
    assert tokens[2] in "".join(mail_text(p) for p in mail_files(settings))

    assert_none_in(store_bytes(settings), [SALT, *tokens])


def test_vault_urls_survive_a_restart_and_answer_replays(
    settings: Settings, clock: FixedClock, engine: Engine, partner: Partner
) -> None:
    with LiveServer(settings, clock) as first:
        answer = httpx.get(first.url + V1_PATH, params=partner.params())
    with LiveServer(settings, clock) as second:
        again = httpx.get(second.url + V1_PATH, params=partner.params())
        page = httpx.get(second.url + f"/invite/{token_of(answer)}")
    assert again.json() == answer.json()
    assert page.status_code == 200
    assert "Ann" in page.text


@only("sqlite")
def test_the_embedded_store_makes_a_private_key_file_and_keeps_it(
    env: dict[str, str], settings: Settings
) -> None:
    path = key_file(settings)
    assert path is not None
    path.unlink(missing_ok=True)  # the fixtures' own store made one
    assert cli("partner", "add", "acme").exit_code == 0
    assert path.name == "famprov.db.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    parse_keys(key)  # a proper key

    assert cli("partner", "list").exit_code == 0
    assert path.read_text() == key

    path.chmod(0o644)
    refused = cli("partner", "list")
    assert refused.exit_code == 1
    assert f"`chmod 600 {path}`" in refused.output
    assert key.strip() not in refused.output

    # Lost, the key file is not replaced by a new key that opens nothing.
    path.unlink()
    lost = cli("partner", "list")
    assert lost.exit_code == 1
    assert f"the key file {path} is missing" in lost.output
    assert not path.exists()


@only("postgresql")
def test_postgresql_refuses_to_start_without_a_key(env: dict[str, str]) -> None:
    without = {**os.environ, **env}
    del without["FAMPROV_SECRET_KEY"]
    for args in (["serve", "--port", "1"], ["license", "list"], ["worker"]):
        result = subprocess.run(
            [FAMPROV, *args],
            env=without,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, args
        assert "set FAMPROV_SECRET_KEY" in result.stderr
        assert "famprov keys generate" in result.stderr


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("p@ssw0rd-p@ssw0rd-p@ssw0rd-p@ssw0rd-p@ssw0", "not URL-safe base64"),
        ("c2hvcnQ", "is not 32 bytes"),
        ("A" * 43, "is not random"),
        (f"{SECRET_KEY},{'B' * 43}", "key 2 of the setting is not random"),
        (" , ", "holds no key"),
    ],
)
def test_a_key_of_too_little_strength_is_refused(
    env: dict[str, str], key: str, problem: str
) -> None:
    result = cli("license", "list", env={"FAMPROV_SECRET_KEY": key})
    assert result.exit_code == 2
    assert result.output.startswith("famprov: error: setting FAMPROV_SECRET_KEY")
    assert problem in result.output
    assert "famprov keys generate" in result.output
    for part in key.split(","):
        if len(part.strip()) > 8:
            assert part.strip() not in result.output


def test_keys_generate_prints_a_fresh_proper_key() -> None:
    first, second = cli("keys", "generate"), cli("keys", "generate")
    assert first.exit_code == 0
    assert first.output != second.output
    [key] = parse_keys(first.output)
    assert len(key) == 32


def test_a_wrong_key_is_named_by_its_id_never_shown(
    env: dict[str, str], keyring: Keyring, partner: Partner
) -> None:
    stored_id = keyring.newest_id
    result = cli("license", "list", env={"FAMPROV_SECRET_KEY": OTHER_KEY})

    assert result.exit_code == 1
    assert f"sealed with key {stored_id}" in result.output
    other_id = key_id(parse_keys(OTHER_KEY)[0]).hex()
    assert f"FAMPROV_SECRET_KEY does not hold (it holds {other_id})" in result.output
    assert OTHER_KEY not in result.output
    assert SALT not in result.output


def test_keys_rotate_reseals_everything_and_links_keep_working(
    env: dict[str, str],
    settings: Settings,
    keyring: Keyring,
    clock: FixedClock,
    partner: Partner,
) -> None:
    old = current_key(settings)
    with LiveServer(settings, clock) as live, httpx.Client(base_url=live.url) as http:
        answers = [grant(http, partner, n) for n in range(5)]
    only_new = settings.model_copy(update={"secret_key": SecretStr(OTHER_KEY)})

    rotated = cli(
        "keys", "rotate", "--batch-size", "2",
        env={"FAMPROV_SECRET_KEY": f"{OTHER_KEY},{old}"},
    )  # fmt: skip
    assert rotated.exit_code == 0, rotated.output
    new_id = key_id(parse_keys(OTHER_KEY)[0]).hex()
    assert f"resealed 1 salt(s) and 5 vault token(s) under key {new_id}" in (
        rotated.output
    )
    assert f"key(s) {keyring.newest_id} may go" in rotated.output
    again = cli("keys", "rotate", env={"FAMPROV_SECRET_KEY": f"{OTHER_KEY},{old}"})
    assert "resealed 0 salt(s) and 0 vault token(s)" in again.output

    # The old key is gone; every secret opens with the new one alone.
    with LiveServer(only_new, clock) as live, httpx.Client(base_url=live.url) as http:
        for n, answer in enumerate(answers):
            assert grant(http, partner, n).json() == answer.json()
            assert http.get(f"/invite/{token_of(answer)}").status_code == 200
        assert grant(http, partner, 99).status_code == 200
    # And with the old one alone, nothing opens: it really was replaced.
    refused = cli("license", "list", env={"FAMPROV_SECRET_KEY": old})
    assert refused.exit_code == 1
    assert f"sealed with key {new_id}" in refused.output


def test_a_resent_invitation_after_key_rotation_carries_the_same_link(
    env: dict[str, str],
    settings: Settings,
    clock: FixedClock,
    partner: Partner,
) -> None:
    api_only = settings.model_copy(update={"delivery": False})
    with LiveServer(api_only, clock) as live, httpx.Client(base_url=live.url) as http:
        answer = grant(http, partner, 1)
    old = current_key(settings)
    rotated = cli("keys", "rotate", env={"FAMPROV_SECRET_KEY": f"{OTHER_KEY},{old}"})
    assert rotated.exit_code == 0, rotated.output

    only_new = settings.model_copy(update={"secret_key": SecretStr(OTHER_KEY)})
    with LiveServer(only_new, clock):
        wait_for(lambda: len(mail_files(settings)) == 1)
    [mail] = mail_files(settings)
    assert token_of(answer) in mail.read_text().replace("=\n", "")


def test_the_writer_process_gets_its_key_by_no_command_line_or_environment(
    settings: Settings,
    clock: FixedClock,
    partner: Partner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The key in the serving process's environment, as an operator sets it.
    key = current_key(settings)
    monkeypatch.setenv("FAMPROV_SECRET_KEY", key)
    with LiveServer(settings, clock) as live, httpx.Client(base_url=live.url) as http:
        assert grant(http, partner, 1).status_code == 200
        [writer] = writer_processes(os.getpid())
        for name in ("cmdline", "environ"):
            data = Path(f"/proc/{writer}/{name}").read_bytes()
            assert key.encode() not in data, name
            assert b"FAMPROV_" not in data, name


# A store from before secrets at rest: its plaintext sealed by the upgrade.

_partners = sa.table(
    "partners",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("salt", sa.String),
    sa.column("enabled", sa.Boolean),
    sa.column("created_at", sa.DateTime),
)
_licenses = sa.table(
    "licenses",
    *(
        sa.column(name, sa.String)
        for name in (
            "order_number",
            "transaction_id",
            "email",
            "email_key",
            "live_email_key",
            "first_name",
            "last_name",
            "plan",
            "products",
            "status",
            "vault_token",
        )
    ),
    sa.column("partner_id", sa.Integer),
    *(
        sa.column(name, sa.DateTime)
        for name in ("created_at", "starts_at", "expires_at")
    ),
)
OLD_TOKEN = "Zm9yLXRlc3RzLWFuLW9sZC12YXVsdC10b2tlbi0wMDE"


@pytest.fixture
def old_store(settings: Settings) -> Iterator[Engine]:
    """A store at revision 0002 holding a partner and a license in plaintext."""
    engine = open_engine(settings.database)
    upgrade(engine, "0002")
    now = datetime(2026, 3, 1, 8, 0)
    with engine.begin() as conn:
        conn.execute(
            _partners.insert().values(
                id=1, name="acme", salt=SALT, enabled=True, created_at=now
            )
        )
        conn.execute(
            _licenses.insert().values(
                order_number="12345678-0001",
                partner_id=1,
                transaction_id="0001",
                email="ann@example.com",
                email_key="ann@example.com",
                live_email_key="ann@example.com",
                first_name="Ann",
                last_name="Lee",
                plan=DEFAULT_PLAN.code,
                products='["' + '", "'.join(DEFAULT_PLAN.product_codes) + '"]',
                status="invited",
                created_at=now,
                starts_at=now,
                expires_at=now + timedelta(days=365),
                vault_token=OLD_TOKEN,
            )
        )
    yield engine
    engine.dispose()


def test_an_upgraded_store_keeps_its_partners_and_vault_urls(
    settings: Settings, clock: FixedClock, old_store: Engine
) -> None:
    assert SALT.encode() in store_bytes(settings)
    env = {"FAMPROV_DATABASE_URL": settings.database_url}
    if settings.secret_key is not None:
        env["FAMPROV_SECRET_KEY"] = settings.secret_key.get_secret_value()
    upgraded = cli("db", "upgrade", env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert f"from 0002 to {head()}" in upgraded.output

    assert_none_in(store_bytes(settings), [SALT, OLD_TOKEN])
    partner = Partner("acme", SALT)
    with LiveServer(settings, clock) as live, httpx.Client(base_url=live.url) as http:
        replay = http.get(V1_PATH, params=partner.params())
        page = http.get(f"/invite/{OLD_TOKEN}")
        fresh = http.get(
            V1_PATH, params=partner.params(transaction_id="2", email="b@example.com")
        )
    assert replay.json()["order_number"] == "12345678-0001"
    assert token_of(replay) == OLD_TOKEN
    assert page.status_code == 200
    assert fresh.status_code == 200
    # The order number drawn before revision 0007 still finds its license;
    # the new one, a permuted id, finds its own.
    for order, email in [
        ("12345678-0001", "ann@example.com"),
        (fresh.json()["order_number"], "b@example.com"),
    ]:
        shown = cli("license", "show", order, "--json", env=env)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["email"] == email


def test_the_sealing_migration_without_a_key_says_so(
    settings: Settings, old_store: Engine
) -> None:
    with pytest.raises(Exception, match="was given no key: run it with `famprov db"):
        upgrade(old_store)
    assert SALT.encode() in store_bytes(settings)  # rolled back whole


def test_the_sealing_migration_goes_back_down_to_plaintext(
    old_store: Engine, keyring: Keyring
) -> None:
    upgrade(old_store, keyring=keyring)
    downgrade(old_store, "0002", keyring=keyring)
    with old_store.connect() as conn:
        assert conn.execute(sa.select(_partners.c.salt)).scalar_one() == SALT
        token = conn.execute(sa.select(_licenses.c.vault_token)).scalar_one()
    assert token == OLD_TOKEN


# Salt rotation.


@pytest.fixture
def now(clock: FixedClock) -> datetime:
    """The server's clock set to the real time, which the CLI uses."""
    clock.set(SystemClock().now())
    return clock.now()


def new_salt(result: Result) -> str:
    assert result.exit_code == 0, result.output
    [salt] = [
        line.removeprefix("salt: ")
        for line in result.output.splitlines()
        if line.startswith("salt: ")
    ]
    return salt


def answers(http: httpx.Client, salt: str, n: int) -> int:
    params = Partner("acme", salt).params(
        transaction_id=f"r-{n}", email=f"r{n}@example.com"
    )
    return http.get(V1_PATH, params=params).status_code


def test_both_salts_verify_during_the_overlap_then_only_the_new_one(
    env: dict[str, str],
    clock: FixedClock,
    now: datetime,
    http: httpx.Client,
    partner: Partner,
) -> None:
    assert answers(http, SALT, 1) == 200
    rotated = cli("partner", "rotate-salt", "acme", "--overlap", "1d12h")
    salt = new_salt(rotated)
    assert salt != SALT
    assert "The previous salt verifies until" in rotated.output
    assert "FAMPROV_PARTNER_CACHE_SECONDS (0 s)" in rotated.output

    assert answers(http, salt, 2) == 200
    assert answers(http, SALT, 3) == 200
    clock.set(now + timedelta(hours=35, minutes=59))
    assert answers(http, SALT, 4) == 200
    clock.set(now + timedelta(hours=36, minutes=1))
    assert answers(http, SALT, 5) == 401
    assert answers(http, salt, 6) == 200

    listed = cli("partner", "list", "--json")
    assert '"previous_salt_until": "' in listed.output
    assert SALT not in listed.output
    assert salt not in listed.output


def test_the_previous_salt_stops_at_the_overlaps_end_even_while_cached(
    env: dict[str, str],
    settings: Settings,
    clock: FixedClock,
    now: datetime,
    engine: Engine,
    partner: Partner,
) -> None:
    cached = settings.model_copy(update={"partner_cache_seconds": 600})
    salt = new_salt(cli("partner", "rotate-salt", "acme", "--overlap", "2h"))
    with LiveServer(cached, clock) as live, httpx.Client(base_url=live.url) as http:
        assert answers(http, SALT, 1) == 200  # the partner is cached from here
        clock.set(now + timedelta(hours=2, minutes=1))
        assert answers(http, SALT, 2) == 401
        assert answers(http, salt, 3) == 200


def test_a_new_salt_verifies_within_the_cache_time(
    env: dict[str, str],
    settings: Settings,
    clock: FixedClock,
    now: datetime,
    engine: Engine,
    partner: Partner,
) -> None:
    cached = settings.model_copy(update={"partner_cache_seconds": 1})
    with LiveServer(cached, clock) as live, httpx.Client(base_url=live.url) as http:
        assert answers(http, SALT, 1) == 200
        salt = new_salt(cli("partner", "rotate-salt", "acme", "--overlap", "0"))
        counter = iter(range(2, 1000))
        wait_for(lambda: answers(http, salt, next(counter)) == 200, timeout=5)
        assert answers(http, SALT, 1000) == 401


def test_without_overlap_the_old_salt_stops_at_once(
    env: dict[str, str], now: datetime, http: httpx.Client, partner: Partner
) -> None:
    rotated = cli("partner", "rotate-salt", "acme", "--overlap", "0")
    salt = new_salt(rotated)
    assert "The previous salt no longer verifies." in rotated.output
    assert answers(http, SALT, 1) == 401
    assert answers(http, salt, 2) == 200


def test_a_second_rotation_ends_the_first_ones_overlap(
    env: dict[str, str], now: datetime, http: httpx.Client, partner: Partner
) -> None:
    second = new_salt(cli("partner", "rotate-salt", "acme"))
    rotated = cli("partner", "rotate-salt", "acme", "--overlap", "7d")
    third = new_salt(rotated)
    assert "The overlap of the rotation before" in rotated.output
    assert answers(http, SALT, 1) == 401
    assert answers(http, second, 2) == 200
    assert answers(http, third, 3) == 200


def test_the_new_salt_can_go_to_a_private_file_instead(
    env: dict[str, str],
    now: datetime,
    http: httpx.Client,
    partner: Partner,
    tmp_path: Path,
) -> None:
    out = tmp_path / "acme.salt"
    rotated = cli("partner", "rotate-salt", "acme", "--salt-file-out", str(out))
    assert rotated.exit_code == 0, rotated.output
    salt = out.read_text().removesuffix("\n")
    assert salt not in rotated.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert answers(http, salt, 1) == 200

    # An existing file is never overwritten, and then nothing rotates.
    again = cli("partner", "rotate-salt", "acme", "--salt-file-out", str(out))
    assert again.exit_code == 1
    assert "File exists" in again.output
    assert out.read_text().removesuffix("\n") == salt
    assert answers(http, salt, 2) == 200
    assert answers(http, SALT, 3) == 200  # still in the first overlap


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["nobody"], "no partner named 'nobody'"),
        (["acme", "--overlap", "tomorrow"], "give a number and a unit"),
        (["acme", "--overlap", "91d"], "at most 90d"),
    ],
)
def test_rotate_salt_refuses_what_it_cannot_do(
    env: dict[str, str], partner: Partner, args: list[str], problem: str
) -> None:
    result = cli("partner", "rotate-salt", *args)
    assert result.exit_code != 0
    assert problem in result.output
    assert "salt:" not in result.output


def test_every_verification_hashes_with_two_salts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unknown partner, a disabled one, one with one salt and one in an
    overlap all cost two hashes: the answer's time tells none apart."""
    computed: list[str] = []
    real = hashing.compute_hash

    def counted(email: str, salt: str) -> str:
        computed.append(salt)
        return real(email, salt)

    monkeypatch.setattr(hashing, "compute_hash", counted)
    at = datetime(2026, 3, 10, tzinfo=UTC)
    one = PartnerRecord(1, "acme", Secret(SALT), True, at)
    overlap = PartnerRecord(
        1, "acme", Secret("new" + SALT), True, at, Secret(SALT), at + timedelta(1)
    )
    disabled = PartnerRecord(1, "acme", Secret(SALT), False, at)
    good = real("ann@example.com", SALT)
    for partner, verifies in ((None, False), (disabled, False), (one, True),
                              (overlap, True)):  # fmt: skip
        computed.clear()
        if verifies:
            assert (
                authenticate(partner, "ann@example.com", good, at) == "ann@example.com"
            )
        else:
            with pytest.raises(Exception, match="UnAuthorized"):
                authenticate(partner, "ann@example.com", good, at)
        assert len(computed) == 2, partner
    # Past the overlap the previous salt is a dummy's work, and refused.
    computed.clear()
    with pytest.raises(Exception, match="UnAuthorized"):
        authenticate(overlap, "ann@example.com", good, at + timedelta(days=2))
    assert len(computed) == 2
    assert SALT not in computed


def test_a_keyring_prints_ids_only() -> None:
    keyring = Keyring.from_text(f"{SECRET_KEY},{generate_key()}")
    assert SECRET_KEY not in repr(keyring)
    assert repr(keyring) == f"Keyring(ids={keyring.ids!r})"
    sealed = keyring.seal("a secret", "here")
    assert keyring.open(sealed, "here") == "a secret"
    with pytest.raises(Exception, match="does not open with key"):
        keyring.open(sealed, "elsewhere")


def test_a_server_without_the_key_that_sealed_a_salt_answers_a_plain_500(
    env: dict[str, str],
    settings: Settings,
    clock: FixedClock,
    partner: Partner,
) -> None:
    """Resealed under a key the running server lacks: its grants fail, with a
    500 that names neither the setting nor a key, whatever the hash; an
    unknown partner is still a 401."""
    old = current_key(settings)
    quick = settings.model_copy(update={"partner_cache_seconds": 0.0})
    with LiveServer(quick, clock) as live, httpx.Client(base_url=live.url) as http:
        assert grant(http, partner, 1).status_code == 200
        rotated = cli(
            "keys", "rotate", env={"FAMPROV_SECRET_KEY": f"{OTHER_KEY},{old}"}
        )
        assert rotated.exit_code == 0, rotated.output
        for params in (
            partner.params(transaction_id="2", email="b@example.com"),
            partner.params(transaction_id="3", hash="0" * 64),
        ):
            answer = http.get(V1_PATH, params=params)
            assert answer.status_code == 500
            assert answer.json() == {
                "success": False,
                "message": "Internal server error",
            }
        unknown = partner.params(partner_name="nobody", hash="0" * 64)
        assert http.get(V1_PATH, params=unknown).status_code == 401

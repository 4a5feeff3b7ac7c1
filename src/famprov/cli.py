"""``famprov``: one command for operators and partners.

Every command reads the same settings (`famprov.config.Settings`) as the
server. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from famprov import __version__, client, logs
from famprov.api import openapi as definition
from famprov.api import postman
from famprov.bulk import reading, sending
from famprov.clock import SystemClock
from famprov.config import Settings
from famprov.errors import FamprovError
from famprov.invitations import outbox as outbox_rows
from famprov.invitations.delivery import DeliveryWorker
from famprov.keys import Keyring, generate_key, load_keyring
from famprov.licenses import records
from famprov.licenses.plans import product_name
from famprov.logs import log
from famprov.partners import service as partners
from famprov.partners.hashing import compute_hash
from famprov.store import migrate, open_engine, sealed

DEMO_PARTNER = "demo"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"famprov: error: {message}", err=True)
    sys.exit(code)


class FamprovGroup(click.Group):
    """Turns every expected failure into one line on stderr."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Bytes that are not UTF-8 reach Python as lone surrogates, which no
        # store, file or URL takes: refused here, once, for every command.
        for position, arg in enumerate(args, 1):
            try:
                arg.encode()
            except UnicodeEncodeError:
                fail(f"argument {position} is not UTF-8 text", 2)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FamprovError as exc:
            fail(exc.message)
        except client.ApiError as exc:
            fail(exc.message)
        except client.ClientError as exc:
            fail(str(exc), 3)
        except ValidationError as exc:
            fail(settings_problem(exc), 2)
        except SQLAlchemyError as exc:
            fail(database_problem(exc))
        except OSError as exc:
            fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))


def settings_problem(exc: ValidationError) -> str:
    """``setting FAMPROV_X: what is wrong``, in words of ours where pydantic's
    own lead with its kind of error."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"setting FAMPROV_{field.upper()}: {message[:1].lower()}{message[1:]}"


def database_problem(exc: SQLAlchemyError) -> str:
    # The driver's own message only: SQLAlchemy's text repeats the statement
    # and its parameters, which may hold a salt.
    reason = str(getattr(exc, "orig", None) or type(exc).__name__)
    return f"database error: {reason.splitlines()[0] if reason else 'unknown'}"


def load_settings() -> Settings:
    return Settings()


def store(*, prepare: bool = True) -> tuple[Settings, Engine]:
    """The settings and the store, closed when the command ends.

    The store is made ready first (`famprov.store.migrate.prepare`) unless
    ``prepare`` is false, as for the commands that migrate it.
    """
    settings, engine, _ = keyed_store(prepare=prepare)
    return settings, engine


def keyed_store(*, prepare: bool = True) -> tuple[Settings, Engine, Keyring]:
    """`store`, with the keys that seal its secrets.

    Every command that opens the store loads them, so that a PostgreSQL
    store without ``FAMPROV_SECRET_KEY`` is refused by each alike.
    """
    settings = load_settings()
    engine = open_engine(settings.database)
    click.get_current_context().call_on_close(engine.dispose)
    keyring = load_keyring(settings)
    if prepare:
        migrate.prepare(engine, keyring)
    return settings, engine, keyring


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@click.group(cls=FamprovGroup)
@click.version_option(__version__, prog_name="famprov")
def main() -> None:
    """Grant family plans through partners: the server, and its tools."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Serving processes (PostgreSQL only above 1).",
)
@click.option(
    "--no-delivery", is_flag=True, help="Serve the API but send no invitation."
)
def serve(host: str, port: int, workers: int, no_delivery: bool) -> None:
    """Run the service."""
    import uvicorn

    from famprov.api.protocol import JsonErrorsProtocol

    settings, engine, keyring = keyed_store()
    if "FAMPROV_PUBLIC_URL" not in os.environ:
        require_public_url(settings)
        if host in WILDCARD_HOSTS:
            # Invitations would carry links to "every interface", which no
            # one can open.
            fail(
                f"--host {host} listens on every address, and vault URLs need "
                "the one people open: set FAMPROV_PUBLIC_URL (for example "
                f"http://famprov.example.com:{port})",
                2,
            )
        # On one machine, vault URLs point at this server unless the operator
        # says otherwise; the serving processes read it from the environment.
        os.environ["FAMPROV_PUBLIC_URL"] = f"http://{url_host(host)}:{port}"
        settings = load_settings()
    logs.configure(settings.log_format, settings.log_level)
    if workers > 1 and settings.is_embedded:
        fail(
            "the embedded SQLite store takes one serving process; "
            "set FAMPROV_DATABASE_URL to a PostgreSQL database for --workers above 1",
            2,
        )
    if workers > 1 and settings.redis_url is None:
        # Documented (README, FAMPROV_REDIS_URL), and easy to miss.
        log.warning(
            "limits_counted_per_process",
            workers=workers,
            hint="each serving process counts the rate limits alone: a partner "
            "may send up to workers times its rate; set FAMPROV_REDIS_URL to "
            "count them together",
        )
    if settings.is_embedded and partners.count_partners(engine) == 0:
        if sys.stdout.isatty():
            # A first try from a terminal: a partner to grant with at once.
            # Its salt is shown there, never to a log a service manager keeps.
            salt = partners.generate_salt()
            partners.add_partner(engine, keyring, SystemClock(), DEMO_PARTNER, salt)
            print_demo(DEMO_PARTNER, salt, f"http://{host}:{port}")
        else:
            click.echo(
                "famprov: the store holds no partner yet: add one with "
                "`famprov partner add NAME`",
                err=True,
            )
    engine.dispose()
    if no_delivery:
        # The serving processes read their settings from the environment.
        os.environ["FAMPROV_DELIVERY"] = "false"
    uvicorn.run(
        "famprov.api.app:from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=None,
        server_header=False,
        ws="none",
        http=JsonErrorsProtocol,
        lifespan="on",
    )


@main.command()
def worker() -> None:
    """Deliver invitations, and serve nothing: for delivery-only hosts."""
    settings, engine, keyring = keyed_store()
    if "FAMPROV_PUBLIC_URL" not in os.environ:
        require_public_url(settings)
    logs.configure(settings.log_format, settings.log_level)
    delivery = DeliveryWorker.from_settings(settings, engine, keyring, SystemClock())

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, delivery.stop)
        log.info("worker_started", database=settings.database_display)
        await delivery.run()
        log.info("worker_stopped")

    asyncio.run(run())


@main.group()
def db() -> None:
    """Migrate and check the store's schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration the database lacks."""
    _, engine, keyring = keyed_store(prepare=False)
    before = migrate.current(engine)
    migrate.upgrade(engine, keyring=keyring)
    after = migrate.current(engine)
    if before == after:
        click.echo(f"database already at {after}")
    else:
        click.echo(f"database upgraded from {before or 'nothing'} to {after}")


@db.command("revision")
@click.argument("message")
def db_revision(message: str) -> None:
    """Write a new migration from the models (for famprov's developers)."""
    _, engine = store(prepare=False)
    migrate.require_current(engine)
    click.echo(f"wrote {migrate.revision(engine, message)}")


@db.command("check")
def db_check() -> None:
    """Fail when the database and famprov's models disagree."""
    _, engine = store(prepare=False)
    migrate.require_current(engine)
    diffs = migrate.differences(engine)
    if diffs:
        for diff in diffs:
            click.echo(f"  {diff}", err=True)
        fail(f"the database differs from the models in {len(diffs)} place(s)")
    click.echo(f"database at {migrate.head()}, matching the models")


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})  # noqa: S104 - to refuse them


def url_host(host: str) -> str:
    """The host as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def require_public_url(settings: Settings) -> None:
    """A shared store has many hosts: each must build the same vault URLs."""
    if not settings.is_embedded:
        fail(
            "set FAMPROV_PUBLIC_URL to the address people open (the load "
            "balancer's): every host sharing this database must use the same",
            2,
        )


def own_command() -> str:
    """How to call this same famprov from the current folder."""
    on_path = shutil.which("famprov")
    mine = Path(sys.argv[0]).resolve()
    if on_path and Path(on_path).resolve() == mine:
        return "famprov"
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


def print_demo(name: str, salt: str, url: str) -> None:
    email = "ann@example.com"
    query = (
        f"transaction_id=demo-0001&first_name=Ann&email={quote(email)}"
        f"&hash={compute_hash(email, salt)}&partner_name={quote(name)}"
    )
    click.echo(
        "\nThe store holds no partner yet, so famprov created a demo partner.\n"
        f"  partner name: {name}\n"
        f"  salt:         {salt}\n"
        "The salt is shown this once; it is what the partner hashes with.\n\n"
        "Grant a license against this server (in another terminal):\n"
        f"  {own_command()} provision --url {url} --partner {shlex.quote(name)} "
        f"--salt {shlex.quote(salt)} --transaction-id demo-0001 "
        f"--first-name Ann --email {email}\n"
        "or with curl:\n"
        f"  curl '{url}/bi_api/v1/services/partner/create-license?{query}'\n"
        "Invitations land in the mail folder as .eml files.\n"
    )


@main.group()
def partner() -> None:
    """Add, change, list, disable partners; rotate their salts."""


NO_LIMIT = "none"


def parse_limit(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> int | str | None:
    """An option's ``N|none``: a whole number from 0, or `NO_LIMIT`."""
    if value is None:
        return None
    text = value.strip().lower()
    if text == NO_LIMIT:
        return NO_LIMIT
    if not (text.isascii() and text.isdigit()):
        raise click.BadParameter(f"{value!r} is neither a whole number nor 'none'")
    return int(text)


def limit(value: int | str | None) -> int | None:
    """What `parse_limit` read, as the store keeps it: None for no limit."""
    return value if isinstance(value, int) else None


RATE_HELP = (
    "The partner's request rate, N/PERIOD (600/min, 20/s, 5000/h, 1000/d) or "
    "unlimited; default: the server's FAMPROV_PARTNER_RATE."
)


@partner.command("add")
@click.argument("name")
@click.option("--salt", help="Use this salt instead of a generated one.")
@click.option(
    "--salt-file",
    type=click.File("r", encoding="utf-8"),
    help="Read the salt from a file (its trailing newline is dropped).",
)
@click.option(
    "--quota",
    metavar="N|none",
    callback=parse_limit,
    help="The most licenses the partner may be granted [default: none, no cap].",
)
@click.option("--rate", metavar="N/PERIOD", help=RATE_HELP)
def partner_add(
    name: str,
    salt: str | None,
    salt_file: Any,
    quota: int | str | None,
    rate: str | None,
) -> None:
    """Add a partner; prints its salt once when famprov generates it."""
    if salt is not None and salt_file is not None:
        fail("give --salt or --salt-file, not both", 2)
    given = salt if salt is not None else read_salt(salt_file) if salt_file else None
    _, engine, keyring = keyed_store()
    chosen = given if given is not None else partners.generate_salt()
    partners.add_partner(
        engine,
        keyring,
        SystemClock(),
        name,
        chosen,
        quota=limit(quota),
        rate_limit=rate,
    )
    click.echo(f"partner {name} added")
    if given is None:
        click.echo(f"salt: {chosen}")
        click.echo("The salt is shown this once: hand it to the partner securely.")


def read_salt(source: Any) -> str:
    try:
        text: str = source.read()
    except UnicodeDecodeError:
        fail(f"salt file {source.name} is not UTF-8 text", 2)
    return text.removesuffix("\n").removesuffix("\r")


@partner.command("set")
@click.argument("name")
@click.option(
    "--quota",
    metavar="N|none",
    callback=parse_limit,
    help="Cap the partner's licenses at N, those granted so far included; "
    "'none' lifts the cap.",
)
@click.option(
    "--rate",
    metavar="N/PERIOD",
    help="The partner's request rate: N/PERIOD (600/min, 20/s, 5000/h), "
    "unlimited, or default to follow the server's FAMPROV_PARTNER_RATE.",
)
def partner_set(name: str, quota: int | str | None, rate: str | None) -> None:
    """Change a partner's limits; each option changes one, the rest stay."""
    if quota is None and rate is None:
        fail("give at least one limit to change: --quota, --rate", 2)
    settings, engine = store()
    wanted = None if rate is None or rate.strip().lower() == "default" else rate
    if wanted is not None:
        partners.check_rate(wanted)  # refused before anything changes
    if quota is not None:
        summary = partners.set_quota(engine, name, limit(quota))
        click.echo(f"partner {name}: {describe_quota(summary)}")
    if rate is not None:
        stored = partners.set_rate_limit(engine, name, wanted)
        click.echo(f"partner {name}: rate {shown_rate(stored, settings)}")


def describe_quota(summary: partners.PartnerSummary) -> str:
    if summary.quota is None:
        return f"no quota, {summary.licenses} license(s) granted"
    return (
        f"quota {summary.quota}, {summary.licenses} license(s) granted, "
        f"{summary.remaining} remaining"
    )


def shown_rate(stored: str | None, settings: Settings) -> str:
    """A partner's rate as `partner list` shows it: its own, or the default."""
    if stored is None:
        return f"{settings.partner_rate} (default)"
    return stored


@partner.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def partner_list(as_json: bool) -> None:
    """List partners: the licenses each was granted, what its quota leaves,
    its request rate."""
    settings, engine = store()
    rows = partners.list_partners(engine)
    if as_json:
        echo_json(
            [
                {
                    "name": p.name,
                    "enabled": p.enabled,
                    "created_at": p.created_at.isoformat(),
                    "licenses": p.licenses,
                    "quota": p.quota,
                    "remaining": p.remaining,
                    "previous_salt_until": overlap_end(p),
                    "rate_limit": p.rate_limit or settings.partner_rate,
                    "rate_limit_is_default": p.rate_limit is None,
                }
                for p in rows
            ]
        )
        return
    table(
        [
            "partner",
            "enabled",
            "licenses",
            "quota",
            "remaining",
            "rate",
            "created (UTC)",
            "previous salt until",
        ],
        [
            [
                p.name,
                "yes" if p.enabled else "no",
                str(p.licenses),
                "none" if p.quota is None else str(p.quota),
                "" if p.remaining is None else str(p.remaining),
                shown_rate(p.rate_limit, settings),
                p.created_at.isoformat(timespec="seconds"),
                overlap_end(p) or "",
            ]
            for p in rows
        ],
    )


def overlap_end(summary: partners.PartnerSummary) -> str | None:
    """When a rotation's previous salt stops verifying, while it still does."""
    until = summary.previous_salt_until
    if until is None or until <= SystemClock().now():
        return None
    return until.isoformat(timespec="seconds")


@partner.command("disable")
@click.argument("name")
def partner_disable(name: str) -> None:
    """Refuse every further grant from a partner (its licenses stay)."""
    _, engine = store()
    partners.set_enabled(engine, SystemClock(), name, False)
    click.echo(f"partner {name} disabled")


@partner.command("enable")
@click.argument("name")
def partner_enable(name: str) -> None:
    """Accept grants from a disabled partner again."""
    _, engine = store()
    partners.set_enabled(engine, SystemClock(), name, True)
    click.echo(f"partner {name} enabled")


_DURATION_PART = re.compile(r"(\d+)([smhd])")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``, ``1d12h`` or ``0``, as a timedelta."""
    text = value.strip().lower()
    if text == "0":
        return timedelta(0)
    if not re.fullmatch(r"(?:\d+[smhd])+", text):
        raise click.BadParameter("give a number and a unit, s, m, h or d: 24h, 7d")
    total = timedelta(0)
    for amount, unit in _DURATION_PART.findall(text):
        total += timedelta(**{_DURATION_UNITS[unit]: int(amount)})
    if total > MAX_OVERLAP:
        raise click.BadParameter(f"at most {MAX_OVERLAP.days}d")
    return total


MAX_OVERLAP = timedelta(days=90)


@partner.command("rotate-salt")
@click.argument("name")
@click.option(
    "--overlap",
    callback=duration,
    default="24h",
    show_default=True,
    help="How long the current salt keeps verifying beside the new one "
    "(0: it stops now).",
)
@click.option(
    "--salt-file-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the new salt to this new file (mode 0600) instead of printing it.",
)
def partner_rotate_salt(
    name: str, overlap: timedelta, salt_file_out: Path | None
) -> None:
    """Give a partner a new salt, shown once; the current one keeps
    verifying until the overlap ends."""
    settings, engine, keyring = keyed_store()
    out = None
    if salt_file_out is not None:
        # Made before the rotation, so that a salt is never made that
        # cannot be written down.
        out = os.fdopen(
            os.open(salt_file_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600),
            "w",
            encoding="utf-8",
        )
    try:
        rotated = partners.rotate_salt(engine, keyring, SystemClock(), name, overlap)
    except BaseException:
        if out is not None:
            out.close()
            salt_file_out.unlink()  # type: ignore[union-attr]
        raise
    if out is not None:
        with out:
            out.write(rotated.salt.reveal() + "\n")
        click.echo(f"partner {name} has a new salt, written to {salt_file_out}")
    else:
        click.echo(f"partner {name} has a new salt")
        click.echo(f"salt: {rotated.salt.reveal()}")
        click.echo("The salt is shown this once: hand it to the partner securely.")
    if rotated.cut_short is not None:
        click.echo(
            "The overlap of the rotation before, until "
            f"{rotated.cut_short.isoformat(timespec='seconds')}, ended now: "
            "the salt it kept verifying no longer does."
        )
    if rotated.previous_until is None:
        click.echo("The previous salt no longer verifies.")
    else:
        click.echo(
            "The previous salt verifies until "
            f"{rotated.previous_until.isoformat(timespec='seconds')}, then "
            "only the new one does."
        )
    click.echo(
        "Servers accept the new salt within FAMPROV_PARTNER_CACHE_SECONDS "
        f"({settings.partner_cache_seconds:g} s) of now."
    )


@main.group()
def keys() -> None:
    """Make keys, and reseal the store's secrets under the newest."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a fresh key for FAMPROV_SECRET_KEY (32 random bytes)."""
    click.echo(generate_key())


@keys.command("rotate")
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Licenses resealed per transaction.",
)
def keys_rotate(batch_size: int) -> None:
    """Reseal every salt and vault token under the newest key; safe to run
    again, and beside a running service."""
    _, engine, keyring = keyed_store()
    done = sealed.reseal(engine, keyring, SystemClock().now(), batch_size=batch_size)
    newest = keyring.newest_id
    click.echo(
        f"resealed {done.salts} salt(s) and {done.tokens} vault token(s) "
        f"under key {newest}"
    )
    if done.expired_salts:
        click.echo(
            f"removed {done.expired_salts} previous salt(s) whose overlap was over"
        )
    older = keyring.ids[1:]
    if older:
        click.echo(
            f"Once every host seals with key {newest} (first in its keys) and "
            f"this has run since, key(s) {', '.join(older)} may go from "
            f"{keyring.source}."
        )


@main.group()
def license() -> None:
    """List, show and revoke licenses."""


@license.command("list")
@click.option("--partner", "partner_name", help="Only this partner's licenses.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def license_list(partner_name: str | None, as_json: bool) -> None:
    """List licenses, oldest first."""
    _, engine = store()
    rows = records.list_licenses(engine, SystemClock(), partner=partner_name)
    if as_json:
        echo_json([r.to_json() for r in rows])
        return
    table(
        [
            "order number",
            "partner",
            "transaction id",
            "email",
            "status",
            "expires (UTC)",
        ],
        [
            [
                r.order_number,
                r.partner_name,
                r.transaction_id,
                r.email,
                r.status,
                r.expires_at.isoformat(timespec="seconds"),
            ]
            for r in rows
        ],
    )


@license.command("show")
@click.argument("order_number")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def license_show(order_number: str, as_json: bool) -> None:
    """Show one license."""
    _, engine = store()
    show_record(records.get_license(engine, SystemClock(), order_number), as_json)


@license.command("revoke")
@click.argument("order_number")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def license_revoke(order_number: str, as_json: bool) -> None:
    """Revoke a license; it stays on record."""
    _, engine = store()
    show_record(records.revoke_license(engine, SystemClock(), order_number), as_json)


@license.command("resend")
@click.argument("order_number")
def license_resend(order_number: str) -> None:
    """Queue a fresh invitation for a license that is still invited."""
    _, engine = store()
    outbox_id = records.resend_invitation(engine, SystemClock(), order_number)
    click.echo(f"invitation for {order_number} queued (outbox row {outbox_id})")


@main.group()
def outbox() -> None:
    """See queued invitations and put failed ones back."""


@outbox.command("list")
@click.option(
    "--status",
    type=click.Choice(outbox_rows.STATUSES),
    help="Only rows in this state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def outbox_list(status: str | None, as_json: bool) -> None:
    """List invitations in the outbox, oldest first, with their last error."""
    _, engine = store()
    rows = outbox_rows.list_outbox(engine, status=status)
    if as_json:
        echo_json([r.to_json() for r in rows])
        return
    table(
        [
            "id",
            "order number",
            "email",
            "status",
            "attempts",
            "next attempt (UTC)",
            "last error",
        ],
        [
            [
                str(r.id),
                r.order_number,
                r.email,
                r.status,
                str(r.attempts),
                r.next_attempt_at.isoformat(timespec="seconds")
                if r.status == outbox_rows.PENDING
                else "",
                r.last_error or "",
            ]
            for r in rows
        ],
    )


@outbox.command("retry")
@click.argument("outbox_id", required=False, type=int)
@click.option("--all-failed", is_flag=True, help="Retry every failed invitation.")
def outbox_retry(outbox_id: int | None, all_failed: bool) -> None:
    """Make a failed invitation due now, with a fresh retry window."""
    if (outbox_id is None) == (not all_failed):
        fail("give an outbox row ID or --all-failed, not both and not neither", 2)
    _, engine = store()
    if outbox_id is not None:
        row = outbox_rows.retry(engine, SystemClock(), outbox_id)
        click.echo(f"outbox row {row.id} ({row.order_number}) is due now")
        return
    count = outbox_rows.retry_all_failed(engine, SystemClock())
    click.echo(f"{count} failed invitation(s) due now")


def show_record(record: records.LicenseRecord, as_json: bool) -> None:
    if as_json:
        echo_json(record.to_json())
        return
    data = record.to_json()
    data["products"] = ", ".join(product_name(code) for code in record.products)
    width = max(len(key) for key in data)
    for key, value in data.items():
        shown = "" if value is None else value
        click.echo(f"{key.replace('_', ' '):<{width}}  {shown}")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if not rows:
        click.echo("(none)", err=True)
        return
    grid = Table(*headers, box=None, pad_edge=False)
    for row in rows:
        grid.add_row(*row)
    # On a terminal the table fits the window; into a pipe or a file, no
    # column is cut short.
    width = None if sys.stdout.isatty() else 10_000
    Console(width=width).print(grid)


@main.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the definition as JSON, not YAML."
)
@click.option(
    "--postman",
    "postman_file",
    is_flag=False,
    flag_value="-",
    default=None,
    type=click.Path(dir_okay=False, writable=True, allow_dash=True),
    metavar="[FILE]",
    help="Write a Postman collection (v2.1) instead, to FILE or to stdout.",
)
@click.option(
    "--base-url",
    default=postman.DEFAULT_BASE_URL,
    show_default=True,
    help="The server the Postman collection calls (its baseUrl variable).",
)
def openapi(as_json: bool, postman_file: str | None, base_url: str) -> None:
    """Print the partner API's OpenAPI definition, or a Postman collection."""
    if postman_file is None:
        click.echo(
            definition.definition_json() if as_json else definition.definition_yaml(),
            nl=False,
        )
        return
    if as_json:
        fail("give --json or --postman, not both: the collection is JSON", 2)
    text = postman.to_json(postman.collection(definition.definition(), base_url))
    if postman_file == "-":
        click.echo(text, nl=False)
        return
    Path(postman_file).write_text(text, encoding="utf-8")
    click.echo(f"wrote the Postman collection to {postman_file}")


def partner_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every partner command takes: the server, the partner name
    and its salt, and how hard to try."""
    options = [
        click.option(
            "--url",
            required=True,
            help="The famprov server, e.g. http://127.0.0.1:8080.",
        ),
        click.option(
            "--partner", "partner_name", required=True, help="Your partner name."
        ),
        click.option(
            "--salt", help="Your salt (visible to other users of this machine)."
        ),
        click.option(
            "--salt-file",
            type=click.File("r", encoding="utf-8"),
            help="Read your salt from a file; its trailing newline is dropped.",
        ),
        click.option(
            "--retries",
            default=4,
            show_default=True,
            type=click.IntRange(0, 20),
            help="Retries of a grant after a timeout, a failed connection or a "
            "5xx answer.",
        ),
        click.option(
            "--timeout",
            default=10.0,
            show_default=True,
            type=click.FloatRange(0.1),
            help="Seconds before a request times out.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@partner_options
@click.option("--transaction-id", required=True, help="Your reference for this grant.")
@click.option("--first-name", required=True)
@click.option("--last-name")
@click.option("--email", required=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the server's answer as JSON."
)
def provision(
    url: str,
    partner_name: str,
    salt: str | None,
    salt_file: Any,
    transaction_id: str,
    first_name: str,
    last_name: str | None,
    email: str,
    retries: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Grant one person a family plan, as a partner."""
    if (salt is None) == (salt_file is None):
        fail("give exactly one of --salt and --salt-file", 2)
    secret = salt if salt is not None else read_salt(salt_file)
    if not secret:
        fail("the salt is empty", 2)
    with client.Client(
        url, partner=partner_name, salt=secret, retries=retries, timeout=timeout
    ) as api:
        grant = api.grant(
            transaction_id=transaction_id,
            first_name=first_name,
            last_name=last_name,
            email=email,
        )
    if as_json:
        echo_json({"order_number": grant.order_number, "vault_url": grant.vault_url})
        return
    click.echo(f"order number: {grant.order_number}")
    click.echo(f"vault URL:    {grant.vault_url}")


SHOWN_PROBLEMS = 50


@main.command("provision-csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@partner_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The results file [default: FILE's name with .results.csv].",
)
@click.option(
    "--concurrency",
    default=32,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Requests in flight at once.",
)
@click.option("--strict", is_flag=True, help="Send nothing if any row is invalid.")
@click.option(
    "--encoding",
    default="utf-8",
    show_default=True,
    help="The file's encoding, e.g. cp1252 for Excel's legacy exports.",
)
@click.option(
    "--delimiter",
    type=click.Choice([",", ";", "tab"]),
    help="The cell delimiter [default: detected from the header].",
)
@click.option(
    "--progress-every",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds between progress lines when stderr is not a terminal.",
)
def provision_csv(
    file: Path,
    url: str,
    partner_name: str,
    salt: str | None,
    salt_file: Any,
    out: Path | None,
    concurrency: int,
    strict: bool,
    encoding: str,
    delimiter: str | None,
    retries: int,
    timeout: float,
    progress_every: float,
) -> None:
    """Grant a family plan to every person in a CSV file, as a partner.

    The whole file is checked before anything is sent. Each answer is written
    to the results file as it arrives; running the command again with the
    same results file sends only the rows not granted yet.
    """
    if (salt is None) == (salt_file is None):
        fail("give exactly one of --salt and --salt-file", 2)
    secret = salt if salt is not None else read_salt(salt_file)
    if not secret:
        fail("the salt is empty", 2)
    out = out or file.with_name(f"{file.stem}.results.csv")
    if out.resolve() == file.resolve():
        fail("--out must not be the file being imported", 2)

    try:
        checked = reading.read_file(
            file,
            partner_name,
            encoding=encoding,
            delimiter="\t" if delimiter == "tab" else delimiter,
        )
    except reading.ImportFileError as exc:
        fail(f"{file}: {exc.message}", 2)
    for problem in checked.problems[:SHOWN_PROBLEMS]:
        click.echo(
            f"famprov: {file} line {problem.line}: {problem.describe()} (skipped)",
            err=True,
        )
    if len(checked.problems) > SHOWN_PROBLEMS:
        more = len(checked.problems) - SHOWN_PROBLEMS
        click.echo(f"famprov: ... and {more} more invalid row(s)", err=True)
    if checked.problems and strict:
        fail(f"{len(checked.problems)} invalid row(s) and --strict: nothing sent", 2)
    try:
        plan = sending.Plan.make(checked, out)
    except reading.ImportFileError as exc:
        fail(exc.message, 2)

    def connect() -> client.AsyncClient:
        return client.AsyncClient(
            url,
            partner=partner_name,
            salt=secret,
            retries=retries,
            timeout=timeout,
            max_connections=1,
        )

    sending.run(
        sending.execute(
            plan,
            connect,
            concurrency,
            progress_out=sys.stderr,
            progress_every=progress_every,
        )
    )
    click.echo("\n".join(plan.summary.lines(out)))
    summary = plan.summary
    if summary.stopped == "interrupted":
        sys.exit(130)
    if not summary.complete:
        sys.exit(1)

"""``famprov``: one command for operators and partners.

Every command reads the same settings (`famprov.config.Settings`) as the
server. Errors are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
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
from famprov.licenses import records
from famprov.licenses.plans import product_name
from famprov.logs import log
from famprov.partners import service as partners
from famprov.partners.hashing import compute_hash
from famprov.store import migrate, open_engine

DEMO_PARTNER = "demo"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"famprov: error: {message}", err=True)
    sys.exit(code)


class FamprovGroup(click.Group):
    """Turns every expected failure into one line on stderr."""

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
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return f"setting FAMPROV_{field.upper()} {first['msg']}"


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
    settings = load_settings()
    engine = open_engine(settings.database)
    click.get_current_context().call_on_close(engine.dispose)
    if prepare:
        migrate.prepare(engine)
    return settings, engine


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

    settings, engine = store()
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
    if settings.is_embedded and partners.count_partners(engine) == 0:
        salt = partners.generate_salt()
        partners.add_partner(engine, SystemClock(), DEMO_PARTNER, salt)
        print_demo(DEMO_PARTNER, salt, f"http://{host}:{port}")
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
    settings, engine = store()
    if "FAMPROV_PUBLIC_URL" not in os.environ:
        require_public_url(settings)
    logs.configure(settings.log_format, settings.log_level)
    delivery = DeliveryWorker.from_settings(settings, engine, SystemClock())

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
    _, engine = store(prepare=False)
    before = migrate.current(engine)
    migrate.upgrade(engine)
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
    """Add, list and disable partners."""


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
@click.option("--rate", metavar="N/PERIOD", help=RATE_HELP)
def partner_add(name: str, salt: str | None, salt_file: Any, rate: str | None) -> None:
    """Add a partner; prints its salt once when famprov generates it."""
    if salt is not None and salt_file is not None:
        fail("give --salt or --salt-file, not both", 2)
    given = salt if salt is not None else read_salt(salt_file) if salt_file else None
    _, engine = store()
    chosen = given if given is not None else partners.generate_salt()
    partners.add_partner(engine, SystemClock(), name, chosen, rate_limit=rate)
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
    "--rate",
    metavar="N/PERIOD",
    help="The partner's request rate: N/PERIOD (600/min, 20/s, 5000/h), "
    "unlimited, or default to follow the server's FAMPROV_PARTNER_RATE.",
)
def partner_set(name: str, rate: str | None) -> None:
    """Change a partner's settings; each option changes one, the rest stay."""
    if rate is None:
        fail("give at least one setting to change: --rate", 2)
    settings, engine = store()
    wanted = None if rate.strip().lower() == "default" else rate
    stored = partners.set_rate_limit(engine, name, wanted)
    click.echo(f"partner {name}: rate {shown_rate(stored, settings)}")


def shown_rate(stored: str | None, settings: Settings) -> str:
    """A partner's rate as `partner list` shows it: its own, or the default."""
    if stored is None:
        return f"{settings.partner_rate} (default)"
    return stored


@partner.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def partner_list(as_json: bool) -> None:
    """List partners, their request rates and how many licenses each has
    granted."""
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
                    "rate_limit": p.rate_limit or settings.partner_rate,
                    "rate_limit_is_default": p.rate_limit is None,
                }
                for p in rows
            ]
        )
        return
    table(
        ["partner", "enabled", "licenses", "rate", "created (UTC)"],
        [
            [
                p.name,
                "yes" if p.enabled else "no",
                str(p.licenses),
                shown_rate(p.rate_limit, settings),
                p.created_at.isoformat(timespec="seconds"),
            ]
            for p in rows
        ],
    )


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

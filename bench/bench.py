"""``make bench``: famprov's grant rate against the ceiling of its HTTP stack.

One run measures, on this machine and with the same load generator:

- the reference: a trivial Starlette app on uvicorn with a constant body;
- famprov on the embedded SQLite store (WAL, synchronous=FULL);
- famprov on PostgreSQL (synchronous_commit on), one process.

wrk drives each at 64 keep-alive connections; every request is a distinct,
correctly hashed grant, precomputed because wrk's Lua has no SHA-256. After
each run the store is checked: every 200 answered is one license with one
outbox row. famprov runs with ``--no-delivery`` so that the figures are the
grant path's; invitations stay queued in the outbox, as for a deployment with
delivery hosts of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import importer  # bench/importer.py: famprov provision-csv's work, timed
from sqlalchemy import create_engine, func, select, text

from famprov.keys import generate_key
from famprov.partners.hashing import compute_hash
from famprov.store import sync_url
from famprov.store.schema import licenses, outbox

HERE = Path(__file__).resolve().parent
FAMPROV = str(Path(sys.executable).with_name("famprov"))
PATH = "/bi_api/v1/services/partner/create-license"
CONNECTIONS = 64
THREADS = 2
SALT = "bench-salt-0123456789abcdef"
MAX_RATE = 25_000  # paths written per second of load: more than any run uses
BENCH_RATE = "1000000/s"

TARGETS = {"sqlite": 0.40, "postgresql": 0.25}
P99_TARGET_MS = {"sqlite": 25.0}
RSS_TARGET_MB = 150.0
RSS_GROWTH_TARGET = 0.10
IMPORTER_TARGET = 0.80


@dataclass
class Run:
    label: str
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    requests: int = 0
    rss_mb: float = 0.0
    rss_short_mb: float = 0.0
    checks: list[str] = field(default_factory=list)
    importer_rate: float = 0.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_answering(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"bench: nothing answered at {url}")


def rss_mb(pid: int) -> float:
    """The resident memory of the process and its children (famprov's writer
    process among them)."""
    total = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total += int(line.split()[1]) / 1024
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += rss_mb(int(child))
    return total


def write_paths(target: Path, prefix: str, count: int) -> None:
    with open(target, "w") as out:
        for i in range(count):
            email = f"{prefix}{i}@example.com"
            out.write(
                f"{PATH}?transaction_id={prefix}{i}&first_name=Bench&last_name=User"
                f"&email={email}&hash={compute_hash(email, SALT)}"
                "&partner_name=bench\n"
            )


def wrk(url: str, paths: Path, seconds: float, orders: Path) -> dict[str, int]:
    result = subprocess.run(
        [
            "wrk",
            f"-t{THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{round(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "grants.lua"),
            url,
            "--",
            str(paths),
            str(THREADS),
        ],  # fmt: skip
        env={**os.environ, "BENCH_ORDERS_FILE": str(orders)},
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("BENCH "):
            figures: dict[str, int] = json.loads(line[6:])
            if figures["wrapped"]:
                raise SystemExit("bench: wrk ran out of distinct grants")
            return figures
    raise SystemExit(f"bench: wrk printed no figures:\n{result.stdout}{result.stderr}")


def load(run: Run, url: str, paths: Path, seconds: float, orders: Path) -> None:
    figures = wrk(url, paths, seconds, orders)
    run.requests = figures["requests"]
    run.rate = figures["requests"] / (figures["duration_us"] / 1e6)
    run.p50_ms = figures["p50_us"] / 1000
    run.p99_ms = figures["p99_us"] / 1000
    run.non_2xx = figures["non_2xx"]
    run.socket_errors = figures["socket_errors"]


def reference(work: Path, paths: Path, warmup: float, seconds: float) -> Run:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "reference.py"), str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answering(url + PATH)
        run = Run("reference")
        wrk(url, paths, warmup, work / "ref-warm.orders")
        load(run, url, paths, seconds, work / "ref.orders")
        run.rss_mb = rss_mb(proc.pid)
        return run
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def famprov_run(
    label: str,
    env: dict[str, str],
    work: Path,
    warmup: float,
    seconds: float,
    long_seconds: float,
    importer_rows: int = 0,
) -> Run:
    env = {
        **os.environ,
        **env,
        "FAMPROV_LOG_LEVEL": "warning",
        "FAMPROV_PUBLIC_URL": "http://famprov.bench",
    }
    if label == "postgresql":
        # The embedded store makes a key file of its own; PostgreSQL's key
        # is the operator's to give.
        env["FAMPROV_SECRET_KEY"] = generate_key()
    subprocess.run([FAMPROV, "db", "upgrade"], env=env, check=True, capture_output=True)
    # A rate far above any run's, so that the limit is checked on every
    # grant and refuses none.
    subprocess.run(
        [FAMPROV, "partner", "add", "bench", "--salt", SALT, "--rate", BENCH_RATE],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    total = warmup + seconds + long_seconds
    paths = work / f"{label}.paths"
    write_paths(paths, f"{label}-", int(total * MAX_RATE))
    port = free_port()
    proc = subprocess.Popen(
        [FAMPROV, "serve", "--port", str(port), "--no-delivery"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    run = Run(label)
    orders: list[Path] = []
    try:
        wait_answering(url + "/healthz")
        # One paths file feeds the three phases: each wrk run starts at the
        # top, so each phase gets its own slice of it.
        phases = [("warm", warmup), ("short", seconds), ("long", long_seconds)]
        offset = 0
        for phase, duration in phases:
            part = work / f"{label}-{phase}.paths"
            count = int(duration * MAX_RATE)
            _slice(paths, part, offset, count)
            offset += count
            orders.append(work / f"{label}-{phase}.orders")
            if phase == "short":
                load(run, url, part, duration, orders[-1])
                run.rss_short_mb = rss_mb(proc.pid)
            else:
                wrk(url, part, duration, orders[-1])
            if phase == "warm" and label == "postgresql":
                analyze(env["FAMPROV_DATABASE_URL"])
        run.rss_mb = rss_mb(proc.pid)
        if label == "sqlite" and importer_rows:
            # The partner's importer against the same server: its rows/s as
            # a share of the grants/s wrk drew from it.
            orders.append(work / f"{label}-importer.orders")
            run.importer_rate = importer.measure(
                url, "bench", SALT, rows=importer_rows, orders=orders[-1]
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    run.checks = check_store(env["FAMPROV_DATABASE_URL"], orders)
    return run


def analyze(url: str) -> None:
    """Refresh the planner's statistics, as autovacuum would on a server that
    runs it (the local one here has it off); without them PostgreSQL plans
    the lookups of a batch as if the tables were empty."""
    from sqlalchemy.engine import make_url

    engine = create_engine(sync_url(make_url(url)), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE licenses"))
            conn.execute(text("ANALYZE outbox"))
    finally:
        engine.dispose()


def _slice(source: Path, target: Path, offset: int, count: int) -> None:
    with open(source) as src, open(target, "w") as out:
        for i, line in enumerate(src):
            if i >= offset + count:
                break
            if i >= offset:
                out.write(line)


def check_store(url: str, order_files: list[Path]) -> list[str]:
    """Every 200 answered is one license with one outbox row."""
    from sqlalchemy.engine import make_url

    answered: list[str] = []
    for path in order_files:
        answered += path.read_text().split()
    engine = create_engine(sync_url(make_url(url)))
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(select(licenses.c.order_number)).scalars())
            outbox_rows = conn.execute(
                select(func.count()).select_from(outbox)
            ).scalar()
            with_one = conn.execute(
                select(func.count()).select_from(
                    select(outbox.c.license_id)
                    .group_by(outbox.c.license_id)
                    .having(func.count() == 1)
                    .subquery()
                )
            ).scalar_one()
            per_license = len(stored) - with_one
    finally:
        engine.dispose()
    missing = [o for o in answered if o not in stored]
    problems = []
    if len(set(answered)) != len(answered):
        problems.append("an order number was answered twice")
    if missing:
        problems.append(f"{len(missing)} answered grants are not in the store")
    if per_license:
        problems.append(f"{per_license} licenses lack exactly one outbox row")
    # Requests still in flight when wrk stops may commit unanswered.
    unanswered = len(stored) - len(answered)
    if not 0 <= unanswered <= CONNECTIONS * 3:
        problems.append(f"{unanswered} licenses beyond the answered ones")
    summary = (
        f"answered 200: {len(answered)}, licenses: {len(stored)}, "
        f"outbox rows: {outbox_rows}, committed but cut off by wrk: {unanswered}"
    )
    return [summary, *problems]


def postgres_database(admin_url: str) -> str:
    """Make a fresh bench database; return its URL."""
    admin = create_engine(sync_url(_url(admin_url)), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS famprov_bench"))
            conn.execute(text("CREATE DATABASE famprov_bench"))
            sync = conn.execute(text("SHOW synchronous_commit")).scalar()
    finally:
        admin.dispose()
    if sync != "on":
        raise SystemExit(f"bench: synchronous_commit is {sync}, not on")
    return (
        _url(admin_url)
        .set(database="famprov_bench")
        .render_as_string(hide_password=False)
    )


def _url(raw: str):  # type: ignore[no-untyped-def]
    from sqlalchemy.engine import make_url

    return make_url(raw)


def report(ref: Run, runs: list[Run]) -> bool:
    print(f"\nmachine: {os.cpu_count()} cores; wrk -t{THREADS} -c{CONNECTIONS}")
    header = f"{'':<11}{'req/s':>9}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}"
    header += f"{'non-2xx':>9}{'errors':>8}{'RSS MB':>8}"
    print(header)
    ok = True
    for run in [ref, *runs]:
        ratio = run.rate / ref.rate
        print(
            f"{run.label:<11}{run.rate:>9.0f}{ratio:>8.2f}{run.p50_ms:>9.2f}"
            f"{run.p99_ms:>9.2f}{run.non_2xx:>9}{run.socket_errors:>8}"
            f"{run.rss_mb:>8.1f}"
        )
    print()
    for run in runs:
        ratio = run.rate / ref.rate
        growth = run.rss_mb / run.rss_short_mb - 1 if run.rss_short_mb else 0.0
        verdicts = [
            (f"ratio {ratio:.2f} >= {TARGETS[run.label]:.2f}", ratio >= TARGETS[run.label]),
            (f"RSS {run.rss_mb:.0f} MB <= {RSS_TARGET_MB:.0f} MB", run.rss_mb <= RSS_TARGET_MB),
            (
                f"RSS growth short->long run {growth:+.1%} <= {RSS_GROWTH_TARGET:.0%}",
                growth <= RSS_GROWTH_TARGET,
            ),
            (f"non-2xx {run.non_2xx} == 0", run.non_2xx == 0),
        ]  # fmt: skip
        if run.label in P99_TARGET_MS:
            limit = P99_TARGET_MS[run.label]
            verdicts.append(
                (f"p99 {run.p99_ms:.1f} ms <= {limit:.0f} ms", run.p99_ms <= limit)
            )
        if run.importer_rate:
            share = run.importer_rate / run.rate
            verdicts.append(
                (
                    f"importer {run.importer_rate:.0f} rows/s = {share:.2f} of "
                    f"famprov's grants/s >= {IMPORTER_TARGET:.2f}",
                    share >= IMPORTER_TARGET,
                )
            )
        store_ok = len(run.checks) == 1
        verdicts.append((f"store: {run.checks[0]}", store_ok))
        verdicts += [(problem, False) for problem in run.checks[1:]]
        print(f"{run.label}:")
        for text_, passed in verdicts:
            print(f"  [{'met' if passed else 'MISSED'}] {text_}")
            ok = ok and passed
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="measured run")
    parser.add_argument("--long-seconds", type=float, default=20,
                        help="second run, for memory growth (total load = both)")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "FAMPROV_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))  # fmt: skip
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--importer-rows", type=int, default=importer.ROWS,
                        help="rows of the importer run (0: none)")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is not installed (make bench installs it)")

    with tempfile.TemporaryDirectory(prefix="famprov-bench-") as tmp:
        work = Path(tmp)
        ref_paths = work / "reference.paths"
        write_paths(ref_paths, "ref-", int((args.warmup + args.seconds) * 40_000))
        ref = reference(work, ref_paths, args.warmup, args.seconds)
        runs = []
        if args.only in (None, "sqlite"):
            env = {
                "FAMPROV_DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
                "FAMPROV_MAIL_URL": f"file://{work}/mail",
            }
            runs.append(
                famprov_run(
                    "sqlite",
                    env,
                    work,
                    args.warmup,
                    args.seconds,
                    args.long_seconds,
                    importer_rows=args.importer_rows,
                )
            )
        if args.only in (None, "postgresql"):
            env = {
                "FAMPROV_DATABASE_URL": postgres_database(args.postgres_url),
                "FAMPROV_MAIL_URL": f"file://{work}/mail",
            }
            runs.append(
                famprov_run(
                    "postgresql",
                    env,
                    work,
                    args.warmup,
                    args.seconds,
                    args.long_seconds,
                )
            )
    ok = report(ref, runs)
    print("\nall targets met" if ok else "\nsome targets MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

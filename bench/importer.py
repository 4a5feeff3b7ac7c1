"""The importer's rate: ``famprov provision-csv``'s work on 20,000 rows.

`measure` writes an HR export of fresh people, then reads, checks and sends
it against a running famprov exactly as the command does (the file checked
whole, one `AsyncClient`, the results file written as answers arrive), and
returns rows per second over the whole import. Run alone against a server::

    .venv/bin/python bench/importer.py http://127.0.0.1:8080 acme --salt-file F
"""

from __future__ import annotations

import argparse
import csv
import io
import secrets
import sys
import tempfile
import time
from pathlib import Path

from famprov import client
from famprov.bulk import reading, results, sending

ROWS = 20_000
CONCURRENCY = 32


def write_export(target: Path, rows: int) -> None:
    """An export as HR systems write them: BOM, semicolons, a notes column."""
    run = secrets.token_hex(4)
    buffer = io.StringIO()
    out = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    out.writerow(["Employee ID", "First Name", "Surname", "E-mail", "Notes"])
    for i in range(rows):
        out.writerow(
            [f"b{run}-{i}", "Jürgen", "Lee", f"bench.{run}.{i}@example.com", "a; b"]
        )
    target.write_text(buffer.getvalue(), encoding="utf-8-sig")


def measure(
    base_url: str,
    partner: str,
    salt: str,
    *,
    rows: int = ROWS,
    concurrency: int = CONCURRENCY,
    orders: Path | None = None,
) -> float:
    """Import ``rows`` fresh people into the famprov at ``base_url``; return
    rows granted per second, from reading the file to the last answer.

    ``orders``, when given, receives the order numbers granted, one a line,
    as wrk's runs write theirs, so that a store check can count them.
    """
    with tempfile.TemporaryDirectory(prefix="famprov-bench-import-") as folder:
        export = Path(folder) / "export.csv"
        write_export(export, rows)
        started = time.perf_counter()
        plan = sending.Plan.make(
            reading.read_file(export, partner), Path(folder) / "results.csv"
        )
        sending.run(_send(plan, base_url, partner, salt, concurrency))
        elapsed = time.perf_counter() - started
        if orders is not None:
            granted = results.read_results(Path(folder) / "results.csv").values()
            orders.write_text("".join(f"{r.order_number}\n" for r in granted))
    summary = plan.summary
    if summary.granted != rows:
        raise RuntimeError(
            f"importer granted {summary.granted} of {rows} rows "
            f"(refused {dict(summary.refused)}, failed {dict(summary.failed)})"
        )
    return rows / elapsed


async def _send(
    plan: sending.Plan, base_url: str, partner: str, salt: str, concurrency: int
) -> None:
    def connect() -> client.AsyncClient:
        return client.AsyncClient(
            base_url, partner=partner, salt=salt, max_connections=1
        )

    await sending.execute(
        plan, connect, concurrency, progress_out=sys.stderr, progress_every=5.0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("partner")
    parser.add_argument("--salt-file", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args()
    salt = args.salt_file.read_text(encoding="utf-8").removesuffix("\n")
    rate = measure(
        args.url, args.partner, salt, rows=args.rows, concurrency=args.concurrency
    )
    print(f"importer: {args.rows:,} rows, {rate:,.0f} rows/s")


if __name__ == "__main__":
    main()

"""The logs of a full run: one line per request, and nothing secret in them."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from famprov.config import Settings
from famprov.partners.hashing import compute_hash
from support import (
    V1_PATH,
    Partner,
    ServerProcess,
    current_key,
    mail_files,
    vendor_url,
    wait_for,
)


def test_full_run_logs_no_secret_and_no_unredacted_email(
    env: dict[str, str], partner: Partner, settings: Settings, tmp_path: Path
) -> None:
    log_path = tmp_path / "server.log"
    server = ServerProcess(env, log=log_path)
    base = server.url
    try:
        server.wait_ready()
        emails = ["ann.lee@example.com", "bob+x@example.org"]
        sent = [
            httpx.get(base + V1_PATH, params=partner.params(email=emails[0])),
            httpx.get(base + V1_PATH, params=partner.params(email=emails[0])),
            httpx.get(
                vendor_url(base, partner.params(transaction_id="2", email=emails[1]))
            ),
            httpx.get(
                base + V1_PATH, params=partner.params(transaction_id="3", hash="0" * 64)
            ),
            httpx.get(
                base + V1_PATH, params=partner.params(transaction_id="4", email="bad@")
            ),
            httpx.get(base + "/missing?email=ann.lee@example.com"),
        ]
        assert [r.status_code for r in sent] == [200, 200, 200, 401, 400, 404]
        wait_for(lambda: len(mail_files(settings)) == 2)
    finally:
        server.stop()

    text = log_path.read_text()
    tokens = [r.json()["vault_url"].rsplit("/", 1)[1] for r in sent[:3]]
    secrets = [
        partner.salt,
        current_key(settings),
        *tokens,
        *(compute_hash(e, partner.salt) for e in emails),
    ]
    for secret in secrets:
        assert secret not in text
    for email in emails:
        assert email not in text
        assert email.split("@")[0] not in text
    assert "a***@example.com" in text

    lines = [json.loads(line) for line in text.splitlines()]
    requests = [line for line in lines if line["event"] == "request"]
    assert len(requests) == 7  # the six above and the readiness probe
    for line in requests:
        assert {"request_id", "status", "latency_ms", "method", "path"} <= set(line)
        assert "?" not in line["path"]
    outcomes = [(r["status"], r["outcome"], r.get("partner")) for r in requests[1:]]
    assert outcomes == [
        (200, "granted", "acme"),
        (200, "replayed", "acme"),
        (200, "granted", "acme"),
        (401, "partner_auth", None),
        (400, "invalid_field", "acme"),
        (404, None, None),
    ]
    assert len({r["request_id"] for r in requests}) == len(requests)

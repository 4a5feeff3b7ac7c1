"""The vendor's own sample client style: node.js, string concatenation, no
URL encoding, and a JSON content type on a GET."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from sqlalchemy import Engine

from famprov.store.schema import licenses
from support import V1_PATH, Partner, rows

SCRIPT = r"""
const http = require("http");
const crypto = require("crypto");
const [base, partner, salt, email] = process.argv.slice(1);
// CryptoJS.SHA256(email + salt) hashes the UTF-8 bytes, as node's crypto does.
const hash = crypto.createHash("sha256").update(email + salt, "utf8").digest("hex");
const url = base + "PATH?transaction_id=0001&first_name=Ann&last_name=Lee" +
  "&email=" + email + "&hash=" + hash + "&partner_name=" + partner;
http.get(url, { headers: { "Content-Type": "application/json" } }, (res) => {
  let body = "";
  res.on("data", (chunk) => (body += chunk));
  res.on("end", () => console.log(JSON.stringify({ status: res.statusCode, body })));
});
""".replace("PATH", V1_PATH)


@pytest.mark.skipif(shutil.which("node") is None, reason="node.js is not installed")
@pytest.mark.parametrize("email", ["ann@example.com", "ann+family@example.com"])
def test_vendor_style_node_script_is_granted(
    server, partner: Partner, engine: Engine, email: str
) -> None:
    out = subprocess.run(
        ["node", "-e", SCRIPT, server.url, partner.name, partner.salt, email],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    answer = json.loads(out.stdout)
    body = json.loads(answer["body"])

    assert answer["status"] == 200, body
    assert body["success"] is True
    [row] = rows(engine, licenses)
    assert row.email == email

"""``famprov openapi --postman``: a Postman collection from the definition,
run by newman (Postman's own runner) against a live server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from famprov.api import openapi, postman
from famprov.cli import main
from support import LiveServer, Partner

NEWMAN = os.environ.get(
    "FAMPROV_TEST_NEWMAN",
    str(Path(__file__).parents[1] / ".venv/node/node_modules/.bin/newman"),
)


def write_collection(tmp_path: Path, *args: str) -> dict[str, Any]:
    target = tmp_path / "famprov.postman_collection.json"
    result = CliRunner().invoke(main, ["openapi", "--postman", str(target), *args])
    assert result.exit_code == 0, result.output
    assert str(target) in result.output
    data: dict[str, Any] = json.loads(target.read_text(encoding="utf-8"))
    return data


def test_the_collection_holds_every_operation_parameter_and_example(
    tmp_path: Path,
) -> None:
    data = write_collection(tmp_path, "--base-url", "https://famprov.example")
    definition = openapi.definition()
    assert data["info"]["schema"].endswith("/collection/v2.1.0/collection.json")
    assert data["info"]["name"] == definition["info"]["title"]
    variables = {v["key"]: v["value"] for v in data["variable"]}
    assert variables["baseUrl"] == "https://famprov.example"

    requests = [item for folder in data["item"] for item in folder["item"]]
    paths = ["/" + "/".join(r["request"]["url"]["path"]) for r in requests]
    assert paths == list(definition["paths"])
    for item in requests:
        query = {q["key"]: q["value"] for q in item["request"]["url"]["query"]}
        assert query == {
            "transaction_id": "0001",
            "first_name": "Ann",
            "last_name": "Lee",
            "email": "ann@example.com",
            "hash": "{{hash}}",
            "partner_name": "{{partnerName}}",
        }
        assert item["request"]["method"] == "GET"
        codes = sorted({r["code"] for r in item["response"]})
        assert codes == [200, 400, 401, 403, 408, 409, 414, 429, 431, 500]
        bodies = [json.loads(r["body"]) for r in item["response"]]
        assert {"success": False, "message": "Invalid Hash Value - UnAuthorized"} in (
            bodies
        )
    script = "\n".join(data["event"][0]["script"]["exec"])
    assert "CryptoJS.SHA256(sent + salt)" in script


def test_the_collection_goes_to_stdout_without_a_file() -> None:
    result = CliRunner().invoke(main, ["openapi", "--postman"])
    assert result.exit_code == 0
    assert json.loads(result.output) == postman.collection(openapi.definition())


def test_json_and_postman_together_are_refused() -> None:
    result = CliRunner().invoke(main, ["openapi", "--json", "--postman"])
    assert result.exit_code == 2
    assert "not both" in result.output


def newman(collection: Path, report: Path, **variables: str) -> list[dict[str, Any]]:
    """Run the collection; return each request's status and JSON body."""
    if not Path(NEWMAN).exists():
        reason = f"newman not found at {NEWMAN} (make test installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    argv = [NEWMAN, "run", str(collection), "--reporters", "json"]
    argv += ["--reporter-json-export", str(report)]
    for key, value in variables.items():
        argv += ["--env-var", f"{key}={value}"]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    executions = json.loads(report.read_text())["run"]["executions"]
    return [
        {
            "status": e["response"]["code"],
            "body": json.loads(bytes(e["response"]["stream"]["data"])),
        }
        for e in executions
    ]


@pytest.mark.slow
def test_newman_runs_the_collection_signed_by_its_script(
    server: LiveServer, partner: Partner, tmp_path: Path
) -> None:
    write_collection(tmp_path, "--base-url", server.url)
    collection = tmp_path / "famprov.postman_collection.json"

    signed = newman(
        collection,
        tmp_path / "signed.json",
        salt=partner.salt,
        partnerName=partner.name,
    )
    assert [run["status"] for run in signed] == [200, 200]
    # The second path replays the first grant: the same transaction id.
    assert signed[0]["body"] == signed[1]["body"]
    assert signed[0]["body"]["success"] is True

    wrong = newman(
        collection,
        tmp_path / "wrong.json",
        salt=partner.salt + "x",
        partnerName=partner.name,
    )
    assert [run["status"] for run in wrong] == [401, 401]
    assert wrong[0]["body"]["message"] == "Invalid Hash Value - UnAuthorized"

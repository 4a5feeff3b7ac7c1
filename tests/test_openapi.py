"""The OpenAPI definition: valid, served as one document, true to the answers.

schemathesis (`test_contract.py`) checks what it can generate; these check
the answers it cannot reach (a repeated parameter, an oversized URI or head,
a request the HTTP parser refuses, a conflict) against the same definition,
and the examples against the schemas beside them.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from sqlalchemy import Engine

from famprov.api import openapi, protocol
from famprov.cli import main
from famprov.errors import MissingFieldsError, PartnerAuthError
from famprov.partners.service import set_quota
from support import V1_PATH, LiveServer, Partner

DEFINITION = openapi.definition()
OPERATIONS = [V1_PATH, "/create-license"]

# The vendor's three bodies, as its API documents them: to the letter.
VENDOR_200_KEYS = {"success", "order_number", "vault_url"}
VENDOR_400 = "Invalid request - Missing required fields"
VENDOR_401 = "Invalid Hash Value - UnAuthorized"


def response_spec(path: str, status: int) -> dict[str, Any]:
    node = DEFINITION["paths"][path]["get"]["responses"][str(status)]
    while "$ref" in node:
        node = DEFINITION["components"]["responses"][node["$ref"].split("/")[-1]]
    return dict(node)


def check_against_definition(
    path: str, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    """Fail unless ``body`` (and the documented headers) fit the definition."""
    spec = response_spec(path, status)
    schema = spec["content"]["application/json"]["schema"]
    # The definition as the root, so that its local references resolve.
    validator = Draft202012Validator({**schema, "components": DEFINITION["components"]})
    errors = [e.message for e in validator.iter_errors(body)]
    assert errors == [], (status, body)
    if headers is not None:
        for name in spec.get("headers", {}):
            assert name.lower() in headers, (status, name)


def raw_request(server: LiveServer, data: bytes) -> tuple[int, bytes, Any]:
    """Send bytes no HTTP client would; return status, head and JSON body."""
    parts = urlsplit(server.url)
    raw = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.lower(), json.loads(body)


def test_the_definition_is_valid_openapi_3_1() -> None:
    assert DEFINITION["openapi"].startswith("3.1.")
    validate(DEFINITION)


def test_both_paths_are_the_same_documented_operation() -> None:
    first, second = (DEFINITION["paths"][path]["get"] for path in OPERATIONS)
    assert set(DEFINITION["paths"]) == set(OPERATIONS)
    assert first["parameters"] == second["parameters"]
    assert first["responses"] == second["responses"]
    names = {
        DEFINITION["components"]["parameters"][p["$ref"].split("/")[-1]]["name"]
        for p in first["parameters"]
    }
    assert names == {
        "transaction_id",
        "first_name",
        "last_name",
        "email",
        "hash",
        "partner_name",
    }


def test_the_vendor_messages_are_examples_to_the_letter() -> None:
    assert MissingFieldsError.message == VENDOR_400
    assert PartnerAuthError.message == VENDOR_401
    granted = response_spec(V1_PATH, 200)["content"]["application/json"]["example"]
    assert set(granted) == VENDOR_200_KEYS
    assert granted["success"] is True
    invalid = response_spec(V1_PATH, 400)["content"]["application/json"]["examples"]
    assert invalid["missing"]["value"] == {"success": False, "message": VENDOR_400}
    refused = response_spec(V1_PATH, 401)["content"]["application/json"]["example"]
    assert refused == {"success": False, "message": VENDOR_401}


def test_every_example_fits_its_own_schema() -> None:
    checked = 0
    for status in DEFINITION["paths"][V1_PATH]["get"]["responses"]:
        media = response_spec(V1_PATH, int(status))["content"]["application/json"]
        examples = [media["example"]] if "example" in media else []
        examples += [e["value"] for e in media.get("examples", {}).values()]
        assert examples, status
        for example in examples:
            check_against_definition(V1_PATH, int(status), example)
            checked += 1
    assert checked >= 16


def test_every_parameter_example_fits_its_schema() -> None:
    for parameter in DEFINITION["components"]["parameters"].values():
        schema = {**parameter["schema"], "components": DEFINITION["components"]}
        errors = list(Draft202012Validator(schema).iter_errors(parameter["example"]))
        assert errors == [], parameter["name"]


def test_yaml_json_and_the_command_are_one_document(server: LiveServer) -> None:
    as_yaml = httpx.get(server.url + "/openapi.yaml")
    as_json = httpx.get(server.url + "/openapi.json")
    assert as_yaml.status_code == as_json.status_code == 200
    assert as_yaml.headers["content-type"].startswith("application/yaml")
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_yaml.text == openapi.definition_yaml()
    assert yaml.safe_load(as_yaml.text) == as_json.json() == DEFINITION

    printed = CliRunner().invoke(main, ["openapi"])
    assert printed.exit_code == 0
    assert printed.output == as_yaml.text
    printed_json = CliRunner().invoke(main, ["openapi", "--json"])
    assert printed_json.exit_code == 0
    assert json.loads(printed_json.output) == as_json.json()


@pytest.mark.parametrize("path", OPERATIONS)
def test_answers_beyond_the_generator_match_the_definition(
    server: LiveServer,
    partner: Partner,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
    engine: Engine,
) -> None:
    url = server.url + path
    valid = partner.params(transaction_id="beyond-1")
    answers: list[tuple[int, Any, dict[str, str]]] = []

    def get(params: Any) -> None:
        if isinstance(params, str):  # a query no client library would encode
            response = httpx.get(f"{url}?{params}")
        else:
            response = httpx.get(url, params=params)
        answers.append((response.status_code, response.json(), dict(response.headers)))

    get(valid)
    get(valid)  # the replay: the original body again
    get({**valid, "first_name": "Bea"})  # same transaction id, other details
    get({**valid, "transaction_id": "beyond-2"})  # the person holds a license
    get([*valid.items(), ("email", valid["email"])])  # a parameter twice
    get([*valid.items(), *((f"x{n}", "1") for n in range(40))])  # too many
    get({**valid, "first_name": "A" * 101})
    get(str(httpx.QueryParams(valid).remove("first_name")) + "&first_name=%FF")
    get({**valid, "hash": "0" * 64})
    get({**valid, "transaction_id": "t" * 9000})  # a URI over 8 KiB
    set_quota(engine, partner.name, 1)
    get(partner.params(transaction_id="beyond-3", email="bea@example.com"))
    assert [status for status, _, _ in answers] == [
        200, 200, 409, 409, 400, 400, 400, 400, 401, 414, 403,
    ]  # fmt: skip
    assert answers[0][1] == answers[1][1]
    for status, body, headers in answers:
        check_against_definition(path, status, body, headers)

    status, head, body = raw_request(
        server, b"GET " + path.encode() + b"?x=a b HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert status == 400
    check_against_definition(path, status, body)
    # Answered before the app: JSON still, without a request id, as documented.
    assert b"content-type: application/json" in head
    assert b"x-request-id" not in head
    big_head = (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000
    )
    status, head, body = raw_request(server, big_head)
    assert status == 431
    check_against_definition(path, status, body)
    assert b"content-type: application/json" in head
    assert b"x-request-id" not in head
    monkeypatch.setattr(protocol, "HEAD_SECONDS", 0.3)
    slow_head = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
    status, head, body = raw_request(server, slow_head)
    assert status == 408
    check_against_definition(path, status, body)
    assert b"x-request-id" not in head

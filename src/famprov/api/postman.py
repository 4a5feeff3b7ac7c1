"""A Postman collection (format v2.1) generated from the OpenAPI definition.

One request per operation, its query filled with the definition's examples,
and one saved response per documented example. The partner's side of the
hash is a collection script: Postman computes ``hash`` from the request's
email and the ``salt`` variable before each request, with the CryptoJS that
Postman's sandbox provides, as the vendor's node.js sample does.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"

# Query parameters whose value comes from a collection variable rather than
# the definition's example: the partner's own name, and the hash the script
# computes.
VARIABLE_PARAMETERS = {"partner_name": "{{partnerName}}", "hash": "{{hash}}"}

SIGN_SCRIPT = [
    "// Sign the request as the partner: hash = hex SHA-256 of email + salt.",
    "// Set the variables partnerName and salt (collection or environment).",
    'const salt = pm.variables.get("salt");',
    'const email = pm.request.url.query.get("email");',
    "if (salt && email !== undefined) {",
    "  const sent = pm.variables.replaceIn(email);",
    '  pm.variables.set("hash", CryptoJS.SHA256(sent + salt).toString());',
    "}",
]


def collection(
    definition: dict[str, Any], base_url: str = DEFAULT_BASE_URL
) -> dict[str, Any]:
    """Build the collection; ``base_url`` is the default of ``{{baseUrl}}``."""
    info = definition["info"]
    folders: dict[str, list[dict[str, Any]]] = {}
    for path, operations in definition["paths"].items():
        for method, operation in operations.items():
            tag = (operation.get("tags") or ["default"])[0]
            folders.setdefault(tag, []).append(
                _item(definition, path, method, operation)
            )
    tag_notes = {
        tag["name"]: tag.get("description", "") for tag in definition.get("tags", [])
    }
    return {
        "info": {
            "name": info["title"],
            "description": info.get("description", ""),
            "version": info["version"],
            "schema": SCHEMA,
        },
        "item": [
            {"name": tag, "description": tag_notes.get(tag, ""), "item": items}
            for tag, items in folders.items()
        ],
        "event": [
            {
                "listen": "prerequest",
                "script": {"type": "text/javascript", "exec": SIGN_SCRIPT},
            }
        ],
        "variable": [
            {"key": "baseUrl", "value": base_url, "type": "string"},
            {"key": "partnerName", "value": "", "type": "string"},
            {"key": "salt", "value": "", "type": "string"},
        ],
    }


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _resolve(definition: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/components/...``) to what it names."""
    while "$ref" in node:
        target: Any = definition
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _item(
    definition: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> dict[str, Any]:
    parameters = [_resolve(definition, p) for p in operation.get("parameters", [])]
    query = [
        {
            "key": p["name"],
            "value": VARIABLE_PARAMETERS.get(p["name"], _example(p)),
            "description": p.get("description", "").strip(),
            "disabled": False,
        }
        for p in parameters
        if p["in"] == "query"
    ]
    request = {
        "method": method.upper(),
        "header": [],
        "url": _url(path, query),
        "description": operation.get("description", "").strip(),
    }
    responses = []
    for code, response in operation.get("responses", {}).items():
        for name, body in _examples(_resolve(definition, response)):
            responses.append(
                {
                    "name": name,
                    "originalRequest": request,
                    "status": HTTPStatus(int(code)).phrase,
                    "code": int(code),
                    "_postman_previewlanguage": "json",
                    "header": [{"key": "Content-Type", "value": "application/json"}],
                    "body": json.dumps(body, indent=2, ensure_ascii=False),
                }
            )
    return {
        "name": operation.get("summary") or f"{method.upper()} {path}",
        "request": request,
        "response": responses,
    }


def _url(path: str, query: list[dict[str, Any]]) -> dict[str, Any]:
    raw_query = "&".join(f"{q['key']}={q['value']}" for q in query)
    segments = [part for part in path.split("/") if part]
    return {
        "raw": "{{baseUrl}}" + path + (f"?{raw_query}" if raw_query else ""),
        "host": ["{{baseUrl}}"],
        "path": segments,
        "query": query,
    }


def _example(parameter: dict[str, Any]) -> str:
    if "example" in parameter:
        return str(parameter["example"])
    return str(parameter.get("schema", {}).get("example", ""))


def _examples(response: dict[str, Any]) -> list[tuple[str, Any]]:
    """Each example body of a response, named for Postman's list."""
    description = response.get("description", "").strip().split("\n")[0]
    found: list[tuple[str, Any]] = []
    for media in response.get("content", {}).values():
        if "example" in media:
            found.append((description, media["example"]))
        for key, example in media.get("examples", {}).items():
            found.append((example.get("summary", key), example["value"]))
    return found

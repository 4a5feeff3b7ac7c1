"""The definition and the code cannot drift: schemathesis against the live app.

schemathesis reads ``/openapi.json`` from a real server, generates requests
from it (valid ones, and ones that break the definition on purpose) and runs
every one of its default checks on each answer: no 5xx, statuses, headers,
content types and bodies as documented, valid data accepted and invalid data
refused, methods not documented refused.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis import Case
from schemathesis.hooks import HookContext

from famprov.api import openapi
from famprov.config import Settings
from support import LiveServer, Partner

# Enough for every operation to reach its 200, conflict and refusal paths,
# and few enough that the suite stays within minutes.
EXAMPLES = 100
_SCHEMAS = openapi.definition()["components"]["schemas"]


def _as_documented(schema: str, value: Any) -> bool:
    """Whether ``value`` is what the definition asks of a string parameter."""
    rules = _SCHEMAS[schema]
    return (
        isinstance(value, str)
        and rules["minLength"] <= len(value) <= rules["maxLength"]
        and re.search(rules["pattern"], value) is not None
    )


def sign(case: Case, partner: Partner) -> None:
    """Stand in for the partner: a registered name and the hash of the email.

    Only where the generated name and hash are themselves what the definition
    asks for; a case that breaks the definition in either keeps what it has,
    so the refusal it is meant to provoke still comes.
    """
    query = case.query
    if not isinstance(query, dict):
        return
    email = query.get("email")
    if (
        isinstance(email, str)
        and _as_documented("Hash", query.get("hash"))
        and _as_documented("PartnerName", query.get("partner_name"))
    ):
        query["partner_name"] = partner.name
        query["hash"] = partner.hash(email)


@pytest.fixture
def statuses() -> Iterator[Counter[int]]:
    seen: Counter[int] = Counter()
    yield seen
    # Without the signing, every valid case would stop at the 401.
    assert seen[200] > 0, seen
    assert seen[401] > 0, seen


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The store's settings, with invitations left in the outbox.

    The delivery worker runs in the server's thread, and each message id it
    makes draws from the global `random` (`email.utils.make_msgid`); Hypothesis
    takes any change to that state during generation for a flaky strategy.
    """
    return settings.model_copy(update={"delivery": False})


# Loaded from the package, not from the live server: schemathesis's lazy
# loader (`schemathesis.pytest.from_fixture`) fails on pytest 9.2, which no
# longer has `Function._nodeid`. `test_openapi.py` proves the served
# document is this one.
contract = schemathesis.openapi.from_dict(openapi.definition())

# The rule the definition states in words but its patterns cannot hold: no
# unassigned, private-use or invisible format code point anywhere in Unicode.
_FORBIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")


def _unwritable(value: Any) -> bool:
    return isinstance(value, str) and any(
        unicodedata.category(c) in _FORBIDDEN and c not in _JOINERS for c in value
    )


@contract.hook
def filter_case(context: HookContext, case: Case) -> bool:
    """Keep a valid case only when it is valid by the rule in words too."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return True
    query = case.query if isinstance(case.query, dict) else {}
    return not any(_unwritable(value) for value in query.values())


@pytest.mark.slow
@contract.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_live_service_answers_as_its_definition_says(
    case: Case, server: LiveServer, partner: Partner, statuses: Counter[int]
) -> None:
    sign(case, partner)
    response = case.call(base_url=server.url)
    statuses[response.status_code] += 1
    case.validate_response(response)

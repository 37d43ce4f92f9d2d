"""Whom an instrumented call is charged to must fit the usage event (a string id of at
most 200 characters, string tags): a bad one is refused where it is given, before any
request is sent, not found wanting once the provider has answered (when the usage event
could not be made, and the call's cost was lost)."""

from __future__ import annotations

from typing import Any

import httpx2
import openai
import pytest

import budget
from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker

HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def sent() -> list[httpx2.Request]:
    return []


@pytest.fixture
def client(sent: list[httpx2.Request]) -> openai.OpenAI:
    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(500, json={"error": {"message": "not expected"}})

    http = httpx2.Client(transport=httpx2.MockTransport(answer))
    client = openai.OpenAI(api_key="sk-test", http_client=http, max_retries=0)
    tracker = UsageTracker(Settings(), PricingRegistry(), DisabledPublisher())
    return budget.instrument(client, tracker=tracker, user_id="alice")


@pytest.mark.parametrize(
    ("keywords", "named"),
    [
        ({"budget_user_id": 42}, "user_id"),
        ({"budget_project_id": "p" * 201}, "project_id"),
        ({"budget_user_id": "a\x00b"}, "user_id must not hold a NUL character"),
        ({"budget_tags": {"team": 7}}, "tags"),
        # Not a mapping: "team=a" had raised dict()'s 'dictionary update sequence element
        # #0 has length 1', and ["ab"] had been taken as the tag a=b.
        ({"budget_tags": "team=a"}, "tags must map strings to strings, got 'team=a'"),
        ({"budget_tags": ["ab"]}, "tags must map strings to strings, got"),
    ],
)
def test_a_calls_bad_attribution_is_refused_before_it_is_sent(
    client: openai.OpenAI, sent: list[httpx2.Request], keywords: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, **keywords)
    assert sent == []


def test_a_bad_attribution_is_refused_where_it_is_given() -> None:
    with pytest.raises(ValueError, match="user_id must be a string"):
        budget.instrument(openai.OpenAI(api_key="sk-test"), user_id=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tags"), budget.attribute_to(tags={1: "x"}):  # type: ignore[dict-item]
        pass
    with pytest.raises(ValueError, match="tags must map strings to strings"):
        budget.instrument(openai.OpenAI(api_key="sk-test"), tags="team=a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tags must map strings"), budget.attribute_to(tags=["ab"]):  # type: ignore[arg-type]
        pass


def test_a_refusal_mode_misspelt_is_refused_where_it_is_given() -> None:
    """``refusal="provider-error"`` had been taken as ``"raise"``: the host's handler of
    the SDK's 429 never saw a refused call, which raised ``BudgetExceeded`` instead."""
    with pytest.raises(ValueError, match="refusal must be 'raise' or 'provider_error'"):
        budget.instrument(openai.OpenAI(api_key="sk-test"), refusal="provider-error")  # type: ignore[arg-type]

"""The console's policy editor (the seed's "Policy Editor") starts a new policy from the
server's config.yaml: its ``budget.default_action`` and ``soft_limit_percent``, as
``budget policy set`` and ``budget_policies`` entries take them (it showed warn at 80 %);
a policy posted or put over HTTP without them, or saved from the form with its soft limit
cleared, takes them too (each was set at 80 %)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from http_support import csrf_token

STACK_ENV = {"BUDGET_DEFAULT_ACTION": "block", "BUDGET_SOFT_LIMIT_PERCENT": "70"}


def test_a_new_policy_starts_from_the_configured_action_and_soft_limit(
    browser: httpx.Client,
) -> None:
    form = browser.get("/policies/new")
    assert form.status_code == 200, form.text
    assert re.search(r'<option value="block" selected>', form.text), form.text
    assert re.search(r'name="soft_limit_percent" type="[a-z]+" value="70"', form.text), form.text


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_policy_sent_without_action_or_soft_limit_takes_the_configured_ones(
    admin: httpx.Client, method: str
) -> None:
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    body = {"policy_id": policy_id, "name": "team cap", "limit_amount": "10"}
    path = "/api/v1/policies" + ("" if method == "POST" else f"/{policy_id}")
    answer = admin.request(method, path, json=body)
    assert answer.status_code in (200, 201), answer.text
    stored = admin.get(f"/api/v1/policies/{policy_id}").json()
    assert (stored["action"], stored["soft_limit_percent"]) == ("block", "70")
    assert answer.json() == stored


def test_a_policy_stating_its_action_and_soft_limit_keeps_them(admin: httpx.Client) -> None:
    """Stated as the model's own defaults, they are not taken for left out."""
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    body = {"name": "n", "limit_amount": "10", "action": "warn", "soft_limit_percent": "80"}
    answer = admin.put(f"/api/v1/policies/{policy_id}", json=body)
    assert answer.status_code == 200, answer.text
    stored = admin.get(f"/api/v1/policies/{policy_id}").json()
    assert (stored["action"], stored["soft_limit_percent"]) == ("warn", "80")


def test_a_soft_limit_cleared_on_the_form_is_the_configured_one(
    browser: httpx.Client, admin: httpx.Client
) -> None:
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    token = csrf_token(browser.get("/policies/new").text)
    form = {
        "csrf_token": token,
        "policy_id": policy_id,
        "name": "cleared soft limit",
        "scope": "global",
        "period": "monthly",
        "limit_amount": "10",
        "soft_limit_percent": "",
        "action": "warn",
    }
    saved = browser.post("/policies/new", data=form)
    assert saved.status_code == 303, saved.text
    stored = admin.get(f"/api/v1/policies/{policy_id}").json()
    assert (stored["action"], stored["soft_limit_percent"]) == ("warn", "70")

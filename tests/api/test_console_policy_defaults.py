"""The console's policy editor (the seed's "Policy Editor") starts a new policy from the
server's config.yaml: its ``budget.default_action`` and ``soft_limit_percent``, as
``budget policy set`` and ``budget_policies`` entries take them (it showed warn at 80 %)."""

from __future__ import annotations

import re

import httpx

STACK_ENV = {"BUDGET_DEFAULT_ACTION": "block", "BUDGET_SOFT_LIMIT_PERCENT": "70"}


def test_a_new_policy_starts_from_the_configured_action_and_soft_limit(
    browser: httpx.Client,
) -> None:
    form = browser.get("/policies/new")
    assert form.status_code == 200, form.text
    assert re.search(r'<option value="block" selected>', form.text), form.text
    assert re.search(r'name="soft_limit_percent" type="[a-z]+" value="70"', form.text), form.text

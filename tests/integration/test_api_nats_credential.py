"""The HTTP API on its own NATS credential (role ``api``, events.permissions): every
route that reaches NATS works over a real nats-server with the config ``budget up``
writes, against the real workers, enforcer and query service (what it is refused:
test_nats_permissions.py::test_the_api_credential_is_refused_what_the_api_does_not_do)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from events import ApiRole, BudgetScope
from events.codec import HEADER_MSG_ID
from events.permissions import API_USER
from projections.database_queries import DatabaseQueries
from services.api.app import create_app
from services.api.context import ApiServices
from services.api.keys import KeyAdmin

from enforcement import enforcement_stack, projection_workers
from secured_nats import Secured
from support import wait_for

pytestmark = pytest.mark.integration


def _call(user: str, **fields: object) -> dict[str, object]:
    """A usage post: gpt-4o, 1000 in / 500 out ($0.0075)."""
    return {
        "model": "gpt-4o",
        "provider": "openai",
        "input_tokens": 1000,
        "output_tokens": 500,
        "user_id": user,
        **fields,
    }


@contextlib.asynccontextmanager
async def _api(
    secured: Secured, service: Client, db: str, tmp_path: Path, user: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API connected to NATS as ``user``, with an admin key (made by the
    services) and every worker its routes wait for."""
    operator = secured.settings(
        "service", database_url=db, spool_dir=tmp_path / "service", default_limit=None
    )
    settings = secured.settings(
        user, database_url=db, spool_dir=tmp_path / user, default_limit=None
    )
    async with (
        enforcement_stack(service, operator) as stack,
        projection_workers(service, operator, "api_keys", "alerts"),
        DatabaseQueries(db) as queries,
        ApiServices.open(settings) as api,
    ):
        await stack.set_policy(policy_id="warm-up", scope=BudgetScope.GLOBAL, limit_amount="1e9")
        await stack.enforcer_applies_policies()
        issued = await KeyAdmin(operator, stack.tracker, queries).create("admin", ApiRole.ADMIN)
        assert issued.applied
        app = create_app(settings, session_secret="s" * 48, services=api)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers={"Authorization": f"Bearer {issued.key.key}"},
            timeout=60,
        ) as client:
            yield client


@pytest.fixture
async def http(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API as its own user, ``api``."""
    async with _api(secured, service, db, tmp_path, API_USER) as client:
        yield client


async def test_the_api_credential_serves_every_route_that_reaches_nats(
    http: httpx.AsyncClient, secured: Secured, service: Client
) -> None:
    user = "ann"
    # policies: create, replace (policy events, the last one's direct get)
    policy = {"name": "cap", "scope": "user", "scope_key": user, "limit_amount": "0.01"}
    created = await http.post("/api/v1/policies", json={**policy, "policy_id": "cap"})
    assert created.status_code == 201, created.text
    replaced = await http.put("/api/v1/policies/cap", json={**policy, "action": "block"})
    assert replaced.status_code == 200, replaced.text

    # usage on the key's own subject, twice the same event: the second reads it back
    first = await http.post("/api/v1/usage", json=_call(user))
    assert first.status_code == 201, first.text
    event_id = first.json()["event"]["event_id"]
    again = await http.post("/api/v1/usage", json=_call(user, event_id=event_id))
    assert (again.status_code, again.json()["duplicate"]) == (200, True), again.text
    batch = await http.post("/api/v1/usage/batch", json={"events": [_call(user)]})
    assert batch.status_code == 200, batch.text

    # the alert it raised ($0.015 of $0.01): acknowledged and resolved
    async def raised() -> bool:
        """the limit_exceeded alert of the policy is stored"""
        page = (await http.get("/api/v1/alerts", params={"policy_id": "cap"})).json()
        return any(a["alert"]["alert_type"] == "limit_exceeded" for a in page["alerts"])

    await wait_for(raised, within=60)
    page = (await http.get("/api/v1/alerts", params={"policy_id": "cap"})).json()
    alert_id = page["alerts"][0]["alert"]["alert_id"]
    acked = await http.post(f"/api/v1/alerts/{alert_id}/acknowledge", json={})
    assert acked.status_code == 204, acked.text
    resolved = await http.post(f"/api/v1/alerts/{alert_id}/resolve")
    assert resolved.status_code == 204, resolved.text

    # checks under the key's own name: refused over the cap; a hold made and released
    refused = await http.post(
        "/api/v1/check", json={"model": "gpt-4o", "estimated_cost": "1", "user_id": user}
    )
    assert refused.status_code == 200 and not refused.json()["allowed"], refused.text
    roomy = {"name": "roomy", "scope": "user", "scope_key": "bo", "limit_amount": "5"}
    roomy["action"] = "block"
    assert (await http.put("/api/v1/policies/roomy", json=roomy)).status_code == 200
    held = (
        await http.post(
            "/api/v1/check", json={"model": "gpt-4o", "estimated_cost": "1", "user_id": "bo"}
        )
    ).json()
    assert held["allowed"] and held["reservation_id"], held
    released = await http.post(f"/api/v1/reservations/{held['reservation_id']}/release")
    assert released.status_code == 200 and released.json()["released"] >= 1, released.text
    assert (await http.delete("/api/v1/policies/roomy")).status_code == 204

    # alert rules and keys
    rule = {"rule_id": "r1", "name": "High", "threshold_percent": "75", "channels": ["ui"]}
    assert (await http.post("/api/v1/rules", json=rule)).status_code == 201
    assert (await http.put("/api/v1/rules/r1", json={**rule, "name": "Higher"})).status_code == 200
    assert (await http.delete("/api/v1/rules/r1")).status_code == 204
    key = await http.post("/api/v1/keys", json={"name": "analyst", "role": "viewer"})
    assert key.status_code == 201, key.text
    assert (await http.delete(f"/api/v1/keys/{key.json()['key_id']}")).status_code == 204

    # reads: the projections' lag (their consumers, and one of its own for those whose
    # worker never ran), the dead letters, the services' health, readiness
    topology = secured.topology
    await service.jetstream().publish(
        topology.event_subject("usage.recorded", publisher="host"),
        b"not an event",
        headers={HEADER_MSG_ID: "junk-1"},
    )

    async def dead_lettered() -> bool:
        """the spend worker dead-lettered the junk, and the API lists it"""
        answer = await http.get("/api/v1/dead-letters")
        assert answer.status_code == 200, answer.text
        return any(letter["data"] == "not an event" for letter in answer.json())

    await wait_for(dead_lettered, within=60)
    projections = await http.get("/api/v1/projections")
    assert projections.status_code == 200, projections.text
    assert {p["name"] for p in projections.json()} >= {"spend", "history", "api_keys"}
    services = await http.get("/api/v1/services")
    assert services.status_code == 200, services.text
    assert all(s["ok"] for s in services.json()), services.json()
    assert (await http.get("/readyz")).status_code == 200

    stored = await service.jetstream().stream_info(topology.event_stream.name, subjects_filter=">")
    by_keys = topology.event_subject("usage.recorded", publisher="api-key-")
    assert [n for s, n in stored.state.subjects.items() if s.startswith(by_keys)] == [2]


async def test_an_api_given_a_credential_that_may_not_says_so(
    secured: Secured, service: Client, db: str, tmp_path: Path
) -> None:
    """Run with a host's credential by mistake, the API answers what NATS refuses with a
    503 saying its credential may not (the server's log names the subject and the
    credential that may), not with a 500 or a wait for a timeout."""
    async with _api(secured, service, db, tmp_path, "host") as http:
        policy = {"name": "cap", "scope": "global", "limit_amount": "1"}
        refused = await http.put("/api/v1/policies/cap", json=policy)
        release = await http.post("/api/v1/reservations/r-1/release")
    for answer in (refused, release):
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"] == (
            "this API's NATS credential may not do this: run `budget api` as its own NATS"
            " user, `api` (docs/security.md); its log names what was refused"
        )

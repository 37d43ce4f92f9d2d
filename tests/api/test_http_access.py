"""Who may call what: every route of the OpenAPI document, without a key, with a wrong
key and with each role; revocation holding from the next request; no key in any log."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import nats
import psycopg
import pytest

from events import ApiKeyRevoked, ApiRole, encode, headers_for, utc_now
from services.api.key_cache import APPLICATION_NAME

from http_support import csrf_token, eventually, sign_in
from live import LiveStack

READ, ADMIN, INGEST, PUBLIC = "read", "admin", "ingest", "public"
ALLOWED = {
    READ: {ApiRole.VIEWER, ApiRole.ADMIN},
    ADMIN: {ApiRole.ADMIN},
    INGEST: {ApiRole.INGEST, ApiRole.ADMIN},
    PUBLIC: {ApiRole.VIEWER, ApiRole.ADMIN, ApiRole.INGEST},
}
ALERT = str(uuid.uuid4())
POLICY = {"name": "matrix", "scope": "user", "scope_key": "matrix-user", "limit_amount": "9"}
RULE = {"name": "matrix rule", "threshold_percent": "50"}
# (method, path template, concrete path, JSON body, group): one line per route.
ROUTES: list[tuple[str, str, str, Any, str]] = [
    ("GET", "/healthz", "/healthz", None, PUBLIC),
    ("GET", "/readyz", "/readyz", None, PUBLIC),
    ("GET", "/api/v1/spend", "/api/v1/spend", None, READ),
    ("GET", "/api/v1/policies", "/api/v1/policies", None, READ),
    ("POST", "/api/v1/policies", "/api/v1/policies", POLICY, ADMIN),
    ("GET", "/api/v1/policies/{policy_id}", "/api/v1/policies/nope", None, READ),
    ("PUT", "/api/v1/policies/{policy_id}", "/api/v1/policies/matrix", POLICY, ADMIN),
    ("DELETE", "/api/v1/policies/{policy_id}", "/api/v1/policies/nope", None, ADMIN),
    ("POST", "/api/v1/check", "/api/v1/check", {"model": "gpt-4o"}, INGEST),
    (
        "POST",
        "/api/v1/reservations/{reservation_id}/release",
        "/api/v1/reservations/none/release",
        None,
        INGEST,
    ),
    (
        "POST",
        "/api/v1/usage",
        "/api/v1/usage",
        {"model": "gpt-4o", "provider": "openai", "user_id": "matrix-user"},
        INGEST,
    ),
    (
        "POST",
        "/api/v1/usage/batch",
        "/api/v1/usage/batch",
        {"events": [{"model": "gpt-4o", "provider": "openai", "user_id": "matrix-user"}]},
        INGEST,
    ),
    ("GET", "/api/v1/usage", "/api/v1/usage", None, READ),
    ("GET", "/api/v1/usage/export", "/api/v1/usage/export", None, READ),
    ("GET", "/api/v1/reports/{kind}", "/api/v1/reports/summary", None, READ),
    ("GET", "/api/v1/alerts", "/api/v1/alerts", None, READ),
    ("GET", "/api/v1/alerts/stream", "/api/v1/alerts/stream", None, READ),
    ("GET", "/api/v1/alerts/{alert_id}", f"/api/v1/alerts/{ALERT}", None, READ),
    (
        "POST",
        "/api/v1/alerts/{alert_id}/acknowledge",
        f"/api/v1/alerts/{ALERT}/acknowledge",
        {},
        ADMIN,
    ),
    ("POST", "/api/v1/alerts/{alert_id}/resolve", f"/api/v1/alerts/{ALERT}/resolve", None, ADMIN),
    ("GET", "/api/v1/rules", "/api/v1/rules", None, READ),
    ("POST", "/api/v1/rules", "/api/v1/rules", RULE, ADMIN),
    ("PUT", "/api/v1/rules/{rule_id}", "/api/v1/rules/matrix", RULE, ADMIN),
    ("DELETE", "/api/v1/rules/{rule_id}", "/api/v1/rules/nope", None, ADMIN),
    ("GET", "/api/v1/providers", "/api/v1/providers", None, READ),
    ("GET", "/api/v1/providers/{provider}/models", "/api/v1/providers/openai/models", None, READ),
    ("GET", "/api/v1/prices/{model}", "/api/v1/prices/gpt-4o", None, READ),
    ("GET", "/api/v1/projections", "/api/v1/projections", None, READ),
    ("GET", "/api/v1/dead-letters", "/api/v1/dead-letters", None, READ),
    ("GET", "/api/v1/services", "/api/v1/services", None, READ),
    ("GET", "/api/v1/keys", "/api/v1/keys", None, ADMIN),
    ("GET", "/api/v1/keys/{key_id}", "/api/v1/keys/nope", None, ADMIN),
    ("POST", "/api/v1/keys", "/api/v1/keys", {"name": "matrix", "role": "viewer"}, ADMIN),
    ("DELETE", "/api/v1/keys/{key_id}", "/api/v1/keys/nope", None, ADMIN),
]


@pytest.fixture(scope="module")
def keys(stack: LiveStack) -> dict[ApiRole, str]:
    return {role: stack.new_key(role, f"matrix-{role.value}") for role in ApiRole}


def status_of(http: httpx.Client, method: str, path: str, body: Any) -> int:
    """The status of one request; a stream is closed as soon as its status is known."""
    with http.stream(method, path, json=body) as answer:
        return answer.status_code


def test_no_page_loads_a_script_from_elsewhere(stack: LiveStack) -> None:
    """FastAPI's interactive docs page would load Swagger UI from a CDN onto this origin:
    there is none; the document is served."""
    assert httpx.get(stack.base_url + "/api/docs").status_code == 404
    assert httpx.get(stack.base_url + "/api/v1/openapi.json").status_code == 200


def test_the_matrix_covers_every_route(stack: LiveStack) -> None:
    document = httpx.get(stack.base_url + "/api/v1/openapi.json").json()
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert documented == {(method, template) for method, template, *_ in ROUTES}


@pytest.mark.parametrize(
    ("method", "path", "body", "group"),
    [(m, p, b, g) for m, _, p, b, g in ROUTES],
    ids=[f"{m} {t}" for m, t, *_ in ROUTES],
)
def test_each_route_admits_exactly_its_roles(
    stack: LiveStack, keys: dict[ApiRole, str], method: str, path: str, body: Any, group: str
) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30) as anonymous:
        status = status_of(anonymous, method, path, body)
        if group == PUBLIC:
            assert status == 200
            return
        assert status == 401
        answer = anonymous.request(method, path, json=body, headers={"X-API-Key": "bmk_x_forged"})
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    for role, key in keys.items():
        with stack.client(key) as http:
            status = status_of(http, method, path, body)
        if role in ALLOWED[group]:
            assert status not in (401, 403), (role, status)
        else:
            assert status == 403, (role, status)


NO_JSON = {
    "cut short": (b'{"name": ', "not valid JSON at character 9: Expecting value"),
    "too deep": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON: nested deeper than the"),
    "not UTF-8": (b'{"name": "\xff"}', "not valid JSON: not UTF-8 text"),
}
WITH_BODIES = [(m, t, p, g) for m, t, p, b, g in ROUTES if b is not None]


@pytest.mark.parametrize("broken", NO_JSON.values(), ids=NO_JSON.keys())
@pytest.mark.parametrize(
    ("method", "path", "group"),
    [(m, p, g) for m, _, p, g in WITH_BODIES],
    ids=[f"{m} {t}" for m, t, *_ in WITH_BODIES],
)
def test_a_body_that_is_no_json_is_refused_first_as_any_body(
    stack: LiveStack,
    keys: dict[ApiRole, str],
    method: str,
    path: str,
    group: str,
    broken: tuple[bytes, str],
) -> None:
    """FastAPI reads a JSON body before the route looks at the credential: a broken one
    still gets the 401 or 403 any body gets, and only a caller the route admits hears
    what is wrong with it, as a 422 on ``body`` saying why."""
    body, why = broken
    as_json = {"Content-Type": "application/json"}
    with httpx.Client(base_url=stack.base_url, timeout=30) as anonymous:
        answer = anonymous.request(method, path, content=body, headers=as_json)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].startswith("Bearer")
    for role, key in keys.items():
        with stack.client(key) as http:
            answer = http.request(method, path, content=body, headers=as_json)
        assert answer.headers["content-type"] == "application/problem+json"
        if role not in ALLOWED[group]:
            assert answer.status_code == 403, (role, answer.text)
            continue
        assert answer.status_code == 422, (role, answer.text)
        [error] = answer.json()["errors"]
        assert error["field"] == "body" and error["message"].startswith(why), error


def test_a_revoked_key_is_refused_from_the_next_request(
    stack: LiveStack, admin: httpx.Client
) -> None:
    answer = admin.post("/api/v1/keys", json={"name": "short-lived", "role": "viewer"})
    assert answer.status_code == 201  # applied: in force from this answer on
    made = answer.json()
    assert made["applied"] is True
    shown = admin.get(answer.headers["location"]).json()
    assert (shown["key_id"], shown["role"], shown["revoked_at"]) == (made["key_id"], "viewer", None)
    with stack.client(made["key"]) as http:
        assert http.get("/api/v1/policies").status_code == 200
        assert admin.delete(f"/api/v1/keys/{made['key_id']}").status_code == 204
        assert http.get("/api/v1/policies").status_code == 401
    listed = {k["key_id"]: k for k in admin.get("/api/v1/keys").json()}
    assert listed[made["key_id"]]["revoked_at"] is not None
    assert "key" not in listed[made["key_id"]] and "key_hash" not in listed[made["key_id"]]
    assert admin.delete(f"/api/v1/keys/{made['key_id']}").status_code == 404


def test_a_new_keys_answer_is_kept_by_no_cache(admin: httpx.Client) -> None:
    """It holds the key's only copy: no browser or proxy cache may store it."""
    answer = admin.post("/api/v1/keys", json={"name": "uncached", "role": "viewer"})
    assert answer.status_code == 201 and answer.json()["key"].startswith("bmk_")
    assert answer.headers.get("cache-control") == "no-store"


def test_a_key_revoked_by_another_process_is_refused_once_applied(stack: LiveStack) -> None:
    """As ``budget api-key revoke`` does, on the log: the API, which remembered the key,
    hears of it from PostgreSQL when the ``api_keys`` worker applies it."""
    key = stack.new_key(ApiRole.VIEWER)
    key_id = key.split("_")[1]

    async def revoke() -> None:
        event = ApiKeyRevoked(occurred_at=utc_now(), key_id=key_id, revoked_by="elsewhere")
        nc = await nats.connect(stack.settings.nats_url)
        subject = stack.settings.topology.event_subject(event.SUBJECT)
        await nc.jetstream().publish(subject, encode(event), headers=headers_for(event))
        await nc.close()

    with psycopg.connect(stack.settings.database_url) as conn:  # so the API keeps keys
        listening = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (APPLICATION_NAME,),
        ).fetchone()
    assert listening is not None and listening[0] >= 1
    with stack.client(key) as http:
        assert http.get("/api/v1/policies").status_code == 200
        assert http.get("/api/v1/policies").status_code == 200
        asyncio.run(revoke())
        eventually(lambda: http.get("/api/v1/policies").status_code == 401, what="the key refused")


def test_no_key_cookie_or_token_reaches_a_log(stack: LiveStack, keys: dict[ApiRole, str]) -> None:
    with stack.client(keys[ApiRole.VIEWER]) as http:
        http.get("/api/v1/policies", params={"scope": "user"})  # a query string logged
    with httpx.Client(base_url=stack.base_url) as anonymous:
        anonymous.get("/api/v1/policies", headers={"Authorization": "Bearer bmk_leak_canary"})
    with httpx.Client(base_url=stack.base_url, timeout=30) as browser:
        sign_in(browser, keys[ApiRole.VIEWER])  # the key in a form, then a cookie
        page = browser.get("/policies", params={"next": "/"})
        session = browser.cookies["budget_session"]
        token = csrf_token(page.text)
        browser.post("/logout", data={"csrf_token": token})
    logs = stack.logs()
    assert "GET /api/v1/policies 200" in logs  # the requests were logged...
    assert "GET /policies" in logs and "POST /login" in logs
    for secret in [stack.admin_key, *keys.values(), "bmk_leak_canary", session, token]:
        assert secret not in logs  # ...without their keys, cookies or tokens

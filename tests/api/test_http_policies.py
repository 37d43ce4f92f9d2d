"""Policies over HTTP: create, read, replace, delete with read-your-writes; errors as
problem details naming the field; oversized bodies refused."""

from __future__ import annotations

import uuid

import httpx
import pytest

from http_support import posted_at_once
from live import LiveStack


def test_create_read_replace_delete(admin: httpx.Client, viewer: httpx.Client) -> None:
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    body = {
        "policy_id": policy_id,
        "name": "Équipe cap",
        "scope": "project",
        "scope_key": "apollo",
        "period": "daily",
        "limit_amount": "12.50",
        "soft_limit_percent": "75",
        "action": "block",
        "timezone": "Asia/Kathmandu",
    }
    created = admin.post("/api/v1/policies", json=body)
    assert created.status_code == 201
    assert created.headers["location"] == f"/api/v1/policies/{policy_id}"
    # Read-your-writes: answered once the policies projection applied it.
    assert viewer.get(f"/api/v1/policies/{policy_id}").json() == created.json()
    assert created.json()["limit_amount"] == "12.50"
    assert admin.post("/api/v1/policies", json=body).status_code == 409

    replaced = admin.put(f"/api/v1/policies/{policy_id}", json={**body, "limit_amount": "20"})
    assert replaced.status_code == 200
    assert viewer.get(f"/api/v1/policies/{policy_id}").json()["limit_amount"] == "20"
    listed = viewer.get("/api/v1/policies", params={"scope": "project"}).json()
    assert [p["policy_id"] for p in listed if p["policy_id"] == policy_id] == [policy_id]
    assert all(p["scope"] == "project" for p in listed)

    assert admin.delete(f"/api/v1/policies/{policy_id}").status_code == 204
    gone = viewer.get(f"/api/v1/policies/{policy_id}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert admin.delete(f"/api/v1/policies/{policy_id}").status_code == 404


async def test_of_concurrent_creations_of_one_id_exactly_one_wins(stack: LiveStack) -> None:
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    bodies = [
        {"policy_id": policy_id, "name": f"try {n}", "limit_amount": str(n + 1)} for n in range(10)
    ]
    statuses = await posted_at_once(stack, "/api/v1/policies", bodies)
    assert sorted(statuses) == [201] + [409] * 9, statuses
    with stack.client() as admin:
        stored = admin.get(f"/api/v1/policies/{policy_id}").json()
    assert stored["name"] == f"try {statuses.index(201)}"  # the winner's, not replaced after


async def test_concurrent_creations_of_different_ids_all_win(stack: LiveStack) -> None:
    """They share the policy events' subject, so all but one retry; each gets its 201."""
    ids = [f"p-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    bodies = [{"policy_id": i, "name": i, "limit_amount": "1"} for i in ids]
    assert await posted_at_once(stack, "/api/v1/policies", bodies) == [201] * 5
    with stack.client() as admin:
        listed = {p["policy_id"] for p in admin.get("/api/v1/policies").json()}
    assert set(ids) <= listed


def test_put_takes_the_id_from_the_path(admin: httpx.Client) -> None:
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    answer = admin.put(f"/api/v1/policies/{policy_id}", json={"name": "n", "limit_amount": "1"})
    assert answer.status_code == 200 and answer.json()["policy_id"] == policy_id
    bad = admin.put("/api/v1/policies/has space", json={"name": "n", "limit_amount": "1"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "path.policy_id"


def test_validation_errors_name_the_field(admin: httpx.Client) -> None:
    answer = admin.post("/api/v1/policies", json={"name": "x", "limit_amount": "-1"})
    assert answer.status_code == 422
    problem = answer.json()
    assert answer.headers["content-type"] == "application/problem+json"
    assert problem["status"] == 422 and problem["title"] == "Invalid request"
    assert problem["errors"] == [
        {"field": "body.limit_amount", "message": "Input should be greater than or equal to 0"}
    ]
    assert problem["detail"].startswith("body.limit_amount:")

    custom = admin.post(
        "/api/v1/policies", json={"name": "x", "limit_amount": "1", "period": "custom"}
    )
    assert custom.status_code == 422
    assert "custom_start" in custom.json()["detail"]
    zone = admin.post(
        "/api/v1/policies", json={"name": "x", "limit_amount": "1", "timezone": "Mars/Base"}
    )
    assert "unknown time zone" in zone.json()["detail"]
    typed = admin.post(
        "/api/v1/policies", json={"name": "x", "policy_id": "team cap", "limit_amount": "$1,000"}
    )
    assert typed.status_code == 422
    messages = {e["field"]: e["message"] for e in typed.json()["errors"]}
    assert "without a currency sign or thousands separators" in messages["body.limit_amount"]
    assert "letters, digits and _ . : - only" in messages["body.policy_id"]


def test_a_soft_limit_whose_threshold_no_total_could_hold_is_refused(admin: httpx.Client) -> None:
    """It was stored, and the alert evaluator then dead-lettered it (a threshold of 17,000
    places overflows PostgreSQL's numeric) while the enforcer enforced it unwatched."""
    body = {"name": "x", "limit_amount": "1", "soft_limit_percent": "1E-17000"}
    answer = admin.post("/api/v1/policies", json=body)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["field"] == "body.soft_limit_percent"
    assert "no more than 40 decimal places" in error["message"]


JAN, FEB = "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"custom_start": "2026-01-01T00:07:00Z", "custom_end": FEB}, "custom_start", "quarter"),
        ({"custom_start": JAN, "custom_end": "2026-02-01T00:00:01Z"}, "custom_end", "quarter"),
        ({"custom_start": FEB, "custom_end": JAN}, "custom_end", "before custom_end"),
        ({"custom_end": FEB}, "custom_start", "needs custom_start and custom_end"),
        ({"period": "daily", "custom_end": FEB}, "custom_end", "only for period 'custom'"),
        ({"period": "daily", "scope_key": "alice"}, "scope_key", "a global policy has no"),
    ],
)
def test_a_policy_inconsistent_in_itself_is_refused_on_the_field_at_fault(
    admin: httpx.Client, fields: dict[str, str], field: str, message: str
) -> None:
    body = {"name": "x", "limit_amount": "5", "period": "custom", **fields}
    answer = admin.post("/api/v1/policies", json=body)
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["field"] == f"body.{field}" and message in error["message"], error


@pytest.mark.parametrize("scope", ["user", "project", "provider", "model"])
def test_an_empty_scope_key_is_refused_as_it_would_limit_nothing(
    admin: httpx.Client, scope: str
) -> None:
    """No call has an empty user (project, ...) id, so such a policy would never apply;
    a provider's name that is only blanks is as empty once canonical."""
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    key = " " if scope == "provider" else ""
    body = {"name": "x", "scope": scope, "scope_key": key, "action": "block", "limit_amount": "0"}
    for answer in (
        admin.put(f"/api/v1/policies/{policy_id}", json=body),
        admin.post("/api/v1/policies", json={**body, "policy_id": policy_id}),
    ):
        assert answer.status_code == 422, answer.text
        [error] = answer.json()["errors"]
        assert error["field"] == "body.scope_key"
        assert f"omit scope_key to limit each {scope} separately" in error["message"]
    assert admin.get(f"/api/v1/policies/{policy_id}").status_code == 404


def test_malformed_and_oversized_bodies(stack: LiveStack, admin: httpx.Client) -> None:
    broken = admin.post(
        "/api/v1/policies", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422
    assert "Traceback" not in broken.text
    # The body is at fault, and the parser's reason says what to fix (not "body.1").
    reason = "not valid JSON at character 1: Expecting property name enclosed in double quotes"
    assert broken.json()["errors"] == [{"field": "body", "message": reason}]
    assert broken.json()["detail"] == f"body: {reason}"
    # Without the JSON content type the body is not read as JSON: say so.
    untyped = admin.post(
        "/api/v1/policies", content=b'{"name": "x"}', headers={"content-type": "text/plain"}
    )
    assert untyped.json()["errors"] == [
        {
            "field": "body",
            "message": "the body should be a JSON object, sent with Content-Type: application/json",
        }
    ]
    empty = admin.post("/api/v1/policies")
    assert empty.json()["errors"][0]["message"].startswith("the request needs a JSON object")

    huge = admin.post("/api/v1/policies", json={"name": "x" * (2 << 20), "limit_amount": "1"})
    assert huge.status_code == 413
    assert huge.headers["content-type"] == "application/problem+json"

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(40):
            yield b"x" * 65536

    streamed = admin.post(
        "/api/v1/policies", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_nul_characters_are_refused_where_they_are(admin: httpx.Client) -> None:
    in_body = admin.post("/api/v1/policies", json={"name": "a\x00b", "limit_amount": "1"})
    assert in_body.status_code == 422 and in_body.json()["detail"].startswith("body:")
    in_query = admin.get("/api/v1/usage", params={"model": "gpt\x00"})
    assert in_query.status_code == 422
    assert in_query.json()["errors"] == [{"field": "query.model", "message": "contains NUL"}]
    text = "100%00 \\u0000"  # a percent sign, and a backslash before u0000: no NUL
    escaped = admin.post("/api/v1/policies", json={"name": text, "limit_amount": "1"})
    assert escaped.status_code == 201 and escaped.json()["name"] == text


def test_no_split_hides_a_nul(admin: httpx.Client) -> None:
    """Sixty-five backslashes end one chunk, u0000 starts the next: one real escape."""
    body = b'{"name": "a' + b"\\" * 65 + b'u0000", "limit_amount": "1"}'
    split = body.index(b"u0000")

    def chunks():  # two writes, split where a sliding window would miscount
        yield body[:split]
        yield body[split:]

    answer = admin.post(
        "/api/v1/policies", content=chunks(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422 and answer.json()["detail"].startswith("body:")
    in_path = admin.delete("/api/v1/keys/a%00b")
    assert in_path.status_code == 422
    assert in_path.json()["errors"] == [{"field": "path", "message": "contains NUL"}]


def test_amounts_sent_as_json_numbers_are_the_amounts_written(
    admin: httpx.Client, viewer: httpx.Client
) -> None:
    """JSON numbers were read as binary floats: a limit of 100.000000000000001 was set
    as 100.0, another amount than the one sent, and nothing said so."""
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    body = (
        f'{{"policy_id": "{policy_id}", "name": "n", "limit_amount": 100.000000000000001,'
        ' "soft_limit_percent": 33.3333333333333333}'
    )
    created = admin.post(
        "/api/v1/policies", content=body, headers={"Content-Type": "application/json"}
    )
    assert created.status_code == 201, created.text
    stored = viewer.get(f"/api/v1/policies/{policy_id}").json()
    assert stored["limit_amount"] == "100.000000000000001"
    assert stored["soft_limit_percent"] == "33.3333333333333333"


def test_a_field_given_twice_is_refused_naming_it(admin: httpx.Client) -> None:
    """The last of two limits was set, whichever the sender meant."""
    policy_id = f"p-{uuid.uuid4().hex[:8]}"
    body = f'{{"policy_id": "{policy_id}", "name": "n", "limit_amount": "1", "limit_amount": "2"}}'
    refused = admin.post(
        "/api/v1/policies", content=body, headers={"Content-Type": "application/json"}
    )
    assert refused.status_code == 422, refused.text
    again = body.rindex('"limit_amount"')
    assert refused.json()["errors"] == [
        {
            "field": "body",
            "message": f"not valid JSON at character {again}:"
            " 'limit_amount' is given twice; send each field once",
        }
    ]
    assert admin.get(f"/api/v1/policies/{policy_id}").status_code == 404


def test_a_method_a_path_lacks_is_answered_with_every_method_it_has(admin: httpx.Client) -> None:
    """Allow named only the first route's method (GET) of a path that also takes PUT and
    DELETE: a client reading it learnt that a policy could not be changed."""
    refused = admin.patch("/api/v1/policies/some-policy", json={"limit_amount": "1"})
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, PUT, DELETE"
    assert refused.json()["detail"] == "PATCH is not a method of this path; use GET, PUT or DELETE"
    only_read = admin.delete("/api/v1/spend")
    assert only_read.headers["allow"] == "GET"
    assert only_read.json()["detail"] == "DELETE is not a method of this path; use GET"

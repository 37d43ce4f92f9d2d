"""Upgrading a database an older release made, on real processes: until the usage worker
has rebuilt the history its new tables need, the history's readers say so (a 503 naming
the rebuild, a dashboard whose other panels answer) instead of failing on the old
tables' missing columns; once it has, they show every event of the old release."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from budget.periods import Period
from events import Topology, UsageRecorded, encode, headers_for
from projections.db import connect
from projections.engine.checkpoints import ensure_projection
from projections.engine.log import declare_streams
from projections.migrate import migrate
from projections.reports import ReportsProjection
from services.ops import nats_client
from services.stack import STACK_WORKERS

from http_support import eventually, sign_in
from live import LiveStack, live_stack
from servers import create_schema, drop_schema, schema_name_for, server_tmpdir, with_search_path
from support import budget_process, start_of, usage_event

pytestmark = pytest.mark.integration

OLD_REVISION = "0012"
"""The last migration of the release before usage history named publishers (028b8ea)."""
OLD_HISTORY = """CREATE TABLE usage_history_v1 (event_id uuid PRIMARY KEY,
    stream_seq bigint NOT NULL, occurred_at timestamptz NOT NULL, provider text NOT NULL,
    model text NOT NULL, kind text NOT NULL, user_id text, project_id text, cost numeric,
    unpriced_reason text, input_uncached bigint NOT NULL, input_cache_read bigint NOT NULL,
    input_cache_write bigint NOT NULL, output_text bigint NOT NULL,
    output_reasoning bigint NOT NULL, embedding_tokens bigint NOT NULL,
    audio_seconds numeric NOT NULL, image_count integer, image_size text,
    image_quality text, tags jsonb NOT NULL, price jsonb)"""
"""That release's history table (no provider_key, model_key or publisher), and its shape."""
OLD_HISTORY_SHAPE = "a928f5bd717f0bcd"

EVENTS = [
    usage_event(at=start_of(Period.DAILY, ago=1) + timedelta(hours=i), model="GPT-4o", user=u)
    for i, u in enumerate(("ann", "bob", "cy"))
]


async def _old_release(nats_url: str, database_url: str, topology: Topology) -> None:
    """The log, the ledger and the history as that release left them."""
    await asyncio.to_thread(migrate, database_url, revision=OLD_REVISION)
    seqs = []
    async with nats_client(nats_url) as nc:
        js = nc.jetstream()
        await declare_streams(js, topology)
        for event in EVENTS:
            subject = topology.event_subject(UsageRecorded.SUBJECT)
            ack = await js.publish(subject, encode(event), headers=headers_for(event))
            seqs.append(ack.seq)
    async with await connect(database_url) as conn:
        await conn.execute(OLD_HISTORY.encode())
        for seq, e in zip(seqs, EVENTS, strict=True):
            await conn.execute(
                "INSERT INTO usage_history_v1 VALUES (%s, %s, %s, %s, %s, 'chat', %s, %s, %s,"
                " NULL, 400, 100, 0, 250, 0, 0, 0, NULL, NULL, NULL, '{}', NULL)",
                (
                    e.event_id,
                    seq,
                    e.occurred_at,
                    e.provider,
                    e.model,
                    e.user_id,
                    e.project_id,
                    e.cost,
                ),
            )
            await conn.execute(
                "INSERT INTO usage_ledger (event_id, stream_seq, occurred_at, cost, provider,"
                " model, kind, user_id, project_id) VALUES (%s, %s, %s, %s, %s, %s, 'chat', %s,"
                " %s)",
                (
                    e.event_id,
                    seq,
                    e.occurred_at,
                    e.cost,
                    e.provider,
                    e.model,
                    e.user_id,
                    e.project_id,
                ),
            )
        await conn.execute("CREATE VIEW usage_history AS SELECT * FROM usage_history_v1")
        # Its report rollups, as if their tables differed too (the shape is what tells).
        await ensure_projection(conn, ReportsProjection())
        await conn.execute(
            "UPDATE projection_checkpoints SET shape = 'older' WHERE name = 'reports'"
        )
        await conn.execute(
            "INSERT INTO projection_registry (name, active_version) VALUES ('history', 1)"
        )
        await conn.execute(
            "INSERT INTO projection_checkpoints (name, version, stream_seq, events_applied,"
            " shape) VALUES ('history', 1, %s, %s, %s)",
            (seqs[-1], len(seqs), OLD_HISTORY_SHAPE),
        )


@pytest.fixture(scope="module")
def upgraded(
    request: pytest.FixtureRequest,
    nats_url: str,
    database_url: str,
    door_database_urls: dict[str, str],
) -> Iterator[LiveStack]:
    """This release's stack on that release's database (migrated at its start), all but
    the usage worker, which a test starts."""
    schema = schema_name_for(f"stack_{request.module.__name__}")
    create_schema(database_url, schema)
    url = with_search_path(database_url, schema)
    workdir = server_tmpdir("stack")

    async def before(topology: Topology) -> None:
        await _old_release(nats_url, url, topology)

    try:
        yield from live_stack(
            nats_url,
            url,
            workdir,
            role_urls={r: with_search_path(u, schema) for r, u in door_database_urls.items()},
            workers=[w for w in STACK_WORKERS if w != "usage"],
            before=before,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        drop_schema(database_url, schema)


def test_the_history_says_it_is_being_rebuilt_until_the_worker_has_rebuilt_it(
    upgraded: LiveStack,
) -> None:
    with upgraded.client() as http:
        for path in ("/api/v1/usage", "/api/v1/usage/export"):
            answer = http.get(path)
            assert answer.status_code == 503, answer.text
            detail = answer.json()["detail"]
            assert "history projection is being rebuilt" in detail
            assert "`budget worker usage`" in detail and answer.headers["Retry-After"]
        summary = http.get("/api/v1/reports/summary")
        assert summary.status_code == 503, summary.text
        assert "reports projection is being rebuilt" in summary.json()["detail"]
    day = EVENTS[0].occurred_at.date()
    window = ("--start", str(day), "--end", str(day + timedelta(days=1)))
    cli = budget_process(
        ("report", "history", *window),
        nats_url=upgraded.settings.nats_url,
        database_url=upgraded.settings.database_url,
        topology=Topology(prefix=upgraded.settings.subject_prefix),
    )
    said = cli.communicate(timeout=60)[0].decode()
    assert cli.returncode == 2 and "history projection is being rebuilt" in said, said
    assert "Traceback" not in said
    each_user = {"name": "Each user", "scope": "user", "limit_amount": "5"}
    with upgraded.client() as http:
        http.put("/api/v1/policies/each-user", json=each_user).raise_for_status()
    with httpx.Client(base_url=upgraded.base_url, timeout=30) as browser:
        sign_in(browser, upgraded.admin_key)
        page = browser.get("/history")
        assert page.status_code == 503 and "being rebuilt" in page.text
        # The dashboard's other panels answer; those of a read model being rebuilt say so
        # (the history's recent calls; the rollups' totals, top spenders, chart and the
        # ranking of a per-key policy's bars), never a stale or empty figure.
        for path in ("/", "/dashboard/live"):
            shown = browser.get(path)
            assert shown.status_code == 200, shown.text
            assert "history projection is being rebuilt" in shown.text
            assert "reports projection is being rebuilt" in shown.text
            assert 'data-total="month">rebuilding' in shown.text
            assert "No usage yet" not in shown.text  # top spenders
            assert "No spend under this policy" not in shown.text

    upgraded.start("usage")  # its first start rebuilds the history to this release's tables
    with upgraded.client() as http:

        def rows() -> list[dict[str, object]] | None:
            answer = http.get("/api/v1/usage", params={"model": "gpt-4o"})
            return answer.json()["rows"] if answer.status_code == 200 else None

        found = eventually(rows, what="the rebuilt history")
        assert sorted(r["event_id"] for r in found) == sorted(str(e.event_id) for e in EVENTS)
        assert {(r["model"], r["publisher"]) for r in found} == {("GPT-4o", None)}

        def rollups_answer() -> bool:
            """the rebuilt report rollups answer"""
            return http.get("/api/v1/reports/summary").status_code == 200

        eventually(rollups_answer, what="the rebuilt report rollups")

"""A host app's library of a newer release asks a service of an earlier one: the question
carries only the fields the caller gave, so a service that refuses fields it does not
know (every message model forbids extras) still answers what it can."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from budget.rpc import Refused, ask
from events import utc_now
from events.queries import ReportAnswer, ReportQuery
from events.rpc import RpcError

pytestmark = pytest.mark.integration

EARLIER_FIELDS = set(ReportQuery.model_fields) - {"tags"}
"""What a query service of the release before report tags knew of a report question."""


async def test_a_question_reaches_an_earlier_service_with_no_field_it_lacks(nc: Client) -> None:
    subject = "rpc-compat.query.report"
    seen: list[dict[str, object]] = []

    async def earlier_service(msg: Msg) -> None:
        fields = json.loads(msg.data)
        seen.append(fields)
        unknown = sorted(set(fields) - EARLIER_FIELDS)
        if unknown:
            error = RpcError(error=f"bad ReportQuery: {unknown[0]}: Extra inputs are not permitted")
            await msg.respond(error.model_dump_json().encode())
            return
        now = utc_now()
        report = ReportAnswer(title=f"{fields['kind']} report", start=now, end=now, tables=[])
        await msg.respond(report.model_dump_json().encode())

    subscription = await nc.subscribe(subject, cb=earlier_service)
    try:
        answer = await ask(nc, subject, ReportQuery(kind="summary"), ReportAnswer, within=5)
        assert answer.title == "summary report"
        assert seen[-1] == {"kind": "summary"}  # the caller's own choice, nothing defaulted
        tagged = ReportQuery(kind="history", tags={"team": "a"})
        with pytest.raises(Refused, match="tags: Extra inputs"):
            await ask(nc, subject, tagged, ReportAnswer, within=5)
        assert seen[-1] == {"kind": "history", "tags": {"team": "a"}}
    finally:
        await subscription.unsubscribe()

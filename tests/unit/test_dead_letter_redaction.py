"""A dead letter's reason is stored in the dead-letter stream (a header) and shown to every
viewer key (``GET /api/v1/system/dead-letters``, the console): redacted as the log line
saying the same is. The log's redaction does not reach the header: it is published."""

from __future__ import annotations

from typing import Any, cast

from budget.redaction import protect
from events import Topology
from projections.engine.deadletter import HEADER_REASON, dead_letter
from projections.engine.reader import Delivery

SECRET = "Pl4nted-worker-Secret-51d0"


class _JetStream:
    """Records what is published: the letters the dead-letter stream would store."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self.headers.append(headers)


async def test_a_dead_letters_reason_holds_no_secret_the_worker_knows() -> None:
    protect(SECRET)  # as the `budget` command protects its settings' secrets
    js = _JetStream()
    delivery = Delivery(stream_seq=7, data=b"{}", reply="", subject="t.events.x", prepared=None)
    reason = f"the projection failed on it: OperationalError: postgresql://budget:{SECRET}@db/x"
    await dead_letter(
        cast(Any, js), Topology(prefix="t"), "spend-v1", delivery, reason, max_payload=1 << 20
    )
    [headers] = js.headers
    stored = headers[HEADER_REASON]
    assert stored.startswith("the projection failed on it: OperationalError:"), stored
    assert SECRET not in stored and "***" in stored

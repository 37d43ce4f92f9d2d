"""An alert e-mail the server has taken is sent, however the session ends after it: a
server answering QUIT with something other than 221 has still taken the message."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client
from test_email_tls import email_settings

from events import Topology
from services.notifier import NotifierConfig

from alerting import notifier, outbox, queue_alerts, smtp_server
from support import wait_for

pytestmark = pytest.mark.integration


async def test_a_mail_the_server_took_is_sent_once_whatever_it_answers_to_quit(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path
) -> None:
    with smtp_server() as box:
        box.quit_answer = "250 2.0.0 Bye"
        settings = email_settings(nats_url, db, topology, tmp_path, box, tls="none")
        ids = await queue_alerts(db, 2, channel="email")
        async with notifier(nc, settings, NotifierConfig(max_backoff=0.2)):

            async def sent() -> bool:
                """the notifier recorded both alerts sent"""
                return [r[2] for r in await outbox(db)] == ["sent", "sent"]

            await wait_for(sent, within=30)
        assert [m["Message-ID"] for m in box.messages] == [f"<{i}@budget-manager>" for i in ids]

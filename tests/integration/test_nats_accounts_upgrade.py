"""An event log written by a release without NATS accounts (every user in the global
account) is found by this release's services after `budget up` moves it into their
account; without the move the server would start a new, empty log (real nats-server)."""

from __future__ import annotations

import uuid
from pathlib import Path

import nats
import pytest

from budget.config import Settings
from budget.natsconn import connect_nats, nats_options
from events import Topology
from projections.engine.log import declare_streams
from services.embedded import EmbeddedNats
from services.nats_config import NatsCredentials, move_streams_into_accounts, write_config

pytestmark = pytest.mark.integration


async def test_an_older_releases_event_log_is_moved_into_the_services_account(
    tmp_path: Path,
) -> None:
    topology = Topology(prefix=f"t{uuid.uuid4().hex[:10]}")
    store = tmp_path / "nats"
    with EmbeddedNats(store, stop_timeout=5.0) as server:  # the older release: no accounts
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await declare_streams(js, topology)
        for i in range(5):
            await js.publish(
                topology.event_subject("usage.recorded"), b"{}", headers={"Nats-Msg-Id": str(i)}
            )
        await nc.close()

    assert move_streams_into_accounts(store)
    assert not move_streams_into_accounts(store)  # once
    config = write_config(tmp_path, Settings(subject_prefix=topology.prefix))
    with EmbeddedNats(store, config_file=config, stop_timeout=5.0) as server:
        service = NatsCredentials(tmp_path).settings_for(
            "service", Settings(nats_url=server.url, subject_prefix=topology.prefix)
        )
        nc = await connect_nats(server.url, within=5, **nats_options(service))
        try:
            info = await nc.jetstream().stream_info(topology.event_stream.name)
        finally:
            await nc.close()
    assert info.state.messages == 5 and info.state.last_seq == 5

"""An authenticated nats-server with the config ``budget up`` writes: its users (the
defaults and a second host) and their password files."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budget.config import Settings
from events import Topology
from services.embedded import EmbeddedNats
from services.nats_config import NatsCredentials, write_config

__all__ = ["Secured", "secured_nats"]


@dataclass
class Secured:
    """An authenticated nats-server with the default users and a second host."""

    server: EmbeddedNats
    topology: Topology
    credentials: NatsCredentials

    def settings(self, user: str, **extra: Any) -> Settings:
        base = Settings(nats_url=self.server.url, subject_prefix=self.topology.prefix, **extra)
        return self.credentials.settings_for(user, base)


@contextmanager
def secured_nats(data_dir: Path) -> Iterator[Secured]:
    topology = Topology(prefix=f"t{uuid.uuid4().hex[:10]}")
    credentials = NatsCredentials(data_dir)
    credentials.add("host2", "host")
    config = write_config(data_dir, Settings(subject_prefix=topology.prefix))
    with EmbeddedNats(data_dir / "nats", config_file=config, stop_timeout=5.0) as server:
        yield Secured(server, topology, credentials)

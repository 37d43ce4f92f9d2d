"""``budget alerts watch`` as a child process, its output read line by line, and alerts
published on NATS as the notifier publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import AsyncIterator
from uuid import uuid4

import nats
from nats.aio.client import Client

from events import Alert, Topology, utc_now
from events.alerts import AlertSeverity, AlertType
from services.channels import NatsSender

from support import budget_process, wait_for

# The watch needs NATS only: a database URL nobody answers proves it never connects there.
NO_DATABASE = "postgresql://budget@127.0.0.1:9/unused"


class Watch:
    """A running ``budget alerts watch``; stdout and stderr as one list of lines."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def line(self, containing: str, *, after: int = 0, within: float = 30) -> int:
        """The index of the first line from ``after`` on that contains ``containing``."""

        async def printed() -> bool:
            """the watch printed the line"""
            return any(containing in line for line in self.lines[after:])

        try:
            await wait_for(printed, within=within)
        except AssertionError:
            raise AssertionError(f"no line with {containing!r} in {self.lines}") from None
        return next(i for i, line in enumerate(self.lines) if i >= after and containing in line)

    async def ended(self, within: float = 30) -> int:
        code = await asyncio.to_thread(self.process.wait, within)
        await asyncio.to_thread(self._reader.join, within)
        return code

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await self.ended()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_watch(*args: str, nats_url: str, topology: Topology, **env: str) -> Watch:
    return Watch(
        budget_process(
            ["alerts", "watch", *args],
            nats_url=nats_url,
            database_url=NO_DATABASE,
            topology=topology,
            **env,
        )
    )


def an_alert(
    message: str,
    severity: AlertSeverity = AlertSeverity.WARNING,
    alert_type: AlertType = AlertType.THRESHOLD_WARNING,
) -> Alert:
    return Alert(
        alert_id=uuid4(),
        alert_type=alert_type,
        severity=severity,
        rule_id="default-soft-limit",
        rule_name="Soft limit",
        message=message,
        raised_at=utc_now(),
    )


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    client = await nats.connect(url)
    try:
        yield client
    finally:
        await client.close()


async def publish_alert(nc: Client, topology: Topology, alert: Alert) -> None:
    """As the notifier's NATS channel sends it (its sender never uses the database)."""
    sender = NatsSender(nc, topology)
    await sender.send(alert, alert.model_dump_json().encode(), conn=None)  # type: ignore[arg-type]
    await sender.flush()

"""TLS between the ``budget`` clients and the embedded NATS server: the server config of
``budget up`` (``nats_server_tls_*``) and each client's ``nats_tls_*`` settings, with a
throw-away CA made here. A client trusting the CA connects; one that does not, one
expecting another host name, and one without a client certificate are refused.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from throwaway_ca import Authority, Issued

from budget.config import Settings
from budget.natsconn import connect_nats, nats_options
from services.embedded import EmbeddedNats
from services.nats_config import NatsCredentials, write_config
from services.worker import broker_options

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Tls:
    server: EmbeddedNats
    ca: Authority
    stranger: Authority
    client: Issued
    credentials: NatsCredentials

    def settings(self, **tls: Any) -> Settings:
        base = Settings(nats_url=self.server.url, **tls)
        return self.credentials.settings_for("service", base)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    directory = tmp_path_factory.mktemp("tls")
    ca = Authority.create(directory / "ca")
    stranger = Authority.create(directory / "stranger", "stranger CA")
    served = ca.issue("localhost", "127.0.0.1")
    client = ca.issue("budget-client", client=True)
    config = write_config(
        directory,
        Settings(
            nats_server_tls_cert=served.cert,
            nats_server_tls_key=served.key,
            nats_server_tls_ca=ca.ca_file,
        ),
    )
    with EmbeddedNats(directory / "nats", config_file=config, stop_timeout=5.0) as server:
        yield Tls(server, ca, stranger, client, NatsCredentials(directory))


@pytest.fixture
async def connect(tls: Tls) -> AsyncIterator[Any]:
    opened: list[Client] = []

    async def open_with(settings: Settings, **extra: Any) -> Client:
        nc = await connect_nats(
            settings.nats_url,
            within=10,
            allow_reconnect=False,
            **nats_options(settings),
            **extra,
        )
        opened.append(nc)
        return nc

    yield open_with
    for nc in opened:
        await nc.close()


async def test_a_client_trusting_the_ca_with_its_certificate_connects(
    tls: Tls, connect: Any
) -> None:
    settings = tls.settings(
        nats_tls_ca=tls.ca.ca_file, nats_tls_cert=tls.client.cert, nats_tls_key=tls.client.key
    )
    nc = await connect(settings)
    assert nc.connected_server_version.major >= 2
    sub = await nc.subscribe("budget.alerts.>")
    await nc.publish("budget.alerts.info.probe", b"over tls")
    assert (await sub.next_msg(timeout=30)).data == b"over tls"


async def test_a_client_not_trusting_the_ca_is_refused(tls: Tls, connect: Any) -> None:
    settings = tls.settings(
        nats_tls_ca=tls.stranger.ca_file, nats_tls_cert=tls.client.cert, nats_tls_key=tls.client.key
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await connect(settings)


async def test_the_server_must_carry_the_host_name_the_client_expects(
    tls: Tls, connect: Any
) -> None:
    settings = tls.settings(
        nats_tls_ca=tls.ca.ca_file, nats_tls_cert=tls.client.cert, nats_tls_key=tls.client.key
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await connect(settings, tls_hostname="nats.elsewhere.example")


async def test_a_client_without_a_certificate_is_refused_by_the_server(
    tls: Tls, connect: Any
) -> None:
    # TLS 1.3: the server's "certificate required" alert follows the handshake, so the
    # client sees either the alert or the connection it closed (reset, or a broken pipe
    # when it was writing).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(tls.settings(nats_tls_ca=tls.ca.ca_file))


async def test_the_services_broker_connects_over_tls_and_checks_the_server(tls: Tls) -> None:
    """The workers' and services' FastStream broker (``services.worker.broker_options``)
    takes the same settings: with the CA it connects and carries a message; trusting
    another CA it is refused (so it did not fall back to plain text)."""
    trusting = tls.settings(
        nats_tls_ca=tls.ca.ca_file, nats_tls_cert=tls.client.cert, nats_tls_key=tls.client.key
    )
    broker = NatsBroker(trusting.nats_url, allow_reconnect=False, **broker_options(trusting))
    listener = await connect_nats(trusting.nats_url, within=10, **nats_options(trusting))
    try:
        sub = await listener.subscribe("budget.alerts.>")
        await listener.flush()
        await broker.connect()
        await broker.publish(b"from a service", "budget.alerts.info.probe")
        assert (await sub.next_msg(timeout=30)).data == b"from a service"
    finally:
        await broker.stop()
        await listener.close()

    stranger = tls.settings(
        nats_tls_ca=tls.stranger.ca_file, nats_tls_cert=tls.client.cert, nats_tls_key=tls.client.key
    )
    refused = NatsBroker(stranger.nats_url, allow_reconnect=False, **broker_options(stranger))
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await refused.connect()
    finally:
        await refused.stop()

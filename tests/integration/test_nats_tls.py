"""TLS between the ``budget`` clients and the embedded NATS server: the server config of
``budget up`` (``nats_server_tls_*``) and each client's ``nats_tls_*`` settings, with a
throw-away CA made here. A client trusting the CA connects; one that does not, one
expecting another host name, and one without a client certificate are refused. The TLS
handshake comes first: a client with TLS sends nothing in clear to a server that offers
none, and the server says nothing to a client that does not start with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.errors import Error as NatsError
from throwaway_ca import Authority, Issued

from budget.config import Settings
from budget.natsconn import client_tls, connect_nats, nats_options
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
        base = Settings(**{"nats_url": self.server.url, **tls})
        return self.credentials.settings_for("service", base)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    directory = tmp_path_factory.mktemp("tls")
    ca = Authority.create(directory / "ca")
    stranger = Authority.create(directory / "stranger", "stranger CA")
    served = ca.issue("localhost", "127.0.0.1")
    client = ca.issue("budget-client", client=True)
    trusting = Settings(nats_tls_ca=ca.ca_file, nats_tls_cert=client.cert, nats_tls_key=client.key)
    config = write_config(
        directory,
        Settings(
            nats_server_tls_cert=served.cert,
            nats_server_tls_key=served.key,
            nats_server_tls_ca=ca.ca_file,
        ),
    )
    with EmbeddedNats(
        directory / "nats", config_file=config, stop_timeout=5.0, tls=client_tls(trusting)
    ) as server:
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


@dataclass
class PlainServer:
    """A listener that greets each connection with an INFO offering no TLS (as a server
    without TLS, or someone on the path, would) and keeps every byte it is sent. Like
    nats-server, it drops a client whose first bytes are no CONNECT."""

    url: str = ""
    received: list[bytearray] = field(default_factory=list)
    handlers: list[asyncio.Task[None]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        self.received.append(got)
        writer.write(
            b'INFO {"server_id":"FAKE","version":"2.11.0","proto":1,"headers":true,'
            b'"auth_required":true,"max_payload":1048576}\r\n'
        )
        try:
            while chunk := await reader.read(4096):
                got += chunk
                if not got.startswith(b"CONNECT"[: len(got)]):
                    writer.write(b"-ERR 'Unknown Protocol Operation'\r\n")
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def all_closed(self) -> bytes:
        """Everything sent, once each connection is closed (by the client, or dropped);
        what was sent so far if one is still open after 30 s (so the test fails, saying
        what)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*self.handlers)
        return b"".join(self.received)


@pytest.fixture
async def plain_server() -> AsyncIterator[PlainServer]:
    fake = PlainServer()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fake.handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        await fake.serve(reader, writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    fake.url = f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield fake


def _with_tls(tls: Tls, url: str, how: str) -> Settings:
    """``service``'s credential for ``url``, TLS on by the CA setting or by a tls:// URL."""
    if how == "ca":
        return tls.settings(nats_url=url, nats_tls_ca=tls.ca.ca_file)
    return tls.settings(nats_url=url.replace("nats://", "tls://"))


@pytest.mark.parametrize("how", ["ca", "tls-url"])
async def test_a_tls_client_sends_no_password_to_a_server_offering_no_tls(
    tls: Tls, plain_server: PlainServer, how: str
) -> None:
    """nats-py upgrades to TLS when the server's INFO asks for it, and only then: without
    the handshake first, this INFO had it send ``CONNECT {... "pass": ...}`` in clear."""
    settings = _with_tls(tls, plain_server.url, how)
    password = nats_options(settings)["password"]
    with pytest.raises((OSError, NatsError)):
        await connect_nats(
            settings.nats_url, within=5, allow_reconnect=False, **nats_options(settings)
        )
    sent = await plain_server.all_closed()
    assert password.encode() not in sent and b"CONNECT" not in sent
    assert sent.startswith(b"\x16\x03")  # a TLS handshake record: its ClientHello


async def test_the_services_broker_sends_no_password_to_a_server_offering_no_tls(
    tls: Tls, plain_server: PlainServer
) -> None:
    """The same for the workers' and services' FastStream broker."""
    settings = _with_tls(tls, plain_server.url, "ca")
    password = nats_options(settings)["password"]
    broker = NatsBroker(
        settings.nats_url, allow_reconnect=False, connect_timeout=5, **broker_options(settings)
    )
    try:
        with pytest.raises((OSError, NatsError)):
            await broker.connect()
    finally:
        await broker.stop()
    sent = await plain_server.all_closed()
    assert password.encode() not in sent and b"CONNECT" not in sent
    assert sent.startswith(b"\x16\x03")


async def test_the_server_says_nothing_to_a_client_that_does_not_start_with_tls(
    tls: Tls,
) -> None:
    """Its INFO (version, whether it wants a password) comes over TLS only; a client that
    waits for it in clear is dropped with nothing."""
    reader, writer = await asyncio.open_connection(tls.server.host, tls.server.port)
    try:
        async with asyncio.timeout(30):
            said = await reader.read()  # until the server closes the connection
    finally:
        writer.close()
    assert said == b""

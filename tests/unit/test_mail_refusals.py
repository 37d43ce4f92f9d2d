"""What a mail server's refusal means, on a local aiosmtpd: a refused sender, recipient or
content is this message's (``MessageRefused``: the notifier retries it alone and sends the
next); a 421 is the server closing, the channel's (the next alerts wait); a message some
recipients took is sent (sending again would repeat it to them), the others logged."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from budget.config import EmailChannel
from services.mail import MessageRefused, send_mail


class Refusing:
    """Answers ``mail``, ``rcpt`` (by address) and ``data`` as told; 250 otherwise."""

    def __init__(self, mail: str = "", rcpt: dict[str, str] | None = None, data: str = ""):
        self.mail, self.rcpt, self.data = mail, rcpt or {}, data
        self.accepted: list[list[str]] = []

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, *_: Any
    ) -> str:
        if self.mail:
            return self.mail
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, *_: Any
    ) -> str:
        if address in self.rcpt:
            return self.rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data:
            return self.data
        self.accepted.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def port() -> int:
    with socket.socket() as probe:  # aiosmtpd checks its own port, so it cannot be 0
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server(port: int) -> Iterator[Refusing]:
    handler = Refusing()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


async def send(port: int, recipients: tuple[str, ...] = ("ops@example.com",)) -> None:
    config = EmailChannel(
        enabled=True, recipients=recipients, smtp_host="127.0.0.1", smtp_port=port, tls="none"
    )
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = "an alert"
    message.set_content("body")
    await send_mail(config, message)


@pytest.mark.parametrize(
    ("refusal", "why"),
    [
        ({"mail": "553 sender not allowed"}, "SMTPSenderRefused"),
        ({"rcpt": {"ops@example.com": "550 no such user"}}, "SMTPRecipientsRefused"),
        ({"data": "554 content refused"}, "SMTPDataError"),
        ({"data": "452 insufficient storage, try later"}, "SMTPDataError"),
    ],
    ids=["sender", "recipient", "content", "content, for now"],
)
async def test_a_refusal_of_this_message_is_the_messages(
    server: Refusing, port: int, refusal: dict[str, Any], why: str
) -> None:
    vars(server).update(refusal)
    with pytest.raises(MessageRefused, match=f"^{why}: "):
        await send(port)
    assert server.accepted == []


async def test_a_server_closing_is_the_channels(server: Refusing, port: int) -> None:
    server.data = "421 shutting down"
    with pytest.raises(aiosmtplib.SMTPDataError) as failed:
        await send(port)
    assert not isinstance(failed.value, MessageRefused) and failed.value.code == 421


async def test_a_message_some_recipients_took_is_sent(
    server: Refusing, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    server.rcpt = {"gone@example.com": "550 no such user"}
    with caplog.at_level(logging.WARNING, logger="budget.alerts"):
        await send(port, ("ops@example.com", "gone@example.com"))
    assert server.accepted == [["ops@example.com"]]
    assert "gone@example.com" in caplog.text

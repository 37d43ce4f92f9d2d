"""Alert e-mail: a message whose headers hold one line whatever the alert's text holds,
sent over TLS that verifies the server's certificate and name (or in clear, only when
configured ``tls: none``), never falling back to clear text, the whole session within the
channel's ``timeout``."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib

from budget.config import EmailChannel
from budget.one_line import one_line
from events import Alert

__all__ = ["MessageRefused", "alert_message", "send_mail"]

log = logging.getLogger("budget.alerts")
_CLOSING = 421
"""The server's "service not available": a refusal of the connection, not the message."""
_REFUSALS = (
    aiosmtplib.SMTPSenderRefused,
    aiosmtplib.SMTPRecipientsRefused,
    aiosmtplib.SMTPDataError,
)
"""The server's answers to this message's sender, recipients or content."""


class MessageRefused(Exception):
    """The server refused this message (its sender, recipients or content), not the session."""


def alert_message(config: EmailChannel, alert: Alert, payload: bytes) -> EmailMessage:
    """The alert's message. Only the subject carries alert text (user ids, policy names
    and the message may hold anything), made one line; addresses are checked at load."""
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    subject = f"[budget] {alert.severity.value.upper()} {alert.alert_type.value}: {alert.message}"
    message["Subject"] = one_line(subject)[:200]
    message["Message-ID"] = f"<{alert.alert_id}@budget-manager>"
    # Required (RFC 5322), and no client library adds it: without it clients date the alert
    # by its arrival, or not at all, and spam filters score the message (MISSING_DATE).
    message["Date"] = email.utils.format_datetime(datetime.now(UTC))
    message.set_content(f"{alert.message}\n\n{payload.decode()}\n")
    return message


async def send_mail(config: EmailChannel, message: EmailMessage) -> None:
    """Send or raise: ``MessageRefused`` when the server refuses this message, anything
    else (unreachable, a certificate that does not verify, no STARTTLS, a failed login,
    no end within ``config.timeout``) when the session failed."""
    # Verifies the chain (against ca_file only, when set) and that it names smtp_host.
    context = ssl.create_default_context(cafile=config.ca_file)
    smtp = aiosmtplib.SMTP(
        hostname=config.smtp_host,
        port=config.port,
        use_tls=config.tls == "implicit",
        start_tls=False,  # below, only when configured: it raises when not offered
        tls_context=context,
        timeout=config.timeout,
    )
    try:
        try:
            # One deadline for all of it: a timeout per read would let a server that
            # trickles its answers a byte at a time hold the channel for ever.
            async with asyncio.timeout(config.timeout):
                refused = await _deliver(smtp, config, message)
        except TimeoutError:
            raise TimeoutError(
                f"the mail server did not take the message within {config.timeout:g} s"
            ) from None
        # A courtesy, bounded too: the message is delivered, whatever QUIT gets (a server
        # answering it other than 221 has still taken the message; sending it again at each
        # retry would repeat it).
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            async with asyncio.timeout(config.timeout):
                await smtp.quit()
    finally:
        smtp.close()
    if refused:  # delivered to the others; sending again would repeat it to them
        log.warning("alert mail %s not accepted for %s", message["Message-ID"], sorted(refused))


async def _deliver(
    smtp: aiosmtplib.SMTP, config: EmailChannel, message: EmailMessage
) -> dict[str, aiosmtplib.SMTPResponse]:
    """The message sent on a new session; the recipients that refused it."""
    await smtp.connect()
    if config.tls == "starttls":
        await smtp.starttls()  # raises when the server does not offer it
    if config.username:
        password = config.password.get_secret_value() if config.password else ""
        await smtp.login(config.username, password)
    try:
        refused, _ = await smtp.send_message(message)
    except _REFUSALS as exc:
        if _CLOSING in _codes(exc):
            raise
        raise MessageRefused(f"{type(exc).__name__}: {exc}") from exc
    return refused


def _codes(exc: aiosmtplib.SMTPException) -> list[int]:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return [refusal.code for refusal in exc.recipients]
    return [exc.code] if isinstance(exc, aiosmtplib.SMTPResponseException) else []

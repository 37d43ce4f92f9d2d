"""Alert e-mail: a message whose headers hold one line whatever the alert's text holds,
sent over TLS that verifies the server's certificate and name (or in clear, only when
configured ``tls: none``), never falling back to clear text."""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from email.message import EmailMessage

from budget.config import EmailChannel
from budget.one_line import one_line
from events import Alert

__all__ = ["MessageRefused", "alert_message", "send_mail"]

log = logging.getLogger("budget.alerts")
_CLOSING = 421
"""The server's "service not available": a refusal of the connection, not the message."""
_REFUSALS = (smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError)
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
    message.set_content(f"{alert.message}\n\n{payload.decode()}\n")
    return message


def send_mail(config: EmailChannel, message: EmailMessage) -> None:
    """Send or raise: ``MessageRefused`` when the server refuses this message, anything
    else (unreachable, a certificate that does not verify, no STARTTLS, a failed login)
    when the session failed."""
    # Verifies the chain (against ca_file only, when set) and that it names smtp_host.
    context = ssl.create_default_context(cafile=config.ca_file)
    host, port = config.smtp_host, config.port
    smtp = (
        smtplib.SMTP_SSL(host, port, timeout=10, context=context)
        if config.tls == "implicit"
        else smtplib.SMTP(host, port, timeout=10)
    )
    # Not ``with smtp``: its exit raises for a QUIT answered other than 221, after the
    # server took the message (sent again at each retry), or in place of its refusal.
    try:
        if config.tls == "starttls":
            smtp.starttls(context=context)  # raises when the server does not offer it
        if config.username:
            password = config.password.get_secret_value() if config.password else ""
            smtp.login(config.username, password)
        try:
            refused = smtp.send_message(message)
        except _REFUSALS as exc:
            if _CLOSING in _codes(exc):
                raise
            raise MessageRefused(f"{type(exc).__name__}: {exc}") from exc
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()  # a courtesy: what happened to the message is decided
        smtp.close()
    if refused:  # delivered to the others; sending again would repeat it to them
        log.warning("alert mail %s not accepted for %s", message["Message-ID"], sorted(refused))


def _codes(exc: smtplib.SMTPException) -> list[int]:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return [code for code, _ in exc.recipients.values()]
    return [exc.smtp_code] if isinstance(exc, smtplib.SMTPResponseException) else []

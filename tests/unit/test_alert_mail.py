"""Alert e-mail headers hold one line whatever an alert's text holds (a line break in a
user id, a policy name or a message reaches no header of its own), and a message that
cannot be built is this alert's failure, not the channel's."""

from __future__ import annotations

import email
import logging
from uuid import uuid4

import pytest

from budget.config import EmailChannel
from budget.one_line import one_line
from events import Alert, AlertSeverity, AlertType, utc_now
from services.channels import EmailSender, LogSender, Undeliverable
from services.mail import alert_message

CONFIG = EmailChannel(enabled=True, recipients=("ops@example.com",))
BREAKS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\x00"]


def alert(message: str) -> Alert:
    return Alert(
        alert_id=uuid4(),
        alert_type=AlertType.POLICY_VIOLATION,
        severity=AlertSeverity.WARNING,
        rule_id="default-policy-violation",
        rule_name="Policy violation",
        message=message,
        raised_at=utc_now(),
    )


@pytest.mark.parametrize("line_break", BREAKS)
def test_one_line_leaves_no_break_of_any_kind(line_break: str) -> None:
    text = f"user bob{line_break}Bcc: eve@example.com{line_break}{line_break} x"
    assert one_line(text) == "user bob Bcc: eve@example.com x"


@pytest.mark.parametrize("line_break", BREAKS)
def test_alert_text_reaches_no_header_of_its_own(line_break: str) -> None:
    sent = alert(f"user bob{line_break}Bcc: eve@example.com{line_break}{line_break}forged body")
    message = alert_message(CONFIG, sent, sent.model_dump_json().encode())
    received = email.message_from_bytes(message.as_bytes())
    assert sorted(received.keys()) == sorted(
        [
            "From",
            "To",
            "Subject",
            "Message-ID",
            "Date",
            "Content-Type",
            "Content-Transfer-Encoding",
            "MIME-Version",
        ]
    )
    subject = " ".join(str(received["Subject"]).split())  # unfolded
    assert subject == (
        "[budget] WARNING policy_violation: user bob Bcc: eve@example.com forged body"
    )
    assert received["To"] == "ops@example.com"


async def test_a_message_that_cannot_be_built_is_undeliverable() -> None:
    unencodable = alert("half a character: \ud800")  # no charset can carry it
    with pytest.raises(Undeliverable, match="UnicodeEncodeError"):
        await EmailSender(CONFIG).send(unencodable, b"{}", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("line_break", BREAKS)
async def test_the_log_channel_writes_one_line_whatever_the_alerts_text(
    line_break: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A host app's user id in an alert's message (escape sequences, line breaks) forges
    no log line and sends nothing to the terminal reading the log."""
    sent = alert(f"user bob\x1b]0;pwned\x07\x1b[2J{line_break}FAKE critical limit_exceeded")
    with caplog.at_level(logging.WARNING, logger="budget.alerts"):
        await LogSender("warning").send(sent, b"", None)  # type: ignore[arg-type]
    [record] = caplog.records
    logged = record.getMessage()
    assert logged.endswith("user bob ]0;pwned [2J FAKE critical limit_exceeded"), logged
    assert all(c.isprintable() for c in logged)

"""Alert e-mail over TLS, on a real SMTP server (aiosmtpd) whose certificate a throw-away
CA signs: a server the configured CA signed for the host goes on (STARTTLS with a login,
or SMTPS); one whose certificate names another host, one signed by a CA not configured,
and one that offers no STARTTLS are refused, and the alert stays queued, not sent in
clear (each of these servers would take it in clear)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from nats.aio.client import Client
from throwaway_ca import Authority

from budget.config import Settings
from events import Topology
from services.notifier import NotifierConfig

from alerting import Mailbox, notifier, outbox, queue_alerts, smtp_server
from support import rows, wait_for

pytestmark = pytest.mark.integration
LOGIN, PASSWORD = "notifier", "smtp-password"


@pytest.fixture
def ca(tmp_path: Path) -> Authority:
    return Authority.create(tmp_path / "ca")


def email_settings(
    nats_url: str, db: str, topology: Topology, tmp_path: Path, box: Mailbox, **email: Any
) -> Settings:
    return Settings.model_validate(
        {
            "nats_url": nats_url,
            "database_url": db,
            "subject_prefix": topology.prefix,
            "spool_dir": tmp_path / "spool",
            "alert_channels": {
                "email": {
                    "enabled": True,
                    "recipients": ["ops@example.com"],
                    "smtp_host": "127.0.0.1",
                    "smtp_port": box.port,
                    **email,
                },
            },
        }
    )


def accept_the_notifier(
    server: object, session: object, envelope: object, mechanism: str, auth_data: Any
) -> AuthResult:
    given = auth_data if isinstance(auth_data, LoginPassword) else None
    success = given is not None and (given.login, given.password) == (
        LOGIN.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=success)


LOGGED_IN = {"username": LOGIN, "password": PASSWORD}


def login_recorded(logins: list[str]) -> dict[str, Any]:
    """An SMTP server's options that offer AUTH even in clear and record every attempt."""

    def record(
        server: object, session: object, envelope: object, mechanism: str, auth_data: Any
    ) -> AuthResult:
        logins.append(mechanism)
        return AuthResult(success=True)

    return {"authenticator": record, "auth_require_tls": False}


async def mailed(nc: Client, db: str, settings: Settings, box: Mailbox) -> None:
    """Queue an alert for e-mail and see the notifier deliver it."""
    ids = await queue_alerts(db, 1, channel="email")
    async with notifier(nc, settings, NotifierConfig()):

        async def sent() -> bool:
            """the server took the alert and the notifier recorded it sent"""
            return len(box.messages) == 1 and [r[2] for r in await outbox(db)] == ["sent"]

        await wait_for(sent, within=30)
    assert box.messages[0]["Message-ID"] == f"<{ids[0]}@budget-manager>"


async def test_starttls_to_a_server_the_ca_signed_logs_in_and_sends(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path, ca: Authority
) -> None:
    with smtp_server(
        tls_context=ca.server_context("127.0.0.1"),
        require_starttls=True,
        auth_required=True,  # and only over TLS: aiosmtpd's default
        authenticator=accept_the_notifier,
    ) as box:
        settings = email_settings(
            nats_url,
            db,
            topology,
            tmp_path,
            box,
            tls="starttls",
            ca_file=str(ca.ca_file),
            username=LOGIN,
            password=PASSWORD,
        )
        await mailed(nc, db, settings, box)


async def test_smtps_to_a_server_the_ca_signed_sends(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path, ca: Authority
) -> None:
    with smtp_server(ssl_context=ca.server_context("127.0.0.1")) as box:
        settings = email_settings(
            nats_url, db, topology, tmp_path, box, tls="implicit", ca_file=str(ca.ca_file)
        )
        await mailed(nc, db, settings, box)


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
@pytest.mark.parametrize(
    ("signer", "host", "why"),
    [
        ("configured CA", "mail.example.com", "IP address mismatch"),
        ("another CA", "127.0.0.1", "unable to get local issuer certificate"),
    ],
)
async def test_a_server_whose_certificate_does_not_verify_gets_nothing(
    nc: Client,
    nats_url: str,
    db: str,
    topology: Topology,
    tmp_path: Path,
    ca: Authority,
    tls: str,
    signer: str,
    host: str,
    why: str,
) -> None:
    issuer = ca if signer == "configured CA" else Authority.create(tmp_path / "other", "other")
    context = issuer.server_context(host)
    server = {"ssl_context": context} if tls == "implicit" else {"tls_context": context}
    logins: list[str] = []
    # it would take mail, and a login, in clear too
    with smtp_server(**server, **login_recorded(logins)) as box:
        settings = email_settings(
            nats_url, db, topology, tmp_path, box, tls=tls, ca_file=str(ca.ca_file), **LOGGED_IN
        )
        await refused(nc, db, settings, box, why)
    assert logins == []  # the password never reached it


async def test_a_server_offering_no_starttls_gets_nothing(
    nc: Client, nats_url: str, db: str, topology: Topology, tmp_path: Path, ca: Authority
) -> None:
    """E.g. someone on the path stripped STARTTLS from the server's answer: it offers a
    login in clear, and gets none."""
    logins: list[str] = []
    with smtp_server(**login_recorded(logins)) as box:
        settings = email_settings(
            nats_url,
            db,
            topology,
            tmp_path,
            box,
            tls="starttls",
            ca_file=str(ca.ca_file),
            **LOGGED_IN,
        )
        await refused(nc, db, settings, box, "STARTTLS extension not supported")
    assert logins == []


async def refused(nc: Client, db: str, settings: Settings, box: Mailbox, why: str) -> None:
    """Queue an alert for e-mail: the notifier tries, fails for ``why`` and keeps it queued."""
    await queue_alerts(db, 1, channel="email")
    async with notifier(nc, settings, NotifierConfig(max_backoff=0.5)):

        async def tried() -> bool:
            """the notifier tried twice and recorded why it failed"""
            found = await rows(db, "SELECT status, attempts, last_error FROM alert_outbox")
            return found[0][1] >= 2 and why in (found[0][2] or "")

        await wait_for(tried, within=30)
    assert [r[2] for r in await outbox(db)] == ["pending"]
    assert box.messages == []

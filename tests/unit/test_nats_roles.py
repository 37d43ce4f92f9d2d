"""The NATS roles (events.permissions) and the client options built from settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from budget.config import ConfigError, Settings
from budget.natsconn import client_tls, nats_options, refusal_message
from events import Topology
from events.permissions import roles_allowed, subject_matches
from services.nats_config import stack_client_tls

TOPOLOGY = Topology(prefix="acme")


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("acme.>", "acme.events.usage.recorded", True),
        ("acme.>", "acme", False),
        ("acme.*.x", "acme.rpc.x", True),
        ("acme.*.x", "acme.rpc.y.x", False),
        ("acme.events.usage.recorded", "acme.events.usage.recorded", True),
        ("acme.events.usage.recorded", "acme.events.usage", False),
    ],
)
def test_subject_matching_follows_nats_wildcards(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


def test_roles_say_who_may_publish_what() -> None:
    # never a process's own (the enforcer's, the notifier's): no credential to hand out
    assert roles_allowed("acme.events.policy.set", topology=TOPOLOGY) == ["service"]
    assert roles_allowed("acme.alerts.critical.x", topology=TOPOLOGY) == ["service"]
    # usage: a host on its own subject only; the bare one, where earlier releases
    # published, is the services'
    assert roles_allowed("acme.events.usage.recorded", topology=TOPOLOGY) == ["service"]
    assert roles_allowed("acme.events.usage.recorded.team-b", topology=TOPOLOGY) == [
        "service",
        "host",
    ]
    assert roles_allowed("acme.events.usage.recorded.team-b.x", topology=TOPOLOGY) == ["service"]
    assert roles_allowed("acme.rpc.team-b.enforcer.check", topology=TOPOLOGY) == [
        "service",
        "host",
    ]
    assert roles_allowed("acme.alerts.critical.x", topology=TOPOLOGY, publish=False) == [
        "service",
        "alerts",
    ]
    assert roles_allowed("$JS.API.STREAM.INFO.ACME", topology=TOPOLOGY) == ["service"]
    # as nats-py reports a refusal: lowercased
    assert roles_allowed("$js.api.stream.info.acme", topology=TOPOLOGY) == ["service"]
    # making and changing streams: budget migrate's admin, never the running services
    for change in ("CREATE", "UPDATE", "RESTORE"):
        assert roles_allowed(f"$JS.API.STREAM.{change}.ACME", topology=TOPOLOGY) == ["admin"]
    for wipe in ("DELETE", "PURGE", "MSG.DELETE"):
        assert roles_allowed(f"$JS.API.STREAM.{wipe}.ACME", topology=TOPOLOGY) == []
    assert roles_allowed("$JS.API.CONSUMER.DELETE.ACME.spend-v1", topology=TOPOLOGY) == ["service"]


def test_a_refusal_names_the_credential_and_the_one_that_may() -> None:
    assert refusal_message("acme.events.policy.deleted", topology=TOPOLOGY, user="host") == (
        "the NATS user 'host' may not publish to acme.events.policy.deleted; only a 'service'"
        " credential may (BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE, or nats_user and"
        " nats_password_file in config.yaml; see docs/security.md)"
    )


def test_a_refusal_of_a_stream_change_names_the_admin_credential() -> None:
    assert refusal_message("$JS.API.STREAM.UPDATE.ACME", topology=TOPOLOGY, user="service") == (
        "the NATS user 'service' may not publish to $JS.API.STREAM.UPDATE.ACME; only an"
        " 'admin' credential may (BUDGET_NATS_USER and BUDGET_NATS_PASSWORD_FILE, or nats_user"
        " and nats_password_file in config.yaml; see docs/security.md)"
    )


def test_options_carry_the_user_its_inbox_and_the_password_file(tmp_path: Path) -> None:
    password = tmp_path / "nats-host.password"
    password.write_text("s3cret\n")
    settings = Settings(
        nats_user="host", nats_password=SecretStr("ignored"), nats_password_file=password
    )
    assert nats_options(settings) == {
        "user": "host",
        "inbox_prefix": "_INBOX.host",
        "password": "s3cret",
    }
    assert nats_options(Settings()) == {}
    assert "s3cret" not in repr(Settings(nats_password=SecretStr("s3cret")))


def test_an_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BUDGET_NATS_PASSWORD_FILE"):
        nats_options(Settings(nats_user="host", nats_password_file=tmp_path / "missing"))


def test_tls_certificates_and_keys_go_in_pairs() -> None:
    with pytest.raises(ValidationError, match="nats_tls_cert and nats_tls_key go together"):
        Settings(nats_tls_cert=Path("client.pem"))
    with pytest.raises(ValidationError, match="nats_server_tls_ca needs"):
        Settings(nats_server_tls_ca=Path("ca.pem"))


def test_with_tls_the_handshake_comes_first() -> None:
    """A tls:// URL turns TLS on as nats_tls_ca does (verified by the system's CAs), and
    the client starts with the handshake: nats-py otherwise speaks TLS only if the
    server's INFO asks for it (tests/integration/test_nats_tls.py)."""
    options = nats_options(Settings(nats_url="tls://nats.example:4222"))
    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["tls"].verify_mode == ssl.CERT_REQUIRED and options["tls"].check_hostname
    assert options["tls_handshake_first"] is True
    assert client_tls(Settings(nats_url="nats://a:4222,TLS://b:4222")) is not None
    assert "tls_handshake_first" not in nats_options(Settings(nats_url="nats://a:4222"))


def test_budget_up_with_a_tls_server_needs_its_clients_tls_settings() -> None:
    """The server says nothing to a client not starting with TLS, and the stack's own
    workers connect with the client settings: without them, one line says so."""
    server = {"nats_server_tls_cert": Path("s.pem"), "nats_server_tls_key": Path("s.key")}
    with pytest.raises(ConfigError, match=r"set nats_tls_ca \(BUDGET_NATS_TLS_CA\)"):
        stack_client_tls(Settings(**server))
    assert stack_client_tls(Settings(nats_url="tls://127.0.0.1:4222", **server)) is not None
    assert stack_client_tls(Settings()) is None

"""The e-mail and webhook channels' configuration: a signed webhook goes in clear only to
loopback or when the operator says so, addresses are one address each, the TLS mode picks
the port, and neither secret shows in a repr, a str or a config error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from budget.config import AlertChannels, ConfigError, EmailChannel, WebhookChannel, load_settings

SECRET = "hook-secret-canary"
PASSWORD = "smtp-password-canary"


def webhook(url: str, **options: object) -> WebhookChannel:
    return WebhookChannel.model_validate({"enabled": True, "url": url, "secret": SECRET, **options})


def load(tmp_path: Path, channels: str) -> AlertChannels:
    path = tmp_path / "config.yaml"
    path.write_text(f"alert_channels:\n{channels}")
    return load_settings(path, environ={}).alert_channels


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example/alerts",
        "http://127.0.0.1:8080/alerts",
        "http://127.8.0.1/alerts",
        "http://[::1]:8080/alerts",
        "http://localhost/alerts",
    ],
)
def test_a_signed_webhook_goes_over_https_or_to_loopback(url: str) -> None:
    assert webhook(url).url == url


def test_a_signed_webhook_in_clear_to_another_host_is_one_clear_line(tmp_path: Path) -> None:
    channels = f"  webhook: {{enabled: true, url: 'http://hooks.example/a', secret: {SECRET}}}\n"
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, channels)
    message = str(refused.value)
    assert message.startswith("alert_channels.webhook in ")
    assert "plain http://" in message and "allow_insecure_http: true" in message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize("url", ["http://hooks.example/a", "http://localhost.example/a"])
def test_the_operator_may_allow_a_signed_webhook_in_clear(url: str) -> None:
    with pytest.raises(ValueError, match="plain http://"):
        webhook(url)
    assert webhook(url, allow_insecure_http=True).allow_insecure_http


def test_an_unsigned_or_disabled_webhook_in_clear_is_not_refused() -> None:
    assert WebhookChannel(enabled=True, url="http://hooks.example/a").secret is None
    assert not webhook("http://hooks.example/a", enabled=False).enabled


TOKEN = "T0KEN-canary"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://", "names no host"),
        ("https:///services/T0KEN-canary", "names no host"),
        ("https://hooks.example:443x/services/T0KEN-canary", "malformed host or port"),
        ("https://hooks.example:70000/services/T0KEN-canary", "malformed host or port"),
        ("https://[::1/services/T0KEN-canary", "malformed host or port"),
        ("https://hooks.example/services/T0KEN-canary ", "space or a control character"),
        ("https://hooks.example/services/T0KEN-canary\t", "space or a control character"),
    ],
)
def test_a_webhook_url_no_request_can_go_to_is_one_clear_line_without_it(
    tmp_path: Path, url: str, why: str
) -> None:
    """Accepted, it failed each send as if the receiver were down (for a day per alert),
    and a space in its path put the path, the receiver's token, in every last_error."""
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, f"  webhook: {{enabled: true, url: {json.dumps(url)}}}\n")
    message = str(refused.value)
    assert message.startswith("alert_channels.webhook in ") and why in message
    assert TOKEN not in message and "\n" not in message
    assert not WebhookChannel(url=url).enabled  # a disabled one is not looked at


@pytest.mark.parametrize(
    "address", ["ops@example.com\nBcc: eve@example.com", "ops@example.com\r", "nobody", ""]
)
def test_an_address_is_one_address(address: str) -> None:
    with pytest.raises(ValueError, match="is not one e-mail address"):
        EmailChannel(recipients=(address,))
    with pytest.raises(ValueError, match="is not one e-mail address"):
        EmailChannel(sender=address)
    assert EmailChannel(recipients=("Ops <ops@example.com>",)).recipients


@pytest.mark.parametrize(
    ("options", "port"),
    [({}, 25), ({"tls": "implicit"}, 465), ({"tls": "implicit", "smtp_port": 2465}, 2465)],
)
def test_the_port_follows_the_tls_mode_unless_given(options: dict[str, object], port: int) -> None:
    assert EmailChannel.model_validate(options).port == port


def test_mail_is_sent_over_starttls_unless_configured_otherwise() -> None:
    assert EmailChannel().tls == "starttls" and EmailChannel().ca_file is None


def test_the_secrets_show_in_no_repr_str_or_dump(tmp_path: Path) -> None:
    channels = load(
        tmp_path,
        f"  webhook: {{enabled: true, url: 'https://hooks.example/a', secret: {SECRET}}}\n"
        f"  email: {{enabled: true, recipients: [ops@example.com], password: {PASSWORD}}}\n",
    )
    shown = [repr(channels), str(channels), str(channels.model_dump()), channels.model_dump_json()]
    assert not any(SECRET in text or PASSWORD in text for text in shown)
    assert channels.webhook.secret and channels.webhook.secret.get_secret_value() == SECRET
    assert channels.email.password and channels.email.password.get_secret_value() == PASSWORD


def test_an_smtp_login_in_clear_goes_to_loopback_only_unless_allowed(tmp_path: Path) -> None:
    login = {"enabled": True, "recipients": ("ops@example.com",), "tls": "none"}
    login |= {"username": "budget", "password": PASSWORD}
    assert EmailChannel.model_validate({**login, "smtp_host": "127.0.0.1"}).tls == "none"
    channels = "  email: {enabled: true, recipients: [ops@example.com], tls: none,"
    channels += f" smtp_host: mail.example, username: budget, password: {PASSWORD}}}\n"
    with pytest.raises(ConfigError) as refused:
        load(tmp_path, channels)
    message = str(refused.value)
    assert "tls: none to another host" in message and "allow_insecure_login: true" in message
    assert PASSWORD not in message
    allowed = {**login, "smtp_host": "mail.example", "allow_insecure_login": True}
    assert EmailChannel.model_validate(allowed).allow_insecure_login
    assert EmailChannel(recipients=("ops@example.com",), tls="none", smtp_host="mail.example")

"""Redaction: credential patterns and known secret values become ``***`` in messages, config
errors, a settings repr, log records and uncaught tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from budget.config import AlertChannels, ConfigError, Settings, load_settings, shown_url
from budget.publisher import PublisherConfig
from budget.redaction import holds_secret, protect, redact, secrets_of
from services.notifier import _reason

from support import ROOT


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://u:hunter22@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("nats://a:p1@h1:4222,nats://b:p2@h2", "nats://a:***@h1:4222,nats://b:***@h2"),
        ("tls://a:p%40ss@h", "tls://a:***@h"),
        ("nats://svc:p@ssw0rd-long@127.0.0.1:4222", "nats://svc:***@127.0.0.1:4222"),
        ("nats://u:a/b,c@host", "nats://u:***@host"),
        ("postgresql://u:a@b:c/d+e%f@h/db", "postgresql://u:***@h/db"),
        ("a:hunter22@127.0.0.1:4222", "a:***@127.0.0.1:4222"),
        ("(got ['nats://u:hunter22@h'])", "(got ['nats://u:***@h'])"),
        (
            "postgresql://h/db?sslmode=require&password=hunter22",
            "postgresql://h/db?sslmode=require&password=***",
        ),
        ("host=h password=hunter22 user=u", "host=h password=*** user=u"),
        # libpq's passphrase of the client certificate's key
        ("postgresql://u@h/db?sslpassword=hunter22", "postgresql://u@h/db?sslpassword=***"),
        ("host=h sslpassword = 'hunter 22'", "host=h sslpassword = ***"),
        # libpq's key = value form: spaces around =, a quoted value (escapes in it)
        ("host=h password = hunter22 user=u", "host=h password = *** user=u"),
        ("host=h password='s3cret pw' port=5", "host=h password=*** port=5"),
        ("password='it\\'s mine' port=5", "password=*** port=5"),
        ("key bmk_0a1b2c3d4e5f_Zm9vYmFy-_x", "key bmk_0a1b2c3d4e5f_***"),
        # base64 (openssl rand -base64) holds '/' and '+'; a NATS token is the user part
        ("postgresql://u:ab/cd+ef==@h/db", "postgresql://u:***@h/db"),
        ("nats://u:x/y@h:4222", "nats://u:***@h:4222"),
        ("nats://s3cr3tt0ken@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        # a URL quoted in Markdown, a brace or a table: as after a quote or a bracket
        ("`postgresql://u:hunter22@h/db`", "`postgresql://u:***@h/db`"),
        ("{nats://u:hunter22@h}", "{nats://u:***@h}"),
        ("|nats://u:hunter22@h|", "|nats://u:***@h|"),
        # an environment variable's assignment (libpq's PGPASSWORD, this project's own)
        ("PGPASSWORD=hunter22 psql", "PGPASSWORD=*** psql"),
        ("export BUDGET_NATS_PASSWORD=hunter22", "export BUDGET_NATS_PASSWORD=***"),
        # a JSON password field (NATS's CONNECT names it "pass")
        ('{"user": "u", "pass": "hunter22"}', '{"user": "u", "pass": "***"}'),
        ('{"password":"hun\\"ter22","x":1}', '{"password":"***","x":1}'),
        # Not credentials: left as they are.
        ("nats_password_file=/run/secrets/nats", "nats_password_file=/run/secrets/nats"),
        ("the password is wrong", "the password is wrong"),
        ("http://host:8080/path@x", "http://host:8080/path@x"),
        ("nats://h1:4222,nats://h2:4222", "nats://h1:4222,nats://h2:4222"),
        (
            "postgresql://postgres@/budget?host=/tmp/pg",
            "postgresql://postgres@/budget?host=/tmp/pg",
        ),
        ("at 12:30 bob@example.com", "at 12:30 bob@example.com"),
    ],
)
def test_credential_patterns_are_masked(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert shown_url(text) == shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("s3cr3tt0ken@127.0.0.1:4222", "***@127.0.0.1:4222"),
        ("s3cr3tt0ken@nats.example", "***@nats.example"),
        ("nats://u:pw@h1:4222, s3cr3tt0ken@h2:4222", "nats://u:***@h1:4222, ***@h2:4222"),
        ("p@ss@h:4222", "***@h:4222"),
        # A password written with a space (a pass phrase, not percent-encoded): nats-py
        # takes it, and redact's patterns, made for text, end a URL at a space.
        ("nats://u:correct horse@127.0.0.1:4222", "nats://u:***@127.0.0.1:4222"),
        ("u:correct horse@127.0.0.1:4222", "u:***@127.0.0.1:4222"),
        ("nats://a:p@h1,nats://u:a b@c@h2:4222", "nats://a:***@h1,nats://u:***@h2:4222"),
        # Not tokens: a user with a password (masked as such), none, or a scheme's URL.
        ("u:hunter22@h:4222", "u:***@h:4222"),
        ("h1:4222,h2:4222", "h1:4222,h2:4222"),
        ("postgresql://postgres@h/db", "postgresql://postgres@h/db"),
    ],
)
def test_a_url_shows_no_credential_that_patterns_for_text_miss(url: str, shown: str) -> None:
    """Every message naming a server shows its URL (``shown_url``). nats-py reads
    ``token@host`` as ``nats://token@host``: the user part alone is a token; and a URL's
    password may hold a space."""
    assert shown_url(url) == shown


def test_a_settings_secrets_are_its_secret_fields_and_url_passwords() -> None:
    settings = Settings(
        nats_url="nats://u:natspass@h:4222",
        database_url="postgresql://u:dbpass@h/db",
        api_session_secret=SecretStr("session-secret"),
        metrics_token=SecretStr("metrics-token"),
        alert_channels=AlertChannels.model_validate(
            {
                "webhook": {"secret": "hook-secret", "url": HOOK},
                "email": {"password": "smtp-pass"},
            }
        ),
    )
    assert sorted(secrets_of(settings)) == sorted(
        ["natspass", "dbpass", "session-secret", "metrics-token", "hook-secret", "smtp-pass", HOOK]
    )
    for secret in secrets_of(settings):
        if secret != HOOK:  # a plain text field: masked wherever it is shown, not hidden
            assert secret not in repr(settings)
            assert secret not in str(settings)


def test_a_publishers_config_shows_no_nats_password() -> None:
    """The tracker's publisher holds the NATS URL and options: a traceback's locals or a
    debugger showing its config show neither password."""
    in_url = Settings(nats_url="nats://u:natspass@h:4222")
    in_field = Settings(nats_url="nats://h:4222", nats_user="u", nats_password=SecretStr("pw2"))
    shown = repr(PublisherConfig.from_settings(in_url))
    assert "nats_url='nats://u:***@h:4222'" in shown and "spool_dir=" in shown
    assert "natspass" not in shown
    assert "pw2" not in repr(PublisherConfig.from_settings(in_field))


HOOK = "https://hooks.slack.com/services/T0001/B0002/XXXXsecrettokenXXXX"


def test_a_webhook_urls_token_never_reaches_a_log() -> None:
    """Its token is in its path (Slack's, Discord's), not a password: the whole URL is
    one of the settings' secrets, masked wherever it appears."""
    protect(*secrets_of(AlertChannels.model_validate({"webhook": {"url": HOOK}})))
    assert redact(f"delivery to {HOOK} failed: 500") == "delivery to *** failed: 500"


@pytest.mark.parametrize(
    ("loc", "secret"),
    [
        (("api_session_secret",), True),
        (("alert_channels", "webhook", "secret"), True),
        (("alert_channels", "webhook", "url"), True),
        (("alert_channels", "email", "password", 0), True),
        (("alert_channels", "email", "username"), False),
        (("database_url",), False),
        (("policies", 0, "name"), False),
        ((), False),
    ],
)
def test_a_secret_field_is_found_by_its_type(loc: tuple[int | str, ...], secret: bool) -> None:
    assert holds_secret(Settings, loc) is secret


@pytest.mark.parametrize(
    "document",
    [
        "alert_channels:\n  webhook:\n    secret: [hunter22]\n",
        "alert_channels:\n  webhook:\n    url: [https://hooks.example/T0/hunter22]\n",
        "alert_channels:\n  email:\n    password: {x: hunter22}\n",
        "budget:\n  api_session_secret: 12345678\n",
        "budget:\n  database_url: ['postgresql://u:hunter22@h/db']\n",
        "budget:\n  subject_prefix: 'nats://u:hunter22@h'\n",
        # PyYAML quotes the line it cannot read; a misspelled key is not known as secret
        "alert_channels:\n  email:\n    password: hunter22: x\n",
        "alert_channels:\n  email:\n    smtp_password: hunter22\n",
    ],
)
def test_a_config_error_never_echoes_a_secret(tmp_path: Path, document: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(document)
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert "hunter22" not in str(raised.value) and "12345678" not in str(raised.value)


def test_an_installed_process_redacts_its_logs_and_tracebacks() -> None:
    """In a child process: the redaction is process-wide, and meant to be."""
    script = (
        "import logging\n"
        "from budget.redaction import install_redaction\n"
        "install_redaction(['known-secret-value'])\n"
        "logging.basicConfig(format='%(message)s')\n"
        "log = logging.getLogger('t')\n"
        "log.warning('args: %s', 'known-secret-value')\n"
        "log.warning('url: postgresql://u:hunter22@h/db')\n"
        "try:\n"
        "    raise RuntimeError('caught known-secret-value')\n"
        "except RuntimeError:\n"
        "    log.exception('failed')\n"
        "raise RuntimeError('uncaught known-secret-value')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    for seen in ("args: ***", "url: postgresql://u:***@h/db", "caught ***", "uncaught ***"):
        assert seen in done.stderr, done.stderr
    assert "known-secret-value" not in done.stderr and "hunter22" not in done.stderr


def test_a_failed_deliverys_recorded_reason_is_redacted() -> None:
    """``last_error`` is shown by `budget alerts show`, the API and the query service."""
    why = _reason(OSError("cannot reach smtp://mailer:hunter22@mail.example:25"))
    assert "hunter22" not in why and why.startswith("OSError: cannot reach smtp://mailer:***@")

"""Configuration: config.yaml keys, BUDGET_* overrides, one clear line when wrong."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from budget.config import ConfigError, Settings, load_settings
from budget.server_urls import nats_servers, nats_url_problem


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_seed_keys_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, "budget:\n  flush_interval: 30\n  default_limit: 250.50\n")
    settings = load_settings(path, environ={})
    assert settings.flush_interval == 30
    assert settings.default_limit == Decimal("250.50")


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("1e50", "less than or equal to 1000000000000000"),
        ("0." + "1" * 41, "no more than 40 decimal places"),
        ("-1", "greater than or equal to 0"),
    ],
)
def test_the_default_limit_is_bounded_as_a_policy_limit_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, why: str
) -> None:
    """It becomes the per-user policy: a value no policy may have is refused at once, not
    when the enforcer publishes that policy."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"BUDGET_DEFAULT_LIMIT: .*{why}"):
        load_settings(environ={"BUDGET_DEFAULT_LIMIT": value})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "budget:\n  nats_url: nats://file:4222\n")
    settings = load_settings(path, environ={"BUDGET_NATS_URL": "nats://env:4222"})
    assert settings.nats_url == "nats://env:4222"


def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    with pytest.raises(ConfigError, match=r"^environment variable BUDGET_CACHE_TTL: .*-1"):
        load_settings(environ={"BUDGET_CACHE_TTL": "-1"})


@pytest.mark.parametrize(("value", "taken"), [("0", 0.0), ("15", 15.0), ("90.5", 90.5)])
def test_a_hung_process_is_restarted_after_heartbeats_missed_or_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, taken: float
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={"BUDGET_RESTART_HUNG_AFTER": value})
    assert settings.restart_hung_after == taken


@pytest.mark.parametrize("value", ["5", "14.9", "-1"])
def test_a_wait_that_would_restart_healthy_processes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Healthy services touch their heartbeat every 5 s: under 15 s, a busy one could be
    killed between two touches."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^environment variable BUDGET_RESTART_HUNG_AFTER: "):
        load_settings(environ={"BUDGET_RESTART_HUNG_AFTER": value})


def test_bad_file_value_names_the_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "budget:\n  default_action: explode\n")
    with pytest.raises(ConfigError, match=r"budget\.default_action in .*config\.yaml"):
        load_settings(path, environ={})


def test_a_named_config_file_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "budget: [unclosed\n"), environ={})


def test_price_overrides_are_validated(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "budget:\n  price_overrides:\n    - {provider: openai, model: ft, rates: {output_text: 2},"
        " effective_from: 2026-02-01, effective_to: 2026-01-01}\n",
    )
    with pytest.raises(ConfigError, match="effective_to"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{provider: opnai, model: gpt-4o, rates: {output_text: 2}, effective_from: 2026-01-01}",
            r"budget\.price_overrides\.0\.provider in .*config\.yaml: unknown provider 'opnai':"
            " did you mean 'openai'",
        ),
        (
            "{provider: openai, model: gpt-4o, rates: {output_text: 2000000},"
            " effective_from: 2026-01-01}",
            r"budget\.price_overrides\.0\.rates in .*: output_text 2000000 is above any real"
            " price",
        ),
        (
            "{provider: openai, model: gpt-4o-mnii, rates: {output_text: 2},"
            " effective_from: 2026-01-01}",
            r"budget\.price_overrides\.0 in .*config\.yaml: unknown model 'gpt-4o-mnii' of"
            " provider 'openai': did you mean 'gpt-4o-mini'",
        ),
    ],
)
def test_a_price_override_mistake_is_named(tmp_path: Path, entry: str, message: str) -> None:
    path = write(tmp_path, f"budget:\n  price_overrides:\n    - {entry}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ={})


def test_budget_policies_are_read_with_stable_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "budget: {}\nbudget_policies:\n"
        "  - name: Global Monthly Budget\n    scope: global\n    period: monthly\n"
        "    limit_amount: 500.00\n    action: block\n",
    )
    [policy] = load_settings(path, environ={}).policies
    assert policy.policy_id == "config-global-monthly-budget"
    assert policy.limit_amount == Decimal("500.00") and policy.action == "block"
    assert load_settings(path, environ={}).policies == (policy,)


def test_any_policy_name_gets_its_own_valid_id(tmp_path: Path) -> None:
    names = ["Équipe", "Equipe", "日本チーム", "x" * 200]
    path = write(
        tmp_path,
        "budget_policies:\n"
        + "".join(f"  - name: {name}\n    limit_amount: 1\n" for name in names),
    )
    ids = [p.policy_id for p in load_settings(path, environ={}).policies]
    assert ids[0].startswith("config-equipe-") and ids[1] == "config-equipe"
    assert len(set(ids)) == 4 and all(len(i) <= 100 for i in ids)
    assert [p.policy_id for p in load_settings(path, environ={}).policies] == ids


def test_bad_budget_policy_names_the_entry_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "budget_policies:\n  - name: x\n    limit_amount: -5\n")
    with pytest.raises(ConfigError, match=r"^budget_policies\[0\]\.limit_amount in .*config.yaml"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timezone", "localtime", "time zone 'localtime' is this host's own"),
        ("timezone", "Factory", "unknown time zone 'Factory'; use an IANA name"),
        ("timezone", "right/Europe/Berlin", "unknown time zone 'right/Europe/Berlin'"),
        ("scope_key", "''", "must not be empty"),
    ],
)
def test_a_budget_policy_no_other_input_may_set_is_refused(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    """A zone ``ZoneInfo`` loads but that is no IANA name (another on each host, or
    counting leap seconds), or an empty key, is refused as the API and CLI refuse it:
    one line naming the entry, the field and the value."""
    path = write(
        tmp_path,
        f"budget_policies:\n  - name: x\n    scope: user\n    limit_amount: 1\n"
        f"    {field}: {value}\n",
    )
    where = rf"^budget_policies\[0\]\.{field} in .*config.yaml: "
    with pytest.raises(ConfigError, match=where + re.escape(message)) as caught:
        load_settings(path, environ={})
    assert "\n" not in str(caught.value) and "(got " in str(caught.value)


def test_alert_channels_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "alert_channels:\n  webhook:\n    enabled: true\n    url: https://hooks.example/x\n"
        "  log:\n    level: error\n",
    )
    channels = load_settings(path, environ={}).alert_channels
    assert channels.enabled("webhook") and channels.webhook.url == "https://hooks.example/x"
    assert channels.log.level == "error" and channels.enabled("ui")
    assert not channels.enabled("email")


def test_enabled_email_without_recipients_is_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "alert_channels:\n  email:\n    enabled: true\n")
    with pytest.raises(ConfigError, match=r"^alert_channels\.email in .*: .*no recipients"):
        load_settings(path, environ={})


def test_the_event_time_bounds_come_from_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, "budget:\n  max_clock_skew: 60\n")
    bounds = load_settings(path, environ={"BUDGET_MAX_EVENT_AGE": "86400"}).time_bounds
    assert (bounds.max_clock_skew, bounds.max_event_age) == (
        timedelta(minutes=1),
        timedelta(days=1),
    )
    with pytest.raises(ConfigError, match="BUDGET_MAX_EVENT_AGE: Input should be greater than 0"):
        load_settings(path, environ={"BUDGET_MAX_EVENT_AGE": "0"})


def test_a_default_hold_longer_than_the_longest_is_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "budget:\n  reservation_ttl: 600\n  reservation_ttl_max: 300\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    message = str(error.value)
    assert "\n" not in message and "database_url" not in message
    assert re.search(r"reservation_ttl \(600.*\) .*reservation_ttl_max \(300", message)
    assert str(path) in message
    settings = load_settings(path, environ={"BUDGET_RESERVATION_TTL_MAX": "600"})
    assert settings.reservation_ttl == settings.reservation_ttl_max == 600


@pytest.mark.parametrize(
    ("setting", "variable", "value"),
    [
        ("nats_password_file", "BUDGET_NATS_PASSWORD_FILE", "/run/secrets/nats"),
        ("nats_password", "BUDGET_NATS_PASSWORD", "pw-in-setting-1234"),
    ],
)
@pytest.mark.parametrize(
    "url", ["nats://svc:pw-in-url-1234@nats:4222", "nats://a:4222,svc:pw-in-url-1234@b:4222"]
)
def test_a_nats_password_in_the_url_and_in_a_setting_is_refused_naming_both(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    variable: str,
    value: str,
    url: str,
) -> None:
    """Either would do alone; together nobody can tell which counts, so neither is used."""
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    environ = {"BUDGET_NATS_URL": url, "BUDGET_NATS_USER": "svc", variable: value}
    with pytest.raises(ConfigError) as error:
        load_settings(environ=environ)
    message = str(error.value)
    assert message.startswith("BUDGET_* environment variables: ") and "\n" not in message
    assert "nats_url (BUDGET_NATS_URL) carries credentials" in message
    assert f"{setting} ({variable}) gives a password too" in message
    assert f"unset {setting}" in message
    assert "pw-in-url-1234" not in message and "pw-in-setting-1234" not in message
    without_url_credentials = {**environ, "BUDGET_NATS_URL": "nats://nats:4222"}
    assert load_settings(environ=without_url_credentials).nats_user == "svc"
    url_alone = {"BUDGET_NATS_URL": url}
    assert load_settings(environ=url_alone).nats_url == url


def test_a_nats_url_user_other_than_nats_user_is_refused(tmp_path: Path) -> None:
    url = "nats://svc:pw-in-url-1234@nats:4222"
    path = write(tmp_path, f"budget:\n  nats_url: '{url}'\n  nats_user: host\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    message = str(error.value)
    assert message.startswith(f"budget in {path}: ")
    assert "another NATS user than nats_user (BUDGET_NATS_USER, 'host')" in message
    assert "pw-in-url-1234" not in message
    same_user = write(tmp_path, f"budget:\n  nats_url: '{url}'\n  nats_user: svc\n")
    assert load_settings(same_user, environ={}).nats_user == "svc"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("nats//x", "neither scheme://host:port nor host:port (is a '://' missing?)"),
        ("http://x:4222", "the scheme http://, which is not a NATS one"),
        ("nats://host:notaport", "a port that is not a number from 1 to 65535"),
        ("nats://host:70000", "a port that is not a number from 1 to 65535"),
        ("nats://host:0", "port 0"),
        ("nats://:4222", "names no host"),
        ("nats://host:4222/budget", "a path or query after its address"),
        ("", "it is empty"),
        ("nats://a:4222,,nats://b:4222", "server 2 of 3 is empty"),
        ("nats://a:4222, http://b:4222", "server 2 of 2 has the scheme http://"),
        ("nats://a:4222,ws://b:8080", "mixes WebSocket servers"),
        ("nats://host :4222", "a space or a control character"),
    ],
)
def test_a_nats_url_no_client_could_use_is_refused_naming_where_and_the_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    """Taken as it came, it failed later as if NATS were down (``http://`` timed out)."""
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    with pytest.raises(ConfigError) as from_environment:
        load_settings(environ={"BUDGET_NATS_URL": url})
    path = write(tmp_path, f"budget:\n  nats_url: '{url}'\n")
    with pytest.raises(ConfigError) as from_file:
        load_settings(path, environ={})
    for error, where in (
        (from_environment, "environment variable BUDGET_NATS_URL"),
        (from_file, f"budget.nats_url in {path}"),
    ):
        message = str(error.value)
        assert message.startswith(f"{where}: not a NATS URL: "), message
        assert why in message and "nats://" in message  # the form to write
        assert "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "nats://127.0.0.1:4222",
        "tls://nats.example.com",
        "127.0.0.1:4222",
        "nats",
        "nats://[::1]:4222",
        "nats://svc:pw@nats:4222/",
        "nats://a:4222, nats://b:4222",
        "wss://nats.example.com/ws",
    ],
)
def test_the_nats_url_forms_clients_take_are_read(tmp_path: Path, url: str) -> None:
    assert load_settings(write(tmp_path, f"budget:\n  nats_url: '{url}'\n"), {}).nats_url == url


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("nats://a:4222, nats://b:4222", ["nats://a:4222", "nats://b:4222"]),
        ("a:4222,b:4222", ["a:4222", "b:4222"]),
        ("nats://u:p@a,tls://b", ["nats://u:p@a", "tls://b"]),
        # a comma in a token or password is theirs, not a second server's start
        ("nats://tok,en@host:4222", ["nats://tok,en@host:4222"]),
        ("nats://user:pa,ss@host, nats://b", ["nats://user:pa,ss@host", "nats://b"]),
    ],
)
def test_a_nats_url_is_split_into_servers_at_the_commas_that_start_one(
    url: str, servers: list[str]
) -> None:
    assert nats_servers(url) == servers
    assert nats_url_problem(url) is None


def test_a_wrong_nats_url_is_shown_without_its_password_or_token(tmp_path: Path) -> None:
    for url in ("nats://svc:pw-in-url-1234@host:x", "tok-in-url-1234@host:x"):
        with pytest.raises(ConfigError) as error:
            load_settings(environ={"BUDGET_NATS_URL": url, "BUDGET_CONFIG": "/dev/null"})
        message = str(error.value)
        assert "not a NATS URL" in message and "***@host:x" in message
        assert "-in-url-1234" not in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://u@h/db", "must be a URL starting with postgresql://"),
        ("postgresql://h:notaport/db", "its host has a port that is not a number"),
        ("postgresql://u:pw-in-url-1234@h:99999/db", "its host has a port that is not a number"),
        ("postgresql://h1:5432,h2:x/db", "host 2 of 2 has a port that is not a number"),
        ("postgresql://h/my db", "a space or a control character"),
    ],
)
def test_a_database_url_no_driver_could_use_is_refused_naming_where_and_the_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    with pytest.raises(ConfigError) as from_environment:
        load_settings(environ={"BUDGET_DATABASE_URL": url})
    path = write(tmp_path, f"budget:\n  database_url: '{url}'\n")
    with pytest.raises(ConfigError) as from_file:
        load_settings(path, environ={})
    for error, where in (
        (from_environment, "environment variable BUDGET_DATABASE_URL"),
        (from_file, f"budget.database_url in {path}"),
    ):
        message = str(error.value)
        assert message.startswith(f"{where}: not a PostgreSQL URL: "), message
        assert why in message and "postgresql://" in message
        assert "pw-in-url-1234" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://budget@/budget?host=/run/pg&passfile=/x/pgpass",
        "postgresql+psycopg://u:p@db:5432/budget",
        "postgres://db1:5432,db2/budget?target_session_attrs=read-write",
        "postgresql://[::1]:5432/budget",
        "postgresql:///budget",
        # a password ends at its '@' for libpq, whatever it holds before it but '/'
        "postgresql://budget:p#s?s[x]@db:5432/budget",
    ],
)
def test_the_database_url_forms_libpq_takes_are_read(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f"budget:\n  database_url: '{url}'\n")
    assert load_settings(path, environ={}).database_url == url


FLOAT_SETTINGS = [
    name
    for name, field in Settings.model_fields.items()
    if field.annotation in (float, float | None)
]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
def test_a_number_of_seconds_or_a_rate_must_be_finite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """An infinite enforcer_timeout hung a check while the enforcer was away (never
    failing closed), an infinite mail timeout failed each delivery with OverflowError."""
    monkeypatch.chdir(tmp_path)  # no ./config.yaml
    variable = f"BUDGET_{name.upper()}"
    with pytest.raises(ConfigError, match=rf"^environment variable {variable}: .*finite"):
        load_settings(environ={variable: value})


@pytest.mark.parametrize("channel", ["email", "webhook"])
def test_a_channels_timeout_must_be_finite(tmp_path: Path, channel: str) -> None:
    path = write(tmp_path, f"alert_channels:\n  {channel}:\n    timeout: .inf\n")
    with pytest.raises(ConfigError, match=rf"alert_channels\.{channel}\.timeout in .*finite"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("budget:\n  nats_url: nats://a:4222\n  nats_url: nats://b:4222\n", "nats_url", 3),
        ("budget:\n  flush_interval: 5\nbudget:\n  flush_interval: 9\n", "budget", 3),
        ("alert_channels:\n  webhook:\n    enabled: false\n    enabled: true\n", "enabled", 4),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_its_line(
    tmp_path: Path, text: str, key: str, line: int
) -> None:
    """YAML's loader kept the last silently: a setting added at the end of a long file
    overrode one above it, or an edit above was never read."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    message = str(error.value)
    assert message.startswith(f"{path}: the key {key!r} is given twice"), message
    assert f"line {line}" in message and "keep one" in message


def test_a_merge_key_takes_its_anchors_keys_and_may_override_them(tmp_path: Path) -> None:
    """``<<: *base`` is YAML's way to share settings, not a key given twice."""
    text = (
        "budget_policies:\n"
        "  - &base {name: a, scope: global, period: monthly, limit_amount: 10}\n"
        "  - <<: *base\n"
        "    name: b\n"
    )
    policies = load_settings(write(tmp_path, text), environ={}).policies
    assert [(p.name, p.limit_amount) for p in policies] == [("a", 10), ("b", 10)]


def test_a_missing_config_file_named_relatively_is_shown_with_the_folder_it_was_looked_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``./run`` works in the checkout: ``--config config.yaml`` given elsewhere is looked
    for there, and "config.yaml does not exist" beside the user's config.yaml puzzled."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_settings("config.yaml", environ={})
    assert str(error.value).startswith(f"config file {tmp_path / 'config.yaml'} does not exist")

"""A service's /metrics answers only the bearer of the metrics token: 401 to anyone else,
whatever the path, and the token never shows, in the refusal, a config error or the log."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import httpx
import pytest

from budget.config import ConfigError, Settings, load_settings
from services.metrics import serve_metrics

from live import free_port

TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def endpoint(token_file: Path) -> Iterator[str]:
    """The URL of a /metrics served behind the token in ``token_file``."""
    port = free_port()
    server = serve_metrics(Settings(metrics_port=port, metrics_token_file=token_file), "test")
    assert isinstance(server, WSGIServer)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def bearing(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearing("metrics-token-0123456789abcdeX"),  # one character off
        bearing(TOKEN[:-1]),  # a prefix
        bearing(TOKEN + "0"),
        {"Authorization": "Bearer"},  # no token
        {"Authorization": TOKEN},  # no scheme
        {"Authorization": "Basic " + base64.b64encode(f"prometheus:{TOKEN}".encode()).decode()},
    ],
    ids=["none", "wrong", "prefix", "longer", "empty", "no scheme", "basic"],
)
def test_a_scrape_without_the_token_is_refused_401(endpoint: str, headers: dict[str, str]) -> None:
    for url in (endpoint, endpoint.removesuffix("metrics"), endpoint + "?name[]=up"):
        refused = httpx.get(url, headers=headers)
        assert refused.status_code == 401, url
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert "budget_" not in refused.text and "process_" not in refused.text
        assert TOKEN not in refused.text


def test_the_bearer_of_the_token_reads_the_metrics(endpoint: str) -> None:
    for scheme in ("Bearer", "bearer"):  # the scheme is case-insensitive (RFC 9110)
        served = httpx.get(endpoint, headers={"Authorization": f"{scheme} {TOKEN}"})
        assert served.status_code == 200
        assert "budget_http_request_seconds" in served.text


def empty_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text("budget: {}\n")
    return config


def test_the_token_may_be_a_setting(tmp_path: Path) -> None:
    port = free_port()
    env = {"BUDGET_METRICS_PORT": str(port), "BUDGET_METRICS_TOKEN": TOKEN}
    server = serve_metrics(load_settings(empty_config(tmp_path), env), "test")
    assert server is not None
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=bearing(TOKEN)).status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_a_metrics_port_without_a_token_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BUDGET_METRICS_TOKEN_FILE") as refused:
        load_settings(empty_config(tmp_path), {"BUDGET_METRICS_PORT": "9464"})
    assert "metrics_port" in str(refused.value)


@pytest.mark.parametrize("token", ["short-token", "has a space in it, long enough", ""])
def test_an_unfit_token_is_refused_without_being_shown(tmp_path: Path, token: str) -> None:
    path = tmp_path / "metrics.token"
    path.write_text(token)
    settings = Settings(metrics_port=free_port(), metrics_token_file=path)
    with pytest.raises(ConfigError, match="at least 16 printable characters") as refused:
        serve_metrics(settings, "test")
    assert str(path) in str(refused.value)
    assert not token or token not in str(refused.value)


def test_a_token_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.token"
    settings = Settings(metrics_port=free_port(), metrics_token_file=missing)
    with pytest.raises(ConfigError, match="cannot read the metrics token file"):
        serve_metrics(settings, "test")


def test_no_scrape_is_logged_and_the_token_never_is(
    endpoint: str, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "a-wrong-token-the-log-must-not-show"
    httpx.get(endpoint, headers=bearing(wrong))
    httpx.get(endpoint, headers=bearing(TOKEN))
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert TOKEN not in logged and wrong not in logged
    assert "GET /metrics" not in logged  # the server logs no request at all

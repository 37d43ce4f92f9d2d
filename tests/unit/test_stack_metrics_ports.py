"""``budget up``'s metrics ports: one each, kept across runs, written down for Prometheus,
with the token that Prometheus must bear."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import yaml

from services.stack import kept_port
from services.stack_metrics import (
    banner_lines,
    metrics_ports,
    metrics_token_file,
    worker_env,
    write_prometheus_config,
)

NAMES = ("spend", "history", "enforcer", "api")


def test_each_process_gets_its_own_port_kept_across_runs(tmp_path: Path) -> None:
    first = metrics_ports(tmp_path, NAMES)
    assert list(first) == list(NAMES)
    assert len(set(first.values())) == len(NAMES)
    assert metrics_ports(tmp_path, NAMES) == first


def test_a_port_taken_by_another_process_of_the_stack_is_not_given(tmp_path: Path) -> None:
    first = metrics_ports(tmp_path, NAMES)
    again = metrics_ports(tmp_path, NAMES, taken=[first["history"]])
    assert again["history"] != first["history"]
    assert first["history"] not in again.values()
    assert len(set(again.values())) == len(NAMES)


def test_a_kept_port_given_to_another_process_of_the_stack_is_replaced(tmp_path: Path) -> None:
    """The last run's NATS port, free while the stack is down, is not the console's because
    ``--api-port`` chose it this time (nor a console's port NATS's)."""
    record = tmp_path / "nats" / "last-port"
    first = kept_port(record)
    assert kept_port(record) == first
    other = kept_port(record, [first])
    assert other != first
    assert record.read_text() == f"{other}\n"


def test_a_port_in_use_is_replaced(tmp_path: Path) -> None:
    first = metrics_ports(tmp_path, NAMES)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first["spend"]))
        assert metrics_ports(tmp_path, NAMES)["spend"] != first["spend"]


def test_the_token_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = metrics_token_file(tmp_path)
    assert path == tmp_path / "credentials" / "metrics.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text().strip()
    assert len(token) >= 32
    assert metrics_token_file(tmp_path).read_text().strip() == token  # kept across runs


def test_ports_are_written_down_for_people_and_prometheus(tmp_path: Path) -> None:
    ports = metrics_ports(tmp_path, NAMES)
    token_file = metrics_token_file(tmp_path)
    config_file = write_prometheus_config(tmp_path, ports, token_file)
    assert config_file == tmp_path / "prometheus.yml"
    (job,) = yaml.safe_load(config_file.read_text())["scrape_configs"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}
    assert token_file.read_text().strip() not in config_file.read_text()  # its path only
    (targets_file,) = job["file_sd_configs"][0]["files"]
    assert targets_file == str(tmp_path / "metrics-targets.json")
    assert json.loads(Path(targets_file).read_text()) == [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"job": "budget", "service": name}}
        for name, port in ports.items()
    ]
    lines = banner_lines(tmp_path, ports, token_file)
    for name, port in ports.items():
        assert any(
            f"{name}" in line and f"http://127.0.0.1:{port}/metrics" in line for line in lines
        )
    assert str(token_file) in lines[-2]
    assert f"--config.file={config_file}" in lines[-1]
    assert worker_env(ports, token_file)["api"] == {
        "BUDGET_METRICS_PORT": str(ports["api"]),
        "BUDGET_METRICS_TOKEN_FILE": str(token_file),
    }

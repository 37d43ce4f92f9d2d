"""``budget up``'s metrics ports: one each, kept across runs, written down for Prometheus."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from services.stack_metrics import banner_lines, metrics_ports, worker_env, write_targets

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


def test_a_port_in_use_is_replaced(tmp_path: Path) -> None:
    first = metrics_ports(tmp_path, NAMES)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", first["spend"]))
        assert metrics_ports(tmp_path, NAMES)["spend"] != first["spend"]


def test_ports_are_written_down_for_people_and_prometheus(tmp_path: Path) -> None:
    ports = metrics_ports(tmp_path, NAMES)
    targets = json.loads(write_targets(tmp_path, ports).read_text())
    assert targets == [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"job": "budget", "service": name}}
        for name, port in ports.items()
    ]
    lines = banner_lines(tmp_path, ports)
    for name, port in ports.items():
        assert any(
            f"{name}" in line and f"http://127.0.0.1:{port}/metrics" in line for line in lines
        )
    assert str(tmp_path / "metrics-targets.json") in lines[-1]
    assert worker_env(ports)["api"] == {"BUDGET_METRICS_PORT": str(ports["api"])}

"""Where ``budget up``'s processes serve their Prometheus metrics.

Every process of the stack gets its own port on 127.0.0.1, kept across runs like the
console's (``<data_dir>/metrics/<name>.port``), so a Prometheus pointed at them keeps
working. The ports are written down twice: in the banner, and in
``<data_dir>/metrics-targets.json``, a Prometheus ``file_sd_configs`` file (a local
Prometheus reads it and follows a port change without a restart).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from services.stack import kept_port

__all__ = ["TARGETS_FILE", "banner_lines", "metrics_ports", "worker_env", "write_targets"]

TARGETS_FILE = "metrics-targets.json"
_HOST = "127.0.0.1"  # the services' default metrics_host


def metrics_ports(
    data_dir: Path, names: Iterable[str], taken: Iterable[int] = ()
) -> dict[str, int]:
    """A distinct free port for each process ``names``, the one of the last run when it is
    still free; none of ``taken`` (e.g. the console's)."""
    used = set(taken)
    ports = {}
    for name in names:
        record = data_dir / "metrics" / f"{name}.port"
        port = kept_port(record)
        while port in used:  # another process of the stack has it: pick again
            record.unlink()
            port = kept_port(record)
        used.add(port)
        ports[name] = port
    return ports


def worker_env(ports: Mapping[str, int]) -> dict[str, dict[str, str]]:
    """Each process's own variable: the port its metrics endpoint listens on."""
    return {name: {"BUDGET_METRICS_PORT": str(port)} for name, port in ports.items()}


def banner_lines(data_dir: Path, ports: Mapping[str, int]) -> list[str]:
    """The endpoints, one a line, for the banner."""
    width = max((len(name) for name in ports), default=0)
    lines = [
        f"{'metrics' if i == 0 else '':<18}{name:<{width}}  http://{_HOST}:{port}/metrics"
        for i, (name, port) in enumerate(ports.items())
    ]
    return [*lines, f"{'':<18}(Prometheus targets: {data_dir / TARGETS_FILE})"]


def write_targets(data_dir: Path, ports: Mapping[str, int]) -> Path:
    """Write the Prometheus ``file_sd_configs`` file; its path. Written whole, then renamed,
    so a Prometheus reading it never sees half a file."""
    targets = [
        {"targets": [f"{_HOST}:{port}"], "labels": {"job": "budget", "service": name}}
        for name, port in ports.items()
    ]
    path = data_dir / TARGETS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets, indent=2) + "\n")
    tmp.replace(path)
    return path

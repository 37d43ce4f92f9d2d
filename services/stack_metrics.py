"""Where ``budget up``'s processes serve their Prometheus metrics, and with which token.

Every process of the stack gets its own port on 127.0.0.1, kept across runs like the
console's (``<data_dir>/metrics/<name>.port``), so a Prometheus pointed at them keeps
working. Each answers only scrapes bearing the stack's metrics token, made once (0600) in
``<data_dir>/credentials/metrics.token`` and kept across runs like the other credentials.
The ports are written down twice: in the banner, and in ``<data_dir>/metrics-targets.json``,
a Prometheus ``file_sd_configs`` file (a local Prometheus reads it and follows a port change
without a restart); ``<data_dir>/prometheus.yml`` is a Prometheus config that scrapes those
targets with the token (``prometheus --config.file=<data_dir>/prometheus.yml``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from services.credentials import credentials_dir, generated_secret
from services.stack import kept_port

__all__ = [
    "PROMETHEUS_CONFIG",
    "TARGETS_FILE",
    "banner_lines",
    "metrics_ports",
    "metrics_token_file",
    "worker_env",
    "write_prometheus_config",
]

TARGETS_FILE = "metrics-targets.json"
PROMETHEUS_CONFIG = "prometheus.yml"
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
        port = kept_port(record, used)
        used.add(port)
        ports[name] = port
    return ports


def metrics_token_file(data_dir: Path) -> Path:
    """The file holding the stack's metrics token: a new random one (0600) on first start,
    the same on every later start."""
    path = credentials_dir(data_dir) / "metrics.token"
    generated_secret(path)
    return path


def worker_env(ports: Mapping[str, int], token_file: Path) -> dict[str, dict[str, str]]:
    """Each process's own variables: the port its metrics endpoint listens on, and the
    token file it asks scrapers for."""
    return {
        name: {"BUDGET_METRICS_PORT": str(port), "BUDGET_METRICS_TOKEN_FILE": str(token_file)}
        for name, port in ports.items()
    }


def banner_lines(data_dir: Path, ports: Mapping[str, int], token_file: Path) -> list[str]:
    """The endpoints, one a line, then how to scrape them, for the banner."""
    width = max((len(name) for name in ports), default=0)
    lines = [
        f"{'metrics' if i == 0 else '':<18}{name:<{width}}  http://{_HOST}:{port}/metrics"
        for i, (name, port) in enumerate(ports.items())
    ]
    return [
        *lines,
        f"{'':<18}(each asks for the bearer token in {token_file})",
        f"{'':<18}(Prometheus: prometheus --config.file={data_dir / PROMETHEUS_CONFIG})",
    ]


def write_prometheus_config(data_dir: Path, ports: Mapping[str, int], token_file: Path) -> Path:
    """Write the Prometheus ``file_sd_configs`` file of ``ports``, and a Prometheus config
    that scrapes them bearing the token in ``token_file`` (a path, never the token); the
    config's path. Each is written whole, then renamed, so a Prometheus reading it never
    sees half a file."""
    targets = [
        {"targets": [f"{_HOST}:{port}"], "labels": {"job": "budget", "service": name}}
        for name, port in ports.items()
    ]
    targets_file = _write_whole(data_dir / TARGETS_FILE, json.dumps(targets, indent=2) + "\n")
    job = {
        "job_name": "budget",
        "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
        "file_sd_configs": [{"files": [str(targets_file)]}],
    }
    config = {"global": {"scrape_interval": "15s"}, "scrape_configs": [job]}
    header = (
        f"# Written by `budget up` at every start: scrapes the stack of {data_dir}.\n"
        f"#   prometheus --config.file={data_dir / PROMETHEUS_CONFIG}\n"
    )
    return _write_whole(
        data_dir / PROMETHEUS_CONFIG, header + yaml.safe_dump(config, sort_keys=False)
    )


def _write_whole(path: Path, text: str) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path

"""``budget up``'s Prometheus endpoints, scraped for real: every process of the stack serves
its own, listed in the banner and in ``metrics-targets.json``, to the bearer of the stack's
metrics token only; a real Prometheus run on the ``prometheus.yml`` it writes scrapes them
all; and the figures move with the work (a recorded call, checks, a query, alerts, an API
request, a dead letter).

Figures are compared with what each endpoint showed before the work, never with a
constant, and every wait is for a figure to arrive (bounded, never asserted on)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client.samples import Sample
from test_cli import (  # noqa: F401 (fixtures)
    GPT_4O_CALL,
    Budget,
    Stack,
    base_env,
    budget_up,
    eventually,
    parse_banner,
)

from budget.natsconn import inbox_prefix
from events import Topology, UsageRecorded
from events.alerts import CHANNELS
from events.queries import QUERY_POLICIES, PoliciesAnswer, PoliciesQuery
from projections.engine.metrics import REASON_KINDS
from projections.registry import worker_projections
from services.metrics import CHECK_OUTCOMES, DELIVERY_OUTCOMES
from services.stack import SERVICES, STACK_WORKERS

from live import free_port
from support import figure, scrape

STARTUP = 90.0  # budget up: servers, migrations, every process
CATCH_UP = 45.0  # a figure that has to travel: a worker's batch, the enforcer's cleanup


@dataclass(frozen=True)
class Endpoint:
    """One process's /metrics, and the token it asks for."""

    url: str
    token: str

    def scrape(self) -> list[Sample]:
        return scrape(self.url, token=self.token)


def endpoints(banner: str, token: str) -> dict[str, Endpoint]:
    """Each process's metrics endpoint, as the banner lists them."""
    found = re.findall(
        r"^\s+(?:metrics\s+)?([\w-]+)\s+(http://127\.0\.0\.1:\d+/metrics)$", banner, re.M
    )
    return {name: Endpoint(url, token) for name, url in found}


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Start a real Prometheus (Debian's, as ``./run-tests`` installs) on a config file, with
    its own storage and port; its URL. Stopped afterwards."""
    with contextlib.ExitStack() as running:

        def start(config: Path) -> str:
            port = free_port()
            log = (tmp_path / "prometheus.log").open("w")
            server = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            running.callback(log.close)
            running.callback(server.wait, timeout=30)
            running.callback(server.terminate)
            return f"http://127.0.0.1:{port}"

        yield start


def scraped_by(prometheus: str) -> dict[str, tuple[str, str]]:
    """Each target's health and last error, by its ``service`` label, as ``prometheus``
    sees them (none while it is starting)."""
    try:
        answer = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()
    except httpx.HTTPError:
        return {}
    return {
        t["labels"]["service"]: (t["health"], t["lastError"])
        for t in answer["data"]["activeTargets"]
    }


def grows(at: Endpoint, name: str, before: list[Sample], what: str, **labels: str) -> float:
    """Wait until ``name{labels}`` at ``at`` is above what ``before`` showed; its value."""
    start = figure(before, name, **labels)
    return eventually(
        lambda: figure(at.scrape(), name, **labels),
        lambda value: value > start,
        CATCH_UP,
        f"{what}: {name}{labels} above {start}",
    )


async def as_host(nats_url: str, user: str, password: str) -> list[str]:
    """As a host app (its NATS user): ask the query service for the policies, and publish
    a message that is no event; the policy ids answered."""
    nc = await nats.connect(nats_url, user=user, password=password, inbox_prefix=inbox_prefix(user))
    try:
        topology = Topology(prefix="budget")
        asked = topology.rpc_subject(QUERY_POLICIES, caller=user)
        answer = await nc.request(asked, PoliciesQuery().model_dump_json().encode(), timeout=10)
        own = topology.event_subject(UsageRecorded.SUBJECT, publisher=user)  # a host's only
        await nc.jetstream().publish(own, b"not JSON")
    finally:
        await nc.close()
    return [p.policy_id for p in PoliciesAnswer.model_validate_json(answer.data).policies]


def test_every_process_serves_metrics_that_move_with_the_work(
    budget_up: Stack,  # noqa: F811 (the fixture)
    base_env: dict[str, str],  # noqa: F811 (the fixture)
    prometheus: Callable[[Path], str],
    tmp_path: Path,
) -> None:
    up = budget_up.service
    banner = eventually(
        lambda: parse_banner(up.output()),
        lambda b: b is not None or not up.running(),
        STARTUP,
        "budget up banner",
    )
    assert banner is not None, up.output()
    credentials = budget_up.data_dir / "credentials"
    token = (credentials / "metrics.token").read_text().strip()
    endpoint = endpoints(up.output(), token)
    assert sorted(endpoint) == sorted(STACK_WORKERS), up.output()
    workers = [name for name in endpoint if name not in SERVICES]
    usage_workers = [name for name in workers if name not in ("policies", "api_keys")]
    assert len({at.url for at in endpoint.values()}) == len(endpoint)  # a port each
    targets = json.loads((budget_up.data_dir / "metrics-targets.json").read_text())
    assert {t["labels"]["service"]: f"http://{t['targets'][0]}/metrics" for t in targets} == {
        name: at.url for name, at in endpoint.items()
    }

    # Every endpoint answers, on loopback only, with its process's own figures, to the
    # bearer of the token only.
    before = {
        name: eventually(lambda at=at: _scraped(at), bool, STARTUP, f"{name} metrics")
        for name, at in endpoint.items()
    }
    for name, at in endpoint.items():
        for wrong in ({}, {"Authorization": f"Bearer {token[:-1]}"}):
            assert httpx.get(at.url, headers=wrong).status_code == 401, (name, wrong)
    # A Prometheus run on the config budget up wrote: it bears the token (checked below).
    scraper = prometheus(budget_up.data_dir / "prometheus.yml")
    for name in workers:
        eventually(
            lambda name=name: _families(endpoint[name].scrape()),
            lambda names: "budget_projection_lag_events" in names,
            CATCH_UP,
            f"{name}'s lag",
        )
    # What the example rules alert on is at 0 from the start: a series that first appeared
    # at 1 would be no increase to Prometheus, and the first dead letter or delivery given
    # up since a process started would fire no alert.
    zeros = {
        (name, "budget_dead_letters_total"): {
            (f"{p.name}-v1", reason) for p in worker_projections(name) for reason in REASON_KINDS
        }
        for name in workers
    }
    zeros[("notifier", "budget_alert_deliveries_total")] = set(
        itertools.product(CHANNELS, DELIVERY_OUTCOMES)
    )
    zeros[("enforcer", "budget_checks_total")] = {(outcome,) for outcome in CHECK_OUTCOMES}
    for (name, metric), series in zeros.items():
        eventually(
            lambda name=name, metric=metric: _series(endpoint[name].scrape(), metric),
            lambda found, series=series: found == series,
            CATCH_UP,
            f"{name}'s {metric} series, there before anything is counted",
        )

    servers = {"BUDGET_NATS_URL": banner.nats_url, "BUDGET_DATABASE_URL": banner.database_url}
    host_env = {
        "BUDGET_NATS_USER": "host",
        "BUDGET_NATS_PASSWORD_FILE": str(credentials / "nats-host.password"),
    }
    admin_env = {
        "BUDGET_NATS_USER": "service",
        "BUDGET_NATS_PASSWORD_FILE": str(credentials / "nats-service.password"),
    }
    admin = Budget({**base_env, **servers, **admin_env}, tmp_path)
    user = Budget({**base_env, **servers, **host_env}, tmp_path)

    # A BLOCK policy small enough that one call crosses every alert threshold.
    admin.ok(
        "policy", "set", "--name", "Cap", "--limit", "0.005", "--action", "block",
        "--scope", "user", "--key", "alice", "--id", "cap",
    )  # fmt: skip
    grows(endpoint["policies"], "budget_projection_events_applied_total", before["policies"],
          "the policy applied", projection="policies")  # fmt: skip
    allowed = user.run("check", "gpt-4o", "--tokens", "10", "--user", "alice", "--reserve")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    grows(endpoint["enforcer"], "budget_checks_total", before["enforcer"], "an allowed check",
          outcome="allowed")  # fmt: skip
    grows(endpoint["enforcer"], "budget_check_seconds_count", before["enforcer"], "check latency")
    grows(endpoint["enforcer"], "budget_reservations_open", before["enforcer"], "the reservation")

    user.record(*GPT_4O_CALL)  # $0.00725 for alice: past the whole limit
    for name in usage_workers:
        # each projection under its own name, a group's (usage) with the group as worker
        for projection in (p.name for p in worker_projections(name)):
            grows(endpoint[name], "budget_projection_events_applied_total", before[name],
                  f"the call applied by {projection}", projection=projection,
                  worker=name)  # fmt: skip
            grows(endpoint[name], "budget_projection_batch_seconds_count", before[name],
                  f"{projection}'s batch latency", projection=projection,
                  worker=name)  # fmt: skip
        labelled = {
            (s.labels.get("projection"), s.labels.get("worker"))
            for s in endpoint[name].scrape()
            if s.name.startswith("budget_projection_")
        }
        assert labelled == {(p.name, name) for p in worker_projections(name)}, labelled
        eventually(
            lambda name=name: figure(endpoint[name].scrape(), "budget_projection_lag_events"),
            lambda lag: lag == 0,
            CATCH_UP,
            f"{name} caught up",
        )
    refused = user.run("check", "gpt-4o", "--tokens", "2000", "--user", "alice")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    grows(endpoint["enforcer"], "budget_checks_total", before["enforcer"], "a refused check",
          outcome="block")  # fmt: skip

    # The alerts the call raised go out on NATS; webhook and email are not enabled.
    grows(endpoint["notifier"], "budget_alert_deliveries_total", before["notifier"], "alerts sent",
          channel="nats", outcome="sent")  # fmt: skip
    grows(endpoint["notifier"], "budget_alert_deliveries_total", before["notifier"],
          "alerts skipped", channel="webhook", outcome="skipped")  # fmt: skip

    host_password = (credentials / "nats-host.password").read_text().strip()
    assert "cap" in asyncio.run(as_host(banner.nats_url, "host", host_password))
    grows(endpoint["query-service"], "budget_query_seconds_count", before["query-service"],
          "a query answered", query="policies")  # fmt: skip

    key = (budget_up.data_dir / "admin.key").read_text().strip()
    console = re.search(r"web console\s+(http://127\.0\.0\.1:\d+)/", up.output())
    assert console is not None, up.output()
    listed = httpx.get(f"{console[1]}/api/v1/usage", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200
    grows(endpoint["api"], "budget_http_request_seconds_count", before["api"], "an API request",
          method="GET", handler="history_page", status="200")  # fmt: skip
    # A check the api refuses itself (here: no model) never reaches the enforcer: counted
    # by the api under its route and status.
    malformed = httpx.post(f"{console[1]}/api/v1/check", json={"estimated_tokens": 10},
                           headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert malformed.status_code == 422, malformed.text
    grows(endpoint["api"], "budget_http_request_seconds_count", before["api"], "a refused check",
          method="POST", handler="check", status="422")  # fmt: skip
    for name in usage_workers:
        grows(endpoint[name], "budget_dead_letters_total", before[name], f"{name}'s dead letter",
              reason="invalid")  # fmt: skip

    # Meanwhile, the Prometheus on budget up's config scraped every process, token borne.
    eventually(
        lambda: scraped_by(scraper),
        lambda health: health == {name: ("up", "") for name in endpoint},
        CATCH_UP,
        "Prometheus scraping every process with budget up's config",
    )


def _scraped(at: Endpoint) -> list[Sample]:
    try:
        return at.scrape()
    except httpx.HTTPError:
        return []  # not listening yet


def _families(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples}


def _series(samples: list[Sample], name: str) -> set[tuple[str, ...]]:
    """The label values of each of ``name``'s series (its value aside)."""
    return {tuple(s.labels.values()) for s in samples if s.name == name}

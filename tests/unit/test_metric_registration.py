"""Each process exports the metrics of the work it does: the enforcer's only where an
enforcer runs, so no other process shows them as zeros."""

from __future__ import annotations

import subprocess
import sys

import pytest

from support import ROOT

ENFORCER_METRICS = ("budget_checks", "budget_check_seconds", "budget_reservations_open")
EXPORTED = (
    "import sys\n"
    "from prometheus_client import REGISTRY\n"
    "for module in sys.argv[1:]:\n"
    "    __import__(module)\n"
    "print(' '.join(m.name for m in REGISTRY.collect()))\n"
)


def exported(*modules: str) -> set[str]:
    """The metric families a process that imported ``modules`` exports."""
    done = subprocess.run(
        [sys.executable, "-c", EXPORTED, *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "service",
    ["services.query_service", "services.notifier", "services.api.server", "services.worker"],
)
def test_a_process_that_runs_no_enforcer_exports_none_of_its_metrics(service: str) -> None:
    families = exported("services.metrics", service)
    assert "budget_query_seconds" in families  # the services' metrics are there
    assert families.isdisjoint(ENFORCER_METRICS), families


def test_the_enforcer_exports_its_metrics() -> None:
    assert set(ENFORCER_METRICS) <= exported("services.enforcer")

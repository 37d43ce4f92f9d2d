"""An address a service is told to listen on that this machine cannot take (no such name,
an address of another machine) is named with the setting that sets the address: it said
to choose another port, which could not help."""

from __future__ import annotations

import pytest

from budget.config import Settings
from services.ports import PortTaken, require_free, require_metrics_port


@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid", "192.0.2.1"])
def test_an_address_this_machine_cannot_listen_on_names_the_address_setting(host: str) -> None:
    with pytest.raises(PortTaken) as error:
        require_free(host, 18099, "--port (or BUDGET_API_PORT)", "--host (or BUDGET_API_HOST)")
    message = str(error.value)
    assert message.startswith(f"cannot listen on {host}:18099 (")
    assert message.endswith("choose another address with --host (or BUDGET_API_HOST)")


def test_a_metrics_address_this_machine_cannot_listen_on_names_metrics_host() -> None:
    settings = Settings(
        metrics_host="192.0.2.1", metrics_port=18098, metrics_token="a-metrics-token-of-16+"
    )
    with pytest.raises(
        PortTaken, match=r"another address with metrics_host \(BUDGET_METRICS_HOST\)$"
    ):
        require_metrics_port(settings)

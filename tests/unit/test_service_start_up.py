"""What a service loads before it takes its first event (``services.worker.tune_gc``)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import gc
from budget.pricing import genai
from services.worker import tune_gc
tune_gc(prices={prices})
print(genai.loaded(), gc.get_freeze_count())
"""


def start_up(*, prices: bool) -> tuple[bool, int]:
    """Whether a process that ran ``tune_gc(prices=prices)`` has the price data, and how many
    objects it froze."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(prices=prices)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded, frozen = done.stdout.split()
    return loaded == "True", int(frozen)


def test_a_service_loads_the_price_data_at_start_up_and_freezes_it_with_the_rest() -> None:
    """Loaded by the first usage event instead, the price data stalled that batch (and
    every event behind it) for up to a second; loaded before ``gc.freeze``, no full
    collection rescans it. The notifier, which prices nothing, does not load it."""
    loaded, frozen = start_up(prices=True)
    assert loaded
    without, frozen_without = start_up(prices=False)
    assert not without
    assert frozen - frozen_without > 10_000  # the price data's ~19,000 objects

"""The webhook signature: what it covers (time, idempotency key, body), the tolerance a
receiver applies, and the copy of ``verify_signature`` that docs/alerts.md gives receivers,
which must judge every case as the code does."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from budget.webhooks import sign, verify_signature

SECRET, KEY, BODY, NOW = "s3cret", "7f9c-alert-id", b'{"alert_id": "7f9c"}', 1_800_000_000
DOCS = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"
Verifier = Callable[..., bool]


def documented_verifier() -> Verifier:
    """The ``verify_signature`` of docs/alerts.md, run as a receiver would copy it."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    source = next(block for block in blocks if "def verify_signature" in block)
    namespace: dict[str, object] = {}
    exec(source, namespace)
    verifier = namespace["verify_signature"]
    assert callable(verifier)
    return verifier  # type: ignore[no-any-return]


VERIFIERS = {"code": verify_signature, "docs": documented_verifier()}
HEADER = sign(SECRET, KEY, BODY, timestamp=NOW)
CASES = [
    ("as sent", HEADER, KEY, BODY, NOW + 10, True),
    ("within the tolerance, at its edge", HEADER, KEY, BODY, NOW + 300, True),
    ("replayed after the tolerance", HEADER, KEY, BODY, NOW + 301, False),
    ("dated in the future beyond it", HEADER, KEY, BODY, NOW - 301, False),
    ("body changed", HEADER, KEY, BODY + b" ", NOW, False),
    ("key changed", HEADER, "another-alert", BODY, NOW, False),
    ("time changed", HEADER.replace(f"t={NOW}", f"t={NOW + 60}"), KEY, BODY, NOW, False),
    ("another secret", sign("other", KEY, BODY, timestamp=NOW), KEY, BODY, NOW, False),
    ("a second v1 matches", f"{HEADER},v1={'0' * 64}", KEY, BODY, NOW, True),
    ("no v1", f"t={NOW}", KEY, BODY, NOW, False),
    ("no time", HEADER.split(",")[1], KEY, BODY, NOW, False),
    ("two times", f"t={NOW},{HEADER}", KEY, BODY, NOW, False),
    ("a time that is no number", HEADER.replace(f"t={NOW}", "t=²"), KEY, BODY, NOW, False),
    # A forged header must not make the check raise (a receiver's 500, not its 400): past
    # 308 digits the time is no float, past 4,300 no int Python will read.
    # now as time.time() gives it, a float
    (
        "a time of 400 digits",
        HEADER.replace(f"t={NOW}", "t=" + "9" * 400),
        KEY,
        BODY,
        NOW + 0.5,
        False,
    ),
    (
        "a time of 5,000 digits",
        HEADER.replace(f"t={NOW}", "t=" + "9" * 5000),
        KEY,
        BODY,
        NOW,
        False,
    ),
    ("the old scheme", "sha256=" + "0" * 64, KEY, BODY, NOW, False),
    ("not ASCII", f"t={NOW},v1=é", KEY, BODY, NOW, False),
    ("empty", "", KEY, BODY, NOW, False),
]


def test_the_header_names_its_time_and_one_signature() -> None:
    assert re.fullmatch(rf"t={NOW},v1=[0-9a-f]{{64}}", HEADER)


@pytest.mark.parametrize("verifier", VERIFIERS.values(), ids=VERIFIERS.keys())
@pytest.mark.parametrize(
    ("header", "key", "body", "now", "trusted"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_receiver_trusts_only_a_fresh_untouched_delivery(
    verifier: Verifier, header: str, key: str, body: bytes, now: float, trusted: bool
) -> None:
    assert verifier(SECRET, header, key, body, tolerance=300, now=now) is trusted

"""The webhook's signature, for the notifier that signs and the receivers that check.

``X-Budget-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``, where the HMAC, keyed with
``webhook.secret``, is of the bytes ``<t>.<Idempotency-Key>.<body>``: the time proves the
delivery is fresh (a receiver refuses one older than its tolerance, so a captured delivery
cannot be replayed later), the key ties the alert id to the body (a receiver drops repeats
by it), and the body is the alert exactly as sent. docs/alerts.md has a copy of
``verify_signature`` for receivers that do not install this package.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

__all__ = ["SIGNATURE_HEADER", "sign", "verify_signature"]

SIGNATURE_HEADER = "X-Budget-Signature"


def _digest(secret: str, timestamp: int, key: str, body: bytes) -> str:
    signed = f"{timestamp}.{key}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, key: str, body: bytes, *, timestamp: int) -> str:
    """The ``X-Budget-Signature`` value of a delivery of ``body`` with idempotency ``key``."""
    return f"t={timestamp},v1={_digest(secret, timestamp, key, body)}"


def verify_signature(
    secret: str,
    header: str,
    key: str,
    body: bytes,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``key`` and ``body`` with ``secret`` and its time lies
    within ``tolerance`` seconds of ``now`` (default: this clock). Several ``v1`` entries
    are allowed (one per secret while a secret is being rotated): one must match."""
    fields = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for name, _, value in fields if name == "t"]
    candidates = [value for name, _, value in fields if name == "v1"]
    # Unix seconds have 10 digits until 2286: a forged longer one, read, could overflow.
    if len(stamps) != 1 or not re.fullmatch(r"[0-9]{1,12}", stamps[0]) or not candidates:
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = _digest(secret, timestamp, key, body).encode()
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in candidates)

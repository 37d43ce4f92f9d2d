"""Subject and stream names, derived from one prefix: the only place they are spelled out.

A deployment (or a test) picks a prefix; everything else follows from it, so two
deployments, or two tests, can share one NATS server without seeing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["API_KEY_CALLER", "DEFAULT_TOPOLOGY", "StreamSpec", "Topology", "caller_token"]

API_KEY_CALLER = "api-key-"
"""The HTTP API asks the enforcer for an API key as this prefix and the key's id: no NATS
user may be named so (it would share that key's holds and limits)."""


def caller_token(name: str) -> str:
    """``name`` as one subject token: characters outside letters, digits, ``-`` and ``_``
    become ``_`` (a NATS user name of the token alphabet is kept as it is)."""
    token = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)
    return token[:64] or "_"


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    duplicate_window_seconds: float = 120.0
    deny_delete: bool = True
    deny_purge: bool = True
    """The event log is the source of truth: nobody deletes or purges facts from it."""


@dataclass(frozen=True, kw_only=True)
class Topology:
    """``prefix`` is a NATS subject token (letters, digits, ``-`` and ``_``)."""

    prefix: str = "budget"

    def __post_init__(self) -> None:
        if not self.prefix or not all(c.isalnum() or c in "-_" for c in self.prefix):
            raise ValueError(
                f"subject prefix {self.prefix!r} must be one token of letters, digits, - or _"
            )

    # Facts live under <prefix>.events.> only. Request/reply (<prefix>.rpc.*) and derived
    # alerts (<prefix>.alerts.*) stay outside the stream: a stream capturing them would answer
    # every request with a PubAck and store alerts that a replay re-derives anyway.
    @property
    def events_wildcard(self) -> str:
        return f"{self.prefix}.events.>"

    def event_subject(self, suffix: str, *, publisher: str | None = None) -> str:
        """``suffix`` is the event class's SUBJECT, e.g. ``usage.recorded``; ``publisher``
        (one token: a NATS user, or the HTTP API's ``api-key-<id>``) gives that publisher's
        own subject, for the events each publisher publishes on its own
        (``Event.BY_PUBLISHER``)."""
        subject = f"{self.prefix}.events.{suffix}"
        return subject if publisher is None else f"{subject}.{publisher}"

    def event_subjects(self, suffix: str, *, by_publisher: bool) -> tuple[str, ...]:
        """The subjects events of ``suffix`` are read on: with ``by_publisher``, the bare
        one earlier releases published on and every one below it (a publisher's own; any
        deeper is read to be dead-lettered, not passed over)."""
        subject = self.event_subject(suffix)
        return (subject, f"{subject}.>") if by_publisher else (subject,)

    def publisher_of(self, suffix: str, subject: str) -> str | None:
        """The publisher token of ``subject``, one of ``suffix``'s publishers' own subjects;
        None for any other subject."""
        publisher = subject.removeprefix(f"{self.event_subject(suffix)}.")
        if publisher == subject or not publisher or "." in publisher:
            return None
        return publisher

    def dead_letter_subject(self, consumer: str) -> str:
        return f"{self.prefix}.dlq.{consumer}"

    def alert_subject(self, severity: str, alert_type: str) -> str:
        return f"{self.prefix}.alerts.{severity}.{alert_type}"

    @property
    def alerts_wildcard(self) -> str:
        """Every alert, whatever its severity and type."""
        return f"{self.prefix}.alerts.>"

    # Requests name their caller: ``<prefix>.rpc.<caller>.<name>``. With NATS permissions
    # a credential may publish requests under its own name only (docs/security.md), so a
    # service knows who asks without trusting the payload: limits and holds are per caller.
    def rpc_subject(self, name: str, *, caller: str) -> str:
        """``name`` is e.g. ``enforcer.check``; ``caller`` one token (``caller_token``)."""
        return f"{self.prefix}.rpc.{caller}.{name}"

    def rpc_wildcard(self, name: str) -> str:
        """What a service subscribes to: ``name`` asked by any caller."""
        return f"{self.prefix}.rpc.*.{name}"

    def caller_of(self, subject: str) -> str:
        """The caller token of a request subject (``rpc_subject``)."""
        return subject.split(".", 3)[2]

    @property
    def event_stream(self) -> StreamSpec:
        return StreamSpec(
            name=self.prefix.upper().replace("-", "_"), subjects=(self.events_wildcard,)
        )

    @property
    def dead_letter_stream(self) -> StreamSpec:
        return StreamSpec(
            name=f"{self.event_stream.name}_DLQ",
            subjects=(f"{self.prefix}.dlq.>",),
            deny_delete=False,
            deny_purge=False,
        )


DEFAULT_TOPOLOGY = Topology()

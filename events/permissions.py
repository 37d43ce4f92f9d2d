"""Who may publish and subscribe to what on NATS: the roles of docs/security.md, derived
from a ``Topology`` here and nowhere else (the server's config is rendered from them by
``services.nats_config``; clients use them to say which credential may do what).

- ``service``: the workers, services and admin commands: the whole prefix and JetStream.
- ``host``: a host app or team: records usage, asks the services under its own name,
  reads the policy log's end (the last policy event, which the query service shows it
  anyway) and gets replies in its own inbox only.
- ``alerts``: an alert subscriber: receives alerts, publishes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from events.policy import POLICY_CHANGES
from events.subjects import Topology
from events.usage import UsageRecorded

__all__ = [
    "ROLES",
    "Permissions",
    "Role",
    "inbox_prefix",
    "permissions",
    "roles_allowed",
    "subject_matches",
]

Role = Literal["service", "host", "alerts"]
ROLES: tuple[Role, ...] = get_args(Role)


@dataclass(frozen=True, kw_only=True)
class Permissions:
    """Subjects (NATS wildcards allowed) a user may publish and subscribe to; nothing else."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def inbox_prefix(user: str) -> str:
    """Each user's replies arrive under its own inbox prefix, which no other host may read."""
    return f"_INBOX.{user}"


def permissions(role: Role, *, user: str, topology: Topology) -> Permissions:
    inbox = f"{inbox_prefix(user)}.>"
    if role == "service":
        return Permissions(
            # Replies go to the asker's inbox; ``$JS.ACK``/``$JS.FC`` acknowledge and pace
            # the pull and ordered consumers.
            publish=(f"{topology.prefix}.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "_INBOX.>"),
            subscribe=(f"{topology.prefix}.>", inbox),
        )
    if role == "host":
        stream = topology.event_stream.name
        return Permissions(
            publish=(
                topology.event_subject(UsageRecorded.SUBJECT),
                topology.rpc_subject(">", caller=user),
                # The last policy event only (a direct get names its subject; the server
                # refuses a payload there), so a tracker knows whether its snapshot is stale.
                *(
                    f"$JS.API.DIRECT.GET.{stream}.{topology.event_subject(change.SUBJECT)}"
                    for change in POLICY_CHANGES
                ),
            ),
            subscribe=(inbox,),
        )
    return Permissions(publish=(), subscribe=(topology.alerts_wildcard,))


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def roles_allowed(subject: str, *, topology: Topology, publish: bool = True) -> list[Role]:
    """The roles whose users may publish (or subscribe to) ``subject``; a host's own
    requests count as allowed for ``host``."""
    caller = topology.caller_of(subject) if subject.startswith(f"{topology.prefix}.rpc.") else ""
    allowed = []
    for role in ROLES:
        granted = permissions(role, user=caller or "user", topology=topology)
        patterns = granted.publish if publish else granted.subscribe
        if any(subject_matches(p, subject) for p in patterns):
            allowed.append(role)
    return allowed

"""Who may publish and subscribe to what on NATS: the roles of docs/security.md, derived
from a ``Topology`` here and nowhere else (the server's config is rendered from them by
``services.nats_config``; clients use them to say which credential may do what).

Each role is a NATS account of its own (``ACCOUNTS``), but ``admin``, whose users are in
the services' account: it holds the streams and exports what the others may reach
(``shared_with``), which they import. A
publish names a reply subject NATS does not check against the publisher's permissions,
and JetStream answers a stored message there; across an import the reply is remapped into
the asker's own account, so a host that names ``<prefix>.events.policy.deleted`` as the
reply of its usage gets the acknowledgement in its own account, never on the services'
log.

- ``service``: the workers, services and everyday admin commands: the whole prefix and
  JetStream, but for making, changing, deleting, purging or restoring a stream (a
  stream update could lower the log's limits and drop its events).
- ``admin``: ``budget migrate`` (it declares the streams) and operators: ``service``'s
  permissions and making and changing streams; in the services' account too. No running
  service holds it.
- ``host``: a host app or team: records usage on its own subject
  (``<prefix>.events.usage.recorded.<user>``, so the consumers know which credential
  published each usage event), asks the services under its own name,
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
    "ACCOUNTS",
    "ROLES",
    "Permissions",
    "Role",
    "inbox_prefix",
    "permissions",
    "roles_allowed",
    "shared_with",
    "subject_matches",
]

Role = Literal["service", "host", "alerts", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ACCOUNTS: dict[Role, str] = {
    "service": "SERVICES",
    "host": "HOSTS",
    "alerts": "ALERTS",
    "admin": "SERVICES",  # where the streams are
}
"""The NATS account of each role's users."""

_NEVER = ("$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>")
"""No credential deletes the event log or its messages (the streams' own ``deny_delete``
and ``deny_purge`` refuse the last two as well)."""
_ADMIN_ONLY = ("$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>", "$JS.API.STREAM.RESTORE.>")
"""Making and changing streams: ``budget migrate`` (``admin``). An update can lower the
log's limits (``max_msgs=1`` leaves one event; the server refuses only lifting
``deny_delete`` or ``deny_purge``); a new stream on the services' subjects would answer
their requests with its acknowledgements."""


@dataclass(frozen=True, kw_only=True)
class Permissions:
    """Subjects (NATS wildcards allowed) a user may publish and subscribe to; nothing else."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    """Subjects refused though ``publish`` would allow them."""


def inbox_prefix(user: str) -> str:
    """Each user's replies arrive under its own inbox prefix, which no other host may read."""
    return f"_INBOX.{user}"


def permissions(role: Role, *, user: str, topology: Topology) -> Permissions:
    inbox = f"{inbox_prefix(user)}.>"
    if role in ("service", "admin"):
        return Permissions(
            # Replies go to the asker's inbox; ``$JS.ACK``/``$JS.FC`` acknowledge and pace
            # the pull and ordered consumers.
            # ``_R_.``: the replies to the other accounts' requests, remapped by NATS.
            publish=(
                f"{topology.prefix}.>",
                "$JS.API.>",
                "$JS.ACK.>",
                "$JS.FC.>",
                "_INBOX.>",
                "_R_.>",
            ),
            subscribe=(f"{topology.prefix}.>", inbox),
            # The log is the source of truth: no credential deletes or purges it; only
            # an admin makes or changes a stream. Both delete consumers: a worker
            # recreates its own at each start (projections.engine.log.bind_consumer),
            # a rebuild drops the old version's; the events stay.
            deny_publish=_NEVER if role == "admin" else (*_ADMIN_ONLY, *_NEVER),
        )
    if role == "host":
        return Permissions(
            publish=(
                topology.event_subject(UsageRecorded.SUBJECT, publisher=user),
                topology.rpc_subject(">", caller=user),
                *_policy_log_ends(topology),
            ),
            subscribe=(inbox,),
        )
    return Permissions(publish=(), subscribe=(topology.alerts_wildcard,))


def shared_with(role: Role, topology: Topology) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the services' account exports to ``role``'s account: (services, streams). A
    service import carries requests one way and remaps their replies into the asker's
    account; a stream import carries messages one way only. The users' own permissions
    narrow what they may send (a host: its own requests only)."""
    if role == "host":
        usage = topology.event_subject(UsageRecorded.SUBJECT, publisher="*")
        return (usage, f"{topology.prefix}.rpc.>", *_policy_log_ends(topology)), ()
    if role == "alerts":
        return (), (topology.alerts_wildcard,)
    return (), ()


def _policy_log_ends(topology: Topology) -> tuple[str, ...]:
    """The direct gets of the last policy event (they name its subject; the server refuses
    a payload there), so a tracker knows whether its snapshot is stale."""
    stream = topology.event_stream.name
    return tuple(
        f"$JS.API.DIRECT.GET.{stream}.{topology.event_subject(change.SUBJECT)}"
        for change in POLICY_CHANGES
    )


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
    """The least privileged roles whose users may publish (or subscribe to) ``subject``
    (``admin`` only where ``service`` may not); a host's own requests and own usage
    subject count as allowed for ``host``. Case is ignored: nats-py lowercases the
    subject of the server's refusal."""
    rpc = f"{topology.prefix}.rpc.".lower()
    caller = topology.caller_of(subject) if subject.lower().startswith(rpc) else None
    usage = f"{topology.event_subject(UsageRecorded.SUBJECT)}.".lower()
    publisher = subject[len(usage) :] if subject.lower().startswith(usage) else None
    publisher = None if publisher is None or "." in publisher else publisher
    allowed: list[Role] = []
    for role in ROLES:
        if role == "admin" and "service" in allowed:
            continue
        granted = permissions(role, user=caller or publisher or "user", topology=topology)
        patterns = granted.publish if publish else granted.subscribe
        denied = granted.deny_publish if publish else ()
        if any(_matches(p, subject) for p in patterns) and not any(
            _matches(p, subject) for p in denied
        ):
            allowed.append(role)
    return allowed


def _matches(pattern: str, subject: str) -> bool:
    return subject_matches(pattern.lower(), subject.lower())

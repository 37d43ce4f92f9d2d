"""Who may publish and subscribe to what on NATS: the roles of docs/security.md, derived
from a ``Topology`` here and nowhere else (the server's config is rendered from them by
``services.nats_config``; clients use them to say which credential may do what).

Each role is a NATS account of its own (``ACCOUNTS``), but ``admin`` and the processes'
own (``api``, ``enforcer``, ``notifier``, ``query``), whose users are in the services'
account: it holds the streams and exports what the others may reach (``shared_with``),
which they import. A publish names a reply subject NATS does not check against the publisher's
permissions, and JetStream answers a stored message there; across an import the reply is
remapped into the asker's own account, so a host that names
``<prefix>.events.policy.deleted`` as the reply of its usage gets the acknowledgement in
its own account, never on the services' log.

- ``service``: the workers and everyday admin commands: the whole prefix and JetStream,
  but for making, changing, deleting, purging or restoring a stream (a stream update could
  lower the log's limits and drop its events).
- ``admin``: ``budget migrate`` (it declares the streams) and operators: ``service``'s
  permissions and making and changing streams; in the services' account too. No running
  service holds it.
- ``host``: a host app or team: records usage on its own subject
  (``<prefix>.events.usage.recorded.<user>``, so the consumers know which credential
  published each usage event), asks the services under its own name,
  reads the policy log's end (the last policy event, which the query service shows it
  anyway) and gets replies in its own inbox only.
- ``alerts``: an alert subscriber: receives alerts, publishes nothing.
- ``enforcer``: ``budget enforcer``: answers the check, release and snapshot requests of
  every caller (on their inboxes), publishes ``RequestBlocked`` for what it refuses and
  ``PolicySet`` for the policies of its configuration; it reads policies, spend and holds
  in PostgreSQL, none of the log.
- ``notifier``: ``budget notifier``: publishes alerts (its NATS channel); it reads the
  alerts to send in PostgreSQL, and subscribes to nothing.
- ``query``: ``budget query-service``: answers the questions of every caller (on their
  inboxes); it reads the answers in PostgreSQL, none of the log, and publishes nothing else.
- ``api``: the HTTP API (``budget api``): publishes the usage its keys post, each on the
  key's own subject, and the changes its admin routes make (policies, alert rules,
  acknowledgements, API keys); asks the enforcer to check and release under each key's
  name; reads what its pages show (the stored changes' ends, the projections' consumers,
  the dead letters) and gets replies in its own inbox only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from events.access import ApiKeyCreated, ApiKeyRevoked
from events.alerts import AlertAcknowledged, AlertResolved, AlertRuleRemoved, AlertRuleSet
from events.envelope import Event
from events.policy import POLICY_CHANGES, PolicySet, RequestBlocked
from events.queries import ANY_QUERY, QUERY_POSITION
from events.rpc import RPC_CHECK, RPC_RELEASE, RPC_SNAPSHOT
from events.subjects import Topology
from events.usage import UsageRecorded

__all__ = [
    "ACCOUNTS",
    "API_CHANGES",
    "API_USER",
    "ENFORCER_USER",
    "NOTIFIER_USER",
    "OWN_USERS",
    "QUERY_USER",
    "ROLES",
    "SERVICE_USER",
    "Permissions",
    "Role",
    "inbox_prefix",
    "permissions",
    "roles_allowed",
    "shared_with",
    "subject_matches",
]

Role = Literal["service", "host", "alerts", "admin", "api", "enforcer", "notifier", "query"]
ROLES: tuple[Role, ...] = get_args(Role)
ACCOUNTS: dict[Role, str] = {
    "service": "SERVICES",
    "host": "HOSTS",
    "alerts": "ALERTS",
    "admin": "SERVICES",  # where the streams are
    "api": "SERVICES",  # it reads the streams and their consumers
    "enforcer": "SERVICES",  # it answers every account's requests, publishes to the log
    "notifier": "SERVICES",  # the alerts' account imports the alerts from here
    "query": "SERVICES",  # it answers every account's questions
}
"""The NATS account of each role's users."""
SERVICE_USER = "service"
"""The services' NATS user in ``budget up`` and under Compose (role ``service``): the
workers' and the admin commands': the enforcer lets it release any hold, and neither the
enforcer nor the query service limits it, as they speak for many users."""
API_USER = "api"
"""The HTTP API's NATS user (role ``api``) in ``budget up`` and under Compose. The
enforcer and the query service do not limit it, as they do not limit their own caller: it
asks for every key (and limits each key itself)."""
ENFORCER_USER = "enforcer"
"""The enforcer's NATS user (role ``enforcer``) in ``budget up`` and under Compose."""
NOTIFIER_USER = "notifier"
"""The notifier's NATS user (role ``notifier``) in ``budget up`` and under Compose."""
QUERY_USER = "query"
"""The query service's NATS user (role ``query``) in ``budget up`` and under Compose."""
OWN_USERS: dict[str, str] = {
    "api": API_USER,
    "enforcer": ENFORCER_USER,
    "notifier": NOTIFIER_USER,
    "query-service": QUERY_USER,
}
"""The processes (``budget <name>``) that connect as a NATS user of their own, and that
user, named as its role: it may do what that process does, and no more."""
API_CHANGES: tuple[type[Event], ...] = (
    *POLICY_CHANGES,
    AlertRuleSet,
    AlertRuleRemoved,
    AlertAcknowledged,
    AlertResolved,
    ApiKeyCreated,
    ApiKeyRevoked,
)
"""The events the HTTP API's admin routes publish."""

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


def permissions(
    role: Role, *, user: str, topology: Topology, users: Iterable[str] = ()
) -> Permissions:
    """``users``: every NATS user of the server, whose own subjects an ``api`` user is
    refused (``_api``)."""
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
    if role == "api":
        return _api(user, topology, users=users)
    if role == "enforcer":
        requests = (RPC_CHECK, RPC_RELEASE, RPC_SNAPSHOT)
        return _answering(user, topology, requests, _ENFORCER_EVENTS)
    if role == "query":
        return _answering(user, topology, (ANY_QUERY,))
    if role == "notifier":
        # its NATS channel (services.channels.NatsSender: a plain publish and a flush)
        return Permissions(publish=(topology.alerts_wildcard,), subscribe=())
    return Permissions(publish=(), subscribe=(topology.alerts_wildcard,))


_ENFORCER_EVENTS: tuple[type[Event], ...] = (
    RequestBlocked,  # what it refused
    PolicySet,  # config.yaml's policies, at start
)
"""The events the enforcer publishes."""


def _answering(
    user: str, topology: Topology, requests: Iterable[str], events: Iterable[type[Event]] = ()
) -> Permissions:
    """What a service answering requests (the enforcer, the query service) does, and no
    more: it takes the ``requests`` of every caller (a queue group on each), answers each
    on its reply subject (an inbox of the services' account, or ``_R_.`` for another
    account's asker: the replies are checked to be one of those,
    ``services.replies.answerable``), and publishes ``events``, whose acknowledgements
    come to its own inbox (none: it asks nothing, so it needs no inbox)."""
    published = tuple(topology.event_subject(event.SUBJECT) for event in events)
    return Permissions(
        publish=(*published, "_INBOX.>", "_R_.>"),
        subscribe=(
            *(topology.rpc_wildcard(name) for name in requests),
            *([f"{inbox_prefix(user)}.>"] if published else []),
        ),
    )


def _api(user: str, topology: Topology, *, users: Iterable[str]) -> Permissions:
    """What the HTTP API does, and no more. Its keys' usage subjects and request names
    are ``api-key-<id>``, which NATS cannot allow alone (a wildcard is a whole token): it
    may use any token but the users' (no user may be named ``api-key-...``), so it never
    publishes usage as a user (itself neither: it publishes only its keys') nor asks as
    another user, a host or the services."""
    stream, dead_letters = topology.event_stream.name, topology.dead_letter_stream.name
    changes = [topology.event_subject(change.SUBJECT) for change in API_CHANGES]
    return Permissions(
        publish=(
            topology.event_subject(UsageRecorded.SUBJECT, publisher="*"),
            *changes,
            # under each key's own name (``services.api.routes.ingest.key_caller``)
            topology.rpc_subject(RPC_CHECK, caller="*"),
            topology.rpc_subject(RPC_RELEASE, caller="*"),
            # under its own: the policies' windows of a check, and /services' probes
            topology.rpc_subject(RPC_SNAPSHOT, caller=user),
            topology.rpc_subject(QUERY_POSITION, caller=user),
            # the last stored change of each kind (before a create; the clock check)
            *(f"$JS.API.DIRECT.GET.{stream}.{subject}" for subject in changes),
            f"$JS.API.STREAM.MSG.GET.{stream}",  # the event a re-sent usage post stored
            # the projections' lag: their consumers, or one of its own for a version
            # whose worker has not run yet (projections.engine.log.pending_after)
            f"$JS.API.CONSUMER.INFO.{stream}.*",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.DELETE.{stream}.*",
            f"$JS.API.STREAM.INFO.{dead_letters}",
            f"$JS.API.STREAM.MSG.GET.{dead_letters}",
        ),
        subscribe=(f"{inbox_prefix(user)}.>",),
        deny_publish=tuple(
            subject
            for other in dict.fromkeys(users)
            for subject in (
                topology.event_subject(UsageRecorded.SUBJECT, publisher=other),
                *([topology.rpc_subject(">", caller=other)] if other != user else []),
            )
        ),
    )


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
    (``admin`` only where ``service`` may not; never one of ``OWN_USERS``, a process's
    own); a host's own requests and own usage subject count as allowed for ``host``.
    Case is ignored: nats-py lowercases the subject of the server's refusal."""
    rpc = f"{topology.prefix}.rpc.".lower()
    caller = topology.caller_of(subject) if subject.lower().startswith(rpc) else None
    usage = f"{topology.event_subject(UsageRecorded.SUBJECT)}.".lower()
    publisher = subject[len(usage) :] if subject.lower().startswith(usage) else None
    publisher = None if publisher is None or "." in publisher else publisher
    allowed: list[Role] = []
    for role in ROLES:
        if role in OWN_USERS.values() or (role == "admin" and "service" in allowed):
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

"""Export the JSON Schemas of the contract to ``docs/schemas`` for clients in any language.

``python -m events.schema [DIR]`` writes ``<Type>.v<version>.json`` for every event and,
under ``rpc/``, ``<name>.request.json`` and ``<name>.reply.json`` for every request/reply
subject ``<prefix>.rpc.<caller>.<name>`` (any other answer is ``rpc/error.json``); a test keeps the
committed files equal to the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from events import queries, rpc
from events.codec import EVENT_TYPES
from events.envelope import Event
from events.generated import generated_fields

__all__ = ["RPC_MESSAGES", "schema_files", "write_schemas"]

RPC_MESSAGES: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    rpc.RPC_CHECK: (rpc.CheckRequest, rpc.CheckResult),
    rpc.RPC_RELEASE: (rpc.ReleaseRequest, rpc.ReleaseResult),
    rpc.RPC_SNAPSHOT: (rpc.CallAttributes, rpc.Snapshot),
    queries.QUERY_POLICIES: (queries.PoliciesQuery, queries.PoliciesAnswer),
    queries.QUERY_SPEND: (queries.SpendQuery, queries.SpendAnswer),
    queries.QUERY_RULES: (queries.RulesQuery, queries.RulesAnswer),
    queries.QUERY_ALERTS: (queries.AlertsQuery, queries.AlertsAnswer),
    queries.QUERY_DELIVERIES: (queries.DeliveriesQuery, queries.DeliveriesAnswer),
    queries.QUERY_REPORT: (queries.ReportQuery, queries.ReportAnswer),
    queries.QUERY_POSITION: (queries.PositionQuery, queries.PositionAnswer),
}
"""Request and reply model of each ``<prefix>.rpc.<name>`` subject."""


def schema_of(model: type[Event]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    # Fields whose default is made anew (ids, the producer's host): never generated on read
    for name, fields in generated_fields(model).items():
        part = schema if name == model.__name__ else schema["$defs"][name]
        part["required"] = [*fields, *part.get("required", [])]
    # Defaults in the model, not on the wire: the reader dispatches on ``type``, and takes
    # an event without ``schema_version`` for version 1 (upcast, not read as this one).
    schema["required"] = ["type", "schema_version", *schema["required"]]
    schema["$id"] = f"urn:budget-manager:event:{model.__name__}:v{model.SCHEMA_VERSION}"
    # Published by publisher: ``<user>`` is the publishing NATS user (Event.BY_PUBLISHER).
    own = ".<user>" if model.BY_PUBLISHER else ""
    schema["x-nats-subject"] = f"<prefix>.events.{model.SUBJECT}{own}"
    schema["x-nats-headers"] = {"Nats-Msg-Id": "the event_id (JetStream drops re-sends)"}
    return schema


def message_schema(name: str, model: type[BaseModel], role: str) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation" if role == "request" else "serialization")
    schema["$id"] = f"urn:budget-manager:rpc:{name}:{role}"
    schema["x-nats-subject"] = f"<prefix>.rpc.<caller>.{name}"
    return schema


def schema_files() -> dict[str, str]:
    """File name (relative to the schema directory) -> its JSON text."""
    documents: dict[str, dict[str, Any]] = {
        f"{name}.v{model.SCHEMA_VERSION}.json": schema_of(model)
        for name, model in sorted(EVENT_TYPES.items())
    }
    for name, (request, reply) in sorted(RPC_MESSAGES.items()):
        documents[f"rpc/{name}.request.json"] = message_schema(name, request, "request")
        documents[f"rpc/{name}.reply.json"] = message_schema(name, reply, "reply")
    documents["rpc/error.json"] = message_schema("*", rpc.RpcError, "reply")
    return {path: json.dumps(doc, indent=2) + "\n" for path, doc in documents.items()}


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")
    for path in write_schemas(target):
        print(path)

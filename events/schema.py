"""Export the JSON Schema of every event to ``docs/schemas`` for publishers in any language.

``python -m events.schema [DIR]`` writes ``<Type>.v<version>.json``; a test keeps the
committed files equal to the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from events.codec import EVENT_TYPES
from events.envelope import Event

__all__ = ["schema_files", "write_schemas"]


def schema_of(model: type[Event]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    schema["required"] = ["event_id", *schema.get("required", [])]  # never generated on read
    schema["$id"] = f"urn:budget-manager:event:{model.__name__}:v{model.SCHEMA_VERSION}"
    schema["x-nats-subject"] = f"<prefix>.events.{model.SUBJECT}"
    schema["x-nats-headers"] = {"Nats-Msg-Id": "the event_id (JetStream drops re-sends)"}
    return schema


def schema_files() -> dict[str, str]:
    return {
        f"{name}.v{model.SCHEMA_VERSION}.json": json.dumps(schema_of(model), indent=2) + "\n"
        for name, model in sorted(EVENT_TYPES.items())
    }


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")
    for path in write_schemas(target):
        print(path)

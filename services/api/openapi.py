"""``python -m services.api.openapi [FILE]`` writes the HTTP API's OpenAPI document
(default ``docs/openapi.json``); a test keeps the committed file equal to the app's."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from budget.config import Settings
from services.api.app import create_app

__all__ = ["openapi_document"]

DEFAULT_FILE = Path("docs/openapi.json")


def openapi_document() -> dict[str, Any]:
    # The document depends on the routes only; no server or secret is involved.
    return create_app(Settings(), session_secret="unused").openapi()


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_FILE
    target.write_text(json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n")
    print(target)


if __name__ == "__main__":
    main()

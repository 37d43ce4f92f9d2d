"""A request's size in tokens, estimated before the call: its prompt's text at about
four characters a token (the providers' own rule of thumb for English), rounded up.

Media (images, audio, files) are skipped: their bytes or URLs say nothing of the tokens
they cost, and counting base64 as text would refuse a call for a price it never has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "CHARS_PER_TOKEN",
    "UNSTATED_MODEL",
    "UNSTATED_OUTPUT_TOKENS",
    "choices",
    "estimated_tokens",
    "output_allowance",
    "request_tokens",
    "requested_model",
]

CHARS_PER_TOKEN = 4
UNSTATED_OUTPUT_TOKENS = 1024
"""The output allowance of a request that states none (for the estimate only)."""
UNSTATED_MODEL = "unknown"
"""The model of a request that names none (the response's own name replaces it when it
tells one; else the call is recorded unpriced under this name, never as $0)."""
_MODEL_NAME_LIMIT = 200  # the event contract's


def requested_model(request: Mapping[str, Any], default: str = UNSTATED_MODEL) -> str:
    """The request's ``model``; ``default`` when it names none. Never raises: a request
    the SDK will refuse is the SDK's to refuse, not the instrumentation's."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return default
    return model[:_MODEL_NAME_LIMIT]


def output_allowance(request: Any, *names: str) -> int:
    """The first of ``names`` the request (a mapping or an SDK model) sets to a whole
    number; ``UNSTATED_OUTPUT_TOKENS`` when it sets none."""
    for name in names:
        value = _setting(request, name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return UNSTATED_OUTPUT_TOKENS


def choices(request: Any, *names: str) -> int:
    """How many answers the request asks for (the largest of ``names`` it sets to a whole
    number, as OpenAI's ``n`` and ``best_of``, Gemini's ``candidate_count``), else 1:
    each may use the whole output allowance, and each is paid for."""
    asked = [_setting(request, name) for name in names]
    counts = [n for n in asked if isinstance(n, int) and not isinstance(n, bool) and n > 1]
    return max(counts, default=1)


def _setting(request: Any, name: str) -> Any:
    return request.get(name) if isinstance(request, Mapping) else getattr(request, name, None)


_MEDIA = frozenset(
    {
        "image_url",
        "input_image",
        "input_audio",
        "input_file",
        "file",
        "file_data",
        "inline_data",
        "source",
        "image",
        "audio",
        "document",
    }
)


def estimated_tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def request_tokens(*parts: Any) -> int:
    """The estimated tokens of the text in ``parts`` (strings, lists, mappings, SDK models)."""
    return estimated_tokens(sum(_chars(part) for part in parts))


def _chars(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        if value.get("type") in _MEDIA:
            return 0
        return sum(_chars(v) for k, v in value.items() if k not in _MEDIA)
    if isinstance(value, list | tuple):
        return sum(_chars(item) for item in value)
    fields = getattr(value, "__dict__", None)  # SDK models (Gemini's Content, Part)
    if isinstance(fields, dict):
        return _chars(fields)
    return 0

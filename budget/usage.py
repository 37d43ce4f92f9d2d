"""Normalize usage at the boundary into ``events.Usage``'s non-overlapping classes.

Two entry points:

- :func:`normalize_usage` takes the seed's convention: ``input_tokens`` INCLUDES
  ``cached_tokens`` and ``cache_write_tokens``; ``reasoning_tokens`` are part of
  ``output_tokens`` and are counted once.
- :func:`usage_from_response` takes a raw SDK usage object or dict (or a whole response
  carrying ``usage`` / ``usage_metadata``) from OpenAI chat completions, OpenAI
  embeddings, the OpenAI Responses API, Anthropic Messages or Google Gemini.

Negative or inconsistent counts raise ``ValueError`` naming the fields and values; a count
that is wrong by itself raises ``UsageCountError``, which locates it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel

from events.limits import NAME_MAX
from events.usage import MAX_TOKENS, ImageUsage, Usage

__all__ = [
    "TIER_FIELDS",
    "UsageCountError",
    "attribution_id",
    "modality_tokens",
    "normalize_usage",
    "service_tiers",
    "token_count",
    "usage_from_response",
]

_MISSING = object()


class UsageCountError(ValueError):
    """A count that is wrong by itself; ``field``: its name, or its path in a provider's
    usage object (``prompt_tokens``, ``usage.prompt_tokens_details.cached_tokens``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def inside(self, key: str) -> UsageCountError:
        """The same error, for the count found under ``key`` (a response's ``usage``)."""
        return UsageCountError(f"{key}.{self.field}", str(self))


def token_count(name: str, value: object) -> int:
    """``value`` as a number of tokens; ``UsageCountError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageCountError(name, f"{name} must be a whole number of tokens, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise UsageCountError(name, f"{name} must be a whole number of tokens, got {value!r}")
    if value < 0:
        raise UsageCountError(name, f"{name} must not be negative, got {name}={value}")
    if value > MAX_TOKENS:  # before int(): 1e+30 as sent, not its 31 binary-rounded digits
        raise UsageCountError(name, f"{name} must be at most {MAX_TOKENS}, got {name}={value}")
    return int(value)


def attribution_id(name: str, value: object) -> str | None:
    """``value`` as the user or project id ``name`` of a call, else ``ValueError`` naming
    it: one a usage event can hold (a string of at most ``NAME_MAX`` characters, no NUL,
    which PostgreSQL stores in no text), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > NAME_MAX:
        shown = f"{len(value)} characters" if isinstance(value, str) else f"{value!r:.60}"
        raise ValueError(
            f"{name} must be a string of at most {NAME_MAX} characters, got {shown}"
            + ("" if isinstance(value, str) else f" ({type(value).__name__})")
        )
    if "\x00" in value:
        raise ValueError(
            f"{name} must not hold a NUL character (U+0000), which cannot be stored; remove it"
        )
    return value


def _seconds(value: object) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"audio_seconds must be a number, got {value!r}")
    try:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"audio_seconds must be finite, got {value!r}")
            seconds = Decimal(repr(value))
        elif isinstance(value, int | str | Decimal):
            seconds = Decimal(value)
        else:
            raise ValueError(f"audio_seconds must be a number, got {value!r}")
    except InvalidOperation:
        raise ValueError(f"audio_seconds must be a number, got {value!r}") from None
    if not seconds.is_finite() or seconds < 0:
        raise ValueError(f"audio_seconds must be a finite number >= 0, got audio_seconds={value}")
    return seconds


def normalize_usage(
    *,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    embedding_tokens: int = 0,
    audio_seconds: int | float | Decimal | str = 0,
    images: ImageUsage | Mapping[str, Any] | None = None,
) -> Usage:
    """Seed-convention counts -> non-overlapping ``Usage``; inconsistent counts raise."""
    inp = input_tokens if type(input_tokens) is int else token_count("input_tokens", input_tokens)
    out = (
        output_tokens if type(output_tokens) is int else token_count("output_tokens", output_tokens)
    )
    cached = (
        cached_tokens if type(cached_tokens) is int else token_count("cached_tokens", cached_tokens)
    )
    written = (
        cache_write_tokens
        if type(cache_write_tokens) is int
        else token_count("cache_write_tokens", cache_write_tokens)
    )
    reasoning = (
        reasoning_tokens
        if type(reasoning_tokens) is int
        else token_count("reasoning_tokens", reasoning_tokens)
    )
    embedding = (
        embedding_tokens
        if type(embedding_tokens) is int
        else token_count("embedding_tokens", embedding_tokens)
    )
    if inp < 0 or out < 0 or cached < 0 or written < 0 or reasoning < 0 or embedding < 0:
        _reject_negative(
            input_tokens=inp,
            output_tokens=out,
            cached_tokens=cached,
            cache_write_tokens=written,
            reasoning_tokens=reasoning,
            embedding_tokens=embedding,
        )
    if cached + written > inp:
        raise ValueError(
            "cached_tokens + cache_write_tokens must not exceed input_tokens (input_tokens "
            f"includes them): cached_tokens={cached} + cache_write_tokens={written} > "
            f"input_tokens={inp}"
        )
    if reasoning > out:
        raise ValueError(
            "reasoning_tokens must not exceed output_tokens (reasoning is part of output): "
            f"reasoning_tokens={reasoning} > output_tokens={out}"
        )
    fields: dict[str, Any] = {}
    if inp - cached - written:
        fields["input_uncached"] = inp - cached - written
    if cached:
        fields["input_cache_read"] = cached
    if written:
        fields["input_cache_write"] = written
    if out - reasoning:
        fields["output_text"] = out - reasoning
    if reasoning:
        fields["output_reasoning"] = reasoning
    if embedding:
        fields["embedding_tokens"] = embedding
    if audio_seconds:
        fields["audio_seconds"] = _seconds(audio_seconds)
    if images is not None:
        if not isinstance(images, ImageUsage | Mapping):
            raise ValueError(
                f"images must be an ImageUsage or a mapping, got {type(images).__name__}"
            )
        fields["images"] = images
    return Usage(**fields)


def _reject_negative(**counts: int) -> None:
    bad = ", ".join(f"{name}={value}" for name, value in counts.items() if value < 0)
    raise ValueError(f"token counts must not be negative: {bad}")


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` for mappings, ``obj.key`` for SDK objects; ``_MISSING`` when absent.
    The way to read is chosen once per class (``_reader``): an ``isinstance`` against
    ``Mapping`` is an ABC check, and a usage object is asked ~30 times per call."""
    return _reader(obj)(obj, key)


def _reader(obj: object) -> Callable[[Any, str], Any]:
    """How to read a field of ``obj``: chosen once per class, but for an object that
    passes for another class (a proxy's ``__class__``), which is asked each time."""
    cls = type(obj)
    reader = _READERS.get(cls)
    if reader is None:
        if isinstance(obj, Mapping):
            reader = _mapping_get
        elif isinstance(obj, BaseModel):
            reader = _model_get
        else:
            reader = _attribute_get
        if cls is obj.__class__:
            if len(_READERS) >= 1_000:  # classes made per object (mocks): bounded
                _READERS.clear()
            _READERS[cls] = reader
    return reader


_READERS: dict[type, Callable[[Any, str], Any]] = {}


def _mapping_get(obj: Mapping[str, Any], key: str) -> Any:
    return obj.get(key, _MISSING)


def _model_get(obj: BaseModel, key: str) -> Any:
    """A pydantic model (the SDKs' usage objects) is read from its fields first: asking
    it for an attribute it lacks raises and catches an exception each time, and the
    converter tries the Gemini, OpenAI and Anthropic names in turn."""
    value = obj.__dict__.get(key, _MISSING)
    if value is _MISSING and obj.__pydantic_extra__:
        value = obj.__pydantic_extra__.get(key, _MISSING)
    if value is not _MISSING or not _class_has(type(obj), key):
        return value
    return getattr(obj, key, _MISSING)  # a property or computed field


def _attribute_get(obj: object, key: str) -> Any:
    return getattr(obj, key, _MISSING)


@functools.cache
def _class_has(cls: type, key: str) -> bool:
    """``hasattr(cls, key)``, remembered: on a pydantic model class a missing name raises
    and catches inside the metaclass (~0.6 µs), and the converter asks for several."""
    return hasattr(cls, key)


def _num(obj: object, *path: str) -> int:
    """Follow ``path`` (absent or null anywhere -> 0) and return the count there."""
    value: Any = obj
    for key in path:
        value = _get(value, key)
        if value is _MISSING or value is None:
            return 0
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # the usual count, said at once
        return value
    return token_count(".".join(path), value)


def _has(obj: object, *keys: str) -> bool:
    get = _reader(obj)
    for key in keys:  # noqa: SIM110 (any() over a generator: a frame per key)
        if get(obj, key) is not _MISSING:
            return True
    return False


_GEMINI = ("prompt_token_count", "candidates_token_count")
_ANTHROPIC = ("cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation")
_RESPONSES = ("input_tokens_details", "output_tokens_details", "total_tokens")
_EXPECTED = (
    "OpenAI chat (prompt_tokens, completion_tokens), OpenAI Responses (input_tokens, "
    "output_tokens, *_tokens_details), Anthropic (input_tokens, output_tokens, "
    "cache_*_input_tokens) or Gemini usage_metadata (prompt_token_count, "
    "candidates_token_count), or a response with .usage / .usage_metadata"
)


def _from_usage(u: object) -> Usage | None:
    if _has(u, *_GEMINI):
        thoughts = _num(u, "thoughts_token_count")
        return normalize_usage(
            input_tokens=_num(u, "prompt_token_count") + _num(u, "tool_use_prompt_token_count"),
            cached_tokens=_num(u, "cached_content_token_count"),
            output_tokens=_num(u, "candidates_token_count") + thoughts,
            reasoning_tokens=thoughts,
        )
    if _has(u, "prompt_tokens"):
        if not _has(u, "completion_tokens"):  # embeddings: {prompt_tokens, total_tokens}
            return normalize_usage(embedding_tokens=_num(u, "prompt_tokens"))
        prompt, completion = _num(u, "prompt_tokens"), _num(u, "completion_tokens")
        reasoning = _num(u, "completion_tokens_details", "reasoning_tokens")
        if reasoning and (
            reasoning > completion or _num(u, "total_tokens") == prompt + completion + reasoning
        ):
            # xAI counts reasoning apart from completion_tokens (OpenAI within it); its
            # total tells, and it bills both at the output rate
            completion += reasoning
        return normalize_usage(
            input_tokens=prompt,
            cached_tokens=_num(u, "prompt_tokens_details", "cached_tokens"),
            cache_write_tokens=_num(u, "prompt_tokens_details", "cache_write_tokens"),
            output_tokens=completion,
            reasoning_tokens=reasoning,
        )
    if not _has(u, "input_tokens", "output_tokens"):
        return None
    if _has(u, *_ANTHROPIC) or not _has(u, *_RESPONSES):
        # Anthropic's input_tokens EXCLUDES the cache reads and writes.
        read = _num(u, "cache_read_input_tokens")
        written = _num(u, "cache_creation_input_tokens")
        return normalize_usage(
            input_tokens=_num(u, "input_tokens") + read + written,
            cached_tokens=read,
            cache_write_tokens=written,
            output_tokens=_num(u, "output_tokens"),
        )
    return normalize_usage(
        input_tokens=_num(u, "input_tokens"),
        cached_tokens=_num(u, "input_tokens_details", "cached_tokens"),
        # OpenAI's explicit cache writes (gpt-5.6 on), billed above the input rate
        cache_write_tokens=_num(u, "input_tokens_details", "cache_write_tokens"),
        output_tokens=_num(u, "output_tokens"),
        reasoning_tokens=_num(u, "output_tokens_details", "reasoning_tokens"),
    )


def usage_from_response(obj: object) -> Usage:
    """Convert an SDK usage object/dict, or a whole response holding one, to ``Usage``."""
    if isinstance(obj, Usage):
        return obj
    if obj is None:
        raise ValueError(f"no usage given (None); expected {_EXPECTED}")
    usage = _from_usage(obj)
    if usage is not None:
        return usage
    for key in ("usage_metadata", "usage"):
        inner = _get(obj, key)
        if inner is not _MISSING and inner is not None:
            try:
                usage = _from_usage(inner)
            except UsageCountError as exc:
                raise exc.inside(key) from None
            if usage is not None:
                return usage
    if isinstance(obj, Mapping):
        keys = sorted(str(k) for k in obj)
    else:
        keys = sorted(getattr(obj, "__dict__", {}))
    raise ValueError(
        f"unrecognised usage shape {type(obj).__name__} with keys {keys[:12]}; expected {_EXPECTED}"
    )


_DETAILS = (
    "prompt_tokens_details",
    "completion_tokens_details",
    "input_token_details",
    "input_tokens_details",
    "candidates_tokens_details",
    "cache_creation",
    "server_tool_use",
)


def _details_list(side_key: str, medium: str) -> Callable[[object], int]:
    """Gemini's per-modality counts: ``[{modality, token_count}, ...]`` under ``side_key``."""

    def read(usage: object) -> int:
        details = _get(usage, side_key)
        total = 0
        for detail in details if _is_list(details) else ():
            modality = _get(detail, "modality")
            if str(getattr(modality, "value", modality)).upper() == medium.upper():
                total += _num(detail, "token_count")
        return total

    return read


def _details_count(*paths: tuple[str, str]) -> Callable[[object], int]:
    """A count at the first of ``paths`` (``(details, count)``) whose details are an object,
    not Gemini's list; 0 if none."""

    def read(usage: object) -> int:
        for key, count in paths:
            if not _is_list(_get(usage, key)) and (found := _num(usage, key, count)):
                return found
        return 0

    return read


def _sum(*readers: Callable[[object], int]) -> Callable[[object], int]:
    return lambda usage: sum(read(usage) for read in readers)


_MEDIA_READERS: dict[str, Callable[[object], int]] = {
    "1-hour cache write": lambda u: _num(u, "cache_creation", "ephemeral_1h_input_tokens"),
    "web search": lambda u: _num(u, "server_tool_use", "web_search_requests"),
    "input audio": _sum(
        # OpenAI chat's, and its transcriptions' (input_token_details)
        _details_count(
            ("input_token_details", "audio_tokens"), ("prompt_tokens_details", "audio_tokens")
        ),
        _details_list("prompt_tokens_details", "audio"),
    ),
    "output audio": _details_count(("completion_tokens_details", "audio_tokens")),
    # OpenAI's image generation and edits: the images given to edit, in the input tokens.
    "input image": _sum(
        _details_count(("input_tokens_details", "image_tokens")),
        _details_list("prompt_tokens_details", "image"),
    ),
    "input video": _details_list("prompt_tokens_details", "video"),
    # Gemini's, and OpenAI's image generation (GPT Image 1.5's at $32 against text's $10)
    "output image": _sum(
        _details_list("candidates_tokens_details", "image"),
        _details_count(("output_tokens_details", "image_tokens")),
    ),
    "output video": _details_list("candidates_tokens_details", "video"),
}
"""How each kind of usage ``modality_tokens`` knows is read, in the order reasons list them."""


def _hosted_tool_calls(item_type: str) -> Callable[[object], int]:
    """The calls an OpenAI Responses answer made of a tool OpenAI runs and bills per call:
    its ``output`` items of ``item_type``; the answer's usage does not count them."""

    def read(answer: object) -> int:
        output = _get(answer, "output")
        items = output if _is_list(output) else ()
        return sum(1 for item in items if _get(item, "type") == item_type)

    return read


def _grounding_queries(answer: object) -> int:
    """The Google Search queries a Gemini answer was grounded with (each candidate's
    ``grounding_metadata.web_search_queries``), billed apart from the tokens (per query,
    or per grounded prompt); its ``usage_metadata`` does not count them."""
    candidates = _get(answer, "candidates")
    total = 0
    for candidate in candidates if _is_list(candidates) else ():
        queries = _get(_get(candidate, "grounding_metadata"), "web_search_queries")
        total += len(queries) if _is_list(queries) else 0
    return total


_ANSWER_READERS: dict[str, Callable[[object], int]] = {
    "web search": _sum(_hosted_tool_calls("web_search_call"), _grounding_queries),
    "file search": _hosted_tool_calls("file_search_call"),
}
"""What ``modality_tokens`` reads from the answer itself, not its usage."""


def modality_tokens(obj: object, media: Collection[str] | None = None) -> dict[str, int]:
    """What a provider's usage object (or a response holding one) counts that ``Usage``
    has no class for, and a model may price apart (``RateCard.apart``): tokens that are
    not text, by side and medium (``"input audio"``, ``"output image"``, ...: ``Usage``
    counts them as text; OpenAI's ``*_tokens_details.audio_tokens``, a transcription's
    ``input_token_details.audio_tokens`` and an image edit's
    ``input_tokens_details.image_tokens``, Gemini's per-modality counts), Anthropic's
    ``"1-hour cache write"`` tokens (counted as cache writes) and ``"web search"``
    requests, and the ``"web search"`` and ``"file search"`` calls an OpenAI Responses
    answer made (its ``output`` items) or the Google Search queries a Gemini answer was
    grounded with (``obj`` must be the answer for these). Given
    ``media`` (what a rate card prices apart), only those are read: every call of such a
    model pays for the look, and reading them all takes ~40 lookups."""
    found: dict[str, int] = {}
    usage = _with_details(obj)
    if usage is not None:
        for name, read in _MEDIA_READERS.items():
            if (media is None or name in media) and (count := read(usage)):
                found[name] = count
    for name, read in _ANSWER_READERS.items():
        if (media is None or name in media) and (count := read(obj)):
            found[name] = found.get(name, 0) + count
    return found


TIER_FIELDS = ("service_tier", "speed", "inference_geo")
"""The fields of an answer (or its usage) that say how the call was served."""


def service_tiers(obj: object) -> dict[str, str]:
    """How a response (or its usage) says the call was served, by field: OpenAI's
    ``service_tier`` ("default", "flex", "priority"), Anthropic's ``usage.service_tier``
    ("standard", "priority", "batch"), ``usage.speed`` ("standard", "fast") and
    ``usage.inference_geo`` ("global", "us"). The answer's own field wins over its
    usage's."""
    found: dict[str, str] = {}
    for holder in (obj, _get(obj, "usage")):
        if holder is _MISSING or holder is None:
            continue
        for field in TIER_FIELDS:
            value = _get(holder, field)
            if isinstance(value, str):
                found.setdefault(field, value)
    return found


def _with_details(obj: object) -> object | None:
    """``obj`` if it tells token details, else the usage object it holds that does."""
    if _has(obj, *_DETAILS):
        return obj
    for key in ("usage_metadata", "usage"):
        inner: object = _get(obj, key)
        if inner is not _MISSING and inner is not None and _has(inner, *_DETAILS):
            return inner
    return None


def _is_list(value: object) -> bool:
    return isinstance(value, (list, tuple))

"""Usage normalization: the seed convention and the raw usage of each provider's SDK."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, computed_field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from budget.usage import normalize_usage, usage_from_response
from events.usage import ImageUsage, Usage


def ns(**kwargs: Any) -> SimpleNamespace:
    """An SDK-like object (attributes, nested objects)."""
    return SimpleNamespace(**{k: ns(**v) if isinstance(v, dict) else v for k, v in kwargs.items()})


# --- normalize_usage ---


def test_cached_and_cache_write_are_split_out_of_input() -> None:
    usage = normalize_usage(input_tokens=1000, cached_tokens=200, cache_write_tokens=300)
    assert (usage.input_uncached, usage.input_cache_read, usage.input_cache_write) == (
        500,
        200,
        300,
    )


def test_reasoning_is_split_out_of_output_and_counted_once() -> None:
    usage = normalize_usage(output_tokens=500, reasoning_tokens=100)
    assert (usage.output_text, usage.output_reasoning, usage.output_tokens) == (400, 100, 500)


def test_totals_round_trip_to_the_seed_convention() -> None:
    usage = normalize_usage(input_tokens=1000, output_tokens=500, cached_tokens=200)
    assert (usage.input_tokens, usage.output_tokens) == (1000, 500)


def test_audio_seconds_float_becomes_exact_decimal() -> None:
    assert normalize_usage(audio_seconds=1.1).audio_seconds == Decimal("1.1")


def test_images_accept_a_mapping() -> None:
    usage = normalize_usage(images={"count": 2, "size": "1024x1024", "quality": "hd"})
    assert usage.images == ImageUsage(count=2, size="1024x1024", quality="hd")


def test_negative_count_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="input_tokens=-1"):
        normalize_usage(input_tokens=-1)


def test_cache_counts_above_input_are_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"cached_tokens=8 \+ cache_write_tokens=5 > input_tokens=10"
    ):
        normalize_usage(input_tokens=10, cached_tokens=8, cache_write_tokens=5)


def test_reasoning_above_output_is_rejected() -> None:
    with pytest.raises(ValueError, match="reasoning_tokens=6 > output_tokens=5"):
        normalize_usage(output_tokens=5, reasoning_tokens=6)


def test_negative_audio_seconds_is_rejected() -> None:
    with pytest.raises(ValueError, match="audio_seconds"):
        normalize_usage(audio_seconds=-0.5)


def test_non_finite_audio_seconds_is_rejected() -> None:
    with pytest.raises(ValueError, match="audio_seconds"):
        normalize_usage(audio_seconds=float("inf"))


def test_bool_is_not_a_token_count() -> None:
    with pytest.raises(ValueError, match="output_tokens"):
        normalize_usage(output_tokens=True)


def test_fractional_token_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="whole number"):
        normalize_usage(input_tokens=1.5)  # type: ignore[arg-type]


@given(
    inp=st.integers(0, 10**9),
    out=st.integers(0, 10**9),
    cached=st.integers(0, 10**9),
    written=st.integers(0, 10**9),
    reasoning=st.integers(0, 10**9),
)
def test_normalized_classes_never_overlap_and_preserve_totals(
    inp: int, out: int, cached: int, written: int, reasoning: int
) -> None:
    if cached + written > inp or reasoning > out:
        with pytest.raises(ValueError):
            normalize_usage(
                input_tokens=inp,
                output_tokens=out,
                cached_tokens=cached,
                cache_write_tokens=written,
                reasoning_tokens=reasoning,
            )
        return
    usage = normalize_usage(
        input_tokens=inp,
        output_tokens=out,
        cached_tokens=cached,
        cache_write_tokens=written,
        reasoning_tokens=reasoning,
    )
    assert usage.input_tokens == inp and usage.output_tokens == out
    assert usage.total_tokens == inp + out


# --- usage_from_response ---

OPENAI_CHAT = {
    "prompt_tokens": 1000,
    "completion_tokens": 500,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 200, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 100, "audio_tokens": 0},
}
EXPECTED_OPENAI = Usage(
    input_uncached=800, input_cache_read=200, output_text=400, output_reasoning=100
)


def test_openai_chat_completions_dict() -> None:
    assert usage_from_response(OPENAI_CHAT) == EXPECTED_OPENAI


def test_openai_chat_completions_sdk_object() -> None:
    assert usage_from_response(ns(**OPENAI_CHAT)) == EXPECTED_OPENAI


def test_openai_chat_whole_response_with_usage() -> None:
    response = ns(id="chatcmpl-1", model="gpt-4o", choices=[], usage=ns(**OPENAI_CHAT))
    assert usage_from_response(response) == EXPECTED_OPENAI


def test_openai_chat_null_details_count_as_zero() -> None:
    raw = {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": None}
    assert usage_from_response(raw) == Usage(input_uncached=10, output_text=5)


def test_xai_reasoning_counted_apart_from_completion_is_added_to_output() -> None:
    """xAI's chat usage leaves reasoning out of completion_tokens; its total tells."""
    with_total = {
        "prompt_tokens": 1000,
        "completion_tokens": 900,
        "total_tokens": 2700,
        "completion_tokens_details": {"reasoning_tokens": 800},
    }
    assert usage_from_response(with_total) == Usage(
        input_uncached=1000, output_text=900, output_reasoning=800
    )
    more_reasoning_than_completion = {
        "prompt_tokens": 663,
        "completion_tokens": 50,
        "prompt_tokens_details": {"cached_tokens": 654},
        "completion_tokens_details": {"reasoning_tokens": 124},
    }
    assert usage_from_response(more_reasoning_than_completion) == Usage(
        input_uncached=9, input_cache_read=654, output_text=50, output_reasoning=124
    )


def test_openai_embeddings_usage() -> None:
    raw = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
    assert usage_from_response(raw) == Usage(embedding_tokens=8)


def test_openai_responses_api() -> None:
    raw = {
        "input_tokens": 1000,
        "input_tokens_details": {"cached_tokens": 200},
        "output_tokens": 500,
        "output_tokens_details": {"reasoning_tokens": 100},
        "total_tokens": 1500,
    }
    assert usage_from_response(raw) == EXPECTED_OPENAI


def test_anthropic_input_tokens_exclude_cache_fields() -> None:
    raw = ns(
        input_tokens=5000,
        cache_creation_input_tokens=3000,
        cache_read_input_tokens=2000,
        output_tokens=1000,
        server_tool_use=None,
    )
    usage = usage_from_response(raw)
    assert usage == Usage(
        input_uncached=5000, input_cache_read=2000, input_cache_write=3000, output_text=1000
    )


def test_anthropic_null_cache_fields() -> None:
    raw = {
        "input_tokens": 12,
        "output_tokens": 3,
        "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None,
    }
    assert usage_from_response(raw) == Usage(input_uncached=12, output_text=3)


def test_anthropic_whole_message_dict() -> None:
    message = {"id": "msg_1", "type": "message", "usage": {"input_tokens": 7, "output_tokens": 2}}
    assert usage_from_response(message) == Usage(input_uncached=7, output_text=2)


def test_gemini_usage_metadata_thoughts_are_output() -> None:
    raw = {
        "prompt_token_count": 1000,
        "cached_content_token_count": 400,
        "candidates_token_count": 300,
        "thoughts_token_count": 200,
        "total_token_count": 1500,
    }
    usage = usage_from_response(raw)
    assert usage == Usage(
        input_uncached=600, input_cache_read=400, output_text=300, output_reasoning=200
    )


def test_gemini_whole_response_object() -> None:
    response = ns(
        candidates=[],
        usage_metadata=ns(
            prompt_token_count=10, candidates_token_count=4, thoughts_token_count=None
        ),
    )
    assert usage_from_response(response) == Usage(input_uncached=10, output_text=4)


def test_unknown_shape_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match="expected OpenAI chat"):
        usage_from_response({"tokens": 5})


def test_none_is_rejected() -> None:
    with pytest.raises(ValueError, match="no usage"):
        usage_from_response(None)


def test_inconsistent_provider_counts_are_rejected() -> None:
    raw = {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 11},
    }
    with pytest.raises(ValueError, match="cached_tokens=11"):
        usage_from_response(raw)


def test_negative_provider_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="completion_tokens"):
        usage_from_response({"prompt_tokens": 10, "completion_tokens": -5})


def test_usage_objects_read_from_fields_properties_and_extras_alike() -> None:
    """A pydantic model is read from its fields without probing (fast), but a count it
    exposes as a property or computed field, or holds as an undeclared extra, counts as
    well; so does a slotted pydantic dataclass (no ``__dict__``)."""

    class Chat(BaseModel):
        model_config = ConfigDict(extra="allow")
        prompt_tokens: int

        @property
        def completion_tokens(self) -> int:
            return 5

    class Messages(BaseModel):
        input_tokens: int

        @computed_field  # type: ignore[prop-decorator]
        @property
        def output_tokens(self) -> int:
            return 7

    @pydantic_dataclass(slots=True)
    class Slotted:
        prompt_tokens: int
        completion_tokens: int

    extra = Chat(prompt_tokens=10, prompt_tokens_details={"cached_tokens": 4})
    assert usage_from_response(extra) == Usage(input_uncached=6, input_cache_read=4, output_text=5)
    assert usage_from_response(Messages(input_tokens=3)) == Usage(input_uncached=3, output_text=7)
    assert usage_from_response(Slotted(5, 2)) == Usage(input_uncached=5, output_text=2)


class _PassesForItsTarget:
    """A proxy as wrappers write them: it passes for the object it wraps."""

    def __init__(self, target: object) -> None:
        self._target = target

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._target)

    def __getattr__(self, name: str) -> object:
        return getattr(self._target, name)


def test_a_proxy_passing_for_a_usage_dict_is_read_as_the_dict() -> None:
    """The way to read a field is chosen once per class, but not for an object whose
    ``__class__`` names another: its fields read as missing (0 tokens)."""
    usage = {"prompt_tokens": 12, "completion_tokens": 5}
    proxy = _PassesForItsTarget(usage)
    assert usage_from_response(proxy) == usage_from_response(usage)
    assert usage_from_response(proxy).input_uncached == 12

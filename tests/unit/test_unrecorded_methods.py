"""Paid SDK methods whose cost the instrumentation cannot record (text to speech, batches,
images and videos priced apart, realtime sessions, OpenAI and Gemini decisions, Gemini
interactions, fine-tuning and tuning jobs, eval runs, containers, OpenAI's agents,
Gemini's cache storage and File Search indexing) still go to the provider, and the first
call of each in the process says, once, that its cost is in no total
(docs/instrument.md#not-recorded)."""

from __future__ import annotations

import logging

import anthropic
import httpx2
import openai
import pytest
from google import genai

import budget
from budget.config import Settings
from budget.disabled import DisabledPublisher
from budget.instrumentation import wrapping
from budget.pricing import PricingRegistry
from budget.tracker import UsageTracker

AUDIO = b"ID3 not really audio"


def _answer(request: httpx2.Request) -> httpx2.Response:
    if request.url.path.endswith("/audio/speech"):
        return httpx2.Response(200, content=AUDIO, headers={"content-type": "audio/mpeg"})
    return httpx2.Response(500, json={"error": {"message": f"no fixture for {request.url}"}})


@pytest.fixture
def tracker(monkeypatch: pytest.MonkeyPatch) -> UsageTracker:
    monkeypatch.setattr(wrapping, "_warned", set())
    return UsageTracker(Settings(), PricingRegistry(), DisabledPublisher())


def test_a_speech_call_goes_through_and_warns_once_that_it_is_not_recorded(
    tracker: UsageTracker, caplog: pytest.LogCaptureFixture
) -> None:
    transport = httpx2.MockTransport(_answer)
    client = openai.OpenAI(api_key="sk-test", http_client=httpx2.Client(transport=transport))
    budget.instrument(client, tracker=tracker)
    with caplog.at_level(logging.WARNING, logger=wrapping.__name__):
        for _ in range(2):
            speech = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="hi")
            assert speech.read() == AUDIO
    warnings = [r.getMessage() for r in caplog.records if r.name == wrapping.__name__]
    assert len(warnings) == 1
    assert warnings[0].startswith("budget: openai audio.speech.create calls are not recorded")


def test_each_unrecorded_paid_method_of_each_sdk_is_marked(tracker: UsageTracker) -> None:
    """Marked as the instrumented methods are (so instrumenting twice changes nothing)."""
    openai_client = budget.instrument(openai.AsyncOpenAI(api_key="sk-test"), tracker=tracker)
    claude = budget.instrument(anthropic.Anthropic(api_key="sk-test"), tracker=tracker)
    gemini = budget.instrument(genai.Client(api_key="test"), tracker=tracker)
    methods = [
        openai_client.audio.speech.create,
        openai_client.batches.create,
        openai_client.videos.create,
        openai_client.videos.edit,
        openai_client.videos.extend,
        openai_client.videos.remix,
        openai_client.realtime.connect,
        openai_client.beta.realtime.connect,
        openai_client.responses.connect,
        openai_client.beta.responses.connect,
        openai_client.live.create,
        openai_client.live.connect,
        openai_client.decisions.create,
        openai_client.fine_tuning.jobs.create,
        openai_client.evals.runs.create,
        openai_client.containers.create,
        openai_client.beta.agents.sessions.create,
        openai_client.beta.agents.sessions.events.create,
        openai_client.beta.agents.automations.create,
        openai_client.beta.agents.automations.invocations.create,
        claude.messages.batches.create,
        claude.beta.messages.batches.create,
        gemini.models.generate_images,
        gemini.aio.models.generate_videos,
        gemini.models.edit_image,
        gemini.aio.models.upscale_image,
        gemini.models.recontext_image,
        gemini.models.segment_image,
        gemini.interactions.create,
        gemini.aio.interactions.create,
        gemini.aio.live.connect,
        gemini.batches.create,
        gemini.aio.batches.create,
        gemini.batches.create_embeddings,
        gemini.aio.batches.create_embeddings,
        gemini.decisions.create,
        gemini.aio.decisions.create,
        gemini.tunings.tune,
        gemini.aio.tunings.tune,
        gemini.caches.create,
        gemini.aio.caches.create,
        gemini.caches.update,
        gemini.aio.caches.update,
        gemini.file_search_stores.upload_to_file_search_store,
        gemini.aio.file_search_stores.import_file,
    ]
    unmarked = [m for m in methods if not getattr(m, "__budget_instrumented__", False)]
    assert unmarked == []

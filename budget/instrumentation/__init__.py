"""``budget.instrument(client)``: the official ``openai``, ``anthropic`` and ``google-genai``
clients, sync or async, checked against the budget before each call and recorded after it.

Each provider's module knows its SDK's methods and usage shapes (each method a
``methods.Method``); ``lifecycle`` is what every call goes through (check, record once,
release); ``wrapping`` puts the instrumented methods in place, ``streams`` watches the
streams they return, ``stream_helpers`` checks the SDK's stream helpers entered with
``with``, and ``raw_responses`` measures the answers the SDK gives raw (their bodies, as
their callers read them, watched by ``raw_bodies``). The SDKs are the optional extra
``budget-manager[providers]``: a provider's module is imported only when a client of that
SDK is instrumented.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Literal, TypeVar

from budget.checks import BudgetExceeded
from budget.instrumentation.lifecycle import Attribution, Lifecycle, attribute_to, given_tags
from budget.pricing import genai
from budget.tracker import UsageTracker

__all__ = ["attribute_to", "instrument"]

C = TypeVar("C")

_MODULES = {"openai": "openai", "anthropic": "anthropic", "google": "gemini"}


def _refuse(refused: BudgetExceeded) -> BaseException:
    return refused


def _served_by(client: object, sdk_provider: str) -> str:
    """The provider the client's ``base_url`` is the API of (the openai SDK is how DeepSeek,
    Groq, xAI or OpenRouter are called, and how Azure is), else the SDK's own."""
    base_url = getattr(client, "base_url", None)
    serving = genai.providers_serving(str(base_url)) if base_url is not None else ()
    return sdk_provider if not serving or sdk_provider in serving else serving[0]


def instrument(
    client: C,
    *,
    user_id: str | None = None,
    project_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    tracker: UsageTracker | None = None,
    refusal: Literal["raise", "provider_error"] = "raise",
) -> C:
    """Instrument ``client`` in place and return it (and the clients its ``with_options``
    makes).

    Before each call the budget is checked with an estimate from the request (its output
    allowance at the output price plus its prompt, at about four characters a token, at
    the input price); a refused call raises ``BudgetExceeded``, or with
    ``refusal="provider_error"`` the SDK's own 429 error (caused by the
    ``BudgetExceeded``). After it, the usage is recorded once, with the check's
    reservation; a call that fails releases the reservation. Calls are charged to
    ``user_id``, ``project_id`` and ``tags``, overridden by ``attribute_to(...)`` blocks
    and by a call's own ``budget_user_id=``, ``budget_project_id=``, ``budget_tags=``.

    Calls are the provider's whose API the client's ``base_url`` is (an OpenAI client
    pointed at Groq: ``groq``), else the SDK's.

    ``tracker``: the ``UsageTracker`` to use (started on the loop the calls will be made
    from, or any running loop for a sync client); by default the process's
    (``get_usage_tracker()``), which a sync client starts on a background thread.
    """
    if refusal not in ("raise", "provider_error"):
        # Else a misspelt "provider_error" would raise BudgetExceeded past the host's 429
        # handler.
        raise ValueError(
            f"budget: refusal must be 'raise' or 'provider_error', got {refusal!r:.60}"
        )
    # The first SDK class in its ancestry: a host app's subclass of an SDK client is one.
    tops = (cls.__module__.split(".", 1)[0] for cls in type(client).__mro__)
    top = next((top for top in tops if top in _MODULES), None)
    if top is None:
        raise TypeError(
            f"budget.instrument knows the openai, anthropic and google-genai clients, not"
            f" {type(client).__module__}.{type(client).__qualname__}"
        )
    provider = importlib.import_module(f"budget.instrumentation.{_MODULES[top]}")
    lifecycle = Lifecycle(
        provider=_served_by(client, provider.PROVIDER),
        attribution=Attribution(user_id, project_id, given_tags(tags)),
        refusal=provider.provider_error if refusal == "provider_error" else _refuse,
        tracker=tracker,
    )
    provider.install(client, lifecycle)
    return client

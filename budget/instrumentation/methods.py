"""How to instrument one SDK method (``Method``), and the usage of its call: from its
response, from what its stream's ``Observer`` saw, or the pre-call estimate when they
tell none.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from budget.instrumentation.lifecycle import Measured, Plan
from budget.instrumentation.prompts import estimated_tokens
from events import Usage

__all__ = [
    "Method",
    "Observer",
    "UsageObserver",
    "estimated",
    "measure_response",
    "stream_observer",
]


class Observer(Protocol):
    """Follows one stream's items and tells the call's usage from what it saw."""

    def see(self, item: Any) -> bool:
        """Take note of ``item``; False: the caller must not see it (it was asked for
        by the instrumentation only)."""
        ...

    def measured(self) -> Measured: ...


@dataclass(frozen=True, slots=True)
class Method:
    """How to instrument one SDK method: the plan from its keywords (which it may adjust
    for the tracker), the usage from its response, and for a streaming call, its observer."""

    plan: Callable[[MutableMapping[str, Any]], Plan]
    measure: Callable[[Any, Plan], Measured]
    observe: Callable[[Plan], Observer] | None = None


class UsageObserver:
    """For streams whose usage comes whole in an item (OpenAI's last chunk or
    ``response.completed``, each Gemini chunk): ``see`` keeps the latest ``usage`` and
    ``model`` and counts the text ``chars`` passing by, so a stream cut short before its
    usage is charged the prompt and the text received, estimated; ``answer``: the item
    the usage came in, when it tells more of the price (OpenAI's service tier)."""

    cut_short = "the stream ended before its usage arrived"

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.usage: Any = None
        self.answer: Any = None
        self.model: str | None = None
        self.chars = 0

    def measured(self) -> Measured:
        if self.usage is not None:
            return Measured.read(self.usage, self.model, answer=self.answer)
        usage = Usage(
            input_uncached=self.plan.prompt_tokens, output_text=estimated_tokens(self.chars)
        )
        why = f"{self.cut_short}: the prompt and the text received, estimated"
        return Measured(usage, self.model, why)


def estimated(plan: Plan, why: str) -> Measured:
    """The plan's estimate, as the usage of a call whose response tells none."""
    usage = plan.estimate or Usage(
        input_uncached=plan.prompt_tokens, output_text=plan.max_output_tokens
    )
    return Measured(usage, estimated_reason=f"{why}; recorded the pre-call estimate")


def measure_response(method: Method, response: Any, plan: Plan) -> Measured:
    """The usage ``response`` tells, or the estimate when it tells none usable."""
    try:
        return method.measure(response, plan)
    except (ValueError, AttributeError, TypeError, LookupError) as exc:
        return estimated(plan, f"no usable usage in the response ({exc})"[:400])


def stream_observer(method: Method, plan: Plan) -> Observer:
    """A new observer for one of ``method``'s streams."""
    if method.observe is None:
        raise TypeError("this method does not stream")
    return method.observe(plan)

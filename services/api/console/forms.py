"""What every console form needs: its values as typed, a model validated from them with
each error put next to the field it is about, and times read in the reader's zone."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request
from pydantic import BaseModel, ValidationError

from events.policy import iana_zone
from services.api.problems import field_errors

__all__ = [
    "FORM_ERROR",
    "FormState",
    "form_data",
    "local_date",
    "local_datetime",
    "reader_zone",
    "validate",
    "zone",
]

UTC = ZoneInfo("UTC")
M = TypeVar("M", bound=BaseModel)
FORM_ERROR = "__form__"
FIRST_YEAR, LAST_YEAR = 1970, 2999
"""The years a form's date may name."""
"""The key of an error no single field owns."""


@dataclass
class FormState:
    """A form as the reader left it: ``values`` are shown again as typed, ``errors`` next
    to their fields (``FORM_ERROR`` above the form)."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def value(self, name: str) -> Any:
        return self.values.get(name, "")

    def error(self, name: str) -> str:
        return self.errors.get(name, "")

    def fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)  # the first reason is the one to fix first


async def form_data(request: Request, lists: Collection[str] = ()) -> dict[str, Any]:
    """The posted form, each field trimmed; the fields in ``lists`` (checkboxes) as lists."""
    form = await request.form()
    values: dict[str, Any] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or name == "csrf_token":
            continue
        if name in lists:
            values.setdefault(name, []).append(value.strip())
        else:
            values[name] = value.strip()
    return values


def validate(
    model: type[M], data: Mapping[str, Any], state: FormState, fields: Collection[str]
) -> M | None:
    """``model`` from ``data``, or None with ``state`` holding the errors by field. A check
    of the whole model has no location, but its message names the field it is about
    ("a global policy has no scope_key"): the longest field name in it gets the error, so
    ``custom_start`` wins over the plain word "period" in the same sentence."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        by_length = sorted(fields, key=len, reverse=True)
        for error in field_errors(exc.errors()):
            name = error["field"].split(".")[0]
            if name not in fields:
                named = (f for f in by_length if re.search(rf"\b{f}\b", error["message"]))
                name = next(named, FORM_ERROR)
            state.fail(name, error["message"])
        return None


def zone(name: object) -> ZoneInfo:
    """The reader's zone (app.js fills the forms' ``tz`` field), UTC when absent or wrong."""
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(iana_zone(name))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def reader_zone(state: FormState) -> ZoneInfo:
    """The zone of the form's ``tz`` field; one this server does not know fails the form:
    counted in UTC instead, a report's days (or the times typed) would be UTC's while the
    page names the reader's zone (say, one newer than the server's time zone database)."""
    name = state.value("tz")
    tz = zone(name)
    if name and str(tz) != name:
        state.fail(
            FORM_ERROR,
            f"time zone {name!r} is not one this server knows (an IANA name);"
            " pick another in the Time zone menu",
        )
    return tz


def local_datetime(text: str, tz: ZoneInfo) -> datetime | None:
    """A ``datetime-local`` input's value in ``tz``; None when empty, ``ValueError`` when
    it is not a date and time."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("enter a date and time, e.g. 2026-03-01T09:00") from None
    return _in_range(parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed)


def local_date(text: str, tz: ZoneInfo) -> datetime | None:
    """Midnight starting a ``date`` input's day in ``tz``; None when empty."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError("enter a date, e.g. 2026-03-01") from None
    return _in_range(datetime.combine(day, time(), tz))


def _in_range(at: datetime) -> datetime:
    """``at`` if its year is one the console works with: the pages add days and spans to
    what they are given (a report's "through" day, the comparison's span before it), and
    beyond these years that would overflow ``datetime``."""
    if not FIRST_YEAR <= at.year <= LAST_YEAR:
        raise ValueError(f"enter a year from {FIRST_YEAR} to {LAST_YEAR}")
    return at

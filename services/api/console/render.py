"""Rendering console pages: one Jinja environment, the filters every page formats with,
and ``render`` which adds what the base layout needs (who is signed in, the CSRF token,
the navigation)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from budget.percentages import percent_of
from events import ApiRole
from services.api.auth import Principal, csrf_token
from services.api.console.forms import FORM_ERROR

__all__ = ["NAV", "confirmation", "flash", "render", "templates", "usd"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
NAV = (
    ("Dashboard", "/"),
    ("Policies", "/policies"),
    ("History", "/history"),
    ("Reports", "/reports"),
    ("Alerts", "/alerts"),
    ("Prices", "/prices"),
    ("System", "/system"),
    ("API keys", "/keys"),
)
ADMIN_PAGES = frozenset({"/keys"})
"""Pages only an admin may open: not in a viewer's menu."""


def usd(value: Decimal | int | str | None, places: int = 2) -> str:
    """Dollars to ``places`` decimals (per-call costs use 4: calls often cost fractions of a
    cent); a non-zero amount below that shows as "<$0.01", never as $0.00."""
    if value is None or value == "":
        return ""
    amount = Decimal(value)  # history rows carry amounts as decimal text
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    step = Decimal(1).scaleb(-places)
    if 0 < amount < step / 2:
        return f"<{sign}${step}"
    return f"{sign}${amount.quantize(step, ROUND_HALF_UP):,}"


def number(value: int | Decimal | None) -> str:
    return "" if value is None else f"{value:,}"


PERCENT_SHOWN = Decimal(10_000)
"""The largest percentage shown in full; beyond it (spend against a limit of a fraction of
a cent) the figure says only that it is over: ">10,000%"."""


def percent(value: Decimal | float | None) -> str:
    if value is None:
        return ""
    amount = Decimal(value)
    if abs(amount) > PERCENT_SHOWN:
        return f"{'<-' if amount < 0 else '>'}{PERCENT_SHOWN:,}%"
    return f"{amount.quantize(Decimal('0.1'), ROUND_HALF_UP)}%"


def _instant(value: datetime | str) -> datetime:
    # History rows carry times as ISO text (rendered by PostgreSQL for pages and exports).
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def iso_utc(value: datetime | str) -> str:
    """Machine-readable, for ``<time datetime>``: app.js shows it in the reader's zone."""
    return _instant(value).astimezone(UTC).isoformat().replace("+00:00", "Z")


def utc_text(value: datetime | str) -> str:
    """What a page shows before app.js has run (or without JavaScript)."""
    return _instant(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails the page, not silently blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(FORM_ERROR=FORM_ERROR, percent_of=percent_of)
    env.filters.update(usd=usd, number=number, percent=percent, iso_utc=iso_utc, utc_text=utc_text)
    return env


templates = Jinja2Templates(env=_environment())


def flash(request: Request, message: str) -> None:
    """A one-line confirmation the next page shows (after a form's redirect)."""
    request.session["flash"] = message


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, *, status: int = 200
) -> HTMLResponse:
    principal: Principal | None = getattr(request.state, "principal", None)
    is_admin = principal is not None and principal.role is ApiRole.ADMIN
    base = {
        "principal": principal,
        "is_admin": is_admin,
        # The sign-in form carries one too: a cross-site page cannot sign a browser in.
        "csrf": csrf_token(request),
        "nav": [(label, href) for label, href in NAV if is_admin or href not in ADMIN_PAGES],
        "path": request.url.path,
        # Taken by base.html only: a panel's refresh must not swallow the next page's line.
        "take_flash": lambda: request.session.pop("flash", None),
    }
    return templates.TemplateResponse(request, name, {**base, **(context or {})}, status)


def confirmation(
    request: Request, *, verb: str, question: str, detail: str, action: str, back: str
) -> HTMLResponse:
    """The page that asks before an admin's irreversible step: ``verb`` titles it and
    labels the button that posts to ``action``; ``back`` cancels."""
    return render(
        request,
        "confirm.html",
        {
            "title": verb,
            "verb": verb,
            "question": question,
            "detail": detail,
            "action": action,
            "back": back,
        },
    )

"""Who is asking, and may they: API keys (header) and console sessions (cookie).

A request carries a key as ``Authorization: Bearer <key>`` (or ``X-API-Key``), or a
signed session cookie that the console's sign-in set, naming a session row that has not
ended; either way the key must still be live in the ``api_keys`` projection, so a
revocation (or a sign-out) holds from the next request. Keys presented in a header are
remembered by ``services.api.key_cache`` until any key is revoked. A
cookie-authenticated request that changes anything must also carry the session's CSRF
token (form field ``csrf_token`` or header ``X-CSRF-Token``).

No key, cookie or token is ever logged or echoed back.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from fastapi import Request
from fastapi.dependencies.models import Dependant
from starlette.datastructures import Headers

from events import ApiRole
from projections.api_keys import ApiKey, find_key, find_session_key
from services.api.context import ApiServices, services
from services.api.keys import hash_key
from services.api.problems import Problem

__all__ = [
    "ADMIN",
    "INGEST",
    "READ",
    "SESSION_LIFETIME",
    "Principal",
    "admits",
    "authenticate",
    "csrf_matches",
    "csrf_token",
    "key_principal",
    "presented_key",
    "refusal",
    "require",
    "route_roles",
    "sign_in",
    "sign_out",
]

READ = (ApiRole.VIEWER, ApiRole.ADMIN)
ADMIN = (ApiRole.ADMIN,)
INGEST = (ApiRole.INGEST, ApiRole.ADMIN)
SESSION_LIFETIME = timedelta(hours=12)
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="budget"'}
D = TypeVar("D", bound=Callable[..., object])


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: ApiRole
    session: bool
    """Authenticated by the console's cookie rather than a key header."""


def presented_key(headers: Headers) -> str | None:
    """The API key a request carries in a header, if any."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key") or None


async def key_principal(api: ApiServices, key: str) -> Principal | None:
    """The caller a presented key names, or None when it is not a live key."""
    key_hash = hash_key(key)

    async def lookup() -> ApiKey | None:
        return await api.database.read(lambda conn: find_key(conn, key_hash=key_hash))

    found = await api.key_cache.find(key_hash, lookup)
    return None if found is None else Principal(found.key_id, found.name, found.role, session=False)


async def authenticate(request: Request) -> Principal | None:
    """The caller, or None when no live key or session identifies one."""
    key = presented_key(request.headers)
    if key is not None:
        return await key_principal(services(request), key)
    session_id = request.session.get("sid") if "session" in request.scope else None
    if not isinstance(session_id, str):
        return None
    found = await services(request).database.read(
        lambda conn: find_session_key(conn, session_id, SESSION_LIFETIME)
    )
    return None if found is None else Principal(found.key_id, found.name, found.role, session=True)


def refusal(principal: Principal | None, roles: tuple[ApiRole, ...]) -> Problem | None:
    """401 without a live credential, 403 with one of a role not in ``roles``."""
    if principal is None:
        return Problem(
            401,
            "send a live API key as 'Authorization: Bearer <key>' (or sign in)",
            headers=_CHALLENGE,
        )
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        return Problem(
            403, f"this needs the role {allowed}; the key's role is {principal.role.value}"
        )
    return None


_ADMITTED: dict[Callable[..., object], tuple[ApiRole, ...]] = {}
"""The roles each dependency made by ``require`` (or built on it: ``admits``) admits."""


def admits(dependency: D, roles: tuple[ApiRole, ...]) -> D:
    """``dependency``, known to admit callers in ``roles`` only (``route_roles``)."""
    _ADMITTED[dependency] = roles
    return dependency


def route_roles(route: object) -> tuple[ApiRole, ...] | None:
    """The roles a matched route (``scope["route"]``) admits, by its dependencies; None
    for one that needs no credential."""
    dependant: Dependant | None = getattr(route, "dependant", None)
    pending = [dependant] if dependant is not None else []
    while pending:
        found = pending.pop()
        if found.call is not None and found.call in _ADMITTED:
            return _ADMITTED[found.call]
        pending.extend(found.dependencies)
    return None


def require(*roles: ApiRole) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency admitting callers in ``roles`` (else ``refusal``'s problem)."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        refused = refusal(principal, roles)
        if refused is not None:
            raise refused
        assert principal is not None
        if principal.session and request.method not in _SAFE:
            await _check_csrf(request)
        request.state.principal = principal
        return principal

    return admits(dependency, roles)


async def _check_csrf(request: Request) -> None:
    expected = request.session.get("csrf")
    given = request.headers.get("x-csrf-token")
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get("csrf_token")
        given = value if isinstance(value, str) else None
    if not csrf_matches(expected, given):
        raise Problem(403, "the form's CSRF token is missing or stale; reload the page")


def csrf_matches(expected: object, given: object) -> bool:
    """In constant time; any text compares (as UTF-8), so a strange token is just wrong."""
    return (
        isinstance(expected, str)
        and isinstance(given, str)
        and hmac.compare_digest(expected.encode(), given.encode())
    )


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def sign_in(request: Request, key: str) -> Principal | None:
    """Start a console session for ``key`` if it is live: a row on the server (so signing
    out ends it everywhere) and its id in the signed cookie, with a new CSRF token."""
    async with services(request).database.connection() as conn:
        found = await find_key(conn, key_hash=hash_key(key))
        if found is None:
            return None
        session_id = secrets.token_urlsafe(32)
        await conn.execute(
            "INSERT INTO console_sessions (session_id, key_id) VALUES (%s, %s)",
            (session_id, found.key_id),
        )
        # Sessions past their lifetime are no use to anyone: sign-ins sweep them.
        await conn.execute(
            "DELETE FROM console_sessions WHERE started_at < now() - %s", (SESSION_LIFETIME,)
        )
    request.session.clear()
    request.session["sid"] = session_id
    request.session["csrf"] = secrets.token_urlsafe(32)
    return Principal(found.key_id, found.name, found.role, session=True)


async def sign_out(request: Request) -> None:
    """End the session on the server and drop the cookie's contents."""
    session_id = request.session.get("sid")
    if isinstance(session_id, str):
        async with services(request).database.connection() as conn:
            await conn.execute(
                "UPDATE console_sessions SET ended_at = now()"
                " WHERE session_id = %s AND ended_at IS NULL",
                (session_id,),
            )
    request.session.clear()

"""Secrets kept out of what a process shows: its messages, log records and tracebacks.

Two layers. Whatever looks like a credential is masked wherever it appears: a URL's
password (``scheme://user:***@host``), a ``password=`` parameter, an API key's secret part
(``bmk_<key id>_***``). And the values this process knows to be secret (its settings'
``SecretStr`` fields and URL passwords, the credentials it generated or read: ``protect``)
become ``***``; ``install`` applies both to every log record and uncaught exception.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, get_args
from urllib.parse import unquote

from pydantic import BaseModel, SecretStr

__all__ = [
    "MASK",
    "SECRET_TEXT",
    "holds_secret",
    "install_redaction",
    "protect",
    "redact",
    "redact_urls",
    "secrets_of",
    "url_passwords",
]

MASK = "***"
SECRET_TEXT = object()
"""Marks a ``str`` field whose whole value is secret (``Annotated[str, SECRET_TEXT]``): a
webhook URL carries its token in its path (Slack's, Discord's), not as a password."""
MIN_SECRET_LENGTH = 4
"""Shorter values are not masked by value: they would mask ordinary words in every line
(and protect nothing; the patterns above still mask them in URLs)."""

# Each pattern masks its ``secret`` group. A URL's user part starts a word (or follows a
# quote, a bracket, a brace, a backtick, ``|``, ``;`` or ``=``), with or without a scheme:
# NATS takes ``user:password@host``.
# A password runs to the last ``@`` of the URL (as clients parse it: ``p@ss`` is one
# password; in a comma-separated list, the last before the next URL, unless it holds a
# comma itself) and may hold a ``/`` (base64, not percent-encoded), unless what follows the
# ``:`` is a port, digits then ``/`` (``http://host:8080/path@x``), or the ``//`` of a
# scheme. Masking too much of a URL is the safe side.
_URL_PASSWORD = re.compile(
    r"(?<![^\s,'\"(\[{`|;=<])(?:[A-Za-z][A-Za-z0-9+.-]*://)?[^\s:/@,'\"]*:"
    r"(?P<secret>(?!\d+/|/)(?:[^\s,]*|[^\s@]*)|[^\s@/]*)@"
)
# NATS takes a token alone as the user part: ``nats://<token>@host``.
_NATS_TOKEN = re.compile(r"(?<![^\s,'\"(\[{`|;=<])(?:nats|tls|ws|wss)://(?P<secret>[^\s:/@,'\"]+)@")
# A URL's ``password=`` parameter, or libpq's ``password = 'quoted value'`` (spaces
# around ``=``, single quotes with backslash escapes); libpq's ``sslpassword`` (the
# passphrase of the client certificate's key) as well, and a variable's assignment
# (``PGPASSWORD=``, ``BUDGET_NATS_PASSWORD=``).
_PASSWORD_PARAM = re.compile(
    r"(?<![A-Za-z0-9])(?:[A-Za-z0-9]*_)*(?:ssl|pg)?password\s*=\s*"
    r"(?P<secret>'(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^\s&;,'\"]+)",
    re.IGNORECASE,
)
# A JSON field holding one: ``"password": "..."``, or NATS's ``"pass"`` (its CONNECT).
_JSON_PASSWORD = re.compile(
    r'"(?:[A-Za-z0-9]*_)*(?:ssl|pg)?pass(?:word)?"\s*:\s*"(?P<secret>(?:[^"\\]|\\.)*)"',
    re.IGNORECASE,
)
_API_KEY = re.compile(r"\bbmk_[0-9a-f]+_(?P<secret>[A-Za-z0-9_-]+)")
_PATTERNS = (_URL_PASSWORD, _NATS_TOKEN, _PASSWORD_PARAM, _JSON_PASSWORD, _API_KEY)

_known: set[str] = set()
_installed = threading.Event()


def protect(*secrets: str) -> None:
    """Mask these values from now on, in ``redact`` and so in this process's logs."""
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if len(form) >= MIN_SECRET_LENGTH:
                _known.add(form)


def redact(text: str) -> str:
    """``text`` with every credential pattern and protected value replaced by ``***``."""
    for secret in sorted(_known, key=len, reverse=True):  # longest first: one may hold another
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(_masked, text)
    return text


def redact_urls(urls: str) -> str:
    """``urls`` (one URL, or a comma-separated list as NATS takes them) fit to show: as
    ``redact``, and what its patterns, made for any text, cannot tell there: a URL without
    a scheme whose user part holds no password shows no user part (nats-py reads
    ``token@host`` as ``nats://token@host``, a token; in text, an e-mail address), and a
    password holding a space is masked whole (in text, a space ends a URL)."""
    return redact(",".join(_credentials_masked(url) for url in urls.split(",")))


_URL_PARTS = re.compile(
    r"(?P<scheme>\s*(?:[A-Za-z][A-Za-z0-9+.-]*://)?)(?P<userinfo>.*)@(?P<host>.*)"
)


def _credentials_masked(url: str) -> str:
    parts = _URL_PARTS.fullmatch(url)  # greedy: the user part runs to the last '@'
    if parts is None:
        return url
    scheme, userinfo, host = parts["scheme"], parts["userinfo"], parts["host"]
    user, colon, password = userinfo.partition(":")
    # A URL's user holds no space: text such as "at 12:30 bob@host" is no URL.
    if colon and _spaced(password) and not _spaced(user):
        return f"{scheme}{user}:{MASK}@{host}"
    if not colon and "://" not in scheme:
        return f"{scheme}{MASK}@{host}"
    return url


def _spaced(text: str) -> bool:
    return any(char.isspace() for char in text)


def url_passwords(text: str) -> Iterator[str]:
    """The passwords of the URLs in ``text`` (NATS takes several, comma-separated)."""
    for match in _URL_PASSWORD.finditer(text):
        yield match["secret"]


def _masked(match: re.Match[str]) -> str:
    start, end = match.span("secret")
    whole = match[0]
    return whole[: start - match.start()] + MASK + whole[end - match.start() :]


def secrets_of(value: Any) -> Iterator[str]:
    """Every secret a settings model holds: its ``SecretStr`` values and its URLs'
    passwords, in nested models and lists too."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            text = getattr(value, name)
            if SECRET_TEXT in field.metadata and isinstance(text, str) and text:
                yield text
            yield from secrets_of(text)
    elif isinstance(value, str):
        yield from url_passwords(value)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from secrets_of(item)


def install_redaction(secrets: Iterable[str] = ()) -> None:
    """Protect ``secrets`` and, once per process, redact every log record (message and
    traceback) and every uncaught exception's report from now on."""
    protect(*secrets)
    if _installed.is_set():
        return
    _installed.set()
    make_record = logging.getLogRecordFactory()

    def redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        _redact_record(record)
        return record

    logging.setLogRecordFactory(redacted_record)
    sys.excepthook = _report_uncaught
    threading.excepthook = _report_thread


_FORMATTER = logging.Formatter()


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format: logging reports it itself
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _report_thread(hook: threading.ExceptHookArgs) -> None:
    if hook.exc_value is not None and not isinstance(hook.exc_value, SystemExit):
        _report_uncaught(hook.exc_type, hook.exc_value, hook.exc_traceback)


def _report_uncaught(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))
    sys.stderr.flush()


def holds_secret(model: type[BaseModel], loc: Sequence[int | str]) -> bool:
    """Whether the value at ``loc`` (a validation error's location) in ``model`` is, or is
    inside, a ``SecretStr`` field or one marked ``SECRET_TEXT``: a value there must not be
    shown, even a wrong one."""
    kind: Any = model
    for part in loc:
        if SecretStr in _types_in(kind):
            return True
        fields = {
            name: field
            for t in _types_in(kind)
            if isinstance(t, type) and issubclass(t, BaseModel)
            for name, field in t.model_fields.items()
        }
        if isinstance(part, str) and part in fields:
            if SECRET_TEXT in fields[part].metadata:
                return True
            kind = fields[part].annotation
    return SecretStr in _types_in(kind)


def _types_in(annotation: Any) -> Iterator[Any]:
    """``annotation`` and every type inside it (``tuple[X, ...]``, ``X | None``)."""
    yield annotation
    for arg in get_args(annotation):
        yield from _types_in(arg)

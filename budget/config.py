"""Configuration, read in one place: the seed's ``config.yaml`` keys, overridden by
``BUDGET_*`` environment variables."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from budget.policies import PolicyFieldError, settable_policy
from budget.pricing.overrides import PriceOverride
from budget.redaction import SECRET_TEXT, holds_secret, protect, redact, redact_urls
from budget.server_urls import database_url_problem, nats_servers, nats_url_problem
from events import BudgetPolicy, TimeBounds, Topology
from events.policy import Limit, Percent
from events.subjects import caller_token

__all__ = [
    "AlertChannels",
    "ConfigError",
    "Settings",
    "load_settings",
    "secret_from_file",
    "setting_source",
    "shown_url",
]

DEFAULT_CONFIG_FILE = "config.yaml"


_SETTINGS = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
"""Every settings model's: no key a model does not know (a misspelling would be ignored),
and no infinite or NaN number (seconds or a rate: an infinite ``enforcer_timeout`` would
wait for ever for an enforcer that is away, an infinite mail timeout fail each send)."""


class ConfigError(Exception):
    """A config file or variable is wrong; the message says which and how to fix it."""


_NOT_UTF8 = "it is not UTF-8 text; save it as UTF-8"


def secret_from_file(path: Path, *, what: str, variable: str) -> str:
    """The secret ``path`` holds (stripped), masked in this process's logs from now on;
    ``ConfigError`` naming ``what`` and its ``variable``, never the content, if unreadable."""
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read {what} {path} ({variable}): {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:  # its own text quotes a byte of the secret
        raise ConfigError(f"cannot read {what} {path} ({variable}): {_NOT_UTF8}") from None
    protect(secret)
    return secret


class _Channel(BaseModel):
    model_config = _SETTINGS

    enabled: bool = False


class UiChannel(_Channel):
    enabled: bool = True


class NatsChannel(_Channel):
    enabled: bool = True


class LogChannel(_Channel):
    enabled: bool = True
    level: Literal["debug", "info", "warning", "error", "critical"] = "warning"


class EmailChannel(_Channel):
    recipients: tuple[str, ...] = ()
    sender: str = "budget-manager@localhost"
    smtp_host: str = "localhost"
    smtp_port: int | None = Field(
        default=None, gt=0, lt=65536, description="default: 465 with tls: implicit, else 25"
    )
    tls: Literal["starttls", "implicit", "none"] = Field(
        default="starttls",
        description="starttls: upgrade after connecting (refused if the server cannot);"
        " implicit: TLS from the first byte (SMTPS); none: in clear (a local relay only)",
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CAs that sign the server's certificate; default: the system's",
    )
    username: str | None = None
    password: SecretStr | None = None
    allow_insecure_login: bool = Field(
        default=False,
        description="log in (username, password) with tls: none to a host other than loopback",
    )
    timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds for a whole message: connecting, TLS, login, sending",
    )

    @field_validator("sender", "recipients")
    @classmethod
    def _single_line_addresses(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for address in (value,) if isinstance(value, str) else value:
            if not _is_address(address):
                raise ValueError(f"{address!r} is not one e-mail address (name@host)")
        return value

    @model_validator(mode="after")
    def _has_recipients(self) -> EmailChannel:
        if self.enabled and not self.recipients:
            raise ValueError("email is enabled but has no recipients")
        return self

    @model_validator(mode="after")
    def _login_only_over_tls(self) -> EmailChannel:
        in_clear = self.tls == "none" and not _is_loopback(self.smtp_host)
        if self.enabled and self.password and in_clear and not self.allow_insecure_login:
            raise ValueError(
                "email has a password but tls: none to another host: the login would cross"
                " the network in clear; use tls: starttls or implicit, or set"
                " allow_insecure_login: true"
            )
        return self

    @property
    def port(self) -> int:
        return self.smtp_port or (465 if self.tls == "implicit" else 25)


def _is_address(text: str) -> bool:
    """One address, optionally with a display name; nothing that could end a header line."""
    if any(unicodedata.category(char).startswith("C") for char in text):
        return False
    return "@" in parseaddr(text)[1]


class WebhookChannel(_Channel):
    url: Annotated[str, SECRET_TEXT] = ""
    secret: SecretStr | None = Field(
        default=None,
        description="HMAC-SHA256 key; X-Budget-Signature proves origin and time (docs/alerts.md)",
    )
    timeout: float = Field(
        default=5.0,
        gt=0,
        description="seconds for a whole delivery: connecting, sending and the receiver's answer",
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="sign deliveries sent in clear (http://) to a host other than loopback",
    )

    @model_validator(mode="after")
    def _has_url(self) -> WebhookChannel:
        if self.enabled and not self.url.startswith(("http://", "https://")):
            raise ValueError("webhook is enabled but its url is not http(s)://...")
        if self.enabled and (why := _unusable_url(self.url)):
            # Without the url: its path may hold the receiver's token (Slack's, Discord's).
            raise ValueError(f"webhook is enabled but its url {why}; write it as https://host/path")
        return self

    @model_validator(mode="after")
    def _signed_only_over_tls(self) -> WebhookChannel:
        insecure = self.url.startswith("http://") and not _is_loopback(urlsplit(self.url).hostname)
        if self.enabled and self.secret and insecure and not self.allow_insecure_http:
            raise ValueError(
                "webhook has a secret but its url is plain http:// to another host: alerts and"
                " their signatures would cross the network in clear; use https://, or set"
                " allow_insecure_http: true"
            )
        return self


def _unusable_url(url: str) -> str | None:
    """Why no request can be sent to ``url``, or None. Refused at load: at each send it
    would fail as if the receiver were down, for a day per alert, and some of those errors
    quote the url's path (the receiver's token)."""
    if any(char.isspace() or unicodedata.category(char).startswith("C") for char in url):
        return "holds a space or a control character (percent-encode it)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError:
        return "has a malformed host or port"
    return None if parts.hostname else "names no host"


def _is_loopback(host: str | None) -> bool:
    """Traffic to this host never leaves the machine (docs/security.md)."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


class AlertChannels(BaseModel):
    """The seed's ``alert_channels``: where alerts go (rules pick among these)."""

    model_config = _SETTINGS

    ui: UiChannel = UiChannel()
    log: LogChannel = LogChannel()
    nats: NatsChannel = NatsChannel()
    email: EmailChannel = EmailChannel()
    webhook: WebhookChannel = WebhookChannel()

    def enabled(self, channel: str) -> bool:
        config = getattr(self, channel, None)
        return isinstance(config, _Channel) and config.enabled


class Settings(BaseModel):
    model_config = _SETTINGS

    enabled: bool = True
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/budget"
    subject_prefix: str = Field(default="budget", pattern=r"^[A-Za-z0-9_-]+$")
    flush_interval: float = Field(default=300, gt=0, description="seconds between spool re-sends")
    cache_ttl: float = Field(default=60, ge=0)
    default_limit: Limit | None = Field(
        default=Decimal("100.00"), description="monthly limit per user; null: none"
    )
    soft_limit_percent: Percent = Decimal(80)
    default_action: Literal["warn", "block", "throttle", "notify"] = "warn"
    spool_dir: Path = Path(".budget/spool")
    data_dir: Path = Path(".budget")
    service_name: str = "host-app"
    nats_user: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="the NATS user to connect as (docs/security.md); requests name it as caller",
    )
    heartbeat_file: Path | None = Field(
        default=None, description="workers touch it every few seconds (container health checks)"
    )
    alive_file: Path | None = Field(
        default=None,
        description="a service touches it every few seconds while its event loop turns and"
        " no loop is stuck in one turn, a dependency down or not (`budget up` sets it)",
    )
    restart_hung_after: float = Field(
        default=60,
        ge=0,
        description="`budget up` restarts a process whose alive file is this many seconds"
        " old (its event loop blocked, or a loop stuck in one turn); 0: never",
    )
    metrics_port: int | None = Field(
        default=None,
        gt=0,
        lt=65536,
        description="a service serves its Prometheus metrics on this port (/metrics); none"
        " when unset. One port per process: `budget up` gives each its own",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="the address the metrics endpoint listens on (docs/security.md)",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="the bearer token a scraper must send to /metrics (required with"
        " metrics_port; at least 16 printable characters, no space)",
    )
    metrics_token_file: Path | None = Field(
        default=None,
        description="a file holding the metrics token (wins over metrics_token); `budget up`"
        " makes one",
    )
    # NATS credentials and TLS (docs/security.md); ``nats_user`` above is the user.
    nats_password: SecretStr | None = Field(default=None, description="the NATS user's password")
    nats_password_file: Path | None = Field(
        default=None, description="a file holding the NATS password (wins over nats_password)"
    )
    nats_tls_ca: Path | None = Field(
        default=None, description="CA certificate(s) to verify the NATS server by (TLS)"
    )
    nats_tls_cert: Path | None = Field(
        default=None, description="client certificate, for a NATS server that requires one"
    )
    nats_tls_key: Path | None = Field(default=None, description="the client certificate's key")
    nats_server_tls_cert: Path | None = Field(
        default=None, description="`budget up`: the embedded NATS server's certificate (TLS)"
    )
    nats_server_tls_key: Path | None = Field(
        default=None, description="`budget up`: the embedded NATS server's key"
    )
    nats_server_tls_ca: Path | None = Field(
        default=None, description="`budget up`: require client certificates this CA signed"
    )
    price_overrides: tuple[PriceOverride, ...] = Field(
        default=(), description="negotiated rates, fine-tunes, private deployments (see docs)"
    )
    reservation_ttl: float = Field(
        default=300, gt=0, le=86400, description="seconds a pre-call reservation is held"
    )
    reservation_ttl_max: float = Field(
        default=3600,
        gt=0,
        le=86400,
        description="the longest hold a check's ttl_seconds may ask for; longer is capped",
    )
    enforcer_timeout: float = Field(
        default=2.0, gt=0, description="seconds to wait for the enforcer's answer"
    )
    query_timeout: float = Field(
        default=30.0, gt=0, description="seconds to wait for the query service's answer"
    )
    fail_open: bool = Field(
        default=False,
        description="allow calls under BLOCK/THROTTLE policies when the enforcer is unreachable",
    )
    policies: tuple[BudgetPolicy, ...] = Field(
        default=(), description="the top-level budget_policies of config.yaml"
    )
    alert_channels: AlertChannels = Field(
        default=AlertChannels(), description="the top-level alert_channels of config.yaml"
    )
    caller_rate: float = Field(
        default=200,
        gt=0,
        description="enforcer requests/s one caller may send, sustained; the services' own"
        " caller is not limited (docs/enforcement.md)",
    )
    caller_burst: int = Field(
        default=400, ge=1, description="enforcer requests one caller may send at once"
    )
    caller_in_flight: int = Field(
        default=64, ge=1, description="requests of one caller the enforcer works on at once"
    )
    caller_query_rate: float = Field(
        default=20, gt=0, description="query service requests/s one caller may send, sustained"
    )
    caller_query_burst: int = Field(
        default=40, ge=1, description="query service requests one caller may send at once"
    )
    caller_query_in_flight: int = Field(
        default=8, ge=1, description="requests of one caller the query service works on at once"
    )
    api_feeds_per_key: int = Field(
        default=16,
        ge=1,
        description="live alert feeds (Server-Sent Events; one per console tab) one API key"
        " may hold open at once in one API process",
    )
    max_clock_skew: float = Field(
        default=TimeBounds.max_clock_skew.total_seconds(),
        ge=0,
        le=86400,
        description="seconds an event's occurred_at may lie ahead of now (docs/architecture.md)",
    )
    max_event_age: float = Field(
        default=TimeBounds.max_event_age.total_seconds(),
        gt=0,
        le=100 * 366 * 86400,
        description="seconds an event's occurred_at may lie in the past (docs/architecture.md)",
    )
    # Secrets are SecretStr: never shown by repr, str or a config error (budget/redaction.py).
    api_session_secret: SecretStr | None = Field(
        default=None,
        description="signs console cookies (the same on every replica); default: a secret"
        " made on first start in <data_dir>/api-session.secret",
    )

    @field_validator("nats_url")
    @classmethod
    def _a_nats_url(cls, value: str) -> str:
        problem = nats_url_problem(value)
        if problem is not None:
            raise ValueError(f"not a NATS URL: {problem}")
        return value

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, value: str) -> str:
        problem = database_url_problem(value)
        if problem is not None:
            raise ValueError(f"not a PostgreSQL URL: {problem}")
        return value

    @field_validator("restart_hung_after")
    @classmethod
    def _hung_after_heartbeats(cls, value: float) -> float:
        # Services touch their heartbeat every 5 s: a shorter wait would kill healthy ones.
        if 0 < value < 15:
            raise ValueError(
                f"{value:g} seconds would restart healthy services, which show they turn"
                " every 5 s: give at least 15, or 0 to never restart a hung one"
            )
        return value

    @model_validator(mode="after")
    def _default_hold_within_the_longest(self) -> Settings:
        if self.reservation_ttl > self.reservation_ttl_max:
            raise ValueError(
                f"reservation_ttl ({self.reservation_ttl:g}) is longer than reservation_ttl_max"
                f" ({self.reservation_ttl_max:g}); lower the one or raise the other"
            )
        return self

    @model_validator(mode="after")
    def _nats_tls_pairs(self) -> Settings:
        for cert, key in (
            ("nats_tls_cert", "nats_tls_key"),
            ("nats_server_tls_cert", "nats_server_tls_key"),
        ):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} go together; set both or neither")
        if self.nats_server_tls_ca is not None and self.nats_server_tls_cert is None:
            raise ValueError(
                "nats_server_tls_ca needs nats_server_tls_cert and nats_server_tls_key"
            )
        return self

    @model_validator(mode="after")
    def _metrics_behind_a_credential(self) -> Settings:
        if self.metrics_port is not None and not (self.metrics_token or self.metrics_token_file):
            raise ValueError(
                "metrics_port (BUDGET_METRICS_PORT) is set but /metrics takes no request"
                " without a credential: set metrics_token_file (BUDGET_METRICS_TOKEN_FILE) or"
                " metrics_token (BUDGET_METRICS_TOKEN), and give Prometheus the same token"
                " (docs/operations.md, Metrics)"
            )
        return self

    @model_validator(mode="after")
    def _nats_credentials_in_one_place(self) -> Settings:
        """A password in the URL and one in the settings: which would count? nats-py and
        FastStream disagree (FastStream refuses the pair, obscurely), so neither is
        guessed. The message names the settings, never a password."""
        url_users = {_url_user(url) for url in nats_servers(self.nats_url)} - {None}
        if not url_users:
            return self
        password_setting = next(
            (
                name
                for name in ("nats_password_file", "nats_password")
                if getattr(self, name) is not None
            ),
            None,
        )
        fix = "keep one: remove them from the URL (nats://host:4222) and set nats_user, or unset"
        if password_setting is not None:
            raise ValueError(
                "nats_url (BUDGET_NATS_URL) carries credentials (a user or token, with or"
                f" without a password, before '@') and {password_setting}"
                f" (BUDGET_{password_setting.upper()}) gives a password too;"
                f" {fix} {password_setting}"
            )
        if self.nats_user is not None and url_users != {self.nats_user}:
            raise ValueError(
                "nats_url (BUDGET_NATS_URL) carries credentials for another NATS user than"
                f" nats_user (BUDGET_NATS_USER, {self.nats_user!r}); {fix} nats_user"
            )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():  # URLs may hold a password
            yield name, shown_url(value) if isinstance(value, str) else value

    @property
    def topology(self) -> Topology:
        return Topology(prefix=self.subject_prefix)

    @property
    def caller(self) -> str:
        """Who this process is in its requests: its NATS user, which the server enforces
        when it runs with permissions; without them, the service name, as declared."""
        return self.nats_user or caller_token(self.service_name)

    @property
    def time_bounds(self) -> TimeBounds:
        return TimeBounds(
            max_clock_skew=timedelta(seconds=self.max_clock_skew),
            max_event_age=timedelta(seconds=self.max_event_age),
        )


_FILE_ONLY = {
    "price_overrides": "budget.price_overrides",
    "policies": "budget_policies",
    "alert_channels": "alert_channels",
}
"""Settings read from config.yaml only (structured: no variable spells them), with the
key that sets them there."""

# Environment variables that override config.yaml, and the Settings field each one sets.
ENV_VARS: Mapping[str, str] = {
    f"BUDGET_{name.upper()}": name for name in Settings.model_fields if name not in _FILE_ONLY
}


def _url_user(url: str) -> str | None:
    """The user a NATS URL names (``nats://user:password@host``, ``user@host``), if any."""
    # not percent-decoded: nats-py sends the user as the URL spells it
    return urlsplit(url if "://" in url else f"//{url}").username


def shown_url(url: str) -> str:
    """``url`` fit for a message or a log: a password or a NATS token in it is masked (in
    each URL of a comma-separated list, as NATS takes them)."""
    return redact_urls(url)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """``config_file`` defaults to ``$BUDGET_CONFIG``, else ``./config.yaml`` when present."""
    environ = os.environ if environ is None else environ
    path = _config_path(config_file, environ)
    values: dict[str, Any] = {}
    if path.exists():
        document = _read_document(path)
        values.update(_budget_section(path, document))
        values["policies"] = _configured_policies(path, document)
        if document.get("alert_channels") is not None:
            values["alert_channels"] = document["alert_channels"]
    elif config_file or environ.get("BUDGET_CONFIG"):
        # absolute: `./run` works in the checkout, which a relative path is looked in
        raise ConfigError(
            f"config file {path.absolute()} does not exist; fix the path or unset BUDGET_CONFIG"
        )
    for field, key in _FILE_ONLY.items():
        if f"BUDGET_{field.upper()}" in environ:  # else set and silently not applied
            raise ConfigError(
                f"environment variable BUDGET_{field.upper()} is not read: {field} is set in"
                f" the config file only ({key} in {path}); unset the variable"
            )
    values.update({field: environ[var] for var, field in ENV_VARS.items() if var in environ})
    if "policies" in values:
        values["policies"] = _with_defaults(values["policies"], values)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if not err["loc"]:  # a rule across keys; the message names them
            where = f"budget in {path}" if path.exists() else "BUDGET_* environment variables"
        elif err["loc"][0] == "policies":
            index, *rest = err["loc"][1:]
            where = f"budget_policies[{index}]{''.join(f'.{p}' for p in rest)} in {path}"
        elif err["loc"][0] == "alert_channels":
            where = f"{field} in {path}"
        else:
            where = setting_source(field, config_file, environ)
        given = err.get("input")  # a whole mapping is not shown: it may hold a password
        hidden = (
            isinstance(given, Mapping)
            or holds_secret(Settings, err["loc"])
            or err["type"] == "extra_forbidden"  # a misspelled key may be a secret's
        )
        got = "" if hidden else f" (got {_shown_input(field, given)!r})"
        message = err["msg"].removeprefix("Value error, ")  # a validator's own words
        raise ConfigError(redact(f"{where}: {message}{got}")) from None
    _check_settable(settings.policies, path)
    return settings


_URL_FIELDS = frozenset({"nats_url", "database_url"})


def _shown_input(field: str, given: object) -> object:
    """``given`` as a config error shows it: a URL with its password masked (``redact``
    alone cannot tell ``token@host``, a NATS token, from an e-mail address)."""
    return shown_url(given) if field in _URL_FIELDS and isinstance(given, str) else given


def _check_settable(policies: Sequence[BudgetPolicy], path: Path) -> None:
    """``ConfigError`` for the first configured policy that may not be set (``settable_policy``:
    a zone ``ZoneInfo`` loads but no IANA name, such as ``localtime``, or an empty key),
    as the API and CLI refuse it."""
    for index, policy in enumerate(policies):
        try:
            settable_policy(policy)
        except PolicyFieldError as exc:
            given = getattr(policy, exc.field)
            raise ConfigError(
                f"budget_policies[{index}].{exc.field} in {path}: {exc.message} (got {given!r})"
            ) from None


def setting_source(
    field: str,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Where setting ``field`` was read from, as a config error names it: its environment
    variable when set, else the config file (``load_settings``' arguments)."""
    environ = os.environ if environ is None else environ
    variable = next((v for v, f in ENV_VARS.items() if f == field and v in environ), None)
    if variable is not None:
        return f"environment variable {variable}"
    return f"budget.{field} in {_config_path(config_file, environ)}"


def _config_path(config_file: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    return Path(config_file or environ.get("BUDGET_CONFIG") or DEFAULT_CONFIG_FILE)


class _DuplicateKey(Exception):
    """A mapping of the config file gives one key twice."""


class _UniqueKeysLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: PyYAML keeps the
    last silently, so a setting added at a file's end would override one above it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _DuplicateKey(
                    f"the key {key!r} is given twice in one mapping (again at line"
                    f" {key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = yaml.load(path.read_text(), Loader=_UniqueKeysLoader) or {}
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        # PyYAML's own text quotes the offending line, which may hold a password.
        mark = getattr(exc, "problem_mark", None)
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    except OSError as exc:  # a directory, no permission, a disk error
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read config file {path}: {_NOT_UTF8} (at byte {exc.start})"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'budget' section")
    return document


def _budget_section(path: Path, document: dict[str, Any]) -> dict[str, Any]:
    section = document.get("budget", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'budget' must be a mapping of settings")
    return section


def _configured_policies(path: Path, document: dict[str, Any]) -> list[Any]:
    """``budget_policies`` entries; each gets a stable id from its name unless it has one,
    so loading the file again replaces the same policies instead of adding new ones."""
    entries = document.get("budget_policies") or []
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'budget_policies' must be a list of policies")
    policies = []
    for entry in entries:
        if isinstance(entry, dict) and "policy_id" not in entry and entry.get("name"):
            entry = {**entry, "policy_id": "config-" + _slug(str(entry["name"]))}
        policies.append(entry)
    return policies


_POLICY_DEFAULTS = {"action": "default_action", "soft_limit_percent": "soft_limit_percent"}
"""A ``budget_policies`` entry's fields that, left out, take a ``budget:`` setting."""


def _with_defaults(entries: list[Any], values: Mapping[str, Any]) -> list[Any]:
    """``entries`` with the action and soft limit they leave out taken from the settings
    (``default_action``, "the default action when a limit is exceeded", and
    ``soft_limit_percent``, from the file or their variables); unset, the policy's own
    defaults apply, which are the settings' too."""
    defaults = {f: values[s] for f, s in _POLICY_DEFAULTS.items() if values.get(s) is not None}
    return [{**defaults, **entry} if isinstance(entry, dict) else entry for entry in entries]


def _slug(name: str) -> str:
    """A policy id part from a name, in the ids' alphabet. ASCII names keep their slug
    ("Team A" -> "team-a"); others drop their accents and add the name's digest, so
    "Équipe" and "Equipe" stay two policies ("equipe-<digest>"; "日本チーム": a digest)."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = "-".join("".join(c if c.isalnum() else " " for c in plain).split())
    if slug and name.isascii() and len(slug) <= _SLUG_ROOM:
        return slug
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{slug[: _SLUG_ROOM - 13]}-{digest}" if slug else digest


_SLUG_ROOM = 93  # "config-" and the slug within the ids' 100 characters

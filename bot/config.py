"""Settings, read from the environment and validated once, at start.

Every problem is reported as one ``ConfigError`` line that names the variable
and what is expected. Secret values never appear in those lines or in ``repr``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta, tzinfo
from enum import Enum
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.domain.exceptions import (
    DEFAULT_PERSONAL_FIELDS,
    DEFAULT_REASON_FIELDS,
    ExceptionsFile,
    parse_exceptions_file,
    parse_field_names,
)
from bot.domain.rules import Rules
from bot.domain.schedule import Schedule

DEFAULT_MYPREFERENCES_API_URL = "https://pm.mypreferences.com/Profiles/"
DEFAULT_STATUS_PATH = "Async/{clientId}/Import/{accessToken}/Status"
DEFAULT_EXCEPTIONS_PATH = "Async/{clientId}/Import/{accessToken}/Exceptions"
PATH_PLACEHOLDERS = ("{clientId}", "{accessToken}")
DEFAULT_EXCEPTIONS_MAX_RECORDS = 1_000_000
DEFAULT_EXCEPTIONS_PAGE_SIZE = 1000
MAX_EXCEPTIONS_PAGE_SIZE = 10_000
DEFAULT_EXCEPTIONS_REQUESTS_PER_SECOND = 2.0
# How Retrieve exceptions reads ``offset`` (the public pages only say it defaults to 1):
# "record", the 1-based index of the first record, or "page", the 1-based page number.
EXCEPTIONS_OFFSET_MODES = ("record", "page")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class Secret(str):
    """A string that never shows itself in ``repr`` (and so in tracebacks of dataclasses)."""

    def __repr__(self) -> str:
        return "Secret('***')"


class Need(Enum):
    """What a command needs from the configuration."""

    DATABASE = "database"
    API = "api"
    SLACK_HTTP = "slack_http"
    SLACK_SOCKET = "slack_socket"


@dataclass(frozen=True)
class OAuthSettings:
    token_url: str
    client_id: Secret
    client_secret: Secret
    scope: str
    # "basic": HTTP Basic credentials; "body": client_id/client_secret in the form body.
    client_auth: str = "basic"


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///import-status-bot.db"
    slack_bot_token: Secret | None = None
    slack_signing_secret: Secret | None = None
    slack_app_token: Secret | None = None
    slack_api_url: str = "https://slack.com/api/"
    api_url: str = DEFAULT_MYPREFERENCES_API_URL
    status_path: str = DEFAULT_STATUS_PATH
    exceptions_path: str = DEFAULT_EXCEPTIONS_PATH
    client_id: str = ""
    authorization: Secret | None = None
    oauth: OAuthSettings | None = None
    expires_timezone: tzinfo = UTC
    http_timeout_seconds: float = 10.0
    lookup_budget_seconds: float = 20.0
    poll_interval_seconds: float = 60.0
    idle_poll_interval_seconds: float = 300.0
    # The closest an ETA-aware early poll comes to the poll before it (README).
    poll_min_spacing_seconds: float = 10.0
    max_backoff_seconds: float = 900.0
    poll_concurrency: int = 20
    tick_seconds: float = 2.0
    lease_seconds: float = 60.0
    api_trouble_minutes: float = 15.0
    expiry_warning_minutes: float = 60.0
    host: str = "0.0.0.0"
    port: int = 3000
    log_level: str = "INFO"
    log_format: str = "text"
    allowed_channel_ids: frozenset[str] = field(default_factory=frozenset)
    allowed_user_ids: frozenset[str] = field(default_factory=frozenset)
    lookup_limit: int = 30
    lookup_window_seconds: float = 600.0
    # The exceptions archive (SPEC section 6; README "Exceptions").
    exceptions_file: ExceptionsFile = ExceptionsFile.REDACTED
    exceptions_max_records: int = DEFAULT_EXCEPTIONS_MAX_RECORDS
    exceptions_reason_fields: tuple[str, ...] = DEFAULT_REASON_FIELDS
    exceptions_personal_fields: tuple[str, ...] = DEFAULT_PERSONAL_FIELDS
    exceptions_dir: str = field(default_factory=tempfile.gettempdir)
    exceptions_page_size: int = DEFAULT_EXCEPTIONS_PAGE_SIZE
    exceptions_requests_per_second: float = DEFAULT_EXCEPTIONS_REQUESTS_PER_SECOND
    exceptions_offset: str = "record"
    digest_check_seconds: float = 60.0
    # chat.update is Tier 3 ("50+ per minute" per workspace): card edits keep to it.
    slack_card_edits_per_minute: float = 50.0

    def rules(self) -> Rules:
        """The product's rules as these settings tune them."""
        return Rules(
            expiry_warning=timedelta(minutes=self.expiry_warning_minutes),
            trouble_after=timedelta(minutes=self.api_trouble_minutes),
        )

    def schedule(self) -> Schedule:
        """The polling schedule as these settings tune it."""
        return Schedule(
            active_interval=self.poll_interval_seconds,
            idle_interval=self.idle_poll_interval_seconds,
            max_backoff=self.max_backoff_seconds,
            expiry_warning=timedelta(minutes=self.expiry_warning_minutes),
            min_spacing=self.poll_min_spacing_seconds,
        )

    def secrets(self) -> list[str]:
        """Every secret value configured, for redaction."""
        values: list[str | None] = [
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.authorization,
        ]
        if self.oauth:
            values += [self.oauth.client_id, self.oauth.client_secret]
        values += database_password_forms(self.database_url)
        return [str(v) for v in values if v]


def database_password_forms(url: str) -> list[str]:
    """The password in a database URL as written (URL-encoded) and as sent, for redaction."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def load_settings(
    env: Mapping[str, str], needs: set[Need] | frozenset[Need] = frozenset()
) -> Settings:
    """Read and validate the settings a command needs. Raises ``ConfigError``."""
    reader = _Reader(env)
    oauth_names = (
        "MYPREFERENCES_OAUTH_TOKEN_URL",
        "MYPREFERENCES_OAUTH_CLIENT_ID",
        "MYPREFERENCES_OAUTH_CLIENT_SECRET",
        "MYPREFERENCES_OAUTH_SCOPE",
    )
    oauth: OAuthSettings | None = None
    if any(reader.text(name) for name in oauth_names):
        token_url = reader.url("MYPREFERENCES_OAUTH_TOKEN_URL", required=True)
        oauth = OAuthSettings(
            token_url=token_url,
            client_id=reader.secret("MYPREFERENCES_OAUTH_CLIENT_ID", required=True) or Secret(),
            client_secret=reader.secret("MYPREFERENCES_OAUTH_CLIENT_SECRET", required=True)
            or Secret(),
            scope=reader.text("MYPREFERENCES_OAUTH_SCOPE", required=True),
            client_auth=reader.choice(
                "MYPREFERENCES_OAUTH_CLIENT_AUTH", ("basic", "body"), "basic"
            ),
        )
    authorization = reader.secret("MYPREFERENCES_AUTHORIZATION")
    if Need.API in needs:
        if authorization and oauth:
            raise ConfigError(
                "MYPREFERENCES_AUTHORIZATION: set either it or the MYPREFERENCES_OAUTH_* "
                "variables, not both (exactly one auth mode)"
            )
        if not authorization and not oauth:
            raise ConfigError(
                "MYPREFERENCES_AUTHORIZATION: required (or set MYPREFERENCES_OAUTH_TOKEN_URL, "
                "_CLIENT_ID, _CLIENT_SECRET and _SCOPE for OAuth 2.0)"
            )

    poll_interval = reader.number("POLL_INTERVAL_SECONDS", 60.0, minimum=0.1)
    settings = Settings(
        database_url=reader.database_url("DATABASE_URL", "sqlite:///import-status-bot.db"),
        slack_bot_token=reader.secret(
            "SLACK_BOT_TOKEN",
            required=bool(needs & {Need.SLACK_HTTP, Need.SLACK_SOCKET}),
            prefix="xoxb-",
        ),
        slack_signing_secret=reader.secret(
            "SLACK_SIGNING_SECRET", required=Need.SLACK_HTTP in needs
        ),
        slack_app_token=reader.secret(
            "SLACK_APP_TOKEN", required=Need.SLACK_SOCKET in needs, prefix="xapp-"
        ),
        slack_api_url=_with_slash(reader.url("SLACK_API_URL") or "https://slack.com/api/"),
        api_url=_with_slash(reader.url("MYPREFERENCES_API_URL") or DEFAULT_MYPREFERENCES_API_URL),
        status_path=reader.path_template("MYPREFERENCES_STATUS_PATH", DEFAULT_STATUS_PATH),
        exceptions_path=reader.path_template(
            "MYPREFERENCES_EXCEPTIONS_PATH", DEFAULT_EXCEPTIONS_PATH
        ),
        client_id=reader.client_id("MYPREFERENCES_CLIENT_ID", required=Need.API in needs),
        authorization=authorization,
        oauth=oauth,
        expires_timezone=reader.timezone("MYPREFERENCES_EXPIRES_TIMEZONE"),
        http_timeout_seconds=reader.number("HTTP_TIMEOUT_SECONDS", 10.0, minimum=0.1),
        lookup_budget_seconds=reader.number("LOOKUP_BUDGET_SECONDS", 20.0, minimum=0.1),
        poll_interval_seconds=poll_interval,
        idle_poll_interval_seconds=reader.number(
            "IDLE_POLL_INTERVAL_SECONDS", max(poll_interval * 5, poll_interval), minimum=0.1
        ),
        # A sixth of the interval (10 s at 60 s): an early poll lands at most that close to
        # the one before, so a wrong estimate costs little, and the budget holds anyway.
        poll_min_spacing_seconds=reader.number(
            "POLL_MIN_SPACING_SECONDS", poll_interval / 6, minimum=0.05
        ),
        max_backoff_seconds=reader.number(
            "MAX_BACKOFF_SECONDS", max(900.0, poll_interval), minimum=0.1
        ),
        poll_concurrency=int(reader.number("POLL_CONCURRENCY", 20, minimum=1, integer=True)),
        tick_seconds=reader.number("TICK_SECONDS", min(2.0, poll_interval), minimum=0.05),
        lease_seconds=reader.number("LEASE_SECONDS", 60.0, minimum=1),
        api_trouble_minutes=reader.number("API_TROUBLE_MINUTES", 15.0, minimum=0),
        expiry_warning_minutes=reader.number("EXPIRY_WARNING_MINUTES", 60.0, minimum=0),
        host=reader.host("HOST") or "0.0.0.0",
        port=int(reader.number("PORT", 3000, minimum=0, maximum=65535, integer=True)),
        log_level=reader.choice(
            "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO", upper=True
        ),
        log_format=reader.choice("LOG_FORMAT", ("text", "json"), "text"),
        allowed_channel_ids=reader.id_set("ALLOWED_CHANNEL_IDS"),
        allowed_user_ids=reader.id_set("ALLOWED_USER_IDS"),
        lookup_limit=int(reader.number("LOOKUP_RATE_LIMIT", 30, minimum=1, integer=True)),
        lookup_window_seconds=reader.number("LOOKUP_RATE_WINDOW_SECONDS", 600.0, minimum=1),
        exceptions_file=reader.exceptions_file("EXCEPTIONS_FILE"),
        exceptions_max_records=int(
            reader.number(
                "EXCEPTIONS_MAX_RECORDS", DEFAULT_EXCEPTIONS_MAX_RECORDS, minimum=1, integer=True
            )
        ),
        exceptions_reason_fields=reader.field_names(
            "EXCEPTIONS_REASON_FIELDS", DEFAULT_REASON_FIELDS
        ),
        exceptions_personal_fields=reader.field_names(
            "EXCEPTIONS_PERSONAL_FIELDS", DEFAULT_PERSONAL_FIELDS
        ),
        exceptions_dir=reader.directory("EXCEPTIONS_DIR") or tempfile.gettempdir(),
        exceptions_page_size=int(
            reader.number(
                "EXCEPTIONS_PAGE_SIZE",
                DEFAULT_EXCEPTIONS_PAGE_SIZE,
                minimum=1,
                maximum=MAX_EXCEPTIONS_PAGE_SIZE,
                integer=True,
            )
        ),
        exceptions_requests_per_second=reader.number(
            "EXCEPTIONS_REQUESTS_PER_SECOND",
            DEFAULT_EXCEPTIONS_REQUESTS_PER_SECOND,
            minimum=0.01,
            maximum=1000,
        ),
        exceptions_offset=reader.choice(
            "MYPREFERENCES_EXCEPTIONS_OFFSET", EXCEPTIONS_OFFSET_MODES, "record"
        ),
        digest_check_seconds=reader.number("DIGEST_CHECK_SECONDS", 60.0, minimum=0.1),
        slack_card_edits_per_minute=reader.number(
            "SLACK_CARD_EDITS_PER_MINUTE", 50.0, minimum=1, maximum=100_000
        ),
    )
    return settings


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class _Reader:
    """Reads one variable at a time and turns each problem into a one-line ConfigError."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str, required: bool = False) -> str:
        value = self.env.get(name, "").strip()
        if required and not value:
            raise ConfigError(f"{name}: required but not set")
        return value

    def secret(self, name: str, required: bool = False, prefix: str = "") -> Secret | None:
        value = self.text(name, required)
        if not value:
            return None
        if prefix and not value.startswith(prefix):
            raise ConfigError(f"{name}: expected a value starting with '{prefix}'")
        if any(ch.isspace() for ch in value) and name != "MYPREFERENCES_AUTHORIZATION":
            raise ConfigError(f"{name}: must not contain spaces")
        if any(ord(ch) < 32 for ch in value):
            raise ConfigError(f"{name}: must not contain control characters")
        return Secret(value)

    def url(self, name: str, required: bool = False) -> str:
        value = self.text(name, required)
        if value and not re.match(r"^https?://[^\s/]+", value):
            # The value is not echoed: a URL can carry credentials.
            raise ConfigError(f"{name}: expected an http(s) URL such as https://host/path/")
        return value

    def host(self, name: str) -> str:
        value = self.text(name)
        # A host name or an IPv4/IPv6 address; anything else would only fail at bind time.
        if value and not re.fullmatch(r"[A-Za-z0-9.\-:]{1,253}", value):
            raise ConfigError(
                f"{name}: expected a host name or IP address such as 0.0.0.0, got {value!r}"
            )
        return value

    def database_url(self, name: str, default: str) -> str:
        value = self.text(name) or default
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ConfigError(
                f"{name}: expected a SQLAlchemy URL such as sqlite:///file.db or "
                "postgresql+psycopg://user@host/db"
            )
        if value.split("://", 1)[1].split("/", 1)[0].count("@") > 1:
            # A raw @ in the password would make part of it the host name, and so
            # appear in every error that names the host. (The value is not echoed.)
            raise ConfigError(f"{name}: URL-encode an @ in the user name or password as %40")
        return value

    def path_template(self, name: str, default: str) -> str:
        value = self.text(name) or default
        missing = [p for p in PATH_PLACEHOLDERS if p not in value]
        if missing:
            raise ConfigError(f"{name}: the path template must contain {' and '.join(missing)}")
        return value.lstrip("/")

    def client_id(self, name: str, required: bool) -> str:
        value = self.text(name, required)
        if value and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", value):
            raise ConfigError(f"{name}: expected letters, digits, '_', '-' or '.' only")
        return value

    def number(
        self,
        name: str,
        default: float,
        minimum: float | None = None,
        maximum: float | None = None,
        integer: bool = False,
    ) -> float:
        raw = self.text(name)
        if not raw:
            return default
        kind = "a whole number" if integer else "a number"
        try:
            value = float(int(raw)) if integer else float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected {kind}, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}: expected {kind}, got {raw!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}: expected {kind} of at least {minimum:g}, got {raw!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}: expected {kind} of at most {maximum:g}, got {raw!r}")
        return value

    def choice(self, name: str, allowed: tuple[str, ...], default: str, upper: bool = False) -> str:
        raw = self.text(name)
        if not raw:
            return default
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {raw!r}")
        return value

    def timezone(self, name: str) -> tzinfo:
        raw = self.text(name)
        if not raw or raw.upper() == "UTC":
            return UTC
        try:
            return ZoneInfo(raw)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"{name}: expected an IANA time zone such as UTC or Europe/Berlin"
            ) from None

    def exceptions_file(self, name: str) -> ExceptionsFile:
        raw = self.text(name)
        if not raw:
            return ExceptionsFile.REDACTED
        try:
            return parse_exceptions_file(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def field_names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.text(name)
        if not raw:
            return default
        try:
            return parse_field_names(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def directory(self, name: str) -> str:
        """An existing, writable directory (archive files are written there), or ""."""
        value = self.text(name)
        if not value:
            return ""
        if not os.path.isdir(value):
            raise ConfigError(f"{name}: expected an existing directory, got {value!r}")
        if not os.access(value, os.W_OK | os.X_OK):
            raise ConfigError(f"{name}: the directory {value!r} is not writable by the bot")
        return value

    def id_set(self, name: str) -> frozenset[str]:
        raw = self.text(name)
        ids = frozenset(part.strip() for part in raw.split(",") if part.strip())
        bad = [i for i in ids if not re.fullmatch(r"[A-Z0-9]{2,30}", i)]
        if bad:
            raise ConfigError(f"{name}: expected comma-separated Slack ids such as C0123ABCD")
        return ids

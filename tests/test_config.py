"""Settings: defaults, one clear ConfigError per bad variable, secrets never shown."""

from __future__ import annotations

from datetime import UTC

import pytest

from bot.config import (
    DEFAULT_EXCEPTIONS_PATH,
    DEFAULT_MYPREFERENCES_API_URL,
    DEFAULT_STATUS_PATH,
    ConfigError,
    Need,
    Secret,
    Settings,
    load_settings,
)

BOT_TOKEN = "xoxb-111-222-BOTSECRET"
SIGNING_SECRET = "signing-SECRET-0f9e8d"
APP_TOKEN = "xapp-1-APPSECRET"
AUTHORIZATION = "PNAUTHINFO3-HMAC-SHA256 Credential=ops/2026-01-01T00:00:00Z Signature=AUTHSECRET"
OAUTH_CLIENT_ID = "oauth-client-CLIENTSECRET"
OAUTH_CLIENT_SECRET = "oauth-secret-VERYSECRET"

SERVE_ENV = {
    "SLACK_BOT_TOKEN": BOT_TOKEN,
    "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    "MYPREFERENCES_CLIENT_ID": "ACME",
    "MYPREFERENCES_AUTHORIZATION": AUTHORIZATION,
}
OAUTH_ENV = {
    "MYPREFERENCES_OAUTH_TOKEN_URL": "https://auth.example.com/oauth/token",
    "MYPREFERENCES_OAUTH_CLIENT_ID": OAUTH_CLIENT_ID,
    "MYPREFERENCES_OAUTH_CLIENT_SECRET": OAUTH_CLIENT_SECRET,
    "MYPREFERENCES_OAUTH_SCOPE": "ACME/John.Doe",
}
SERVE = {Need.DATABASE, Need.API, Need.SLACK_HTTP}


def config_error(env: dict[str, str], needs: set[Need] | None = None) -> str:
    """The one-line message load_settings refuses ``env`` with."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env, needs or set())
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- defaults


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    settings = load_settings({})

    assert settings.database_url == "sqlite:///import-status-bot.db"
    assert settings.slack_api_url == "https://slack.com/api/"
    assert (
        settings.api_url
        == DEFAULT_MYPREFERENCES_API_URL
        == ("https://pm.mypreferences.com/Profiles/")
    )
    assert settings.status_path == DEFAULT_STATUS_PATH
    assert settings.status_path == "Async/{clientId}/Import/{accessToken}/Status"
    assert settings.exceptions_path == DEFAULT_EXCEPTIONS_PATH
    assert settings.exceptions_path == "Async/{clientId}/Import/{accessToken}/Exceptions"
    assert settings.client_id == ""
    assert settings.slack_bot_token is None
    assert settings.slack_signing_secret is None
    assert settings.slack_app_token is None
    assert settings.authorization is None
    assert settings.oauth is None
    assert settings.poll_interval_seconds == 60
    assert settings.expiry_warning_minutes == 60
    assert settings.host == "0.0.0.0"
    assert settings.port == 3000
    assert settings.log_level == "INFO"
    assert settings.expires_timezone is UTC
    assert settings.lookup_budget_seconds == 20


def test_defaults_match_the_settings_dataclass() -> None:
    assert load_settings({}) == Settings()


def test_the_minimum_spacing_of_early_polls_is_a_sixth_of_the_interval_unless_set() -> None:
    assert load_settings({}).schedule().min_spacing == 10
    assert load_settings({"POLL_INTERVAL_SECONDS": "30"}).schedule().min_spacing == 5
    explicit = {"POLL_INTERVAL_SECONDS": "30", "POLL_MIN_SPACING_SECONDS": "12.5"}
    assert load_settings(explicit).schedule().min_spacing == 12.5


def test_blank_values_count_as_unset() -> None:
    settings = load_settings({"PORT": "  ", "LOG_LEVEL": "", "DATABASE_URL": " "})

    assert settings.port == 3000
    assert settings.log_level == "INFO"
    assert settings.database_url == "sqlite:///import-status-bot.db"


def test_every_documented_variable_is_read() -> None:
    env = {
        **SERVE_ENV,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "SLACK_API_URL": "http://127.0.0.1:9000/api",
        "MYPREFERENCES_API_URL": "https://pmstg.mypreferences.com/Profiles",
        "MYPREFERENCES_STATUS_PATH": "/v4/Async/{clientId}/Import/{accessToken}/Status",
        "MYPREFERENCES_EXCEPTIONS_PATH": "v4/Async/{clientId}/Import/{accessToken}/Exceptions",
        "DATABASE_URL": "postgresql+psycopg://bot@db/bot",
        "POLL_INTERVAL_SECONDS": "1.5",
        "EXPIRY_WARNING_MINUTES": "30",
        "HOST": "127.0.0.1",
        "PORT": "8080",
        "LOG_LEVEL": "debug",
    }

    settings = load_settings(env, SERVE | {Need.SLACK_SOCKET})

    assert settings.slack_bot_token == BOT_TOKEN
    assert settings.slack_signing_secret == SIGNING_SECRET
    assert settings.slack_app_token == APP_TOKEN
    assert settings.slack_api_url == "http://127.0.0.1:9000/api/"  # trailing slash added
    assert settings.api_url == "https://pmstg.mypreferences.com/Profiles/"
    assert settings.status_path == "v4/Async/{clientId}/Import/{accessToken}/Status"
    assert settings.exceptions_path == "v4/Async/{clientId}/Import/{accessToken}/Exceptions"
    assert settings.client_id == "ACME"
    assert settings.authorization == AUTHORIZATION
    assert settings.database_url == "postgresql+psycopg://bot@db/bot"
    assert settings.poll_interval_seconds == 1.5
    assert settings.expiry_warning_minutes == 30
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.log_level == "DEBUG"


def test_oauth_settings_are_read_with_basic_client_auth_by_default() -> None:
    settings = load_settings({"MYPREFERENCES_CLIENT_ID": "ACME", **OAUTH_ENV}, {Need.API})

    assert settings.authorization is None
    assert settings.oauth is not None
    assert settings.oauth.token_url == "https://auth.example.com/oauth/token"
    assert settings.oauth.client_id == OAUTH_CLIENT_ID
    assert settings.oauth.client_secret == OAUTH_CLIENT_SECRET
    assert settings.oauth.scope == "ACME/John.Doe"
    assert settings.oauth.client_auth == "basic"


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SLACK_API_URL", "slack.com/api", "expected an http(s) URL"),
        ("SLACK_API_URL", "ftp://slack.com/api/", "expected an http(s) URL"),
        ("MYPREFERENCES_API_URL", "pm.mypreferences.com", "expected an http(s) URL"),
        ("MYPREFERENCES_STATUS_PATH", "Async/{clientId}/Import/Status", "{accessToken}"),
        ("MYPREFERENCES_STATUS_PATH", "Async/Import/{accessToken}/Status", "{clientId}"),
        ("MYPREFERENCES_EXCEPTIONS_PATH", "Exceptions", "{clientId} and {accessToken}"),
        ("MYPREFERENCES_CLIENT_ID", "ACME CORP", "letters, digits"),
        ("MYPREFERENCES_CLIENT_ID", "ACME/../x", "letters, digits"),
        ("MYPREFERENCES_CLIENT_ID", "A" * 101, "letters, digits"),
        ("DATABASE_URL", "mysql://bot@db/bot", "expected a SQLAlchemy URL"),
        ("DATABASE_URL", "bot.db", "expected a SQLAlchemy URL"),
        ("POLL_INTERVAL_SECONDS", "often", "expected a number"),
        ("POLL_INTERVAL_SECONDS", "0", "at least 0.1"),
        ("POLL_INTERVAL_SECONDS", "-5", "at least 0.1"),
        ("POLL_INTERVAL_SECONDS", "nan", "expected a number"),
        ("POLL_INTERVAL_SECONDS", "inf", "expected a number"),
        ("EXPIRY_WARNING_MINUTES", "an hour", "expected a number"),
        ("EXPIRY_WARNING_MINUTES", "-1", "at least 0"),
        ("HOST", "local host", "expected a host name or IP address"),
        ("HOST", "0.0.0.0;rm", "expected a host name or IP address"),
        ("PORT", "http", "expected a whole number"),
        ("PORT", "80.5", "expected a whole number"),
        ("PORT", "65536", "at most 65535"),
        ("PORT", "-1", "at least 0"),
        ("LOG_LEVEL", "verbose", "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("LOG_FORMAT", "xml", "expected one of text, json"),
        ("HTTP_TIMEOUT_SECONDS", "0", "at least 0.1"),
        ("LOOKUP_BUDGET_SECONDS", "soon", "expected a number"),
        ("IDLE_POLL_INTERVAL_SECONDS", "x", "expected a number"),
        ("MAX_BACKOFF_SECONDS", "0", "at least 0.1"),
        ("POLL_MIN_SPACING_SECONDS", "0", "at least 0.05"),
        ("POLL_MIN_SPACING_SECONDS", "soon", "expected a number"),
        ("POLL_CONCURRENCY", "0", "at least 1"),
        ("POLL_CONCURRENCY", "2.5", "expected a whole number"),
        ("TICK_SECONDS", "0.001", "at least 0.05"),
        ("LEASE_SECONDS", "0.5", "at least 1"),
        ("API_TROUBLE_MINUTES", "-1", "at least 0"),
        ("LOOKUP_RATE_LIMIT", "0", "at least 1"),
        ("LOOKUP_RATE_WINDOW_SECONDS", "0", "at least 1"),
        ("MYPREFERENCES_EXPIRES_TIMEZONE", "Mars/Olympus_Mons", "expected an IANA time zone"),
        ("ALLOWED_CHANNEL_IDS", "C0123ABCD,#general", "comma-separated Slack ids"),
        ("ALLOWED_USER_IDS", "u0001", "comma-separated Slack ids"),
        ("MYPREFERENCES_OAUTH_CLIENT_AUTH", "header", "expected one of basic, body"),
    ],
)
def test_a_malformed_value_is_one_error_naming_the_variable(
    name: str, value: str, expected: str
) -> None:
    env = {**SERVE_ENV, name: value}
    if name == "MYPREFERENCES_OAUTH_CLIENT_AUTH":
        env = {**OAUTH_ENV, name: value}

    message = config_error(env)

    assert message.startswith(f"{name}: ")
    assert expected in message


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SLACK_BOT_TOKEN", "xoxp-111-USERSECRET", "expected a value starting with 'xoxb-'"),
        ("SLACK_BOT_TOKEN", "xoxb-111 SPACESECRET", "must not contain spaces"),
        ("SLACK_BOT_TOKEN", "xoxb-111\x07BELLSECRET", "must not contain control characters"),
        ("SLACK_SIGNING_SECRET", "two words SECRET", "must not contain spaces"),
        ("SLACK_SIGNING_SECRET", "tab\tSECRET", "must not contain spaces"),
        ("SLACK_APP_TOKEN", "xoxb-NOTANAPPSECRET", "expected a value starting with 'xapp-'"),
        ("MYPREFERENCES_AUTHORIZATION", "Basic\x00NULSECRET", "must not contain control"),
        ("MYPREFERENCES_OAUTH_CLIENT_ID", "id with SECRET", "must not contain spaces"),
        ("MYPREFERENCES_OAUTH_CLIENT_SECRET", "secret\x1bESCSECRET", "must not contain control"),
    ],
)
def test_a_malformed_secret_is_named_but_never_shown(name: str, value: str, expected: str) -> None:
    env = {**SERVE_ENV, **OAUTH_ENV, name: value}
    env.pop("MYPREFERENCES_AUTHORIZATION")
    if name == "MYPREFERENCES_AUTHORIZATION":
        env = {**SERVE_ENV, name: value}

    message = config_error(env, {Need.SLACK_HTTP})

    assert message.startswith(f"{name}: ")
    assert expected in message
    assert value not in message
    assert "SECRET" not in message.replace(name, "").replace("SIGNING_SECRET", "")


def test_an_authorization_value_with_spaces_is_accepted_verbatim() -> None:
    settings = load_settings(SERVE_ENV, SERVE)

    assert settings.authorization == AUTHORIZATION  # the PNAUTHINFO3 scheme has spaces


def test_an_oauth_token_url_that_is_not_a_url_names_the_variable() -> None:
    message = config_error({**OAUTH_ENV, "MYPREFERENCES_OAUTH_TOKEN_URL": "auth.example.com"})

    assert message.startswith("MYPREFERENCES_OAUTH_TOKEN_URL: expected an http(s) URL")
    assert OAUTH_CLIENT_SECRET not in message


@pytest.mark.parametrize(
    "missing",
    [
        "MYPREFERENCES_OAUTH_TOKEN_URL",
        "MYPREFERENCES_OAUTH_CLIENT_ID",
        "MYPREFERENCES_OAUTH_CLIENT_SECRET",
        "MYPREFERENCES_OAUTH_SCOPE",
    ],
)
def test_an_incomplete_oauth_configuration_names_the_missing_variable(missing: str) -> None:
    env = {"MYPREFERENCES_CLIENT_ID": "ACME", **OAUTH_ENV}
    del env[missing]

    message = config_error(env, {Need.API})

    assert message == f"{missing}: required but not set"


# --------------------------------------------------------------------------- auth modes


def test_both_auth_modes_at_once_are_refused() -> None:
    message = config_error({**SERVE_ENV, **OAUTH_ENV}, {Need.API})

    assert message.startswith("MYPREFERENCES_AUTHORIZATION: ")
    assert "not both" in message and "exactly one auth mode" in message
    for secret in (AUTHORIZATION, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET):
        assert secret not in message


def test_no_auth_mode_is_refused_when_the_api_is_needed() -> None:
    message = config_error({"MYPREFERENCES_CLIENT_ID": "ACME"}, {Need.API})

    assert message.startswith("MYPREFERENCES_AUTHORIZATION: required")
    assert "MYPREFERENCES_OAUTH_TOKEN_URL" in message


@pytest.mark.parametrize(
    "env",
    [
        {"MYPREFERENCES_CLIENT_ID": "ACME", "MYPREFERENCES_AUTHORIZATION": AUTHORIZATION},
        {"MYPREFERENCES_CLIENT_ID": "ACME", **OAUTH_ENV},
    ],
    ids=["authorization", "oauth"],
)
def test_exactly_one_auth_mode_is_accepted(env: dict[str, str]) -> None:
    settings = load_settings(env, {Need.API})

    assert (settings.authorization is None) != (settings.oauth is None)


def test_auth_is_not_required_by_commands_that_do_not_call_the_api() -> None:
    settings = load_settings({}, {Need.DATABASE})

    assert settings.authorization is None and settings.oauth is None


# --------------------------------------------------------------------------- per command


@pytest.mark.parametrize(
    ("needs", "missing"),
    [
        ({Need.API}, "MYPREFERENCES_CLIENT_ID"),
        ({Need.SLACK_HTTP}, "SLACK_BOT_TOKEN"),
        ({Need.SLACK_HTTP}, "SLACK_SIGNING_SECRET"),
        ({Need.SLACK_SOCKET}, "SLACK_BOT_TOKEN"),
        ({Need.SLACK_SOCKET}, "SLACK_APP_TOKEN"),
        (SERVE, "SLACK_SIGNING_SECRET"),
    ],
)
def test_a_command_refuses_to_start_without_what_it_needs(needs: set[Need], missing: str) -> None:
    env = {**SERVE_ENV, "SLACK_APP_TOKEN": APP_TOKEN}
    del env[missing]

    message = config_error(env, needs)

    assert message == f"{missing}: required but not set"


def test_migrate_needs_nothing_but_the_database() -> None:
    settings = load_settings({"DATABASE_URL": "sqlite:///x.db"}, {Need.DATABASE})

    assert settings.database_url == "sqlite:///x.db"


def test_http_mode_does_not_need_the_app_token_and_socket_mode_not_the_signing_secret() -> None:
    http = load_settings(SERVE_ENV, SERVE)
    socket_env = {**SERVE_ENV, "SLACK_APP_TOKEN": APP_TOKEN}
    del socket_env["SLACK_SIGNING_SECRET"]
    socket = load_settings(socket_env, {Need.DATABASE, Need.API, Need.SLACK_SOCKET})

    assert http.slack_app_token is None
    assert socket.slack_signing_secret is None and socket.slack_app_token == APP_TOKEN


def test_unneeded_but_present_values_are_still_validated() -> None:
    message = config_error({"SLACK_BOT_TOKEN": "not-a-bot-token"}, {Need.DATABASE})

    assert message.startswith("SLACK_BOT_TOKEN: ")


# --------------------------------------------------------------------------- secrets


def test_repr_of_settings_hides_every_secret() -> None:
    settings = load_settings({**SERVE_ENV, "SLACK_APP_TOKEN": APP_TOKEN}, SERVE)
    oauth = load_settings({"MYPREFERENCES_CLIENT_ID": "ACME", **OAUTH_ENV}, {Need.API})

    shown = repr(settings) + str(settings) + repr(oauth) + str(oauth) + repr(oauth.oauth)

    for secret in (
        BOT_TOKEN,
        SIGNING_SECRET,
        APP_TOKEN,
        AUTHORIZATION,
        OAUTH_CLIENT_ID,
        OAUTH_CLIENT_SECRET,
    ):
        assert secret not in shown
    assert "Secret('***')" in shown
    assert "ACME" in shown  # not a secret: the account id stays readable


def test_secrets_lists_every_configured_secret_for_log_redaction() -> None:
    settings = load_settings({**SERVE_ENV, "SLACK_APP_TOKEN": APP_TOKEN}, SERVE)
    oauth = load_settings({"MYPREFERENCES_CLIENT_ID": "ACME", **OAUTH_ENV}, {Need.API})

    assert set(settings.secrets()) == {BOT_TOKEN, SIGNING_SECRET, APP_TOKEN, AUTHORIZATION}
    assert set(oauth.secrets()) == {OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET}


def test_a_secret_still_works_as_the_string_it_holds() -> None:
    secret = Secret("xoxb-abc")

    assert secret == "xoxb-abc" and secret.startswith("xoxb-") and f"{secret}" == "xoxb-abc"
    assert repr(secret) == "Secret('***')"


def test_card_edits_per_minute_defaults_to_slacks_tier_3_and_is_checked() -> None:
    assert load_settings({}).slack_card_edits_per_minute == 50
    assert load_settings({"SLACK_CARD_EDITS_PER_MINUTE": "100"}).slack_card_edits_per_minute == 100
    message = config_error({"SLACK_CARD_EDITS_PER_MINUTE": "0"})
    assert message.startswith("SLACK_CARD_EDITS_PER_MINUTE:") and "at least 1" in message
    assert "expected a number" in config_error({"SLACK_CARD_EDITS_PER_MINUTE": "lots"})

"""The Slack app manifest agrees with what the code registers, serves and calls.

An app created from ``manifest.yml`` must work in one step: Slack delivers
exactly the commands and events the bot listens for, to the URL it serves,
and the bot holds exactly the scopes its Web API calls need.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlparse

import pytest
import yaml
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

import bot.slack.app as slack_app
from bot.domain.history import ActiveWatch
from bot.domain.status import ImportStatus, Status
from bot.sandbox.slack_emulator import block_action_body, event_body, slash_command_body
from bot.server import create_app
from bot.slack import render, render_reports
from bot.slack.listeners.commands import COMMAND
from bot.slack.render_settings import SETTINGS_CALLBACK_ID

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_PATH = ROOT / "manifest.yml"
NOW = datetime(2026, 11, 27, 11, 0, tzinfo=UTC)
FORM: dict[str, str | Sequence[str]] = {"content-type": "application/x-www-form-urlencoded"}
JSON: dict[str, str | Sequence[str]] = {"content-type": "application/json"}
UNUSED_URL = "http://127.0.0.1:9/"

#: The scope each Web API method the bot calls needs (None: no scope).
#: A method missing here fails test_scopes_are_exactly_what_the_code_needs.
SCOPE_OF_METHOD: dict[str, str | None] = {
    "auth_test": None,
    "chat_postMessage": "chat:write",
    "chat_update": "chat:write",
    "chat_postEphemeral": "chat:write",
    "chat_delete": "chat:write",
    "chat_getPermalink": None,
    "views_open": None,
    "views_publish": None,
    # The exceptions archive: the steps of files_upload_v2, made one by one so the file
    # streams from disk (files:write; no files:read since slack-sdk 3.23).
    "files_upload_v2": "files:write",
    "files_getUploadURLExternal": "files:write",
    "files_completeUploadExternal": "files:write",
    "conversations_open": "im:write",
}
#: Events Slack sends without any scope being granted.
SCOPELESS_EVENTS = {"app_home_opened", "app_uninstalled", "tokens_revoked"}
#: Registration kinds the manifest above can deliver; a shortcut, view or
#: options listener would need manifest entries this test does not know yet.
DELIVERABLE_KINDS = {"command", "action", "event", "view"}
WIRING_KINDS = {"middleware", "error", "use"}


# --- Fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    loaded = yaml.safe_load(MANIFEST_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _stand_ins() -> dict[str, Any]:
    # The handlers only keep references to these until a request arrives.
    return {
        "client": AsyncWebClient(token="xoxb-manifest-test", base_url=UNUSED_URL),
        "signing_secret": "manifest-test-secret",
        "service": SimpleNamespace(),
        "access": SimpleNamespace(),
        "subscriptions": SimpleNamespace(),
        "channel_settings": SimpleNamespace(),
        "history": SimpleNamespace(),
    }


class RecordingApp:
    """Stands in for AsyncApp inside build_app and records every registration by kind."""

    def __init__(self, **_: Any) -> None:
        self.registered: dict[str, list[Any]] = defaultdict(list)

    def __getattr__(self, kind: str) -> Callable[..., Any]:
        def register(*args: Any, **kwargs: Any) -> Callable[..., Any]:
            self.registered[kind].extend(args or kwargs.values())
            return lambda function=None, *_rest: function

        return register


@pytest.fixture(scope="module")
def registered() -> Iterator[dict[str, list[Any]]]:
    """What build_app registers: {"command": [...], "action": [...], "event": [...], ...}."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(slack_app, "ImportStatusApp", RecordingApp)
        recorder = slack_app.build_app(**_stand_ins())
    assert isinstance(recorder, RecordingApp)
    yield recorder.registered


@pytest.fixture
def real_app() -> AsyncApp:
    return slack_app.build_app(**_stand_ins())


def _names(registered: dict[str, list[Any]], kind: str) -> set[str]:
    constraints = registered.get(kind, [])
    # A regex or a dict constraint cannot be compared with the manifest by name.
    assert all(isinstance(c, str) for c in constraints), (kind, constraints)
    return set(constraints)


async def _listeners_for(
    app: AsyncApp, body: bytes, headers: dict[str, str | Sequence[str]]
) -> list[str]:
    """The names of the real app's listeners that would run for this request."""
    request = AsyncBoltRequest(body=body.decode(), headers=headers)
    response = BoltResponse(status=200)
    return [
        listener.ack_function.__name__
        for listener in app._async_listeners
        if await listener.async_matches(req=request, resp=response)
    ]


def _manifest_commands(manifest: dict[str, Any]) -> set[str]:
    return {c["command"] for c in manifest["features"]["slash_commands"]}


def _manifest_events(manifest: dict[str, Any]) -> set[str]:
    return set(manifest["settings"]["event_subscriptions"]["bot_events"])


def _manifest_urls(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every URL in the manifest, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _manifest_urls(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _manifest_urls(value, f"{where}[{i}]")
    elif isinstance(node, str) and re.match(r"https?://", node):
        yield where, node


def _rendered_action_ids() -> set[str]:
    """The action_id of every button the bot can put in a message."""
    # With failed records, so the Exceptions button is rendered too.
    status = ImportStatus(access_token=42, status=Status.PROCESSING, exceptions=3)
    messages = [
        render.status_message(status, NOW, watching=watching) for watching in (None, False, True)
    ]
    messages += [
        render.tracking_card(
            status, 42, NOW, subscriber_id="U1", subscribed_at=NOW, ended_reason=reason
        )
        for reason in (None, "it finished")
    ]
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "action_id" in node:
                found.add(node["action_id"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for message in messages:
        walk(message.blocks)
    mine = ActiveWatch("T1", "C1", 42, "n", status, "U1", NOW, "1.2")
    walk(render_reports.home_view("U1", mine=[mine], active=[], recent=[], links={}, now=NOW))
    return found


# --- What Slack delivers and what the code handles ---------------------------------


def test_manifest_commands_are_exactly_the_commands_the_bot_handles(
    manifest: dict[str, Any], registered: dict[str, list[Any]]
) -> None:
    assert _manifest_commands(manifest) == _names(registered, "command") == {COMMAND}


def test_manifest_events_are_exactly_the_events_the_bot_handles(
    manifest: dict[str, Any], registered: dict[str, list[Any]]
) -> None:
    assert _manifest_events(manifest) == _names(registered, "event")
    assert _manifest_events(manifest) == {"app_home_opened", "app_uninstalled", "tokens_revoked"}


def test_every_button_the_bot_renders_has_a_handler(registered: dict[str, list[Any]]) -> None:
    constants = {
        getattr(module, n)
        for module in (render, render_reports)
        for n in dir(module)
        if n.startswith("ACTION_")
    }
    rendered = _rendered_action_ids()
    assert (
        rendered
        == constants
        == {
            "import_watch",
            "import_refresh",
            "import_unwatch",
            "import_exceptions",
            "home_refresh",
            "home_unwatch",
        }
    )
    assert _names(registered, "action") == constants


def test_the_bot_registers_nothing_the_manifest_cannot_deliver(
    registered: dict[str, list[Any]],
) -> None:
    assert set(registered) - WIRING_KINDS == DELIVERABLE_KINDS


async def test_real_app_routes_each_manifest_entry_to_exactly_one_listener(
    manifest: dict[str, Any], real_app: AsyncApp
) -> None:
    for command in _manifest_commands(manifest):
        body = slash_command_body("help", command=command, response_url=UNUSED_URL)
        assert await _listeners_for(real_app, body, FORM) == ["handle"], command
    events: dict[str, dict[str, Any]] = {
        "app_home_opened": {"type": "app_home_opened", "user": "U1", "tab": "home"},
        "app_uninstalled": {"type": "app_uninstalled"},
        "tokens_revoked": {"type": "tokens_revoked", "tokens": {"bot": ["U0BOT"]}},
    }
    assert set(events) == _manifest_events(manifest)
    for name, event in events.items():
        assert len(await _listeners_for(real_app, event_body(event), JSON)) == 1, name
    for action_id in _rendered_action_ids():
        body = block_action_body(action_id, "42", message_ts="1.000001", response_url=UNUSED_URL)
        assert len(await _listeners_for(real_app, body, FORM)) == 1, action_id
    submission = {
        "type": "view_submission",
        "view": {"type": "modal", "callback_id": SETTINGS_CALLBACK_ID},
    }
    body = urlencode({"payload": json.dumps(submission)}).encode()
    assert len(await _listeners_for(real_app, body, FORM)) == 1


async def test_real_app_has_no_listener_for_what_the_manifest_does_not_declare(
    real_app: AsyncApp,
) -> None:
    # The check above would be worthless if every listener matched everything.
    other_command = slash_command_body("help", command="/other", response_url=UNUSED_URL)
    assert await _listeners_for(real_app, other_command, FORM) == []
    message_event = event_body({"type": "message", "text": "hi", "channel": "C1"})
    assert await _listeners_for(real_app, message_event, JSON) == []
    other_button = block_action_body("other", "42", message_ts="1.0", response_url=UNUSED_URL)
    assert await _listeners_for(real_app, other_button, FORM) == []


# --- Where Slack sends it ------------------------------------------------------------


def test_every_url_is_the_one_endpoint_the_server_serves(
    manifest: dict[str, Any], real_app: AsyncApp
) -> None:
    urls = dict(_manifest_urls(manifest))
    assert set(urls) == {
        ".features.slash_commands[0].url",
        ".settings.interactivity.request_url",
        ".settings.event_subscriptions.request_url",
    }
    for where, url in urls.items():
        assert url.startswith("https://"), where
        assert url.endswith("/slack/events"), where
    asgi = create_app(SimpleNamespace(app=real_app))  # type: ignore[arg-type]
    routes = asgi.app.routes  # type: ignore[attr-defined]
    posted = {route.path for route in routes if "POST" in (route.methods or ())}
    assert posted == {urlparse(url).path for url in urls.values()} == {"/slack/events"}


def test_http_mode_settings_make_a_working_app(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["socket_mode_enabled"] is False
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False
    bot_user = manifest["features"]["bot_user"]
    assert bot_user == {"display_name": "import-status", "always_online": True}


def test_slash_command_hint_matches_the_bots_own_usage_line(manifest: dict[str, Any]) -> None:
    (command,) = manifest["features"]["slash_commands"]
    # Escaped, so mentions in `set mention` / `set alerts` arrive as ids.
    assert command["should_escape"] is True
    assert f"Usage: {command['command']} {command['usage_hint']}" == render.USAGE_LINE


def test_manifest_fits_slacks_schema_limits(manifest: dict[str, Any]) -> None:
    # From Slack's published manifest schema (v1).
    assert set(manifest) <= {
        "_metadata",
        "display_information",
        "features",
        "oauth_config",
        "settings",
    }
    info = manifest["display_information"]
    assert info["name"] == "Import Status" and len(info["name"]) <= 35
    assert 1 <= len(info["description"]) <= 140
    assert re.fullmatch(r"#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?", info.get("background_color", "#000"))
    assert len(manifest["features"]["bot_user"]["display_name"]) <= 80
    for command in manifest["features"]["slash_commands"]:
        assert command["command"].startswith("/") and len(command["command"]) <= 32
        assert 1 <= len(command["description"]) <= 2000
        assert 1 <= len(command["usage_hint"]) <= 1000


def test_socket_mode_variant_is_documented_at_the_top() -> None:
    header = MANIFEST_PATH.read_text().split("\n_metadata:", 1)[0]
    for needed in ("socket_mode_enabled", "connections:write", "SLACK_APP_TOKEN"):
        assert needed in header


# --- What the bot may do -----------------------------------------------------------------


def _web_api_methods_called() -> set[str]:
    """Web API methods named anywhere in the bot's code (the sandbox plays Slack: not ours)."""
    methods = {
        name
        for name in dir(AsyncWebClient)
        if "_" in name and not name.startswith("_") and callable(getattr(AsyncWebClient, name))
    }
    called: set[str] = set()
    for path in (ROOT / "bot").rglob("*.py"):
        if "sandbox" in path.relative_to(ROOT).parts:
            continue
        called |= methods & set(re.findall(r"\w+", path.read_text()))
    return called


def test_scopes_are_exactly_what_the_code_needs(
    manifest: dict[str, Any], registered: dict[str, list[Any]]
) -> None:
    called = _web_api_methods_called()
    assert {"chat_postMessage", "chat_update"} <= called
    unknown = called - set(SCOPE_OF_METHOD)
    assert not unknown, f"add the scope these methods need to SCOPE_OF_METHOD: {unknown}"
    needed = {scope for m in called if (scope := SCOPE_OF_METHOD[m]) is not None}
    if registered.get("command"):
        needed.add("commands")
    assert _names(registered, "event") <= SCOPELESS_EVENTS
    scopes = manifest["oauth_config"]["scopes"]
    assert set(scopes) == {"bot"}, "the bot needs no user scopes"
    assert (
        sorted(scopes["bot"])
        == sorted(needed)
        == ["chat:write", "commands", "files:write", "im:write"]
    )


def test_the_home_tab_is_enabled_for_the_app_home_opened_listener(
    manifest: dict[str, Any], registered: dict[str, list[Any]]
) -> None:
    assert "app_home_opened" in _names(registered, "event")
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert _names(registered, "view") == {SETTINGS_CALLBACK_ID}


def test_each_scope_says_why_and_chat_write_public_is_declined_on_purpose() -> None:
    text = MANIFEST_PATH.read_text()
    commented = re.findall(r"^\s*-\s*([\w:.]+)\s+#\s*\S", text, flags=re.MULTILINE)
    scopes = yaml.safe_load(text)["oauth_config"]["scopes"]["bot"]
    assert sorted(set(commented) & set(scopes)) == sorted(scopes)
    assert "chat:write.public" not in scopes
    assert re.search(r"#.*chat:write\.public", text)

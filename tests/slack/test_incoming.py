"""What the HTTP route accepts from Slack, decided without a server."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from bot.sandbox.slack_emulator import (
    block_action_body,
    event_body,
    sign_request,
    slash_command_body,
)
from bot.slack.incoming import (
    MAX_DEPTH,
    body_problem,
    is_ssl_check,
    response_url_problem,
    signature_problem,
)

SECRET = "unit-signing-secret"
NOW = 1_800_000_000
API = "http://127.0.0.1:4567/api/"
FORM = "application/x-www-form-urlencoded"


def test_a_correct_signature_passes_and_anything_else_says_why() -> None:
    body = b"text=42"
    headers = sign_request(SECRET, body, NOW)
    ts, sig = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]

    assert signature_problem(SECRET, body, ts, sig, NOW) is None
    assert signature_problem(SECRET, body + b"!", ts, sig, NOW) == "a wrong signature"
    assert signature_problem("other", body, ts, sig, NOW) == "a wrong signature"
    assert signature_problem(SECRET, body, ts, sig, NOW + 301) == "a stale timestamp"
    assert signature_problem(SECRET, body, None, sig, NOW) == "no signature"
    assert signature_problem(SECRET, body, ts, None, NOW) == "no signature"
    assert signature_problem(SECRET, body, "1e9", sig, NOW) == "a malformed timestamp"
    assert signature_problem(SECRET, body, ts, "v0=\u00e9", NOW) == "a wrong signature"


def test_a_body_that_is_not_utf8_is_signed_and_still_checked() -> None:
    body = b"\xff\xfe"
    headers = sign_request(SECRET, body, NOW)
    assert (
        signature_problem(
            SECRET, body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"], NOW
        )
        is None
    )
    assert body_problem(body, FORM) == "the body is not UTF-8"


@pytest.mark.parametrize(
    "body",
    [
        slash_command_body("watch 42", response_url=API + "r/1"),
        block_action_body("import_refresh", "42", message_ts="1.1", response_url=API + "r/1"),
        event_body({"type": "app_uninstalled"}),
        event_body({"type": "tokens_revoked", "tokens": {"bot": ["U1"]}}),
        b"",
        b"ssl_check=1&token=x",
    ],
    ids=["command", "block_action", "event", "tokens_revoked", "empty", "ssl_check"],
)
def test_slacks_own_bodies_pass(body: bytes) -> None:
    content_type = "application/json" if body.startswith(b"{") else FORM
    assert body_problem(body, content_type) is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[" * 100_000, "nested too deeply"),
        (('{"a":' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}").encode(), "nested too deeply"),
        (b"[1, 2]", "not an object"),
        (b"{not json", "not valid JSON"),
        (json.dumps({"event": "x"}).encode(), "body.event is not an object"),
        (json.dumps({"event": None}).encode(), "body.event is not an object"),
        (json.dumps({"event": {"type": ["a"]}}).encode(), "body.event.type is not text"),
        (json.dumps({"type": "block_actions", "actions": "abc"}).encode(), "body.actions"),
        (json.dumps({"type": "block_actions", "actions": [5]}).encode(), "body.actions[0]"),
        (json.dumps({"type": "block_actions", "actions": [{}]}).encode(), "action_id"),
        (json.dumps({"team": ["T1"]}).encode(), "body.team is neither"),
        (json.dumps({"command": "/x", "text": 5}).encode(), "body.text is not text"),
        (json.dumps({"authorizations": [1]}).encode(), "body.authorizations[0]"),
        (json.dumps({"response_urls": "x"}).encode(), "body.response_urls"),
    ],
)
def test_bodies_bolt_could_not_read_are_named(body: bytes, problem: str) -> None:
    found = body_problem(body, "application/json")
    assert found is not None and problem in found, found


def test_a_payload_form_is_read_like_bolt_reads_it() -> None:
    assert body_problem(urlencode({"payload": "[" * 50_000}).encode(), FORM) == (
        "the body is nested too deeply"
    )
    assert body_problem(urlencode({"payload": '{"actions": 5}'}).encode(), FORM) == (
        "body.actions is not a list of objects"
    )
    assert body_problem(b"event=x", FORM) == "body.event is not an object"


@pytest.mark.parametrize(
    ("url", "slack"),
    [
        ("https://hooks.slack.com/commands/T1/1/abc", True),
        ("https://HOOKS.slack.com/actions/T1/1/abc", True),
        ("https://hooks.slack.com:443/x", True),
        (API + "responses/1", True),
        ("http://127.0.0.1:4567/elsewhere", True),  # the SLACK_API_URL host, any path
        ("http://127.0.0.1:4568/x", False),
        ("http://localhost:4567/x", False),
        ("https://hooks.slack.com.evil.example/x", False),
        ("https://evil.example/https://hooks.slack.com/", False),
        ("https://hooks.slack.com@evil.example/", False),
        ("https://user@hooks.slack.com/", False),
        ("http://hooks.slack.com/x", False),
        ("https://hooks.slack.com:8443/x", False),
        ("https://hooks.slack.com:99999/x", False),
        ("https://hooks.slack.com\\@evil.example/", False),
        ("https://hooks.slack.com /x", False),
        ("javascript:alert(1)", False),
        ("", False),
    ],
)
def test_only_slacks_response_urls_are_accepted(url: str, slack: bool) -> None:
    problem = response_url_problem({"response_url": url}, API)
    assert (problem is None) is slack, problem
    urls = {"response_urls": [{"response_url": url}]}
    assert (response_url_problem(urls, API) is None) is slack


def test_a_body_without_response_urls_passes() -> None:
    assert response_url_problem({"type": "event_callback"}, API) is None


def test_the_certificate_check_is_recognised() -> None:
    assert is_ssl_check(b"ssl_check=1&token=abc")
    assert not is_ssl_check(b"ssl_check=0")
    assert not is_ssl_check(b"ssl_check=1&" + b"x" * 2000)
    assert not is_ssl_check(slash_command_body("help", response_url=API))

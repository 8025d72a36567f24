"""Hostile HTTP requests at a real bot: never a 5xx, one short log line each, no forged lines.

One bot process serves the module (lookup limit lifted). The property test
throws Hypothesis-made bodies at ``POST /slack/events`` over real HTTP:
random nesting and shapes, Slack's own payloads with a part replaced,
encodings, content types and sizes, signed and unsigned. The other tests pin
the findings one by one (issue 10): deep nesting before the signature check,
signed bodies of the wrong shape, the log flood and the forged log line, and
a response_url that is not Slack's.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from bot.sandbox.devserver import ServerThread
from bot.sandbox.harness import SIGNING_SECRET, BotProcess, Harness
from bot.sandbox.slack_emulator import (
    SlackUser,
    block_action_body,
    event_body,
    sign_request,
    slash_command_body,
)
from bot.server import MAX_BODY_BYTES
from bot.slack.render import ACTION_REFRESH

FORM = "application/x-www-form-urlencoded"
FORGED = "2026-12-02 04:00:00,000 ERROR bot.watch.notifier: forged"
RECORD_START = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ ")
TOKEN = 88_001
MAX_EXAMPLES = 200


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    env = {"LOOKUP_RATE_LIMIT": "1000000", "LOOKUP_BUDGET_SECONDS": "2"}
    with Harness(tmp_path_factory.mktemp("hostile-requests"), env=env, preloaded=True) as h:
        h.sim.add_import(TOKEN, name="Hostile requests import", status="Processing")
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    return harness.start_bot()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[tuple[str, list[str]]]:
    """A server that is not Slack, recording every request a bot sends it."""
    received: list[str] = []

    async def anything(request: Request) -> PlainTextResponse:
        received.append(f"{request.method} {request.url.path}")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])
    with ServerThread(app) as server:
        yield server.url, received


def new_log(bot: BotProcess, offset: int) -> list[str]:
    return bot.log_text()[offset:].splitlines()


def post(
    http: httpx.Client,
    bot: BotProcess,
    body: bytes,
    content_type: str | None = FORM,
    *,
    signed: bool,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    all_headers = {"Content-Type": content_type} if content_type else {}
    if signed:
        all_headers.update(sign_request(SIGNING_SECRET, body))
    all_headers.update(headers or {})
    return http.post(bot.events_url, content=body, headers=all_headers)


def settle(bot: BotProcess, offset: int, lines: int) -> list[str]:
    """The log lines written since ``offset``, once at least ``lines`` of them are there."""
    deadline = time.monotonic() + 5
    while len(new_log(bot, offset)) < lines and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and nothing more arrives after them
    return new_log(bot, offset)


# --------------------------------------------------------------------------- depth and shape

DEEP = {
    "json": (b"[" * 100_000, "application/json"),
    "payload": (b"payload=" + b"[" * 50_000, FORM),
    "encoded_payload": (b"payload=" + b"%5B" * 50_000, FORM),
    "objects": (b'{"a":' * 40_000, "application/json"),
}


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_an_unsigned_deeply_nested_body_is_refused_unread_with_one_short_line(
    http: httpx.Client, bot: BotProcess, kind: str
) -> None:
    body, content_type = DEEP[kind]
    offset = len(bot.log_text())

    answer = post(http, bot, body, content_type, signed=False)

    assert answer.status_code == 401
    [line] = settle(bot, offset, 1)
    assert "refused a request with no signature" in line and len(line) < 200


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_a_signed_deeply_nested_body_is_a_400_with_one_line(
    http: httpx.Client, bot: BotProcess, kind: str
) -> None:
    body, content_type = DEEP[kind]
    offset = len(bot.log_text())

    answer = post(http, bot, body, content_type, signed=True)

    assert answer.status_code == 400
    [line] = settle(bot, offset, 1)
    assert "refused a signed Slack request" in line and "Traceback" not in line


def _with(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**body, **changes}


def _action_payload(harness: Harness) -> dict[str, Any]:
    url = harness.emulator.new_response_url(channel="C0001", user="U0001")
    form = block_action_body(ACTION_REFRESH, str(TOKEN), message_ts="1.1", response_url=url)
    return json.loads(dict(httpx.QueryParams(form.decode()))["payload"])


WRONG_SHAPES = {
    "event_is_text": lambda h: ("json", _with(json.loads(event_body({"type": "x"})), event="x")),
    "event_is_a_list": lambda h: ("json", _with(json.loads(event_body({"type": "x"})), event=[1])),
    "event_type_is_an_object": lambda h: (
        "json",
        _with(json.loads(event_body({"type": "x"})), event={"type": {"a": 1}}),
    ),
    "actions_is_text": lambda h: ("payload", _with(_action_payload(h), actions="abc")),
    "actions_is_a_list_of_numbers": lambda h: ("payload", _with(_action_payload(h), actions=[5])),
    "actions_is_empty": lambda h: ("payload", _with(_action_payload(h), actions=[])),
    "team_is_a_list": lambda h: ("payload", _with(_action_payload(h), team=["T1"])),
    "container_is_text": lambda h: ("payload", _with(_action_payload(h), container="c")),
    "command_text_is_a_list": lambda h: (
        "json",
        {"command": "/import-status", "text": ["4242"], "team_id": "T1"},
    ),
}


@pytest.mark.parametrize("shape", sorted(WRONG_SHAPES))
def test_a_signed_body_of_the_wrong_shape_is_a_400_with_one_line(
    harness: Harness, http: httpx.Client, bot: BotProcess, shape: str
) -> None:
    encoding, body = WRONG_SHAPES[shape](harness)
    if encoding == "json":
        raw, content_type = json.dumps(body).encode(), "application/json"
    else:
        raw, content_type = urlencode({"payload": json.dumps(body)}).encode(), FORM
    offset = len(bot.log_text())
    calls = harness.sim.status_calls()

    answer = post(http, bot, raw, content_type, signed=True)

    assert answer.status_code == 400
    [line] = settle(bot, offset, 1)
    assert "refused a signed Slack request" in line
    assert harness.sim.status_calls() == calls


def test_a_click_whose_team_user_and_channel_are_ids_is_answered_without_a_traceback(
    harness: Harness, http: httpx.Client, bot: BotProcess
) -> None:
    # Slack sends these as ids in some payloads and as objects in others; found by the
    # property test below (a signed click with "team": "T…" raised AttributeError).
    body = _with(_action_payload(harness), team="T0001", user="U0001", channel="C0001")
    offset = len(bot.log_text())

    answer = post(http, bot, urlencode({"payload": json.dumps(body)}).encode(), FORM, signed=True)

    assert answer.status_code == 200
    time.sleep(0.5)  # the click's own work runs after the ack
    new_log = bot.log_text()[offset:]
    assert "Traceback" not in new_log and "listener error" not in new_log, new_log


# --------------------------------------------------------------------------- the log


def test_unsigned_requests_cannot_flood_the_log(http: httpx.Client, bot: BotProcess) -> None:
    offset = len(bot.log_text())
    body = b"text=" + b"x" * 200_000

    for _ in range(10):
        assert post(http, bot, body, signed=False).status_code == 401

    lines = settle(bot, offset, 10)
    written = len(bot.log_text().encode()) - len(bot.log_text()[:offset].encode())
    assert len(lines) == 10, lines[:3]
    assert written < 2_000, f"10 unsigned requests wrote {written} bytes of log"


def test_a_forged_log_line_in_an_unsigned_body_stays_inside_its_own_record(
    http: httpx.Client, bot: BotProcess
) -> None:
    # A raw line break in the body (Bolt used to log the whole body, as it came).
    body = f"token=x&text=help\n{FORGED}\n".encode()
    offset = len(bot.log_text())

    assert post(http, bot, body, signed=False).status_code == 401

    lines = settle(bot, offset, 1)
    assert lines, "nothing was logged"
    assert not any(line.startswith(FORGED) for line in lines), lines
    assert all(RECORD_START.match(line) or line.startswith(" ") for line in lines), lines


def test_a_forged_log_line_in_a_signed_field_stays_inside_its_own_record(
    harness: Harness, http: httpx.Client, bot: BotProcess
) -> None:
    url = harness.emulator.new_response_url(channel="C0001", user="U0001")
    # The team id lands in a log line's context (a retried command is logged, once).
    body = slash_command_body("help", team_id=f"T1\n{FORGED}", response_url=url)
    offset = len(bot.log_text())

    post(http, bot, body, signed=True, headers={"X-Slack-Retry-Num": "1"})

    lines = settle(bot, offset, 1)
    assert lines, "nothing was logged"
    assert not any(line.startswith(FORGED) for line in lines), lines
    assert all(RECORD_START.match(line) or line.startswith(" ") for line in lines), lines


# --------------------------------------------------------------------------- response_url


def test_a_response_url_that_is_not_slacks_is_refused_and_never_posted_to(
    harness: Harness, bot: BotProcess, elsewhere: tuple[str, list[str]]
) -> None:
    evil_base, received = elsewhere
    offset = len(bot.log_text())
    with SlackUser(bot.events_url, SIGNING_SECRET, harness.emulator) as user:
        result = user.click(
            ACTION_REFRESH, str(TOKEN), "1.1", response_url=evil_base + "hooks/steal"
        )

    assert result.status_code == 400
    time.sleep(1.0)  # a Refresh answer would have been posted by now
    assert received == []
    log = "\n".join(settle(bot, offset, 1))
    assert "refused a request with a response_url that is not on Slack's host" in log


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "https://hooks.slack.com.evil.example/x",
        "https://evil.example/?https://hooks.slack.com/",
        "https://hooks.slack.com@evil.example/x",
        "http://hooks.slack.com/x",
        "https://hooks.slack.com:8443/x",
        "javascript:alert(1)",
        "https://hooks.slack.com\\@evil.example/",
    ],
)
def test_every_non_slack_response_url_is_refused(
    harness: Harness, bot: BotProcess, url: str
) -> None:
    with SlackUser(bot.events_url, SIGNING_SECRET, harness.emulator) as user:
        result = user.command("help", response_url=url)

    assert result.status_code == 400


def test_the_emulators_response_url_is_slacks_in_tests(harness: Harness, bot: BotProcess) -> None:
    # SLACK_API_URL points at the emulator, so its response URLs are accepted.
    with SlackUser(bot.events_url, SIGNING_SECRET, harness.emulator) as user:
        result = user.click(ACTION_REFRESH, str(TOKEN), "1.1")
        answer = user.wait_response(result, timeout=15)

    assert result.status_code == 200
    assert "Hostile requests import" in json.dumps(answer)


# --------------------------------------------------------------------------- the property

SLACK_KEYS = [
    "type",
    "event",
    "actions",
    "team",
    "user",
    "channel",
    "enterprise",
    "response_url",
    "response_urls",
    "authorizations",
    "command",
    "text",
    "container",
    "view",
    "message",
    "callback_id",
    "action_id",
    "value",
    "tokens",
    "team_id",
    "channel_id",
    "user_id",
    "trigger_id",
    "is_ext_shared_channel",
    "payload",
]
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["block_actions", "event_callback", "app_uninstalled", "tokens_revoked"])
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(SLACK_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
CONTENT_TYPES = st.sampled_from(
    [
        FORM,
        "application/json",
        "application/json; charset=utf-16",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
        "",
        None,
    ]
) | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
).map(str.strip)  # what HTTP lets a header carry (h11 refuses the rest client-side)


def _encode(text: str, how: str) -> bytes:
    if how == "utf-8":
        return text.encode("utf-8", "surrogatepass")
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    return text.encode(how, "surrogatepass")


@st.composite
def slack_like(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """One of Slack's own bodies with a part replaced by something random."""
    kind = draw(st.sampled_from(["command", "action", "event"]))
    url = draw(st.sampled_from(["EMULATOR", "http://127.0.0.1:9/x", "https://hooks.slack.com/a"]))
    if kind == "command":
        fields = dict(
            httpx.QueryParams(slash_command_body("help", response_url=url).decode()).items()
        )
        key = draw(st.sampled_from([*SLACK_KEYS, "text"]))
        fields[key] = draw(st.text(max_size=50))
        return kind, urlencode(fields).encode(), FORM
    if kind == "action":
        form = block_action_body(ACTION_REFRESH, str(TOKEN), message_ts="1.1", response_url=url)
        body: Any = json.loads(dict(httpx.QueryParams(form.decode()))["payload"])
    else:
        body = json.loads(event_body({"type": draw(st.sampled_from(["app_uninstalled", "x"]))}))
    where = draw(st.sampled_from(["top", "event", "actions0", "team", "user"]))
    target = body
    if where == "event" and isinstance(body.get("event"), dict):
        target = body["event"]
    elif where == "actions0" and isinstance(body.get("actions"), list):
        target = body["actions"][0]
    elif where in ("team", "user") and isinstance(body.get(where), dict):
        target = body[where]
    target[draw(st.sampled_from(SLACK_KEYS))] = draw(JSON_VALUES)
    text = json.dumps(body, allow_nan=True)
    if kind == "action":
        return kind, urlencode({"payload": text}).encode(), FORM
    return kind, text.encode(), "application/json"


@st.composite
def hostile_request(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(
        st.sampled_from(["json", "payload", "slack-like", "deep", "form", "bytes", "huge"])
    )
    content_type = draw(CONTENT_TYPES)
    if shape == "json":
        text = json.dumps(draw(JSON_VALUES), allow_nan=True)
        body = _encode(text, draw(st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"])))
    elif shape == "payload":
        text = json.dumps(draw(JSON_VALUES), allow_nan=True)
        body = b"payload=" + quote(text).encode()
    elif shape == "slack-like":
        _, body, content_type = draw(slack_like())
    elif shape == "deep":
        opener = draw(st.sampled_from([b"[", b'{"a":', b"%5B", b'{"event":']))
        prefix = draw(st.sampled_from([b"", b"payload="]))
        body = prefix + opener * draw(st.integers(0, 60_000))
    elif shape == "form":
        pairs = draw(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=40)), max_size=8))
        body = urlencode(pairs).encode()
    elif shape == "bytes":
        body = draw(st.binary(max_size=2_000))
    else:
        body = b"x" * draw(st.integers(MAX_BODY_BYTES - 10, MAX_BODY_BYTES + 10))
    return {
        "shape": shape,
        "body": body,
        "content_type": content_type,
        "signing": draw(st.sampled_from(["signed", "signed", "unsigned", "wrong", "stale"])),
        "chunked": draw(st.booleans()),
    }


def test_hostile_bodies_never_get_a_server_error(
    harness: Harness, bot: BotProcess, record_property: Any
) -> None:
    statuses: Counter[int] = Counter()
    shapes: Counter[str] = Counter()
    offset = len(bot.log_text())
    emulator_url = harness.emulator.new_response_url(channel="C0001", user="U0001")

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # this run's examples, nothing replayed: the count is honest
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=hostile_request())
    def check(case: dict[str, Any]) -> None:
        body = case["body"].replace(b"EMULATOR", quote(emulator_url, safe="").encode())
        headers: dict[str, Any] = {}
        if case["content_type"] is not None:
            # Any byte a header may carry (latin-1), not only ASCII.
            headers["Content-Type"] = case["content_type"].encode("latin-1")
        if case["signing"] == "signed":
            headers.update(sign_request(SIGNING_SECRET, body))
        elif case["signing"] == "wrong":
            headers.update(sign_request("not-the-secret", body))
        elif case["signing"] == "stale":
            headers.update(sign_request(SIGNING_SECRET, body, int(time.time()) - 3600))
        content: Any = body
        if case["chunked"]:
            content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""])
        # A fresh connection each time: a refused body may close the one it came on.
        answer = httpx.post(bot.events_url, content=content, headers=headers, timeout=30)
        statuses[answer.status_code] += 1
        shapes[f"{case['shape']}/{case['signing']}"] += 1
        event(f"HTTP {answer.status_code}")
        assert answer.status_code < 500, (answer.status_code, case["shape"], body[:200])

    check()

    cases = sum(statuses.values())
    summary = f"{cases} hostile requests: " + ", ".join(
        f"HTTP {code} x {n}" for code, n in sorted(statuses.items())
    )
    print(summary)
    record_property("hostile_requests", summary)
    assert cases >= MAX_EXAMPLES
    assert not [code for code in statuses if code >= 500]
    assert bot.running()
    log = bot.log_text()[offset:]
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:3000]

"""What a person in Slack sees: every rendered message, checked as Slack would check it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.events import Event, EventKind
from bot.domain.status import ImportStatus, Status
from bot.mypreferences.errors import TokenRejected, Unavailable
from bot.slack.render import (
    ACTION_EXCEPTIONS,
    ACTION_REFRESH,
    ACTION_UNWATCH,
    ACTION_WATCH,
    BUTTON_TEXT_LIMIT,
    FALLBACK_TEXT_LIMIT,
    FIELD_TEXT_LIMIT,
    HEADER_TEXT_LIMIT,
    MAX_BLOCKS,
    SECTION_TEXT_LIMIT,
    STATUS_MARKERS,
    USAGE_LINE,
    Message,
    WatchRow,
    escape,
    escape_plain,
    event_message,
    format_count,
    format_duration,
    lookup_error_message,
    notice,
    progress_bar,
    relative_time,
    slack_date,
    status_message,
    tracking_card,
    usage_message,
    watch_list_message,
)

NOW = datetime(2026, 11, 27, 11, 0, tzinfo=UTC)
SUBSCRIBER = "U0123ABC"
ZWJ = "\u200d"
HOSTILE_NAME = "<!channel> <@U999> <https://evil.example|click me> *bold* _it_ ~gone~ `code` & co"

# --- The structural validator ---------------------------------------------------

KNOWN_ACTIONS = {ACTION_WATCH, ACTION_REFRESH, ACTION_UNWATCH, ACTION_EXCEPTIONS}
# make_status has 1,000 failed validation, 150 exceptions and 50 not honoured: the
# Exceptions button is on every message about it.
EXC = {ACTION_EXCEPTIONS: "4242"}
# The only <…> tokens the bot writes itself: user mentions and Slack dates.
ALLOWED_TOKEN = re.compile(r"<(@[UWB][A-Z0-9]+|!date\^\d+\^[^|<>]*\|[^<>]*)>")
# Outside text is always escaped, so every & starts one of Slack's three entities.
BARE_AMPERSAND = re.compile(r"&(?!amp;|lt;|gt;)")


def slack_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def check_text_object(obj: dict[str, Any], limit: int, *, plain_only: bool = False) -> str:
    assert obj["type"] in (("plain_text",) if plain_only else ("plain_text", "mrkdwn"))
    text = obj["text"]
    assert isinstance(text, str) and text.strip(), obj
    assert slack_len(text) <= limit, (slack_len(text), limit, text)
    if obj["type"] == "plain_text":
        assert "verbatim" not in obj
    else:
        assert "emoji" not in obj
    return text


def texts_of(message: Message) -> Iterator[str]:
    """Every string a reader could see: fallback text and every text object."""
    yield message.text
    for block in message.blocks:
        if "text" in block:
            yield block["text"]["text"]
        for field in block.get("fields", []):
            yield field["text"]
        for element in block.get("elements", []):
            if element.get("type") in ("mrkdwn", "plain_text"):
                yield element["text"]
            elif element.get("type") == "button":
                yield element["text"]["text"]


def assert_valid_message(message: Message) -> Message:
    """Check a Message the way Slack would, plus our own no-ping rule. Returns it."""
    assert isinstance(message, Message)
    kwargs = message.as_kwargs()
    assert kwargs == {"text": message.text, "blocks": message.blocks}
    json.dumps(kwargs)  # what goes over the wire must be JSON
    assert message.text.strip(), "fallback text must not be empty"
    assert slack_len(message.text) <= FALLBACK_TEXT_LIMIT
    assert 1 <= len(message.blocks) <= MAX_BLOCKS
    action_ids: list[str] = []
    for block in message.blocks:
        kind = block["type"]
        if "block_id" in block:
            assert 0 < len(block["block_id"]) <= 255
        if kind == "header":
            check_text_object(block["text"], HEADER_TEXT_LIMIT, plain_only=True)
        elif kind == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                check_text_object(block["text"], SECTION_TEXT_LIMIT)
            fields = block.get("fields", [])
            assert len(fields) <= 10
            for field in fields:
                check_text_object(field, FIELD_TEXT_LIMIT)
        elif kind == "context":
            assert 1 <= len(block["elements"]) <= 10
            for element in block["elements"]:
                check_text_object(element, SECTION_TEXT_LIMIT)
        elif kind == "actions":
            assert 1 <= len(block["elements"]) <= 25
            for button in block["elements"]:
                assert button["type"] == "button"
                check_text_object(button["text"], BUTTON_TEXT_LIMIT, plain_only=True)
                assert button["action_id"] in KNOWN_ACTIONS
                assert button["value"].isdigit() and len(button["value"]) <= 2000
                action_ids.append(button["action_id"])
        else:
            pytest.fail(f"unexpected block type {kind}")
    assert len(action_ids) == len(set(action_ids)), "action ids must be unique"
    for text in texts_of(message):
        leftover = ALLOWED_TOKEN.sub("", text)
        assert "<" not in leftover and ">" not in leftover, f"raw angle bracket in {text!r}"
        assert BARE_AMPERSAND.search(text) is None, f"bare or cut entity in {text!r}"
    return message


def buttons(message: Message) -> dict[str, str]:
    """action_id -> value of every button in the message."""
    return {
        element["action_id"]: element["value"]
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
    }


def all_text(message: Message) -> str:
    return "\n".join(texts_of(message))


def block_texts(message: Message) -> str:
    return "\n".join(list(texts_of(message))[1:])


def make_status(status: Status = Status.PROCESSING, **overrides: Any) -> ImportStatus:
    values: dict[str, Any] = {
        "access_token": 4242,
        "status": status,
        "status_text": status.value,
        "name": "Spring newsletter",
        "total_records_received": 5000,
        "validation_successful": 4000,
        "validation_failed": 1000,
        "processed": 1000,
        "pending": 0,
        "exceptions": 150,
        "not_honored": 50,
        "expires": NOW + timedelta(hours=3, minutes=10),
        "expires_text": "2026-11-27T14:10:00Z",
    }
    values.update(overrides)
    return ImportStatus(**values)


def event(kind: EventKind, **fields: Any) -> Event:
    return Event(kind=kind, key=f"{kind.value}-1", **fields)


# --- Small formatters -------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "shown"),
    [(0, "0"), (7, "7"), (1234, "1,234"), (12_345_678, "12,345,678"), (None, "unknown")],
)
def test_format_count_uses_thousands_separators(n: int | None, shown: str) -> None:
    assert format_count(n) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0 s"),
        (45, "45 s"),
        (45.9, "45 s"),
        (180, "3 min"),
        (239, "3 min"),
        (3600, "1 h"),
        (3 * 3600 + 10 * 60 + 59, "3 h 10 min"),
        (86400, "1 d"),
        (2 * 86400 + 4 * 3600 + 59 * 60, "2 d 4 h"),
        (-5, "0 s"),
        (float("inf"), "unknown"),
    ],
)
def test_format_duration_is_compact_with_two_units_at_most(seconds: float, shown: str) -> None:
    assert format_duration(seconds) == shown


def test_relative_time_reads_forwards_backwards_and_now() -> None:
    assert relative_time(NOW + timedelta(hours=3, minutes=10), NOW) == "in 3 h 10 min"
    assert relative_time(NOW - timedelta(hours=3, minutes=10), NOW) == "3 h 10 min ago"
    assert relative_time(NOW, NOW) == "now"
    assert relative_time(NOW + timedelta(milliseconds=300), NOW) == "now"


def test_slack_date_uses_date_formatting_with_utc_fallback() -> None:
    when = datetime(2026, 11, 27, 14, 5, tzinfo=UTC)
    epoch = int(when.timestamp())
    assert slack_date(when) == (
        f"<!date^{epoch}^{{date_short_pretty}} at {{time}}|2026-11-27 14:05 UTC>"
    )
    assert slack_date(when, "soon").endswith("|soon>")
    assert slack_date(when, "<!here>").endswith("|&lt;!here&gt;>")


@pytest.mark.parametrize(
    ("fraction", "shown"),
    [
        (0.0, "░" * 20 + " 0%"),
        (0.3, "▓" * 6 + "░" * 14 + " 30%"),
        (0.29, "▓" * 5 + "░" * 15 + " 29%"),
        (0.999, "▓" * 19 + "░" + " 99%"),
        (0.99999999999, "▓" * 19 + "░" + " 99%"),
        (1.0, "▓" * 20 + " 100%"),
    ],
)
def test_progress_bar_floors_and_only_full_shows_100(fraction: float, shown: str) -> None:
    assert progress_bar(fraction) == shown


def test_progress_bar_width_is_respected() -> None:
    assert progress_bar(0.5, width=10) == "▓" * 5 + "░" * 5 + " 50%"


# --- Escaping --------------------------------------------------------------------


def test_escape_breaks_mentions_links_and_formatting() -> None:
    safe = escape(HOSTILE_NAME)
    assert "<" not in safe and ">" not in safe
    assert "&lt;!channel&gt;" in safe
    assert "&lt;@U999&gt;" in safe
    assert "&amp; co" in safe
    assert "*bold*" not in safe
    assert f"{ZWJ}*{ZWJ}bold{ZWJ}*{ZWJ}" in safe
    assert safe.replace(ZWJ, "") == (
        "&lt;!channel&gt; &lt;@U999&gt; &lt;https://evil.example|click me&gt; "
        "*bold* _it_ ~gone~ `code` &amp; co"
    )


def test_escape_breaks_bare_broadcast_words() -> None:
    assert "@channel" not in escape("hi @channel and @HERE")
    assert escape("hi @channel").replace(ZWJ, "") == "hi @channel"


def test_escape_strips_control_characters() -> None:
    assert escape("a\x00b\x07c\nd\te\u202eF") == "abc d eF"


def test_escape_plain_keeps_formatting_characters_but_not_brackets() -> None:
    assert escape_plain("*bold* <!here> & x") == "*bold* &lt;!here&gt; &amp; x"


def test_escape_truncates_without_splitting_an_entity() -> None:
    safe = escape("&" * 100, limit=12)
    assert safe == "&amp;&amp;…"
    assert len(escape("x" * 5000)) == SECTION_TEXT_LIMIT


# --- The status message ----------------------------------------------------------


@pytest.mark.parametrize("status", list(Status))
def test_every_status_renders_with_its_marker(status: Status) -> None:
    message = assert_valid_message(status_message(make_status(status), NOW))
    assert f"*Status:* {STATUS_MARKERS[status]}" in block_texts(message)
    assert status.value in message.text


def test_status_markers_are_distinct_and_cover_every_status() -> None:
    assert set(STATUS_MARKERS) == set(Status)
    emojis = [marker.split()[0] for marker in STATUS_MARKERS.values()]
    assert len(set(emojis)) == len(emojis)
    for status, marker in STATUS_MARKERS.items():
        assert marker.endswith(status.value)


def test_unknown_status_shows_what_the_api_said() -> None:
    status = make_status(Status.UNKNOWN, status_text="Compl*eted <!here>")
    message = assert_valid_message(status_message(status, NOW))
    shown = block_texts(message)
    assert ":grey_question: Unknown (MyPreferences said “" in shown
    assert "&lt;!here&gt;" in shown
    assert "Compl*eted" not in shown and f"Compl{ZWJ}*{ZWJ}eted" in shown


def test_header_shows_name_and_token() -> None:
    message = assert_valid_message(status_message(make_status(), NOW))
    assert message.blocks[0]["text"]["text"] == "Spring newsletter · import 4242"
    assert message.text == (
        "Spring newsletter (import 4242): Processing, 1,200 of 4,000 records done"
    )


def test_missing_name_shows_unnamed_import() -> None:
    message = assert_valid_message(status_message(make_status(name=None), NOW))
    assert message.blocks[0]["text"]["text"] == "Unnamed import · import 4242"


def fields_of(message: Message) -> dict[str, str]:
    for block in message.blocks:
        if "fields" in block:
            return dict(field["text"].split("\n", 1) for field in block["fields"])
    raise AssertionError("no fields")


def test_counts_show_zero_as_zero() -> None:
    zeros = {
        key: 0
        for key in (
            "total_records_received",
            "validation_successful",
            "validation_failed",
            "processed",
            "pending",
            "exceptions",
            "not_honored",
        )
    }
    message = assert_valid_message(status_message(make_status(Status.STAGING, **zeros), NOW))
    assert fields_of(message) == {
        "*Received*": "0",
        "*Validated OK*": "0",
        "*Validation failed*": "0",
        "*Processed*": "0",
        "*Pending*": "0",
        "*Exceptions*": "0",
        "*Not honoured*": "0",
    }


def test_millions_of_records_use_thousands_separators() -> None:
    status = make_status(
        total_records_received=12_345_678, validation_successful=12_000_000, processed=9_876_543
    )
    fields = fields_of(assert_valid_message(status_message(status, NOW)))
    assert fields["*Received*"] == "12,345,678"
    assert fields["*Validated OK*"] == "12,000,000"
    assert fields["*Processed*"] == "9,876,543"


def test_missing_counts_show_unknown() -> None:
    status = ImportStatus(access_token=7, status=Status.QUEUED)
    message = assert_valid_message(status_message(status, NOW))
    assert set(fields_of(message).values()) == {"unknown"}
    assert "▓" not in all_text(message) and "░" not in all_text(message)
    assert "unknown of unknown" in message.text


@pytest.mark.parametrize("status", [Status.QUEUED, Status.PROCESSING])
def test_progress_bar_shown_while_queued_or_processing(status: Status) -> None:
    message = assert_valid_message(status_message(make_status(status), NOW))
    # (1,000 processed + 150 exceptions + 50 not honoured) of 4,000 validated = 30 %
    assert "▓" * 6 + "░" * 14 + " 30%  1,200 of 4,000 records" in block_texts(message)


@pytest.mark.parametrize(
    "status", [Status.INITIATED, Status.STAGING, Status.COMPLETED, Status.FAILED, Status.UNKNOWN]
)
def test_no_progress_bar_outside_queued_and_processing(status: Status) -> None:
    message = assert_valid_message(status_message(make_status(status), NOW))
    assert "%" not in block_texts(message)


def test_progress_percentage_floors() -> None:
    status = make_status(validation_successful=1000, processed=999, exceptions=0, not_honored=0)
    message = assert_valid_message(status_message(status, NOW))
    assert " 99%  999 of 1,000 records" in block_texts(message)
    done = replace(status, processed=1000)
    assert " 100%  1,000 of 1,000 records" in block_texts(status_message(done, NOW))


def test_no_progress_bar_when_nothing_validated() -> None:
    status = make_status(validation_successful=0)
    assert "%" not in block_texts(assert_valid_message(status_message(status, NOW)))


def test_eta_line_shown_when_given() -> None:
    status = make_status()
    message = assert_valid_message(status_message(status, NOW, eta_seconds=3 * 3600 + 600))
    assert "About 3 h 10 min left" in block_texts(message)
    assert "left" not in block_texts(status_message(status, NOW))


def test_eta_line_never_for_finished_imports() -> None:
    message = status_message(make_status(Status.COMPLETED), NOW, eta_seconds=60)
    assert "left" not in block_texts(assert_valid_message(message))


def test_expiry_in_the_future_is_relative_and_absolute() -> None:
    message = assert_valid_message(status_message(make_status(), NOW))
    expires = NOW + timedelta(hours=3, minutes=10)
    assert f"Token expires in 3 h 10 min ({slack_date(expires)})" in block_texts(message)


def test_expiry_in_the_past_says_how_long_ago() -> None:
    expires = NOW - timedelta(minutes=5)
    message = assert_valid_message(status_message(make_status(expires=expires), NOW))
    assert f"Token expired 5 min ago ({slack_date(expires)})" in block_texts(message)


def test_unparseable_expiry_is_shown_as_given() -> None:
    status = make_status(expires=None, expires_text="next <Tuesday> *soon*")
    message = assert_valid_message(status_message(status, NOW))
    shown = block_texts(message)
    assert "Expires: next &lt;Tuesday&gt; " in shown
    assert " (could not be read)" in shown
    assert "*soon*" not in shown


def test_unknown_expiry_says_so() -> None:
    status = make_status(expires=None, expires_text=None)
    message = assert_valid_message(status_message(status, NOW))
    assert "Expiry unknown" in block_texts(message)


def test_hostile_name_cannot_ping_link_or_format() -> None:
    message = assert_valid_message(status_message(make_status(name=HOSTILE_NAME), NOW))
    everything = all_text(message)
    assert "<!channel>" not in everything
    assert "<@U999>" not in everything
    assert "<https://" not in everything
    header = message.blocks[0]["text"]
    assert header["type"] == "plain_text"
    assert header["text"].startswith("&lt;!channel&gt; &lt;@U999&gt;")
    # the fallback is mrkdwn: formatting is broken up there
    assert "*bold*" not in message.text
    assert "&lt;!channel&gt;" in message.text


def test_long_name_is_truncated_but_token_stays_visible() -> None:
    name = "&<>" * 70  # 200 characters that triple in length when escaped
    message = assert_valid_message(status_message(make_status(name=name), NOW))
    header = message.blocks[0]["text"]["text"]
    assert len(header) <= HEADER_TEXT_LIMIT
    assert header.endswith("… · import 4242")
    assert header.startswith("&amp;&lt;&gt;")
    assert re.search(r"&[a-z]*…", header) is None, "an entity was cut in half"


def test_lookup_buttons_offer_watch_and_refresh_when_not_watching() -> None:
    for watching in (None, False):
        message = assert_valid_message(status_message(make_status(), NOW, watching=watching))
        assert buttons(message) == {ACTION_WATCH: "4242", ACTION_REFRESH: "4242", **EXC}


def test_lookup_buttons_offer_stop_watching_when_watching() -> None:
    message = assert_valid_message(status_message(make_status(), NOW, watching=True))
    assert buttons(message) == {ACTION_REFRESH: "4242", ACTION_UNWATCH: "4242", **EXC}


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED])
def test_finished_import_cannot_be_watched(status: Status) -> None:
    message = assert_valid_message(status_message(make_status(status), NOW))
    assert buttons(message) == {ACTION_REFRESH: "4242", **EXC}


def test_the_exceptions_button_is_there_only_when_records_failed() -> None:
    clean = make_status(Status.COMPLETED, validation_failed=0, exceptions=0, not_honored=0)
    assert ACTION_EXCEPTIONS not in buttons(status_message(clean, NOW))
    assert ACTION_EXCEPTIONS not in buttons(card(clean))
    unknown = make_status(validation_failed=None, exceptions=None, not_honored=None)
    assert ACTION_EXCEPTIONS not in buttons(status_message(unknown, NOW))
    one = make_status(Status.COMPLETED, validation_failed=0, exceptions=0, not_honored=1)
    assert buttons(status_message(one, NOW))[ACTION_EXCEPTIONS] == "4242"
    assert buttons(card(one))[ACTION_EXCEPTIONS] == "4242"


def test_button_labels() -> None:
    message = status_message(make_status(), NOW)
    labels = [
        element["text"]["text"]
        for block in message.blocks
        if block["type"] == "actions"
        for element in block["elements"]
    ]
    assert labels == ["Watch in this channel", "Refresh", "Exceptions"]
    watched = status_message(make_status(), NOW, watching=True)
    assert "Stop watching" in all_text(watched)


# --- The tracking card -------------------------------------------------------------


def card(status: ImportStatus | None, **kwargs: Any) -> Message:
    kwargs.setdefault("subscriber_id", SUBSCRIBER)
    kwargs.setdefault("subscribed_at", NOW - timedelta(hours=1))
    return assert_valid_message(tracking_card(status, 4242, NOW, **kwargs))


def test_tracking_card_shows_status_and_who_watches() -> None:
    message = card(make_status())
    shown = block_texts(message)
    assert "*Status:* :gear: Processing" in shown
    assert "30%" in shown
    since = slack_date(NOW - timedelta(hours=1))
    assert f"Watched by <@{SUBSCRIBER}> since {since}" in shown
    assert "Last checked" not in shown
    assert buttons(message) == {ACTION_REFRESH: "4242", ACTION_UNWATCH: "4242", **EXC}


def test_tracking_card_does_not_change_between_polls() -> None:
    status = make_status()
    first = tracking_card(status, 4242, NOW, subscriber_id=SUBSCRIBER, subscribed_at=NOW)
    later = tracking_card(
        status, 4242, NOW + timedelta(minutes=7), subscriber_id=SUBSCRIBER, subscribed_at=NOW
    )
    assert first == later
    assert status.expires is not None
    assert f"Token expires {slack_date(status.expires)}" in block_texts(first)


def test_tracking_card_before_the_first_status() -> None:
    message = card(None)
    assert message.blocks[0]["text"]["text"] == "Import 4242"
    assert "Waiting for the first status…" in block_texts(message)
    assert "4242" in message.text
    assert buttons(message) == {ACTION_REFRESH: "4242", ACTION_UNWATCH: "4242"}


def test_ended_tracking_card_says_why_and_keeps_only_refresh() -> None:
    message = card(make_status(Status.COMPLETED), ended_reason="unwatched by <@U2222>")
    assert "No longer watching: unwatched by <@U2222>" in block_texts(message)
    assert buttons(message) == {ACTION_REFRESH: "4242", **EXC}


def test_a_card_can_say_what_became_of_the_exceptions() -> None:
    line = ":clipboard: Exceptions: 2,500 records · file in thread"
    message = card(make_status(Status.COMPLETED), ended_reason="Completed", exceptions_line=line)
    assert line in block_texts(message)
    assert line not in block_texts(card(make_status(Status.COMPLETED), ended_reason="Completed"))
    waiting = card(None, ended_reason="token expired")
    assert "No longer watching: token expired" in block_texts(waiting)
    assert buttons(waiting) == {ACTION_REFRESH: "4242"}


def test_tracking_card_never_offers_watch() -> None:
    assert ACTION_WATCH not in buttons(card(make_status(Status.STAGING)))


def test_tracking_card_does_not_mention_a_malformed_user_id() -> None:
    message = card(make_status(), subscriber_id="<!channel>")
    assert "<!channel>" not in all_text(message)
    assert "Watched by &lt;!channel&gt;" in block_texts(message)


# --- Event messages ------------------------------------------------------------------


def mention() -> str:
    return f"<@{SUBSCRIBER}>"


def test_transition_shows_both_markers_without_mention() -> None:
    ev = event(EventKind.TRANSITION, old_status=Status.QUEUED, new_status=Status.PROCESSING)
    message = assert_valid_message(event_message(ev, make_status(), SUBSCRIBER, NOW))
    assert message.text == ("Status: :hourglass_flowing_sand: Queued → :gear: Processing")
    assert "<@" not in all_text(message)


def test_backwards_transition_is_shown_as_is() -> None:
    ev = event(EventKind.TRANSITION, old_status=Status.PROCESSING, new_status=Status.STAGING)
    message = assert_valid_message(event_message(ev, make_status(Status.STAGING), SUBSCRIBER, NOW))
    assert message.text == "Status: :gear: Processing → :inbox_tray: Staging"


def test_completed_transition_mentions_subscriber_and_summarises_counts() -> None:
    ev = event(EventKind.TRANSITION, old_status=Status.PROCESSING, new_status=Status.COMPLETED)
    status = make_status(Status.COMPLETED, processed=3_800_000, validation_failed=12)
    message = assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
    assert message.text.startswith(f"{mention()} Status: :gear: Processing → :white_check_mark:")
    assert message.text.splitlines()[1] == (
        "Import Spring newsletter (4242) finished: 3,800,000 processed, "
        "150 exceptions, 50 not honoured, 12 failed validation."
    )
    assert message.text.count("<@") == 1


def test_failed_transition_says_nothing_was_added() -> None:
    ev = event(EventKind.TRANSITION, old_status=Status.QUEUED, new_status=Status.FAILED)
    status = make_status(Status.FAILED, processed=0, exceptions=0, not_honored=0)
    message = assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
    assert message.text.startswith(f"{mention()} Status:")
    assert ":x: Failed" in message.text
    summary = message.text.splitlines()[1]
    assert summary.startswith(
        "Import Spring newsletter (4242) failed: none of the staged records were added."
    )
    assert "1,000 failed validation" in summary


def test_terminal_transition_escapes_the_name() -> None:
    ev = event(EventKind.TRANSITION, old_status=Status.PROCESSING, new_status=Status.COMPLETED)
    status = make_status(Status.COMPLETED, name=HOSTILE_NAME)
    message = assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
    assert "<!channel>" not in all_text(message)
    assert "*bold*" not in all_text(message)
    assert message.text.count("<@") == 1  # only the subscriber


def test_milestone_shows_percent_and_counts_without_mention() -> None:
    status = make_status(validation_successful=2468, processed=1234, exceptions=0, not_honored=0)
    ev = event(EventKind.MILESTONE, milestone=50)
    message = assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
    assert message.text == "Progress: 50% (1,234 of 2,468 records)"


def test_milestone_without_status_shows_percent_only() -> None:
    message = event_message(event(EventKind.MILESTONE, milestone=75), None, SUBSCRIBER, NOW)
    assert assert_valid_message(message).text == "Progress: 75%"


def test_expiry_warning_mentions_subscriber_with_time_and_status() -> None:
    expires = NOW + timedelta(minutes=45)
    ev = event(EventKind.EXPIRY_WARNING, expires=expires)
    status = make_status(Status.STAGING, expires=expires)
    message = assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
    assert message.text == (
        f"{mention()} :warning: The access token expires in 45 min ({slack_date(expires)}) "
        "and the import is still :inbox_tray: Staging.\n"
        "Import Spring newsletter (4242)"
    )


def test_expired_mentions_subscriber_and_ends_watching() -> None:
    ev = event(EventKind.EXPIRED, old_status=Status.QUEUED)
    status = make_status(Status.QUEUED, expires=NOW - timedelta(minutes=1))
    message = assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
    assert message.text.startswith(
        f"{mention()} :hourglass: The access token expired before the import finished "
        "(last status: :hourglass_flowing_sand: Queued). No longer watching."
    )


def test_api_trouble_explains_without_mention() -> None:
    ev = event(EventKind.API_TROUBLE, detail=Unavailable.user_message)
    since = NOW - timedelta(minutes=20)
    message = assert_valid_message(
        event_message(ev, make_status(), SUBSCRIBER, NOW, trouble_since=since)
    )
    assert message.text == (
        f":warning: Can't reach MyPreferences for this import since {slack_date(since)}: "
        f"{Unavailable.user_message}. Still trying."
    )
    assert "<@" not in message.text


def test_api_trouble_detail_is_escaped() -> None:
    ev = event(EventKind.API_TROUBLE, detail="<!everyone> HTTP 503")
    message = assert_valid_message(event_message(ev, None, SUBSCRIBER, NOW))
    assert "&lt;!everyone&gt; HTTP 503. Still trying." in message.text


def test_recovered_says_watching_resumes_without_mention() -> None:
    message = event_message(event(EventKind.RECOVERED), make_status(), SUBSCRIBER, NOW)
    assert "MyPreferences answers again; watching resumes." in assert_valid_message(message).text
    assert "<@" not in message.text


@pytest.mark.parametrize(
    ("ev", "mentioned"),
    [
        (
            event(EventKind.TRANSITION, old_status=Status.INITIATED, new_status=Status.STAGING),
            False,
        ),
        (event(EventKind.TRANSITION, old_status=Status.STAGING, new_status=Status.QUEUED), False),
        (event(EventKind.TRANSITION, old_status=None, new_status=Status.PROCESSING), False),
        (event(EventKind.TRANSITION, old_status=Status.QUEUED, new_status=Status.COMPLETED), True),
        (event(EventKind.TRANSITION, old_status=Status.QUEUED, new_status=Status.FAILED), True),
        (event(EventKind.MILESTONE, milestone=25), False),
        (event(EventKind.EXPIRY_WARNING, expires=NOW + timedelta(minutes=30)), True),
        (event(EventKind.EXPIRED), True),
        (event(EventKind.API_TROUBLE, detail="HTTP 503"), False),
        (event(EventKind.RECOVERED), False),
    ],
)
def test_subscriber_is_mentioned_exactly_where_required(ev: Event, mentioned: bool) -> None:
    for status in (make_status(), None):
        message = assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
        assert (mention() in all_text(message)) is mentioned
        assert all_text(message).count("<@") == (2 if mentioned else 0)  # text + block


# --- Errors, usage, notices -----------------------------------------------------------


def test_lookup_error_names_the_import() -> None:
    message = assert_valid_message(lookup_error_message(4242, TokenRejected.user_message))
    assert message.text == f":warning: Import 4242: {TokenRejected.user_message}"


def test_lookup_error_without_token() -> None:
    message = assert_valid_message(lookup_error_message(None, "Something <odd>"))
    assert message.text == ":warning: Something &lt;odd&gt;"


def test_lookup_error_keeps_setting_names_literal() -> None:
    message = assert_valid_message(lookup_error_message(1, "Check MYPREFERENCES_CLIENT_ID."))
    assert "_CLIENT_" not in message.text
    assert message.text.replace(ZWJ, "").endswith("Check MYPREFERENCES_CLIENT_ID.")


def test_usage_lists_every_form_with_examples() -> None:
    message = assert_valid_message(usage_message())
    shown = block_texts(message)
    assert shown.startswith(USAGE_LINE)
    for example in (
        "`/import-status 12345`",
        "`/import-status watch 12345`",
        "`subscribe`",
        "`/import-status unwatch 12345`",
        "`unsubscribe`",
        "`/import-status list`",
        "`/import-status history 20`",
        "`/import-status settings`",
        "`/import-status set broadcast failures`",
        "`/import-status help`",
    ):
        assert example in shown
    assert message.text == USAGE_LINE


def test_usage_starts_with_the_escaped_problem() -> None:
    message = assert_valid_message(usage_message("Not a token: <!here> *x*"))
    first_line = block_texts(message).splitlines()[0]
    assert "Not a token: &lt;!here&gt;" in first_line
    assert "*x*" not in first_line
    assert USAGE_LINE in message.text


def test_usage_line_constant() -> None:
    assert USAGE_LINE == (
        "Usage: /import-status [watch|unwatch|exceptions] TOKEN | list | history [N] | settings "
        "| set KEY VALUE | help"
    )


def test_notice_is_one_section_with_the_same_fallback() -> None:
    message = assert_valid_message(notice("Watching import 4242 in this channel."))
    assert message.text == "Watching import 4242 in this channel."
    assert message.blocks == [
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": "Watching import 4242 in this channel.",
                "verbatim": True,
            },
        }
    ]


def test_truncation_never_cuts_a_mention_or_date_in_half() -> None:
    text = "x" * (SECTION_TEXT_LIMIT - 20) + f" by <@{SUBSCRIBER}> at {slack_date(NOW)}"
    message = assert_valid_message(notice(text))
    assert message.text.endswith("x by <@U0123ABC> at…")


# --- The watch list -----------------------------------------------------------------------


def row(token: int, **overrides: Any) -> WatchRow:
    values: dict[str, Any] = {
        "access_token": token,
        "name": f"Import number {token}",
        "status": Status.PROCESSING,
        "subscribed_by": SUBSCRIBER,
        "subscribed_at": NOW - timedelta(days=1),
    }
    values.update(overrides)
    return WatchRow(**values)


def test_empty_watch_list_suggests_watching() -> None:
    message = assert_valid_message(watch_list_message([], NOW))
    assert message.text == (
        "This channel is not watching any import. Try `/import-status watch 12345`."
    )


def test_watch_list_shows_one_line_per_import() -> None:
    rows = [
        row(1, status=Status.QUEUED),
        row(2, name=HOSTILE_NAME, status=None, subscribed_by="U777"),
        row(3, name=None, status=Status.COMPLETED),
    ]
    message = assert_valid_message(watch_list_message(rows, NOW))
    shown = block_texts(message)
    since = slack_date(NOW - timedelta(days=1))
    assert (
        f"• :hourglass_flowing_sand: Queued: Import number 1 (1), "
        f"watched by <@{SUBSCRIBER}> since {since}"
    ) in shown
    assert "not checked yet: &lt;!channel&gt;" in shown
    assert "watched by <@U777>" in shown
    assert "*bold*" not in shown
    assert ":white_check_mark: Completed: Unnamed import (3)" in shown
    assert "3 imports" in message.text
    assert "more" not in shown
    one = assert_valid_message(watch_list_message([row(9)], NOW))
    assert one.text == "This channel watches 1 import: 9 (Processing)"


def test_watch_list_over_forty_rows_says_how_many_more() -> None:
    rows = [row(n, name="&*<" * 66) for n in range(1, 101)]
    message = assert_valid_message(watch_list_message(rows, NOW))
    shown = block_texts(message)
    assert "and 60 more" in shown
    assert "(40), watched by" in shown
    assert "(41), watched by" not in shown
    assert len(message.blocks) <= MAX_BLOCKS


def test_watch_list_groups_lines_into_few_sections() -> None:
    message = assert_valid_message(watch_list_message([row(n) for n in range(40)], NOW))
    assert len(message.blocks) <= 5


# --- Properties over arbitrary outside text -----------------------------------------


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=300), raw=st.text(max_size=100))
def test_any_outside_text_renders_safely(name: str, raw: str) -> None:
    status = make_status(
        Status.UNKNOWN, name=name or None, status_text=raw, expires=None, expires_text=raw or None
    )
    assert_valid_message(status_message(status, NOW))
    assert_valid_message(card(status))
    ev = event(EventKind.TRANSITION, old_status=Status.PROCESSING, new_status=Status.FAILED)
    assert_valid_message(event_message(ev, status, SUBSCRIBER, NOW))
    assert_valid_message(watch_list_message([row(1, name=name or None)], NOW))
    assert_valid_message(usage_message(name or None))
    assert_valid_message(lookup_error_message(1, raw or "x"))
    for text in (escape(name), escape_plain(name)):
        assert "<" not in text and ">" not in text

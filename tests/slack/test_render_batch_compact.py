"""Compact cards and replies, batch cards and alerts: valid Block Kit, under Slack's limits."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.batch import BatchMember, BatchSummary
from bot.domain.events import Event, EventKind
from bot.domain.routing import Route
from bot.domain.status import Status
from bot.sandbox.block_kit import block_problems, fallback_warnings, utf16_len
from bot.sandbox.slack_emulator import message_text
from bot.slack.render import Message, event_message
from bot.slack.render_alerts import alert_message
from bot.slack.render_batch import batch_card, batch_summary_message
from bot.slack.render_compact import compact_card
from tests.slack.test_render import HOSTILE_NAME, make_status, texts_of

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
LONG_NAME = "Ω" * 100 + "😀" * 50  # the API allows 100 characters; more would still be cut
STATUSES = list(Status)


# The <…> tokens the bot writes itself: mentions (people, the chosen user group), channel
# links, Slack dates, and links to threads. Anything else in angle brackets came from outside.
BOT_TOKENS = re.compile(
    r"<(@[UWB][A-Z0-9]+|!subteam\^S[A-Z0-9]+|#[CG][A-Z0-9]+|!date\^\d+\^[^|<>]*\|[^<>]*"
    r"|https://[^|<> ]+\|[^<>]*)>"
)


def valid(message: Message) -> Message:
    """Valid as Slack checks it (slack_sdk's models and the limits they leave out), and
    every angle bracket is one the bot wrote: outside text pings nobody."""
    assert block_problems(message.blocks) == []
    assert fallback_warnings(message.text, message.blocks) == []
    assert message.text.strip() and utf16_len(message.text) <= 3000
    assert 1 <= len(message.blocks) <= 50
    for text in [message.text, *texts_of(message)]:
        leftover = BOT_TOKENS.sub("", text)
        assert "<" not in leftover and ">" not in leftover, text
    return message


def line_count(message: Message) -> int:
    sections = [b for b in message.blocks if b["type"] == "section"]
    return sum(b["text"]["text"].count("\n") + 1 for b in sections if "text" in b)


# --------------------------------------------------------------------------- compact


@pytest.mark.parametrize("state", STATUSES)
@pytest.mark.parametrize("name", [None, "Spring", HOSTILE_NAME, LONG_NAME])
def test_the_compact_card_is_one_line_of_valid_block_kit(state: Status, name: str | None) -> None:
    status = make_status(
        state, name=name, status_text="Weird<b>" if state is Status.UNKNOWN else state.value
    )
    card = valid(compact_card(status, 4242, NOW, subscriber_id="U0SUB", eta_seconds=3725.0))
    assert len(card.blocks) == 1 and line_count(card) == 1
    assert card.blocks[0]["accessory"]["action_id"] == "import_unwatch"
    ended = valid(
        compact_card(
            status,
            4242,
            NOW,
            subscriber_id="U0SUB",
            ended_reason="unwatched by <@U0SUB> " + "x" * 500,
            exceptions_line=":clipboard: Exceptions: 150 records · file in thread",
        )
    )
    assert len(ended.blocks) == 1 and line_count(ended) == 1
    assert ended.blocks[0]["accessory"]["action_id"] == "import_refresh"


def test_the_compact_card_says_what_the_full_one_says_that_matters() -> None:
    card = compact_card(make_status(), 4242, NOW, subscriber_id="U0SUB", eta_seconds=600)
    text = card.blocks[0]["text"]["text"]
    assert ":gear: Processing" in text and "*Spring newsletter* (4242)" in text
    assert "(1,200 of 4,000)" in text and "about 10 min left" in text
    assert "watched by <@U0SUB>" in text
    assert (
        compact_card(None, 7, NOW, subscriber_id="U1")
        .blocks[0]["text"]["text"]
        .startswith(":hourglass_flowing_sand: Import 7: waiting")
    )


@pytest.mark.parametrize("kind", list(EventKind))
def test_compact_replies_are_one_line_and_name_their_import_when_broadcast(
    kind: EventKind,
) -> None:
    event = Event(
        kind,
        "k",
        old_status=Status.PROCESSING,
        new_status=Status.COMPLETED,
        milestone=50,
        expires=NOW + timedelta(minutes=30),
        detail="down <!here>",
    )
    route = Route(reply=True, broadcast=True, mention="<!subteam^S0OPS>", compact=True)
    message = valid(event_message(event, make_status(name=HOSTILE_NAME), "U0SUB", NOW, route=route))
    assert line_count(message) == 1
    text = message.blocks[0]["text"]["text"]
    assert text.startswith("<!subteam^S0OPS> ")
    assert "(4242)" in text, "read in the channel: it says which import"


# --------------------------------------------------------------------------- batch


def members(count: int, name: str | None = "Import") -> tuple[BatchMember, ...]:
    found = []
    for i in range(count):
        state = STATUSES[i % len(STATUSES)]
        status = make_status(
            state, access_token=9_000_000_000_000_000_000 + i, name=f"{name} {i}" if name else None
        )
        ended = state.value if state.is_terminal else None
        found.append(
            BatchMember(status.access_token, status, ended, 60.0 * i if not ended else None)
        )
    return tuple(found)


@pytest.mark.parametrize("count", [2, 7, 20])
@pytest.mark.parametrize("name", [HOSTILE_NAME, LONG_NAME, None])
@pytest.mark.parametrize("compact", [False, True])
def test_batch_cards_stay_valid_and_under_the_limits(
    count: int, name: str | None, compact: bool
) -> None:
    summary = BatchSummary(members(count, name))
    card = valid(
        batch_card(
            summary,
            NOW,
            subscriber_id="U0SUB",
            subscribed_at=NOW,
            compact=compact,
            ended_reason="Slack: is_archived" if count == 7 else None,
        )
    )
    if compact:
        assert len(card.blocks) == 1 and line_count(card) == 1


def test_the_batch_card_shows_the_sums_and_one_line_per_import() -> None:
    a = make_status(
        Status.PROCESSING,
        access_token=1001,
        name="A",
        validation_successful=1000,
        processed=400,
        exceptions=50,
        not_honored=10,
    )
    b = make_status(
        Status.QUEUED,
        access_token=1002,
        name="B",
        validation_successful=3000,
        processed=0,
        exceptions=0,
        not_honored=0,
    )
    c = make_status(
        Status.COMPLETED,
        access_token=1003,
        name="C",
        validation_successful=500,
        processed=480,
        exceptions=20,
        not_honored=0,
        validation_failed=0,
    )
    summary = BatchSummary(
        (BatchMember(1001, a), BatchMember(1002, b), BatchMember(1003, c, "Completed"))
    )
    card = batch_card(summary, NOW, subscriber_id="U0SUB", subscribed_at=NOW)
    text = message_text(card.as_kwargs())
    assert "Batch of 3 imports" in text
    assert "960 of 4,500 records, all imports together" in text  # 460 + 0 + 500
    assert "*Validated OK*\n4,500" in text and "*Processed*\n880" in text
    assert (
        ":hourglass_flowing_sand: 1 queued, :gear: 1 processing, :white_check_mark: 1 completed"
        in text
    )
    for line in ("A (1001)", "B (1002)", "C (1003) · 480 processed, 20 failed records"):
        assert line in text
    assert "`/import-status unwatch 1001 1002 1003` stops it" in text
    assert "left" not in text, "one import is still queued: no honest estimate"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=2, max_size=20))
def test_the_combined_progress_shown_is_the_sum_of_the_lines(pairs: list[tuple[int, int]]) -> None:
    found = []
    for i, (validated, processed) in enumerate(pairs):
        status = make_status(
            Status.PROCESSING,
            access_token=i + 1,
            validation_successful=validated,
            processed=min(processed, validated),
            exceptions=0,
            not_honored=0,
        )
        found.append(BatchMember(i + 1, status))
    card = batch_card(BatchSummary(tuple(found)), NOW, subscriber_id="U1", subscribed_at=NOW)
    text = message_text(card.as_kwargs())
    done = sum(min(p, v) for v, p in pairs)
    total = sum(v for v, _ in pairs)
    if total:
        assert f"{done:,} of {total:,} records, all imports together" in text
    lines = re.findall(r"\((\d[\d,]*) of (\d[\d,]*)\)", text)
    shown = [(int(d.replace(",", "")), int(t.replace(",", ""))) for d, t in lines]
    assert sum(d for d, _ in shown) == sum(min(p, v) for v, p in pairs if v)


def test_the_batch_summary_mentions_only_when_broadcast() -> None:
    summary = BatchSummary(members(4))
    loud = valid(batch_summary_message(summary, Route(True, True, "<!subteam^S0OPS>")))
    assert loud.text.startswith("<!subteam^S0OPS> :checkered_flag: All 4 imports")
    quiet = valid(batch_summary_message(summary, Route(True, False, None)))
    assert "subteam" not in quiet.text


# --------------------------------------------------------------------------- alerts


def test_an_alert_names_the_import_mentions_and_links_to_the_thread() -> None:
    event = Event(EventKind.TRANSITION, "t", old_status=Status.PROCESSING, new_status=Status.FAILED)
    status = make_status(Status.FAILED, name=HOSTILE_NAME)
    link = "https://acme.slack.com/archives/C0SRC/p1790000000000100"
    message = valid(
        alert_message(
            event,
            status,
            source_channel="C0SRC",
            link=link,
            mention="<!subteam^S0OPS>",
            subscriber_id="U0SUB",
            now=NOW,
        )
    )
    text = message_text(message.as_kwargs())
    assert text.startswith(":rotating_light: <!subteam^S0OPS> Status:")
    assert "(4242) failed" in text
    assert f"Watched in <#C0SRC> · <{link}|open the thread>" in text
    forged = alert_message(
        event,
        status,
        source_channel="C0SRC",
        link="https://x|<!channel>",
        mention=None,
        subscriber_id="U0SUB",
        now=NOW,
    )
    assert "<!channel>" not in message_text(forged.as_kwargs()), "a bad link is left out"

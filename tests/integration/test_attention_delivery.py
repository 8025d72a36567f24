"""Each channel setting and batches, over real HTTP: what the channel, the thread and the alert
channel show.

One real ``import-status-bot serve`` process serves the module; each test has
channels and tokens of its own, and sets its settings with ``/import-status set``
as a person would. Waits are generous (``wait_for`` returns as soon as the thing
is there), so a loaded machine slows the tests down instead of failing them.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from bot.sandbox.block_kit import block_problems
from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import Message, SlackUser, message_text, wait_for
from bot.store.engine import make_engine
from bot.store.tables import BatchRow, ChannelWaitRow, SubscriptionRow

WAIT = 20.0  # seconds: an upper bound for "it shows up", never a pause
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(Path(tmp_path_factory.mktemp("attention")) / "harness", preloaded=True) as h:
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    return harness.start_bot(LOOKUP_RATE_LIMIT=1000)


@pytest.fixture(scope="module")
def engine(harness: Harness) -> Iterator[Engine]:
    engine = make_engine(harness.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def n() -> int:
    return next(_numbers)


@pytest.fixture
def user(harness: Harness, bot: BotProcess, n: int) -> Iterator[SlackUser]:
    with harness.user(bot, channel_id=f"CA{n:04d}", user_id=f"UA{n:03d}") as person:
        yield person


def ack(user: SlackUser, text: str) -> str:
    result = user.command(text)
    assert result.status_code == 200 and result.error is None, result
    body = message_text(result.ack_body)
    if body.startswith(("Checking import", "Stopping the watch", "Looking up")):
        body = message_text(user.wait_response(result, timeout=WAIT))
    return body


def set_(user: SlackUser, key: str, value: str) -> None:
    assert "Saved" in ack(user, f"set {key} {value}")


def card(harness: Harness, channel: str, needle: str) -> Message:
    def find() -> Message | None:
        return next(
            (
                m
                for m in harness.emulator.messages(channel)
                if m.thread_ts is None and needle in message_text(m)
            ),
            None,
        )

    return wait_for(find, WAIT, description=f"the card with {needle!r} in {channel}")


def replies(harness: Harness, channel: str, parent: Message) -> list[Message]:
    return harness.emulator.thread(channel, parent.ts)


def reply_with(harness: Harness, channel: str, parent: Message, needle: str) -> Message:
    def find() -> Message | None:
        return next(
            (m for m in replies(harness, channel, parent) if needle in message_text(m)), None
        )

    return wait_for(find, WAIT, description=f"a reply with {needle!r}")


def broadcasts(harness: Harness, channel: str) -> list[Message]:
    """Thread replies also shown in the channel."""
    return [m for m in harness.emulator.messages(channel) if m.thread_ts and m.reply_broadcast]


def ended(engine: Engine, channel: str, tokens: int) -> bool:
    with engine.connect() as conn:
        states = conn.execute(
            select(SubscriptionRow.state).where(SubscriptionRow.channel_id == channel)
        ).scalars()
        return sum(1 for s in states if s == "ended") >= tokens


# --------------------------------------------------------------------------- broadcast, mention


def test_broadcast_failures_shows_a_failure_in_the_channel_but_not_a_clean_completed(
    harness: Harness, user: SlackUser, engine: Engine, n: int
) -> None:
    clean, failing = 81000 + n * 10, 81001 + n * 10
    channel = user.channel_id
    harness.sim.add_import(clean, name="Clean list", status="Processing", ValidationSuccessful=10)
    harness.sim.add_import(failing, name="Bad list", status="Processing", ValidationSuccessful=10)
    set_(user, "broadcast", "failures")
    set_(user, "mention", "<!subteam^S0OPS|@ops>")
    assert f"Watching import {clean}" in ack(user, f"watch {clean}")
    assert f"Watching import {failing}" in ack(user, f"watch {failing}")
    clean_card = card(harness, channel, f"import {clean}")
    failing_card = card(harness, channel, f"import {failing}")

    harness.sim.update(clean, Status="Completed", Processed=10)
    harness.sim.update(failing, Status="Failed")
    done = reply_with(harness, channel, clean_card, "finished")
    failed = reply_with(harness, channel, failing_card, "failed")

    assert not done.reply_broadcast, "a clean Completed stays in the thread"
    assert failed.reply_broadcast, "a failure is shown in the channel"
    assert message_text(failed).startswith("<!subteam^S0OPS> "), "the chosen group is mentioned"
    assert "subteam" not in message_text(done)
    assert [m.ts for m in broadcasts(harness, channel)] == [failed.ts]


def test_mention_none_and_broadcast_none_keep_everything_in_the_thread(
    harness: Harness, user: SlackUser, n: int
) -> None:
    token = 82000 + n
    harness.sim.add_import(token, status="Processing", ValidationSuccessful=100, Processed=10)
    set_(user, "broadcast", "none")
    set_(user, "milestones", "off")
    assert f"Watching import {token}" in ack(user, f"watch {token}")
    parent = card(harness, user.channel_id, f"import {token}")
    harness.sim.update(token, Processed=60)
    harness.sim.update(token, Status="Failed")
    failed = reply_with(harness, user.channel_id, parent, "failed")
    assert not failed.reply_broadcast and "<@" not in message_text(failed)
    texts = [message_text(m) for m in replies(harness, user.channel_id, parent)]
    assert not any("Progress:" in t for t in texts), "milestones off: no 25/50 % replies"
    assert broadcasts(harness, user.channel_id) == []


# --------------------------------------------------------------------------- alerts


def test_alerts_post_one_message_in_the_alert_channel_linking_to_the_thread(
    harness: Harness, user: SlackUser, engine: Engine, n: int
) -> None:
    token, alerts = 83000 + n, f"CALERT{n:03d}"
    harness.emulator.invite_bot(alerts)
    harness.sim.add_import(token, name="Leads", status="Processing", ValidationSuccessful=10)
    answer = ack(user, f"set alerts <#{alerts}|alerts>")
    assert "Saved" in answer and f"member of <#{alerts}>" in answer
    assert f"Watching import {token}" in ack(user, f"watch {token}")
    parent = card(harness, user.channel_id, f"import {token}")
    harness.sim.update(token, Status="Failed")
    reply_with(harness, user.channel_id, parent, "failed")

    (alert,) = wait_for(lambda: harness.emulator.messages(alerts), WAIT, description="the alert")
    text = message_text(alert)
    link = f"https://emulator.slack.com/archives/{user.channel_id}/p{parent.ts.replace('.', '')}"
    assert f"<{link}|open the thread>" in text and f"<#{user.channel_id}>" in text
    assert f"Leads ({token})" in text and "failed" in text
    assert wait_for(lambda: ended(engine, user.channel_id, 1), WAIT, description="ended")
    assert len(harness.emulator.messages(alerts)) == 1, "one message, once"


def test_a_lost_alert_channel_does_not_end_the_watch_and_the_thread_says_why(
    harness: Harness, user: SlackUser, engine: Engine, n: int
) -> None:
    token, alerts = 84000 + n, f"CGONE{n:03d}"
    harness.emulator.create_channel(alerts)  # the bot was never invited there
    harness.sim.add_import(token, status="Queued", ValidationSuccessful=10)
    set_(user, "alerts", f"<#{alerts}>")
    assert f"Watching import {token}" in ack(user, f"watch {token}")
    parent = card(harness, user.channel_id, f"import {token}")
    harness.sim.update(token, Status="Failed")
    note = reply_with(harness, user.channel_id, parent, "could not post an alert")
    assert "/invite @import-status" in message_text(note)
    assert harness.emulator.messages(alerts) == []
    reply_with(harness, user.channel_id, parent, "failed")


# --------------------------------------------------------------------------- compact


def test_compact_cards_are_one_line_valid_block_kit_under_slacks_limits(
    harness: Harness, user: SlackUser, n: int
) -> None:
    token = 85000 + n
    long_name = "<!channel> *Ω*" + "😀" * 45 + "x" * 40  # the API's 100 characters, hostile
    harness.sim.add_import(
        token, name=long_name, status="Processing", ValidationSuccessful=1000, Processed=100
    )
    set_(user, "compact", "on")
    assert f"Watching import {token}" in ack(user, f"watch {token}")
    parent = card(harness, user.channel_id, f"({token})")
    assert len(parent.blocks) == 1 and block_problems(parent.blocks) == []
    assert "\n" not in parent.blocks[0]["text"]["text"]
    assert "<!channel>" not in message_text(parent)
    harness.sim.update(token, Processed=500)

    def edited() -> Message | None:
        found = harness.emulator.message(user.channel_id, parent.ts)
        return found if found is not None and "(500 of 1,000)" in message_text(found) else None

    now = wait_for(edited, WAIT, description="the edited compact card")
    assert len(now.blocks) == 1 and block_problems(now.blocks) == []
    harness.sim.update(token, Status="Completed", Processed=1000)
    done = reply_with(harness, user.channel_id, parent, "finished")
    assert len(done.blocks) == 1 and "\n" not in done.blocks[0]["text"]["text"], "one line"
    assert "\n" not in done.text


# --------------------------------------------------------------------------- batches


def test_a_batch_has_one_card_whose_progress_is_the_sum_of_its_imports(
    harness: Harness, user: SlackUser, engine: Engine, n: int
) -> None:
    a, b, c = 86000 + n * 10, 86001 + n * 10, 86002 + n * 10
    sim, channel = harness.sim, user.channel_id
    sim.add_import(a, name="North", status="Processing", ValidationSuccessful=1000, Processed=400)
    sim.add_import(b, name="South", status="Queued", ValidationSuccessful=2000)
    sim.add_import(c, name="East", status="Processing", ValidationSuccessful=500, Processed=100)
    answer = ack(user, f"watch {a} {b} {c}")
    assert f"Watching imports {a}, {b} and {c} in this channel as one batch" in answer
    parent = card(harness, channel, "Batch of 3 imports")
    text = message_text(parent)
    assert "500 of 3,500 records, all imports together" in text
    assert block_problems(parent.blocks) == []
    shown = [
        (int(d.replace(",", "")), int(t.replace(",", "")))
        for d, t in re.findall(r"\((\d[\d,]*) of (\d[\d,]*)\)", text)
    ]
    assert (sum(d for d, _ in shown), sum(t for _, t in shown)) == (500, 3500), "the lines add up"
    assert [m.thread_ts for m in harness.emulator.messages(channel)].count(None) == 1

    sim.update(b, Status="Processing", Processed=1000)  # not an end: the card only
    sim.update(a, Status="Completed", Processed=1000)
    reply_with(harness, channel, parent, f"North ({a})")

    def card_says(words: str) -> Message | None:
        found = harness.emulator.message(channel, parent.ts)
        return found if found is not None and words in message_text(found) else None

    now = wait_for(lambda: card_says("2,100 of 3,500 records"), WAIT, description="the sums")
    assert ":white_check_mark: Completed: North" in message_text(now)

    sim.update(b, Status="Failed")
    sim.update(c, Status="Completed", Processed=500)
    summary = reply_with(harness, channel, parent, "All 3 imports of this batch have ended")
    assert "1 failed" in message_text(summary) and "2 completed" in message_text(summary)
    assert summary.reply_broadcast, "the batch's end is broadcast (finish)"
    texts = [message_text(m) for m in replies(harness, channel, parent)]
    assert len(texts) == 4, texts  # three ends and the summary: no other chatter
    assert not any("Processing" in t and "→" in t and "Queued" in t for t in texts)
    assert wait_for(lambda: card_says("Every import of this batch has ended"), WAIT)
    with engine.connect() as conn:
        assert conn.execute(select(BatchRow.state)).scalars().all().count("ended") >= 1


def test_unwatch_takes_the_same_list_and_a_batch_refuses_what_the_channel_watches(
    harness: Harness, user: SlackUser, engine: Engine, n: int
) -> None:
    a, b, c = 87000 + n * 10, 87001 + n * 10, 87002 + n * 10
    for token in (a, b, c):
        harness.sim.add_import(token, status="Queued", ValidationSuccessful=10)
    assert "Watching import" in ack(user, f"watch {c}")
    refused = ack(user, f"watch {a} {b} {c}")
    assert f"already watches {c}" in refused and "Nothing was started" in refused
    with engine.connect() as conn:
        assert (
            conn.execute(select(BatchRow.id).where(BatchRow.channel_id == user.channel_id)).all()
            == []
        )

    assert "as one batch" in ack(user, f"watch {a} {b}")
    parent = card(harness, user.channel_id, "Batch of 2 imports")
    answer = ack(user, f"unwatch {a} {b} 99999{n}")
    assert f"Stopped watching imports {a} and {b}" in answer
    assert f"not watching 99999{n}" in answer

    def stopped() -> Message | None:
        found = harness.emulator.message(user.channel_id, parent.ts)
        return found if found is not None and message_text(found).count("Stopped") >= 2 else None

    wait_for(stopped, WAIT, description="the card showing both stopped")
    assert replies(harness, user.channel_id, parent) == [], "stopped by hand: no summary"


def test_a_bad_token_in_a_batch_watches_nothing(
    harness: Harness, user: SlackUser, engine: Engine, n: int
) -> None:
    good = 88000 + n
    harness.sim.add_import(good, status="Queued", ValidationSuccessful=10)
    answer = ack(user, f"watch {good} 8899{n:03d}")
    assert f"Import 8899{n:03d}" in answer and "Nothing was watched" in answer
    with engine.connect() as conn:
        rows = conn.execute(
            select(SubscriptionRow.id).where(SubscriptionRow.channel_id == user.channel_id)
        ).all()
    assert rows == []
    assert "at most 20" in ack(user, "watch " + " ".join(str(t) for t in range(1, 22)))


# --------------------------------------------------------------------------- notices


def test_the_settings_notice_waits_while_slack_has_the_channel_wait(
    harness: Harness, user: SlackUser, engine: Engine
) -> None:
    channel = user.channel_id
    harness.emulator.inject_error(
        "chat.postMessage", "ratelimited", channel=channel, times=1, retry_after=3
    )
    set_(user, "broadcast", "all")

    def waits() -> list[object]:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    select(ChannelWaitRow.not_before).where(ChannelWaitRow.channel_id == channel)
                ).scalars()
            )

    assert wait_for(waits, WAIT, description="the channel's recorded wait")
    notice = harness.emulator.wait_for_message(channel, "changed this channel's", timeout=WAIT)
    posts = harness.emulator.calls("chat.postMessage")
    ours = [p for p in posts if p.params.get("channel") == channel]
    assert [p.ok for p in ours] == [False, True]
    assert ours[1].at - ours[0].at >= 2.9, "not before Slack's Retry-After"
    assert "`finish` → `all`" in message_text(notice)


def test_a_batch_survives_a_crash_and_two_replicas_post_each_message_once(
    harness: Harness, bot: BotProcess, user: SlackUser, n: int
) -> None:
    a, b = 89000 + n * 10, 89001 + n * 10
    channel = user.channel_id
    harness.sim.add_import(a, name="West", status="Processing", ValidationSuccessful=10)
    harness.sim.add_import(b, name="Down", status="Processing", ValidationSuccessful=10)
    assert "as one batch" in ack(user, f"watch {a} {b}")
    parent = card(harness, channel, "Batch of 2 imports")
    bot.kill()  # SIGKILL: no goodbye
    harness.restart(bot)
    second = harness.start_bot(LOOKUP_RATE_LIMIT=1000)  # and another replica, same database
    try:
        harness.sim.update(a, Status="Completed", Processed=10)
        harness.sim.update(b, Status="Failed")
        reply_with(harness, channel, parent, "All 2 imports of this batch have ended")
        time.sleep(2)  # room for a duplicate to show: many ticks of both replicas
        texts = [message_text(m) for m in replies(harness, channel, parent)]
        assert len(texts) == 3, texts  # two ends and the summary, each once
        cards = [m for m in harness.emulator.messages(channel) if m.thread_ts is None]
        assert len([m for m in cards if "Batch of 2 imports" in message_text(m)]) == 1
    finally:
        second.terminate()

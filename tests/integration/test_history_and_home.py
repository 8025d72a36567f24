"""Looking back and around, over real HTTP: `history [N]` and the App Home tab.

One real bot serves the module; each test has channels, people and tokens of
its own (the workspace is shared: the bot has one token, for one workspace).
Waits are generous upper bounds (``wait_for`` returns as soon as the thing is
there): on a loaded machine these tests slow down rather than fail.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient
from sqlalchemy import Engine, select

from bot.sandbox.harness import BOT_TOKEN, SIGNING_SECRET, BotProcess, Harness
from bot.sandbox.slack_emulator import Message, SlackUser, message_text, wait_for
from bot.sandbox.slack_views import StoredView, view_problems
from bot.slack.render_reports import ACTION_HOME_REFRESH, ACTION_HOME_UNWATCH
from bot.store.engine import make_engine
from bot.store.tables import ImportRow, SubscriptionRow

_numbers = itertools.count(1)
WAIT = 20.0  # seconds: an upper bound for "it shows up", never a pause


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(Path(tmp_path_factory.mktemp("history")) / "harness", preloaded=True) as h:
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    return harness.start_bot(LOOKUP_RATE_LIMIT=1000)


@pytest.fixture(scope="module", autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()


@pytest.fixture
def n() -> int:
    return next(_numbers)


def person(harness: Harness, bot: BotProcess, team: str, channel: str, user: str) -> SlackUser:
    """Someone in ``channel`` of workspace ``team``, where the bot was invited."""
    harness.emulator.invite_bot(channel)
    return SlackUser(
        bot.events_url, SIGNING_SECRET, harness.emulator, team, channel_id=channel, user_id=user
    )


def ack(user: SlackUser, text: str) -> str:
    result = user.command(text)
    assert result.status_code == 200 and result.error is None, result
    body = message_text(result.ack_body)
    if "Looking up" in body or "Checking import" in body or "Stopping the watch" in body:
        body = message_text(user.wait_response(result, timeout=WAIT))
    return body


def watch(harness: Harness, user: SlackUser, token: int) -> Message:
    assert f"Watching import {token}" in ack(user, f"watch {token}")

    def card() -> Message | None:
        return next(
            (
                m
                for m in harness.emulator.messages(user.channel_id)
                if m.thread_ts is None and f"import {token}" in message_text(m)
            ),
            None,
        )

    return wait_for(card, WAIT, description=f"the card of {token}")


_engines: dict[str, Engine] = {}


def _engine(harness: Harness) -> Engine:
    """One engine per database for the module (not one per look)."""
    if harness.database_url not in _engines:
        _engines[harness.database_url] = make_engine(harness.database_url)
    return _engines[harness.database_url]


def ended(harness: Harness, channel: str, token_count: int) -> bool:
    with _engine(harness).connect() as conn:
        states = conn.execute(
            select(SubscriptionRow.state).where(SubscriptionRow.channel_id == channel)
        ).scalars()
        return sum(1 for s in states if s == "ended") >= token_count


def polled(harness: Harness, token: int, processed: int) -> bool:
    """The bot has polled ``token`` and saved a status with ``processed`` records."""
    with _engine(harness).connect() as conn:
        snapshot = conn.execute(
            select(ImportRow.snapshot).where(ImportRow.access_token == token)
        ).scalar()
    return bool(snapshot) and snapshot.get("processed") == processed


def permalink(harness: Harness, card: Message) -> str:
    client = WebClient(token=BOT_TOKEN, base_url=harness.emulator.api_url())
    return str(client.chat_getPermalink(channel=card.channel, message_ts=card.ts)["permalink"])


def home_text(view: StoredView) -> str:
    return message_text({"blocks": view.view["blocks"]})


# --------------------------------------------------------------------------- history


def test_history_lists_finished_watches_with_outcome_counts_time_and_thread_links(
    harness: Harness, bot: BotProcess, n: int
) -> None:
    sim = harness.sim
    done, failed, stopped = 71000 + n * 10, 71001 + n * 10, 71002 + n * 10
    channel = f"CH{n:04d}"
    sim.add_import(done, name="Autumn <list>", status="Processing", ValidationSuccessful=1000)
    sim.add_import(failed, name="Winter list", status="Queued", ValidationSuccessful=50)
    sim.add_import(stopped, name="Spring list", status="Staging")
    with person(harness, bot, "T0001", channel, f"UH{n:03d}") as user:
        assert "no finished watches" in ack(user, "history")
        cards = {token: watch(harness, user, token) for token in (done, failed, stopped)}
        sim.update(
            done, Status="Completed", Processed=990, Exceptions=7, NotHonored=3, ValidationFailed=4
        )
        sim.update(failed, Status="Failed", ValidationFailed=50)
        wait_for(lambda: ended(harness, channel, 2), WAIT, description="two finished watches")
        assert "Stopped watching" in ack(user, f"unwatch {stopped}")
        permalinks_before = len(harness.emulator.calls("chat.getPermalink"))

        shown = ack(user, "history")
        lines = [ln for ln in shown.splitlines() if ln.startswith("•")]
        assert "The last 3 finished watches in this channel" in shown
        assert [str(stopped) in lines[0], str(failed) in lines[1], str(done) in lines[2]] == [
            True
        ] * 3, "newest first"
        assert ":white_check_mark: Completed: Autumn &lt;list&gt;" in lines[2]
        assert "990 processed, 7 exceptions, 3 not honoured, 4 failed validation" in lines[2]
        assert ":x: Failed: Winter list" in lines[1]
        assert f":no_bell: Stopped (unwatched by <@{user.user_id}>)" in lines[0]
        assert all(" · took " in line for line in lines)
        for line, token in zip(lines, (stopped, failed, done), strict=True):
            assert f"<{permalink(harness, cards[token])}|thread>" in line
        # One link asked of Slack (the others are built from the ts), plus the test's own three.
        assert len(harness.emulator.calls("chat.getPermalink")) - permalinks_before <= 1 + 3

        assert len([ln for ln in ack(user, "history 1").splitlines() if ln.startswith("•")]) == 1
        assert "at most 50" in ack(user, "history 100")
        for bad in ("history 0", "history abc", "history 1 2", "history -3"):
            assert "takes one number from 1 to 50" in ack(user, bad).replace("\u200d", "")


# --------------------------------------------------------------------------- App Home


def _home(harness: Harness, user: SlackUser, published_before: int) -> StoredView:
    def fresh() -> StoredView | None:
        view = harness.emulator.views.home(user.user_id, user.team_id)
        return view if view is not None and view.publishes > published_before else None

    return wait_for(fresh, WAIT, description=f"the Home tab of {user.user_id}")


def publishes(harness: Harness, user: SlackUser) -> int:
    view = harness.emulator.views.home(user.user_id, user.team_id)
    return view.publishes if view is not None else 0


def test_home_tab_shows_my_watches_the_workspaces_and_the_last_outcomes(
    harness: Harness, bot: BotProcess, n: int
) -> None:
    sim = harness.sim
    team = "T0001"
    mine, theirs, finished = 72000 + n * 10, 72001 + n * 10, 72002 + n * 10
    sim.add_import(
        mine, name="My import", status="Processing", ValidationSuccessful=1000, Processed=500
    )
    sim.add_import(theirs, name="Their import", status="Queued", ValidationSuccessful=10)
    sim.add_import(finished, name="Old import", status="Processing", ValidationSuccessful=10)
    me = person(harness, bot, team, f"CM{n:03d}", f"UM{n:03d}")
    them = person(harness, bot, team, f"CT{n:03d}", f"UT{n:03d}")
    with me, them:
        watch(harness, me, mine)
        watch(harness, them, theirs)
        watch(harness, me, finished)
        sim.update(finished, Status="Completed", Processed=10)
        wait_for(lambda: ended(harness, me.channel_id, 1), WAIT, description="the finished watch")

        assert me.open_home().status_code == 200
        view = _home(harness, me, 0)
        text = home_text(view)
        assert view_problems(view.view, "home") == []
        mine_part, rest = text.split("Active in this workspace", 1)
        active_part, recent_part = rest.split("Last 10 outcomes", 1)
        assert "Imports you watch (1)" in mine_part
        assert f"My import ({mine})" in mine_part and "50%" in mine_part
        assert f"<#{me.channel_id}>" in mine_part
        assert "Their import" not in mine_part
        assert f"My import ({mine})" in active_part
        assert f"Their import ({theirs})" in active_part and f"<#{them.channel_id}>" in active_part
        assert f":white_check_mark: Completed: Old import ({finished})" in recent_part
        assert "|thread>" in recent_part

        # Not redrawn on polls: only when opened or refreshed.
        sim.update(mine, Processed=600)
        wait_for(lambda: polled(harness, mine, 600), WAIT, description="the poll that saw 600")
        time.sleep(0.5)  # what a redraw on that poll would have taken, and more
        assert publishes(harness, me) == 1
        me.click_in_view(view.id, ACTION_HOME_REFRESH, "refresh")
        assert "60%" in home_text(_home(harness, me, 1))

        # Someone else's forged click on my watch changes nothing.
        button = _unwatch_button(view)
        them_home = them.open_home()
        assert them_home.status_code == 200
        their_view = _home(harness, them, 0)
        them.click_in_view(their_view.id, ACTION_HOME_UNWATCH, button["value"])
        _home(harness, them, 1)
        assert not ended(harness, me.channel_id, 2)

        # My own Stop watching works from the Home tab, which is then redrawn.
        me.click_in_view(view.id, ACTION_HOME_UNWATCH, button["value"])
        after = home_text(_home(harness, me, 2))
        assert "Imports you watch (0)" in after
        assert wait_for(lambda: ended(harness, me.channel_id, 2), WAIT, description="unwatched")
        card_thread_text = " ".join(
            message_text(m) for m in harness.emulator.messages(me.channel_id)
        )
        assert f"unwatched by <@{me.user_id}>" in card_thread_text


def _unwatch_button(view: StoredView) -> dict[str, Any]:
    for block in view.view["blocks"]:
        accessory = block.get("accessory") or {}
        if accessory.get("action_id") == ACTION_HOME_UNWATCH:
            return accessory
    raise AssertionError("no Stop watching button on the Home tab")


def test_an_outsider_sees_why_not_instead_of_imports(
    harness: Harness, tmp_path: Path, n: int
) -> None:
    gated = harness.start_bot(ALLOWED_USER_IDS="UALLOWED")
    try:
        with person(harness, gated, "T0001", "CG001", f"UG{n:03d}") as outsider:
            outsider.open_home()
            text = home_text(_home(harness, outsider, 0))
        assert "ALLOWED_USER_IDS" in text and "Imports you watch" not in text
    finally:
        gated.terminate()

"""What the integration tests read back: answers, cards, thread replies, database rows.

Plain functions over a ``Harness`` (simulator + emulator + the bots' database) and a
``SlackUser``; the fixtures that make them are in ``conftest.py`` beside this file.
Each waits for a condition with a generous timeout rather than sleeping a fixed time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, TextClause, create_engine, select, text
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Executable

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.mypreferences_simulator import Simulator
from bot.sandbox.slack_emulator import CommandResult, Message, SlackUser, message_text, wait_for
from bot.store.tables import SubscriptionRow

# How long to wait for something that should happen within a few seconds. Generous,
# because the machine may be busy (other workers, other people): a wait ends as soon
# as its condition holds, so patience costs nothing unless the test is failing anyway.
# Where a test's point is a bound on time, it asserts that bound separately.
PATIENCE = 20.0


@dataclass(frozen=True)
class Place:
    """Where one test runs: channels, a user and access tokens nobody else uses."""

    channel: str
    other_channel: str
    user_id: str
    token: int
    other_token: int


# How the bot acknowledges a command whose work takes longer than it may wait (1.5 s):
# the answer itself follows on the response_url.
PLACEHOLDERS = ("Looking up", "Checking import", "Stopping the watch")


def final_reply(
    user: SlackUser, result: CommandResult, timeout: float = PATIENCE
) -> dict[str, Any]:
    """What the user reads in the end: the acknowledgement, or the post that follows it.

    When the acknowledgement is a placeholder ("Looking up import 42…"), waits for the
    bot's post to the command's response_url and returns that instead.
    """
    assert result.status_code == 200, (result.status_code, result.ack_body)
    body = result.ack_body
    assert isinstance(body, dict), body
    if body.get("text", "").startswith(PLACEHOLDERS):
        body = user.wait_response(result, timeout=timeout)
    return body


def log_since(bot: BotProcess, offset: int) -> str:
    """The bot's log written after ``offset`` (take ``len(bot.log_text())`` before acting)."""
    return bot.log_text()[offset:]


def status_calls_since(sim: Simulator, since: float) -> int:
    """Status requests that *arrived* after ``since`` (time.monotonic()).

    ``status_calls()`` counts a request when it is answered, so a delayed request
    from an earlier test could land in a later test's count; arrival time cannot.
    """
    return sum(1 for call in sim.calls if call.at >= since and call.path.endswith("/Status"))


def wait_polls(harness: Harness, token: int, more: int, timeout: float = PATIENCE) -> None:
    """Wait until the simulator has answered ``more`` further status requests for ``token``."""
    target = harness.sim.status_calls(token) + more
    wait_for(
        lambda: harness.sim.status_calls(token) >= target,
        timeout,
        description=f"{more} more status calls for {token}",
    )


# --------------------------------------------------------------------------- Slack


def cards(harness: Harness, channel: str) -> list[Message]:
    """The channel's top-level messages (tracking cards), without broadcast replies."""
    return [m for m in harness.emulator.messages(channel) if m.thread_ts is None]


def wait_card(harness: Harness, channel: str, timeout: float = PATIENCE) -> Message:
    """Wait for the channel's tracking card; fail if there is more than one."""
    found = wait_for(lambda: cards(harness, channel), timeout, description=f"a card in {channel}")
    assert len(found) == 1, f"expected one tracking card, got {[m.text for m in found]}"
    return found[0]


def watch(harness: Harness, user: SlackUser, token: int, channel: str | None = None) -> Message:
    """Type ``watch TOKEN`` in ``channel`` (default: the user's); returns the tracking card."""
    channel = channel or user.channel_id
    result = user.command(f"watch {token}", channel_id=channel)
    assert result.ack_seconds < 3, f"ack took {result.ack_seconds:.2f} s"
    answer = message_text(final_reply(user, result))
    assert f"Watching import {token}" in answer, answer
    return wait_card(harness, channel)


def replies(harness: Harness, card: Message) -> list[Message]:
    """The replies in the card's thread, in order."""
    return harness.emulator.thread(card.channel, card.ts)


def wait_replies(
    harness: Harness,
    card: Message,
    count: int,
    timeout: float = PATIENCE,
    *,
    exactly: bool = True,
) -> list[Message]:
    """Wait until the card's thread holds ``count`` replies; fail if it holds more.

    ``exactly=False`` accepts more (a test that allows a repeat checks them itself).
    """

    def enough() -> list[Message] | None:
        thread = replies(harness, card)
        return thread if len(thread) >= count else None

    found = wait_for(
        enough, timeout, description=f"{count} replies under {card.ts} in {card.channel}"
    )
    if exactly:
        assert len(found) == count, [m.text for m in found]
    return found


def calls_to(harness: Harness, channel: str, since: float, *methods: str) -> list[Any]:
    """The bot's Web API calls of ``methods`` for ``channel`` made since ``since`` (monotonic)."""
    return [
        c
        for c in harness.emulator.requests
        if c.at >= since and c.params.get("channel") == channel and c.method in methods
    ]


# --------------------------------------------------------------------------- the database


def db_rows(harness: Harness, query: Executable | str, **params: Any) -> list[dict[str, Any]]:
    """Rows of the bots' database (SQLite or PostgreSQL), as dicts.

    ``query`` is SQL text (with ``:name`` parameters) or a SQLAlchemy select.
    """
    statement: Executable | TextClause = text(query) if isinstance(query, str) else query
    with _engine(harness.database_url).connect() as conn:
        return [dict(row) for row in conn.execute(statement, params).mappings()]


def subscriptions(harness: Harness, channel: str) -> list[dict[str, Any]]:
    """The channel's subscription rows, active and ended."""
    table = SubscriptionRow.__table__
    return db_rows(harness, select(table).where(SubscriptionRow.channel_id == channel))


@functools.cache
def _engine(url: str) -> Engine:
    # Without a pool: no connection stays open between reads (a test may lock the
    # database, PostgreSQL drops it at the end), and the engine is made once per URL.
    return create_engine(url, poolclass=NullPool)

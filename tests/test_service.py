"""``watch`` tells the truth: what became of the tracking card, and nothing kept when refused.

The service with a real store (SQLite), a fake API and a fake card delivery; the
words the person reads come from ``watch_answer``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from bot.config import Settings
from bot.domain.status import ImportStatus, Status
from bot.service import CardOutcome, CardResult, ImportService, WatchOutcome, WatchResult
from bot.slack.errors import INVITE_HINT, SLACK_ERRORS
from bot.slack.listeners.commands import watch_answer
from bot.store import Store
from bot.store.engine import make_engine
from bot.store.tables import ImportRow, SubscriptionRow

STATUS = ImportStatus(
    access_token=777,
    status=Status.PROCESSING,
    name="Spring",
    validation_successful=10,
    processed=1,
    expires=datetime.now(UTC) + timedelta(days=1),
)


class FakeApi:
    async def get_status(self, access_token: int, **_: Any) -> ImportStatus:
        return STATUS


class FakeCards:
    owner = "replica-1"
    lease_seconds = 10.0

    def __init__(self, result: CardResult) -> None:
        self.result = result
        self.delivered: list[int] = []

    async def deliver_new(self, subscription_id: int) -> CardResult:
        self.delivered.append(subscription_id)
        return self.result

    async def deliver_now(self, subscription_id: int) -> CardResult:
        return CardResult(CardOutcome.POSTED)


@pytest.fixture
def engine(migrated_sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_sqlite_url)
    yield engine
    engine.dispose()


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


async def watch(engine: Engine, card: CardResult) -> tuple[WatchOutcome, FakeCards]:
    cards = FakeCards(card)
    service = ImportService(Settings(), Store(engine).subscriptions, FakeApi(), cards)  # type: ignore[arg-type]
    outcome = await service.watch(team_id="T1", channel_id="C1", user_id="U1", access_token=777)
    return outcome, cards


async def test_a_posted_card_is_said_and_the_watch_kept(engine: Engine) -> None:
    outcome, cards = await watch(engine, CardResult(CardOutcome.POSTED))
    assert outcome.result is WatchResult.STARTED and len(cards.delivered) == 1
    assert "its tracking card is posted" in watch_answer(777, outcome)
    assert count(engine, SubscriptionRow) == 1


async def test_the_new_subscription_is_leased_to_the_card_poster(engine: Engine) -> None:
    await watch(engine, CardResult(CardOutcome.POSTED))
    with engine.connect() as conn:
        owner = conn.execute(select(SubscriptionRow.lease_owner)).scalar_one()
    assert owner == FakeCards.owner, "no other delivery can post this card meanwhile"


@pytest.mark.parametrize(
    ("error", "words"),
    [("ratelimited", "Slack asked me to slow down"), ("internal_error", "(internal_error)")],
)
async def test_a_delayed_card_is_said_to_follow_and_the_watch_kept(
    engine: Engine, error: str, words: str
) -> None:
    outcome, _ = await watch(engine, CardResult(CardOutcome.LATER, error))
    answer = watch_answer(777, outcome)
    assert answer.startswith("Watching import 777") and words in answer
    assert "will appear shortly" in answer
    assert count(engine, SubscriptionRow) == 1


@pytest.mark.parametrize("error", ["not_in_channel", "channel_not_found"])
async def test_where_the_bot_cannot_post_it_says_how_to_invite_it_and_keeps_nothing(
    engine: Engine, error: str
) -> None:
    refused = CardResult(CardOutcome.REFUSED, error, SLACK_ERRORS[error].hint)
    outcome, _ = await watch(engine, refused)
    assert outcome.result is WatchResult.REFUSED
    assert watch_answer(777, outcome) == INVITE_HINT
    assert INVITE_HINT == (
        "I can't post in this channel. Invite me with `/invite @import-status` and try again."
    )
    assert count(engine, SubscriptionRow) == 0 and count(engine, ImportRow) == 0


async def test_a_policy_refusal_says_what_to_do_and_keeps_nothing(engine: Engine) -> None:
    hint = SLACK_ERRORS["restricted_action_read_only_channel"].hint
    outcome, _ = await watch(
        engine, CardResult(CardOutcome.REFUSED, "restricted_action_read_only_channel", hint)
    )
    answer = watch_answer(777, outcome)
    assert answer.startswith("I can't watch import 777 here.") and "read-only" in answer
    assert count(engine, SubscriptionRow) == 0


async def test_a_refusal_nobody_can_fix_names_slacks_error(engine: Engine) -> None:
    outcome, _ = await watch(engine, CardResult(CardOutcome.REFUSED, "invalid_blocks"))
    answer = watch_answer(777, outcome)
    assert "Slack refused its tracking card (invalid_blocks)" in answer
    assert "Nothing was saved" in answer
    assert count(engine, SubscriptionRow) == 0


async def test_forgetting_keeps_an_import_another_channel_still_watches(engine: Engine) -> None:
    store = Store(engine)
    store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C2",
        client_id="",
        status=STATUS,
        user_id="U2",
        now=datetime.now(UTC),
        next_poll_at=datetime.now(UTC),
    )
    await watch(engine, CardResult(CardOutcome.REFUSED, "not_in_channel", INVITE_HINT))
    assert count(engine, SubscriptionRow) == 1 and count(engine, ImportRow) == 1

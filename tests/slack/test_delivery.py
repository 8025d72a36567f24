"""Delivery, with a fake clock and a fake Slack client: no processes, no sleeps.

The outbox is the real one, on a SQLite file, so the waits, backoffs and leases
are the SQL that production runs. Time moves only when a test moves it:
``run_for`` delivers every quarter of a (fake) second, as the loop would, and
jumps over the passes in which nothing can come due.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.slack_response import SlackResponse
from sqlalchemy import Engine, select, update

from bot.domain.events import Event, EventKind
from bot.domain.status import ImportStatus, Status
from bot.service import CardOutcome
from bot.slack.calls import MAX_ATTEMPTS, MAX_RATE_LIMITED_ATTEMPTS
from bot.slack.delivery import MAX_LEASE_SECONDS, Delivery
from bot.slack.errors import (
    INVITE_HINT,
    MAX_RETRY_AFTER_SECONDS,
    SLACK_ERRORS,
    Fate,
    classify,
    retry_after_seconds,
)
from bot.store import Store
from bot.store.engine import make_engine
from bot.store.records import PENDING
from bot.store.tables import ChannelWaitRow, NotificationRow, SubscriptionRow
from tests.slack import fake_time

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TEAM = "T1"
STEP = 0.25  # how often the loop looks for work (TICK_SECONDS in the harness)


# --------------------------------------------------------------------------- fakes


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def elapsed(self) -> float:
        return (self.now - T0).total_seconds()


@dataclass
class Call:
    at: float  # fake seconds since T0
    method: str
    args: dict[str, Any]
    ok: bool = True

    @property
    def channel(self) -> str:
        return str(self.args.get("channel", ""))


@dataclass
class Rule:
    method: str
    channel: str | None
    error: str | None
    status: int
    retry_after: str | None
    times: int | None
    exception: BaseException | None = None


@dataclass
class FakeSlack:
    """Answers like AsyncWebClient: a dict on success, SlackApiError on failure."""

    clock: FakeClock
    calls: list[Call] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    block: asyncio.Event | None = None  # set: calls wait for it (a slow Slack)
    _ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fail(
        self,
        method: str,
        error: str | None = None,
        *,
        channel: str | None = None,
        status: int = 200,
        retry_after: str | None = None,
        times: int | None = None,
        exception: BaseException | None = None,
    ) -> None:
        self.rules.append(Rule(method, channel, error, status, retry_after, times, exception))

    def heal(self) -> None:
        self.rules.clear()

    def of(self, method: str, channel: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and channel in (None, c.channel)]

    async def _answer(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        call = Call(self.clock.elapsed(), method, args)
        self.calls.append(call)
        if self.block is not None:
            await self.block.wait()
        for rule in self.rules:
            if rule.method == method and rule.channel in (None, args.get("channel")):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.rules.remove(rule)
                call.ok = False
                if rule.exception is not None:
                    raise rule.exception
                headers = {"Retry-After": rule.retry_after} if rule.retry_after else {}
                response = SlackResponse(
                    client=None,
                    http_verb="POST",
                    api_url=f"https://slack.com/api/{method}",
                    req_args={},
                    data={"ok": False, "error": rule.error} if rule.error else {},
                    headers=headers,
                    status_code=rule.status,
                )
                raise SlackApiError(f"{method} failed", response)
        if method == "conversations.open":
            return {"ok": True, "channel": {"id": "D" + str(args["users"])}}
        ts = f"1790000000.{next(self._ts):06d}"
        return {"ok": True, "channel": args.get("channel"), "ts": ts}

    async def chat_postMessage(self, **args: Any) -> dict[str, Any]:
        return await self._answer("chat.postMessage", args)

    async def chat_update(self, **args: Any) -> dict[str, Any]:
        return await self._answer("chat.update", args)

    async def chat_postEphemeral(self, **args: Any) -> dict[str, Any]:
        return await self._answer("chat.postEphemeral", args)

    async def conversations_open(self, **args: Any) -> dict[str, Any]:
        return await self._answer("conversations.open", args)


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    engine: Engine
    store: Store
    clock: FakeClock
    slack: FakeSlack
    delivery: Delivery

    def other_replica(self, owner: str = "B") -> Delivery:
        return Delivery(
            self.store.outbox,
            self.slack,  # type: ignore[arg-type]
            owner,
            lease_seconds=self.delivery.lease_seconds,
            clock=self.clock,
        )


@pytest.fixture
def world(migrated_sqlite_url: str) -> Iterator[World]:
    engine = make_engine(migrated_sqlite_url)
    clock = FakeClock()
    slack = FakeSlack(clock)
    store = Store(engine)
    delivery = Delivery(
        store.outbox,
        slack,  # type: ignore[arg-type]
        "A",
        lease_seconds=10,
        clock=clock,
    )
    yield World(engine, store, clock, slack, delivery)
    engine.dispose()


_tokens = itertools.count(1001)


def status(value: Status = Status.PROCESSING, token: int | None = None) -> ImportStatus:
    return ImportStatus(
        access_token=token or next(_tokens),
        status=value,
        name="Spring newsletter",
        validation_successful=1000,
        processed=100,
        expires=T0 + timedelta(days=2),
    )


def watch(w: World, channel: str = "C1", *, posted: bool = True) -> int:
    """A subscription in ``channel``; its card already posted unless ``posted`` is False."""
    subscription_id = w.store.subscriptions.subscribe(
        team_id=TEAM,
        channel_id=channel,
        client_id="ACME",
        status=status(),
        user_id="U1",
        now=w.clock(),
        next_poll_at=w.clock() + timedelta(hours=1),
    ).subscription_id
    if posted:
        w.store.outbox.set_tracking_message(subscription_id, f"1700000000.{subscription_id:06d}", 1)
    return subscription_id


def add_events(w: World, subscription_id: int, *statuses: Status) -> None:
    """Transitions to each of ``statuses``, queued for the channel in that order."""
    with w.engine.begin() as conn:
        for n, new in enumerate(statuses, 1):
            event = Event(EventKind.TRANSITION, f"transition:{n}:{new.value}", None, new)
            conn.execute(
                NotificationRow.__table__.insert().values(
                    subscription_id=subscription_id,
                    team_id=TEAM,
                    event_key=event.key,
                    kind=event.kind.value,
                    event=event.to_json(),
                    snapshot=None,
                    created_at=w.clock(),
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=w.clock(),
                )
            )


def want_card_edit(w: World, subscription_id: int) -> None:
    with w.engine.begin() as conn:
        conn.execute(
            update(SubscriptionRow)
            .where(SubscriptionRow.id == subscription_id)
            .values(card_wanted=SubscriptionRow.card_wanted + 1)
        )


def subscription(w: World, subscription_id: int) -> dict[str, Any]:
    with w.engine.connect() as conn:
        row = conn.execute(
            select(SubscriptionRow.__table__).where(SubscriptionRow.id == subscription_id)
        ).one()
    return dict(row._mapping)


def notification_states(w: World, subscription_id: int) -> list[str]:
    with w.engine.connect() as conn:
        return list(
            conn.execute(
                select(NotificationRow.state)
                .where(NotificationRow.subscription_id == subscription_id)
                .order_by(NotificationRow.id)
            ).scalars()
        )


def replies(w: World, channel: str) -> list[str]:
    """The texts of the thread replies Slack accepted in ``channel``, in order."""
    return [
        c.args["text"]
        for c in w.slack.of("chat.postMessage", channel)
        if "thread_ts" in c.args and c.ok
    ]


async def run_for(
    w: World, seconds: float, delivery: Delivery | None = None, step: float = STEP
) -> None:
    """Deliver every ``step`` fake seconds for ``seconds``, as the loop would.

    Passes that could find nothing due are skipped (``fake_time.advance``).
    """
    delivery = delivery or w.delivery
    end = w.clock.now + timedelta(seconds=seconds)
    while w.clock.now < end:
        calls = len(w.slack.calls)
        await delivery.deliver_due()
        idle = len(w.slack.calls) == calls
        fake_time.advance(w.clock, step, end, idle=idle, engine=w.engine, senders=[delivery])


# --------------------------------------------------------------------------- the happy path


async def test_the_card_is_posted_then_each_event_replies_in_its_thread_in_order(
    world: World,
) -> None:
    sid = watch(world, posted=False)
    add_events(world, sid, Status.QUEUED, Status.PROCESSING, Status.COMPLETED)

    assert await world.delivery.deliver_due() == 1

    card, *thread = world.slack.of("chat.postMessage")
    assert "thread_ts" not in card.args
    assert [c.args["thread_ts"] for c in thread] == [subscription(world, sid)["tracking_ts"]] * 3
    texts = [c.args["text"] for c in thread]
    assert ["Queued" in texts[0], "Processing" in texts[1], "Completed" in texts[2]] == [True] * 3
    assert [c.args["reply_broadcast"] for c in thread] == [False, False, True]
    assert notification_states(world, sid) == ["sent", "sent", "sent"]


async def test_messages_turn_off_unfurling_and_parsing_where_slack_accepts_it(
    world: World,
) -> None:
    sid = watch(world, posted=False)
    add_events(world, sid, Status.QUEUED)
    await world.delivery.deliver_due()
    want_card_edit(world, sid)
    await world.delivery.deliver_due()

    for post in world.slack.of("chat.postMessage"):
        assert post.args["unfurl_links"] is False and post.args["unfurl_media"] is False
        assert post.args["parse"] == "none"
    (edit,) = world.slack.of("chat.update")
    assert edit.args["parse"] == "none"
    assert "unfurl_links" not in edit.args  # chat.update does not take it


# --------------------------------------------------------------------------- rate limits


async def test_a_rate_limited_channel_waits_out_retry_after_while_other_channels_go_on(
    world: World,
) -> None:
    limited, fine = watch(world, "C1"), watch(world, "C2")
    add_events(world, limited, Status.QUEUED)
    world.slack.fail("chat.postMessage", "ratelimited", channel="C1", status=429, retry_after="30")
    await world.delivery.deliver_due()
    add_events(world, fine, Status.QUEUED, Status.PROCESSING)

    await run_for(world, 29)
    # The other channel was served at once; the limited one was not called again.
    assert len(replies(world, "C2")) == 2
    c2_times = [c.at for c in world.slack.of("chat.postMessage", "C2")]
    assert max(c2_times) <= STEP
    assert len(world.slack.of("chat.postMessage", "C1")) == 1
    with world.engine.connect() as conn:
        (wait,) = conn.execute(select(ChannelWaitRow.__table__)).mappings()
    assert (wait["team_id"], wait["channel_id"]) == (TEAM, "C1")

    world.slack.heal()
    await run_for(world, 1.5)
    retried = world.slack.of("chat.postMessage", "C1")[1]
    assert 30 <= retried.at <= 30 + STEP, "retried when Retry-After said, not before"
    assert notification_states(world, limited) == ["sent"]


async def test_a_wait_holds_back_cards_and_replies_alike(world: World) -> None:
    first, second = watch(world, "C1"), watch(world, "C1", posted=False)
    add_events(world, first, Status.QUEUED)
    world.slack.fail("chat.postMessage", "ratelimited", channel="C1", status=429, retry_after="5")
    await world.delivery.deliver_due()
    world.slack.heal()
    calls = len(world.slack.calls)

    await run_for(world, 4.5)
    assert len(world.slack.calls) == calls, "neither the new card nor the reply went early"
    await run_for(world, 1)
    assert subscription(world, second)["tracking_ts"] is not None
    assert notification_states(world, first) == ["sent"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("1e12", MAX_RETRY_AFTER_SECONDS),
        ("inf", MAX_RETRY_AFTER_SECONDS),
        ("-5", 1.0),
        ("nan", 1.0),
        ("soon", 1.0),
        (None, 1.0),
        ("30", 30.0),
    ],
)
async def test_retry_after_is_clamped_to_a_sane_range_and_never_raises(
    world: World, header: str | None, expected: float
) -> None:
    assert retry_after_seconds(header) == expected
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", "ratelimited", status=429, retry_after=header, times=1)
    await world.delivery.deliver_due()  # 1e12 used to raise OverflowError here

    with world.engine.connect() as conn:
        not_before = conn.execute(select(ChannelWaitRow.not_before)).scalar_one()
    assert (not_before - T0).total_seconds() == expected


async def test_retry_after_30_on_chat_update_gives_at_most_2_calls_in_10_s(
    world: World,
) -> None:
    sid = watch(world)
    want_card_edit(world, sid)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.update", "ratelimited", status=429, retry_after="30")

    await run_for(world, 10)
    assert len(world.slack.of("chat.update")) <= 2
    # chat.update's limit is not chat.postMessage's: the reply went at once.
    assert notification_states(world, sid) == ["sent"]
    assert world.slack.of("chat.postMessage")[0].at == 0
    world.slack.heal()
    await run_for(world, 21)
    assert [c.method for c in world.slack.calls] == [
        "chat.update",
        "chat.postMessage",
        "chat.update",
    ]
    assert world.slack.calls[2].at == 30, "the edit came back when Retry-After said"
    assert subscription(world, sid)["card_done"] == 2


async def test_a_card_edit_limited_in_one_channel_holds_back_no_other_channel(
    world: World,
) -> None:
    # Nor its own channel's messages: chat.update's limit is not chat.postMessage's.
    subs = [watch(world, f"C{n}") for n in range(3)]
    for sid in subs:
        want_card_edit(world, sid)
        add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.update", "ratelimited", channel="C0", status=429, retry_after="20")

    await world.delivery.deliver_due()
    assert [subscription(world, sid)["card_done"] for sid in subs] == [1, 2, 2]
    assert [notification_states(world, sid) for sid in subs] == [["sent"]] * 3
    world.slack.heal()
    await run_for(world, 19.5)
    assert len(world.slack.of("chat.update", "C0")) == 1, "Retry-After honoured"
    await run_for(world, 1)
    assert subscription(world, subs[0])["card_done"] == 2


# --------------------------------------------------------------------------- transient errors


async def test_card_edits_back_off_exponentially_and_are_given_up_after_the_limit(
    world: World,
) -> None:
    sid = watch(world)
    want_card_edit(world, sid)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.update", "internal_error", status=500)

    await run_for(world, 600, step=1)
    times = [c.at for c in world.slack.of("chat.update")]
    assert len(times) == MAX_ATTEMPTS, "tried a bounded number of times"
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps) and gaps[0] >= 2 and gaps[-1] >= 2 * gaps[-2] - 1, gaps
    row = subscription(world, sid)
    assert row["card_done"] == row["card_wanted"] and row["state"] == "active"
    assert notification_states(world, sid) == ["sent"], "a failing edit held back no reply"


@pytest.mark.parametrize(
    "exception",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("truncated"),
        aiohttp.ClientConnectionError("reset"),
        TimeoutError(),
        ConnectionResetError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_network_errors_are_transient(world: World, exception: BaseException) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", exception=exception, times=1)

    await world.delivery.deliver_due()
    assert notification_states(world, sid) == ["pending"]
    await run_for(world, 2.5)  # the first backoff is 2 s
    assert notification_states(world, sid) == ["sent"]


async def test_a_reply_is_given_up_after_the_attempt_limit_and_the_next_one_goes(
    world: World,
) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", "service_unavailable", times=MAX_ATTEMPTS)

    await run_for(world, 1200, step=5)
    assert len(world.slack.of("chat.postMessage")) == MAX_ATTEMPTS
    assert notification_states(world, sid) == ["dropped"]
    with world.engine.begin() as conn:
        conn.execute(update(NotificationRow).values(event_key="done"))  # free the key
    add_events(world, sid, Status.PROCESSING)
    await run_for(world, 1)
    assert notification_states(world, sid) == ["dropped", "sent"]


async def test_a_busy_channel_rate_limits_a_reply_many_times_without_losing_it(
    world: World,
) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", "ratelimited", status=429, retry_after="1", times=20)

    await run_for(world, 30, step=0.5)
    assert len(world.slack.of("chat.postMessage")) == 21
    assert notification_states(world, sid) == ["sent"], "contention is not the message's fault"


async def test_even_a_rate_limited_reply_is_given_up_in_the_end(world: World) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", "ratelimited", status=429, retry_after="5")

    await run_for(world, 5 * MAX_RATE_LIMITED_ATTEMPTS + 10, step=5)
    assert len(world.slack.of("chat.postMessage")) == MAX_RATE_LIMITED_ATTEMPTS
    assert notification_states(world, sid) == ["dropped"]


async def test_the_thread_keeps_its_order_when_a_reply_must_wait(world: World) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED, Status.PROCESSING, Status.COMPLETED)
    world.slack.fail("chat.postMessage", "internal_error", times=1)

    await world.delivery.deliver_due()
    assert notification_states(world, sid) == ["pending"] * 3
    assert len(world.slack.of("chat.postMessage")) == 1, "nothing overtook the first reply"
    await run_for(world, 3)
    texts = [c.args["text"] for c in world.slack.of("chat.postMessage")[1:]]
    assert ["Queued" in texts[0], "Processing" in texts[1], "Completed" in texts[2]] == [True] * 3


async def test_an_unknown_error_is_retried_with_backoff_not_for_ever(world: World) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", "brand_new_error_code")

    await run_for(world, 1200, step=5)
    assert len(world.slack.of("chat.postMessage")) == MAX_ATTEMPTS
    assert notification_states(world, sid) == ["dropped"]


# --------------------------------------------------------------------------- permanent errors

PERMANENT_CARD_ERRORS = [
    code
    for code, error in SLACK_ERRORS.items()
    if error.fate.permanent and code not in ("unknown_method",)
]


async def test_each_permanent_card_error_makes_at_most_3_calls_in_30_s_and_ends_the_watch(
    world: World,
) -> None:
    # Every permanent code at once, each in two channels of its own: the card's first
    # post fails in one, an edit of the posted card in the other.
    cases: dict[str, tuple[int, int]] = {}
    for n, code in enumerate(PERMANENT_CARD_ERRORS):
        posting, editing = watch(world, f"CP{n}", posted=False), watch(world, f"CE{n}")
        want_card_edit(world, editing)
        world.slack.fail("chat.postMessage", code, channel=f"CP{n}")
        world.slack.fail("chat.update", code, channel=f"CE{n}")
        cases[code] = (posting, editing)

    await run_for(world, 30)
    for n, (code, subscriptions) in enumerate(cases.items()):
        for sid, channel in zip(subscriptions, (f"CP{n}", f"CE{n}"), strict=True):
            tried = [
                c
                for c in world.slack.calls
                if c.channel == channel and c.method in ("chat.postMessage", "chat.update")
            ]
            assert len(tried) <= 3, (code, [(c.at, c.method) for c in tried])
            row = subscription(world, sid)
            assert (row["state"], row["ended_reason"]) == ("ended", f"Slack: {code}"), code


async def test_a_card_edit_that_ends_the_watch_sends_no_reply_after_it(world: World) -> None:
    sid = watch(world)
    want_card_edit(world, sid)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.update", "restricted_action")

    await run_for(world, 5)
    assert subscription(world, sid)["state"] == "ended"
    assert [c for c in world.slack.of("chat.postMessage") if "thread_ts" in c.args] == []
    assert notification_states(world, sid) == ["dropped"]


async def test_a_reply_slack_will_never_accept_is_dropped_and_the_next_goes(world: World) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED, Status.PROCESSING)
    world.slack.fail("chat.postMessage", "invalid_blocks", times=1)

    await world.delivery.deliver_due()
    assert notification_states(world, sid) == ["dropped", "sent"]
    assert subscription(world, sid)["state"] == "active"


@pytest.mark.parametrize("code", ["is_inactive", "not_in_channel", "channel_not_found"])
async def test_a_lost_channel_ends_the_watch_and_the_subscriber_hears_of_it_by_dm(
    world: World, code: str
) -> None:
    sid = watch(world)
    want_card_edit(world, sid)
    world.slack.fail("chat.update", code)

    await run_for(world, 5)
    row = subscription(world, sid)
    assert (row["state"], row["ended_reason"]) == ("ended", f"Slack: {code}")
    # Not in the lost channel: in a direct message, tried once.
    (opened,) = world.slack.of("conversations.open")
    assert opened.args["users"] == "U1"
    (dm,) = world.slack.of("chat.postMessage", "DU1")
    assert "in <#C1>" in dm.args["text"]
    assert INVITE_HINT in dm.args["text"] or "archived" in dm.args["text"]
    assert world.slack.of("chat.postEphemeral") == []


async def test_a_forbidding_policy_is_explained_to_the_subscriber_in_the_channel_once(
    world: World,
) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", "restricted_action_read_only_channel", channel="C1")

    await run_for(world, 10)
    (told,) = world.slack.of("chat.postEphemeral")
    assert told.args["user"] == "U1" and "read-only" in told.args["text"]
    assert world.slack.of("conversations.open") == []
    assert notification_states(world, sid) == ["dropped"]


async def test_a_revoked_token_ends_the_watch_without_trying_to_speak(world: World) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.postMessage", "token_revoked")

    await run_for(world, 5)
    assert subscription(world, sid)["state"] == "ended"
    assert len(world.slack.calls) == 1


async def test_a_deleted_card_is_posted_again_and_the_thread_moves_to_it(world: World) -> None:
    sid = watch(world)
    old_ts = subscription(world, sid)["tracking_ts"]
    want_card_edit(world, sid)
    add_events(world, sid, Status.QUEUED)
    world.slack.fail("chat.update", "message_not_found", times=1)

    await world.delivery.deliver_due()
    new_ts = subscription(world, sid)["tracking_ts"]
    assert new_ts != old_ts
    (reply,) = [c for c in world.slack.of("chat.postMessage") if "thread_ts" in c.args]
    assert reply.args["thread_ts"] == new_ts


# --------------------------------------------------------------------------- the watch command


async def test_a_new_card_slack_refuses_is_returned_to_the_watch_command_not_acted_on(
    world: World,
) -> None:
    sid = watch(world, posted=False)
    world.store.outbox.claim_subscription(sid, "A", world.clock(), 10)
    world.slack.fail("chat.postMessage", "not_in_channel")

    result = await world.delivery.deliver_new(sid)
    assert (result.outcome, result.error, result.hint) == (
        CardOutcome.REFUSED,
        "not_in_channel",
        INVITE_HINT,
    )
    row = subscription(world, sid)
    assert row["state"] == "active", "the watch command forgets it; delivery does not end it"
    assert row["lease_owner"] == "A", "kept leased so no delivery picks it up meanwhile"
    assert world.slack.of("conversations.open") == [], "the command's answer tells the user"


async def test_a_new_card_slack_rate_limits_is_posted_later(world: World) -> None:
    sid = watch(world, posted=False)
    world.store.outbox.claim_subscription(sid, "A", world.clock(), 10)
    world.slack.fail("chat.postMessage", "ratelimited", status=429, retry_after="3", times=1)

    result = await world.delivery.deliver_new(sid)
    assert result.outcome is CardOutcome.LATER
    await run_for(world, 2.5)
    assert subscription(world, sid)["tracking_ts"] is None
    await run_for(world, 1)
    assert subscription(world, sid)["tracking_ts"] is not None


# --------------------------------------------------------------------------- leases


async def test_a_delivery_lease_is_short_and_renewed_while_slack_is_still_answering(
    migrated_sqlite_url: str,
) -> None:
    engine = make_engine(migrated_sqlite_url)
    clock = FakeClock()
    slack = FakeSlack(clock, block=asyncio.Event())
    store = Store(engine)
    lease_ends: list[float] = []

    async def slow_time(seconds: float) -> None:
        # Each renewal period passes while Slack has still not answered.
        clock.advance(seconds)
        await asyncio.sleep(0)
        until = subscription(World(engine, store, clock, slack, delivery), sid)["lease_until"]
        lease_ends.append((until - clock.now).total_seconds())
        if len(lease_ends) >= 12:
            assert slack.block is not None
            slack.block.set()

    delivery = Delivery(
        store.outbox,
        slack,  # type: ignore[arg-type]
        "A",
        lease_seconds=600,
        clock=clock,
        sleep=slow_time,
    )
    assert delivery.lease_seconds == MAX_LEASE_SECONDS, "never longer than it needs"
    w = World(engine, store, clock, slack, delivery)
    sid = watch(w)
    add_events(w, sid, Status.QUEUED)

    await delivery.deliver_due()
    assert clock.elapsed() >= 4 * MAX_LEASE_SECONDS, "the call outlived several leases"
    assert min(lease_ends) > 0, "the lease never ran out under its holder"
    assert notification_states(w, sid) == ["sent"]
    assert subscription(w, sid)["lease_owner"] is None, "given back when done"
    engine.dispose()


async def test_a_dead_replicas_subscription_is_taken_over_once_its_lease_ends(
    world: World,
) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED)
    # Replica A leased it and died before sending anything.
    assert world.store.outbox.claim_deliveries("A", world.clock(), 10, 10) == [sid]
    survivor = world.other_replica()

    await run_for(world, 9.5, survivor)
    assert world.slack.calls == []
    await run_for(world, 1, survivor)
    assert notification_states(world, sid) == ["sent"]


async def test_a_replica_that_lost_its_lease_stops_sending(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED, Status.PROCESSING)
    world.slack.block = asyncio.Event()  # the first reply hangs

    async def long_pause(seconds: float) -> None:
        while not world.slack.calls:  # the first reply is on its way...
            await asyncio.sleep(0.01)
        # ...when another replica takes the subscription over (as after a long pause).
        world.clock.advance(seconds)
        with world.engine.begin() as conn:
            conn.execute(update(SubscriptionRow).values(lease_owner="B"))
        await asyncio.sleep(0)

    world.delivery.sleep = long_pause
    await world.delivery.deliver_due()

    assert len(world.slack.of("chat.postMessage")) == 1, "nothing more was sent"
    assert notification_states(world, sid) == ["pending", "pending"]
    assert "lost a delivery lease while sending" in caplog.text


async def test_a_holder_whose_lease_lapsed_checks_before_sending_again(world: World) -> None:
    sid = watch(world)
    add_events(world, sid, Status.QUEUED, Status.PROCESSING)
    world.slack.block = asyncio.Event()  # the first reply takes a long time
    delivering = asyncio.ensure_future(world.delivery.deliver_due())

    async def first_reply_sent() -> None:
        while not world.slack.of("chat.postMessage"):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(first_reply_sent(), timeout=30)  # held by the slow Slack
    # Long after the lease ended (the heartbeat did not run: a frozen process),
    # another replica took the subscription over.
    world.clock.advance(60)
    with world.engine.begin() as conn:
        conn.execute(update(SubscriptionRow).values(lease_owner="B"))
    world.slack.block.set()
    await delivering

    assert len(world.slack.of("chat.postMessage")) == 1, "the second reply is B's to send"
    assert notification_states(world, sid) == ["sent", "pending"]


# --------------------------------------------------------------------------- the table


def test_every_slack_error_in_the_table_has_a_fate() -> None:
    assert len(SLACK_ERRORS) >= 60
    assert {e.fate for e in SLACK_ERRORS.values()} == set(Fate)
    for code, error in SLACK_ERRORS.items():
        assert error.code == code
        if error.fate in (Fate.LOST_CHANNEL,):
            assert error.hint, f"{code}: the person can fix it, so say how"
    assert classify("ratelimited", 429).fate is Fate.RATE_LIMITED
    assert classify(None, 429).fate is Fate.RATE_LIMITED
    assert classify(None, 503).fate is Fate.TRANSIENT
    assert classify("is_inactive").fate is Fate.LOST_CHANNEL
    assert classify("never_heard_of_it").fate is Fate.TRANSIENT


# --------------------------------------------------------------------------- fan-out: pacing


def reply_times(w: World) -> dict[str, list[float]]:
    """When each channel's thread replies reached Slack (fake seconds), in order."""
    times: dict[str, list[float]] = {}
    for call in w.slack.of("chat.postMessage"):
        if "thread_ts" in call.args:
            times.setdefault(call.channel, []).append(call.at)
    return times


async def test_many_replies_in_many_channels_go_at_slacks_pace_and_no_channel_starves(
    world: World,
) -> None:
    # Neighbouring ids share a channel: leased in id order, the first channels would
    # take every slot; each channel has its turn instead.
    channels = [f"C{n}" for n in range(6)]
    subs = [watch(world, channel) for channel in channels for _ in range(8)]
    for sid in subs:
        add_events(world, sid, Status.COMPLETED)
    world.delivery.concurrency = 3  # fewer slots than channels

    await run_for(world, 6)

    times = reply_times(world)
    assert sorted(times) == channels
    for channel, at in times.items():
        assert len(at) == 8, f"{channel}: each reply once"
        # A burst of CHANNEL_BURST (5), then one a CHANNEL_MESSAGE_INTERVAL (1.05 s):
        # never faster than that, and no slower than the loop's step allows.
        assert at[4] <= 0.5, f"{channel} waited for another channel: {at}"
        for k in range(5, 8):
            assert (k - 4) * 1.05 <= at[k] <= (k - 4) * 1.05 + 2 * STEP, f"{channel}: {at}"
    assert all(notification_states(world, sid) == ["sent"] for sid in subs)


async def test_a_channel_that_used_its_burst_is_not_leased_again_before_its_turn(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    subs = [watch(world, channel) for channel in ("C1", "C2") for _ in range(8)]
    for sid in subs:
        add_events(world, sid, Status.COMPLETED)
    loads: list[int] = []
    load = world.store.outbox.delivery

    def counted(subscription_id: int) -> Any:
        loads.append(subscription_id)
        return load(subscription_id)

    monkeypatch.setattr(world.store.outbox, "delivery", counted)
    await run_for(world, 6)

    assert all(notification_states(world, sid) == ["sent"] for sid in subs)
    # Each subscription was leased and loaded once: none only to find it had to wait.
    assert sorted(loads) == sorted(subs)


async def test_card_edits_keep_to_the_workspace_pace_and_hold_back_no_reply(
    world: World,
) -> None:
    subs = [watch(world, f"C{n}") for n in range(53)]
    for sid in subs:
        want_card_edit(world, sid)
        add_events(world, sid, Status.COMPLETED)

    await run_for(world, 1)
    # Every reply went at once; 50 card edits (Tier 3's burst), the rest booked.
    assert {len(at) for at in reply_times(world).values()} == {1}
    assert max(max(at) for at in reply_times(world).values()) == 0
    assert len(world.slack.of("chat.update")) == 50
    await run_for(world, 4)
    edits = [c.at for c in world.slack.of("chat.update")]
    assert len(edits) == 53 and all(c.ok for c in world.slack.of("chat.update"))
    assert all(b - a >= 1.2 for a, b in itertools.pairwise(edits[49:])), edits[49:]
    assert [subscription(world, sid)["card_done"] for sid in subs] == [2] * 53
    assert {subscription(world, sid)["card_attempts"] for sid in subs} == {0}, (
        "waiting is no failure"
    )
    assert sorted(c.channel for c in world.slack.of("chat.update")) == sorted(
        f"C{n}" for n in range(53)
    ), "each card edited once"


async def test_unwatch_edits_its_card_at_once_even_behind_a_queue_of_edits(
    world: World,
) -> None:
    queued = [watch(world, f"C{n}") for n in range(55)]
    for sid in queued:
        want_card_edit(world, sid)
    await world.delivery.deliver_due()
    assert len(world.slack.of("chat.update")) == 50
    mine = watch(world, "C99")
    want_card_edit(world, mine)

    await world.delivery.deliver_now(mine)
    assert world.slack.of("chat.update")[-1].channel == "C99", "someone is waiting for it"
    assert subscription(world, mine)["card_done"] == 2


async def test_a_card_turn_booked_by_one_replica_is_kept_by_another(world: World) -> None:
    subs = [watch(world, f"C{n}") for n in range(51)]
    for sid in subs:
        want_card_edit(world, sid)
    await world.delivery.deliver_due()  # 50 edits; the 51st books its turn
    (last,) = [sid for sid in subs if subscription(world, sid)["card_done"] == 1]
    turn = subscription(world, last)["card_retry_at"]
    assert turn is not None
    other = world.other_replica()
    for _ in range(60):  # the other replica has a queue of its own
        other.card_pace.reserve(TEAM, world.clock().timestamp())

    world.clock.now = turn
    await other.deliver_due()
    assert subscription(world, last)["card_done"] == 2, "edited at its turn, not queued again"

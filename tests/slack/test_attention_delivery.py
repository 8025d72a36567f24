"""Delivery by the channel's settings, batches, alerts, notices and the digest, under Slack's rules.

A fake clock and a fake Slack client (those of ``test_delivery``), the real store on
SQLite: what is broadcast and whom it mentions, replies the channel does not want,
alerts (once, linked, and what a lost alert channel does), a batch from card to
summary, and how notices and digests wait when Slack has a channel wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from bot.domain.digest import DigestSummary
from bot.domain.events import Event, EventKind
from bot.domain.settings import parse_setting
from bot.domain.status import ImportStatus, Status
from bot.slack.batch_delivery import BatchDelivery
from bot.slack.calls import SlackCalls
from bot.slack.channel_posts import ChannelPostSender
from bot.slack.delivery import Delivery
from bot.slack.digests import SlackDigestPoster
from bot.slack.links import Permalinks
from bot.slack.render import notice
from bot.store import Store
from bot.store.batches import NewMember
from bot.store.engine import make_engine
from bot.store.records import PENDING
from bot.store.tables import ChannelPostRow, ChannelWaitRow, NotificationRow, SubscriptionRow
from bot.watch.digest import DigestJob, DigestNotSent
from tests.slack import fake_time
from tests.slack.test_delivery import TEAM, FakeClock, FakeSlack, notification_states, status

ALERTS = "CALERT"


class Slack(FakeSlack):
    """The fake Slack of test_delivery, which also knows message links."""

    async def chat_getPermalink(self, **args: Any) -> dict[str, Any]:
        ts = str(args["message_ts"]).replace(".", "")
        return {"ok": True, "permalink": f"https://acme.slack.com/archives/{args['channel']}/p{ts}"}


@dataclass
class World:
    engine: Engine
    store: Store
    clock: FakeClock
    slack: Slack
    posts: ChannelPostSender
    delivery: Delivery
    batches: BatchDelivery

    def configure(self, channel: str = "C1", **texts: str) -> None:
        for key, text in texts.items():
            self.store.channel_settings.update(
                TEAM,
                channel,
                dict([parse_setting(key, text, channel_id=channel)]),
                "U1",
                self.clock(),
            )

    def watch(self, channel: str = "C1") -> int:
        sid = self.store.subscriptions.subscribe(
            team_id=TEAM,
            channel_id=channel,
            client_id="ACME",
            status=status(),
            user_id="U1",
            now=self.clock(),
            next_poll_at=self.clock() + timedelta(hours=1),
        ).subscription_id
        self.store.outbox.set_tracking_message(sid, f"1700000000.{sid:06d}", 1)
        return sid

    def add(self, subscription_id: int, event: Event, snapshot: ImportStatus | None) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                NotificationRow.__table__.insert().values(
                    subscription_id=subscription_id,
                    team_id=TEAM,
                    event_key=event.key,
                    kind=event.kind.value,
                    event=event.to_json(),
                    snapshot=snapshot.to_json() if snapshot else None,
                    created_at=self.clock(),
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=self.clock(),
                )
            )

    def posts_in(self, channel: str) -> list[dict[str, Any]]:
        return [c.args for c in self.slack.of("chat.postMessage", channel) if c.ok]

    async def run(self, seconds: float = 0.0, step: float = 0.25) -> None:
        """Every loop, every ``step`` fake seconds, for ``seconds`` (once at least).

        Passes that could find nothing due are skipped (``fake_time.advance``).
        """
        end = self.clock.now + timedelta(seconds=seconds)
        while True:
            calls = len(self.slack.calls)
            await self.delivery.deliver_due()
            await self.batches.deliver_due()
            await self.posts.send_due()
            if self.clock.now >= end:
                return
            idle = len(self.slack.calls) == calls
            fake_time.advance(
                self.clock, step, end, idle=idle, engine=self.engine, senders=[self.delivery]
            )


@pytest.fixture
def world(migrated_sqlite_url: str) -> Iterator[World]:
    engine = make_engine(migrated_sqlite_url)
    clock = FakeClock()
    slack = Slack(clock)
    store = Store(engine)
    calls = SlackCalls(slack)  # type: ignore[arg-type]
    posts = ChannelPostSender(
        store.channel_posts,
        store.outbox,
        calls,
        Permalinks(slack),  # type: ignore[arg-type]
        "A",
        lease_seconds=10,
        clock=clock,
    )
    delivery = Delivery(
        store.outbox,
        slack,
        "A",
        lease_seconds=10,
        clock=clock,
        alerts=posts,  # type: ignore[arg-type]
    )
    batches = BatchDelivery(
        store.batches, store.outbox, calls, "A", alerts=posts, lease_seconds=10, clock=clock
    )
    yield World(engine, store, clock, slack, posts, delivery, batches)
    engine.dispose()


def transition(to: Status, n: int = 1) -> Event:
    return Event(EventKind.TRANSITION, f"transition:{n}:{to.value}", Status.PROCESSING, to)


def snapshot(state: Status, *, failed: int = 0, token: int = 4242) -> ImportStatus:
    return ImportStatus(
        access_token=token,
        status=state,
        name=f"Import {token}",
        validation_successful=100,
        processed=100 - failed,
        exceptions=failed,
        not_honored=0,
        validation_failed=0,
    )


# --------------------------------------------------------------------------- routing


async def test_broadcast_failures_keeps_a_clean_completed_in_the_thread(world: World) -> None:
    world.configure(broadcast="failures", mention="<!subteam^S0OPS|@ops>")
    clean, failed = world.watch(), world.watch()
    world.add(clean, transition(Status.COMPLETED), snapshot(Status.COMPLETED))
    world.add(failed, transition(Status.FAILED), snapshot(Status.FAILED))
    await world.run()
    (clean_reply,) = [p for p in world.posts_in("C1") if p["thread_ts"].endswith(f"{clean:06d}")]
    (failed_reply,) = [p for p in world.posts_in("C1") if p["thread_ts"].endswith(f"{failed:06d}")]
    assert clean_reply["reply_broadcast"] is False and "subteam" not in clean_reply["text"]
    assert failed_reply["reply_broadcast"] is True
    assert failed_reply["text"].startswith("<!subteam^S0OPS> ")


async def test_milestones_off_skips_the_progress_replies_and_records_why(world: World) -> None:
    world.configure(milestones="off")
    sid = world.watch()
    world.add(sid, Event(EventKind.MILESTONE, "milestone:25", milestone=25), None)
    world.add(sid, transition(Status.COMPLETED), snapshot(Status.COMPLETED))
    await world.run()
    texts = [p["text"] for p in world.posts_in("C1")]
    assert len(texts) == 1 and "Completed" in texts[0]
    assert notification_states(world, sid) == ["skipped", "sent"]  # type: ignore[arg-type]


async def test_a_compact_channel_gets_one_line_cards(world: World) -> None:
    world.configure(compact="on")
    sid = world.store.subscriptions.subscribe(
        team_id=TEAM,
        channel_id="C1",
        client_id="ACME",
        status=status(),
        user_id="U1",
        now=world.clock(),
        next_poll_at=world.clock() + timedelta(hours=1),
    ).subscription_id
    await world.run()
    (card,) = world.posts_in("C1")
    assert len(card["blocks"]) == 1 and "\n" not in card["blocks"][0]["text"]["text"]
    assert sid


# --------------------------------------------------------------------------- alerts


async def test_an_alert_goes_once_to_the_alert_channel_linking_to_the_thread(
    world: World,
) -> None:
    world.configure(alerts=f"<#{ALERTS}|alerts>", mention="<!subteam^S0OPS>")
    sid = world.watch()
    world.add(sid, transition(Status.QUEUED), None)
    world.add(sid, transition(Status.FAILED, 2), snapshot(Status.FAILED))
    await world.run(2)
    await world.run(2)
    (alert,) = world.posts_in(ALERTS)
    card_ts = f"1700000000.{sid:06d}"
    assert alert["text"].startswith(":rotating_light: <!subteam^S0OPS> ")
    assert (
        f"<https://acme.slack.com/archives/C1/p{card_ts.replace('.', '')}|open the thread>"
        in (alert["text"])
    )
    assert "thread_ts" not in alert


async def test_a_lost_alert_channel_costs_the_alert_and_says_so_in_the_thread_only(
    world: World,
) -> None:
    world.configure(alerts=f"<#{ALERTS}>")
    world.slack.fail("chat.postMessage", "not_in_channel", channel=ALERTS)
    sid = world.watch()
    world.add(sid, transition(Status.FAILED), snapshot(Status.FAILED))
    await world.run(2)
    assert world.slack.of("chat.postMessage", ALERTS)[0].ok is False
    assert len(world.slack.of("chat.postMessage", ALERTS)) == 1, "dropped, not retried"
    thread = [p["text"] for p in world.posts_in("C1")]
    assert any("Failed" in t for t in thread)
    (note,) = [t for t in thread if "could not post an alert" in t]
    assert f"<#{ALERTS}>" in note and "/invite @import-status" in note
    with world.store.engine.connect() as conn:
        state = conn.execute(
            select(SubscriptionRow.state).where(SubscriptionRow.id == sid)
        ).scalar_one()
    assert state == "active", "the watch in its own channel goes on"


# --------------------------------------------------------------------------- waits


async def test_a_settings_notice_waits_out_the_channels_rate_limit(world: World) -> None:
    world.slack.fail("chat.postMessage", channel="C1", status=429, retry_after="30", times=1)
    await world.posts.queue_notice(TEAM, "C1", "settings:1", notice("settings changed"))
    await world.run()
    with world.store.engine.connect() as conn:
        wait = conn.execute(select(ChannelWaitRow.not_before)).scalar_one()
    assert wait == world.clock() + timedelta(seconds=30)
    await world.run(29)
    assert len(world.slack.of("chat.postMessage", "C1")) == 1, "nothing while the channel waits"
    await world.run(2)
    assert [p["text"] for p in world.posts_in("C1")] == ["settings changed"]
    await world.run(5)
    assert len(world.posts_in("C1")) == 1, "and once only"


async def test_a_channel_that_already_waits_holds_back_a_notice_without_trying(
    world: World,
) -> None:
    world.store.outbox.wait_channel(TEAM, "C1", world.clock() + timedelta(seconds=10), "x")
    await world.posts.queue_notice(TEAM, "C1", "settings:2", notice("hello"))
    await world.run(9)
    assert world.slack.of("chat.postMessage") == []
    await world.run(2)
    assert len(world.posts_in("C1")) == 1


async def test_the_digest_honours_the_channels_wait_and_records_a_429(world: World) -> None:
    poster = SlackDigestPoster(
        SlackCalls(world.slack),  # type: ignore[arg-type]
        Permalinks(world.slack),  # type: ignore[arg-type]
        world.store.outbox,
        clock=world.clock,
    )
    summary = DigestSummary(world.clock().date(), world.clock(), world.clock(), [], [])
    world.store.outbox.wait_channel(TEAM, "C1", world.clock() + timedelta(seconds=10), "x")
    with pytest.raises(DigestNotSent) as waited:
        await poster.post_digest(TEAM, "C1", summary)
    assert waited.value.not_before == world.clock() + timedelta(seconds=10)
    assert world.slack.calls == [], "no call while the channel waits"
    world.clock.advance(11)
    world.slack.fail("chat.postMessage", channel="C1", status=429, retry_after="20", times=1)
    with pytest.raises(DigestNotSent) as limited:
        await poster.post_digest(TEAM, "C1", summary)
    assert limited.value.not_before == world.clock() + timedelta(seconds=20)
    assert world.store.outbox.channel_wait(TEAM, "C1") == world.clock() + timedelta(seconds=20)
    world.slack.fail("chat.postMessage", "is_archived", channel="C2")
    with pytest.raises(DigestNotSent) as lost:
        await poster.post_digest(TEAM, "C2", summary)
    assert lost.value.permanent and lost.value.not_before is None


async def test_a_waiting_digest_is_postponed_without_costing_an_attempt(world: World) -> None:
    class Waiting:
        calls = 0

        async def post_digest(self, team_id: str, channel_id: str, _: DigestSummary) -> str:
            self.calls += 1
            if self.calls <= 10:
                until = world.clock() + timedelta(seconds=1)
                raise DigestNotSent("ratelimited", permanent=False, not_before=until)
            return "1.1"

    world.configure(digest="00:00 UTC")
    world.store.subscriptions.subscribe(
        team_id=TEAM,
        channel_id="C1",
        client_id="ACME",
        status=status(),
        user_id="U1",
        now=world.clock(),
        next_poll_at=world.clock() + timedelta(hours=1),
    )
    world.clock.advance(13 * 3600)  # chosen at 12:00: the first digest is the next day's
    poster = Waiting()
    job = DigestJob(
        world.store.channel_settings,
        world.store.history,
        world.store.digests,
        poster,
        "A",
        clock=world.clock,
    )
    job_day = world.clock().date()
    for _ in range(11):
        await job.run()
        assert await job.run() == 0, "not again before the wait is over"
        world.clock.advance(2)
    assert poster.calls == 11, "ten waits did not use up the five attempts"
    assert world.store.digests.settled([(TEAM, "C1", job_day.isoformat())])


# --------------------------------------------------------------------------- batches


def make_batch(world: World, *tokens: int) -> int:
    made = world.store.batches.create(
        team_id=TEAM,
        channel_id="C1",
        client_id="ACME",
        members=[NewMember(snapshot(Status.PROCESSING, token=t), world.clock()) for t in tokens],
        user_id="U1",
        now=world.clock(),
        lease_owner="A",
        lease_seconds=10,
    )
    assert made.batch_id is not None
    return made.batch_id


def member_ids(world: World, batch_id: int) -> list[int]:
    with world.store.engine.connect() as conn:
        return list(
            conn.execute(
                select(SubscriptionRow.id)
                .where(SubscriptionRow.batch_id == batch_id)
                .order_by(SubscriptionRow.id)
            ).scalars()
        )


def end_member(world: World, subscription_id: int, event: Event, final: ImportStatus) -> None:
    world.add(subscription_id, event, final)
    with world.store.engine.begin() as conn:
        conn.execute(
            SubscriptionRow.__table__.update()
            .where(SubscriptionRow.id == subscription_id)
            .values(
                state="ended",
                ended_reason=final.status.value,
                ended_at=world.clock(),
                card_wanted=SubscriptionRow.card_wanted + 1,
            )
        )


async def test_a_batch_has_one_card_replies_for_ends_and_failures_and_one_summary(
    world: World,
) -> None:
    world.configure(alerts=f"<#{ALERTS}>")
    batch_id = make_batch(world, 1001, 1002)
    assert (await world.batches.deliver_new(batch_id)).outcome.value == "posted"
    (card,) = world.posts_in("C1")
    assert "Batch of 2 imports" in card["text"]
    first, second = member_ids(world, batch_id)

    world.add(first, transition(Status.QUEUED), None)  # not an end: skipped in a batch
    end_member(
        world, first, transition(Status.COMPLETED, 2), snapshot(Status.COMPLETED, token=1001)
    )
    await world.run()
    thread = [p for p in world.posts_in("C1") if "thread_ts" in p]
    assert len(thread) == 1 and "Import 1001 (1001) finished" in thread[0]["text"]
    assert thread[0]["reply_broadcast"] is False, "a clean end stays in the thread"
    assert notification_states(world, first)[0] == "skipped"
    assert world.slack.of("chat.update"), "the card follows"

    end_member(world, second, transition(Status.FAILED), snapshot(Status.FAILED, token=1002))
    await world.run(1)
    thread = [p for p in world.posts_in("C1") if "thread_ts" in p]
    assert [("Failed" in p["text"], p["reply_broadcast"]) for p in thread[1:]] == [
        (True, True),
        (False, True),
    ]
    assert "All 2 imports of this batch have ended" in thread[2]["text"]
    assert len(world.posts_in(ALERTS)) == 1, "the failure also went to the alert channel"
    last_card = world.slack.of("chat.update")[-1].args
    assert "Every import of this batch has ended" in str(last_card["blocks"])
    calls = len(world.slack.calls)
    await world.run(5)
    assert len(world.slack.calls) == calls, "nothing twice"


async def test_a_batch_whose_channel_is_lost_ends_with_all_its_imports(world: World) -> None:
    batch_id = make_batch(world, 1001, 1002)
    await world.batches.deliver_new(batch_id)
    first, second = member_ids(world, batch_id)
    world.slack.fail("chat.postMessage", "is_archived", channel="C1")
    end_member(world, first, transition(Status.FAILED), snapshot(Status.FAILED, token=1001))
    await world.run(1)
    with world.store.engine.connect() as conn:
        states = set(
            conn.execute(
                select(SubscriptionRow.state).where(SubscriptionRow.id.in_([first, second]))
            ).scalars()
        )
    assert states == {"ended"}
    state = world.store.batches.batch_state(batch_id)
    assert state is not None and not state.active
    assert state.ended_reason == "Slack: is_archived"


async def test_a_refused_batch_card_is_reported_not_retried(world: World) -> None:
    world.slack.fail("chat.postMessage", "not_in_channel", channel="C1")
    batch_id = make_batch(world, 1001, 1002)
    result = await world.batches.deliver_new(batch_id)
    assert (result.outcome.value, result.error) == ("refused", "not_in_channel")
    assert result.hint and "/invite" in result.hint


async def test_two_replicas_deliver_a_batch_once(world: World) -> None:
    other = BatchDelivery(
        world.store.batches,
        world.store.outbox,
        SlackCalls(world.slack),  # type: ignore[arg-type]
        "B",
        lease_seconds=10,
        clock=world.clock,
    )
    batch_id = make_batch(world, 1001, 1002, 1003)
    world.store.batches.release_batch(batch_id, "A")
    for sid in member_ids(world, batch_id):
        end_member(world, sid, transition(Status.COMPLETED), snapshot(Status.COMPLETED, token=sid))
    for _ in range(8):
        await asyncio.gather(world.batches.deliver_due(), other.deliver_due())
        world.clock.advance(0.25)
    cards = [p for p in world.posts_in("C1") if "thread_ts" not in p]
    replies = [p for p in world.posts_in("C1") if "thread_ts" in p]
    assert len(cards) == 1
    assert len(replies) == 4, "three ends and one summary, each once"
    with world.store.engine.connect() as conn:
        assert conn.execute(select(ChannelPostRow)).all() == []


async def test_a_deleted_batch_card_is_posted_afresh_and_the_thread_follows(
    world: World,
) -> None:
    batch_id = make_batch(world, 1001, 1002)
    await world.batches.deliver_new(batch_id)
    first, _ = member_ids(world, batch_id)
    world.slack.fail("chat.update", "message_not_found", times=1)
    end_member(world, first, transition(Status.FAILED), snapshot(Status.FAILED, token=1001))
    await world.run()
    cards = [p for p in world.posts_in("C1") if "thread_ts" not in p]
    assert len(cards) == 2, "a new card replaces the deleted one"
    state = world.store.batches.batch_state(batch_id)
    assert state is not None and state.tracking_ts is not None
    (reply,) = [p for p in world.posts_in("C1") if "thread_ts" in p]
    assert reply["thread_ts"] == state.tracking_ts, "the reply hangs off the new card"
    with world.store.engine.connect() as conn:
        tss = set(
            conn.execute(
                select(SubscriptionRow.tracking_ts).where(SubscriptionRow.batch_id == batch_id)
            ).scalars()
        )
    assert tss == {state.tracking_ts}

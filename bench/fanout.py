"""Fan-out: S watches in K channels whose imports all complete in the same poll.

A real ``import-status-bot serve`` process, the MyPreferences simulator and the
Slack emulator (``bot.sandbox.harness``: real HTTP servers, the emulator as strict
as Slack, with its rate limits on). The database is seeded with S imports in
Processing, watched in K channels (S/K each); the bot posts the S tracking cards
itself. Then every import is made Completed in the simulator and due at once, so
one poll sees them all finish: each channel is owed S/K thread replies (the
Completed reply, broadcast to the channel: one chat.postMessage each) and S/K card
edits (chat.update).

What it measures, from the emulator's record of every call: the time from that
moment until the last reply, broadcast and card edit Slack accepted, each
channel's last reply (first and last channel done: no channel starved), the 429s,
and the bound the emulator's own limits (``bot/sandbox/slack_rules.py``) allow,
computed for the moments the bot created each notification: chat.postMessage one
per second per channel after a burst, chat.update Tier 3 per workspace. Card edits
at Tier 3 (50 a minute) take about 19 minutes for 1,000 cards, so by default they
are watched for ``--card-window`` seconds after the replies are done and compared
with what the bound allows by then; ``--all-cards`` waits for every one.

    .venv/bin/python -m bench.fanout                          # S=1000, K=100
    .venv/bin/python -m bench.fanout -s 200 -k 20             # a quick run
    .venv/bin/python -m bench.fanout --all-cards              # ~20 min: every card edit
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from bench.common import (
    print_machine,
    process_cpu_seconds,
    scratch_database,
    seed_watches,
    table,
    write_json,
)
from bot.domain.status import ImportStatus, Status
from bot.sandbox import slack_rules
from bot.sandbox.harness import Harness
from bot.sandbox.slack_emulator import ApiRequest
from bot.store.engine import make_engine, migrate
from bot.store.tables import ImportRow, NotificationRow, SubscriptionRow

FIRST_TOKEN = 500_001
RECORDS = 1000


def _template(expires: datetime) -> ImportStatus:
    return ImportStatus(
        access_token=FIRST_TOKEN,
        status=Status.PROCESSING,
        name="",
        total_records_received=RECORDS,
        validation_successful=RECORDS,
        processed=RECORDS // 2,
        pending=RECORDS // 2,
        expires=expires,
    )


def ideal_finish(available: Iterable[float], limit: slack_rules.Limit) -> list[float]:
    """When each call could go at the earliest, calls available at ``available`` (sorted),
    under ``limit``'s token bucket, full at time 0 (as the emulator's is, rested)."""
    rate = limit.per_minute / 60.0
    tokens, at, done = limit.burst, 0.0, []
    for ready in sorted(available):
        now = max(ready, at)
        tokens = min(limit.burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            now += (1.0 - tokens) / rate
            tokens = 1.0
        tokens -= 1.0
        at = now
        done.append(now)
    return done


def _seed(engine: Any, subscriptions: int, channels: int, grouped: bool) -> list[int]:
    """S imports in Processing, each watched once; cards not posted yet."""
    tokens = list(range(FIRST_TOKEN, FIRST_TOKEN + subscriptions))
    expires = datetime.now(UTC) + timedelta(hours=12)
    seed_watches(engine, _template(expires), tokens, datetime.now(UTC) + timedelta(days=1))
    per_channel = math.ceil(subscriptions / channels)
    with engine.begin() as conn:
        ids = list(conn.execute(select(SubscriptionRow.id).order_by(SubscriptionRow.id)).scalars())
        for n, sid in enumerate(ids):
            # grouped: a channel's watches have neighbouring ids (the harder case for
            # fairness, as the outbox is leased in id order); else round-robin.
            channel = n // per_channel if grouped else n % channels
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == sid)
                .values(channel_id=f"C{channel:05d}", tracking_ts=None, card_done=0)
            )
    return tokens


def _count(engine: Any, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def _wait_until(check: Any, timeout: float, what: str, step: float = 0.25) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


def _calls(requests: list[ApiRequest], since: float, method: str) -> list[ApiRequest]:
    return [r for r in requests if r.at >= since and r.method == method]


def run(args: argparse.Namespace) -> dict[str, Any]:
    s, k = args.subscriptions, args.channels
    post_limit = slack_rules.RATE_LIMITS["chat.postMessage"]
    edit_limit = slack_rules.RATE_LIMITS["chat.update"]
    with (
        scratch_database(args.database_url) as database_url,
        tempfile.TemporaryDirectory(prefix="isb-bench-") as tmp,
    ):
        engine = make_engine(database_url)
        migrate(engine)
        tokens = _seed(engine, s, k, grouped=not args.round_robin)
        with Harness(
            Path(tmp), database_url=database_url, poll_interval=3600, quiet_logs=True
        ) as harness:
            for token in tokens:
                harness.sim.add_import(
                    token,
                    status="Processing",
                    expires=datetime.now(UTC) + timedelta(hours=12),
                    TotalRecordsReceived=RECORDS,
                    ValidationSuccessful=RECORDS,
                    Processed=RECORDS // 2,
                    Pending=RECORDS // 2,
                )
            for channel in range(k):
                harness.emulator.invite_bot(f"C{channel:05d}")
            bot = harness.start_bot(TICK_SECONDS=0.25, LOG_LEVEL="WARNING")

            # Phase 1: the bot posts the S cards (a fan-out of its own).
            cards_start = time.monotonic()
            posted = SubscriptionRow.tracking_ts.is_not(None)
            _wait_until(
                lambda: _count(engine, select(func.count()).where(posted)) == s,
                args.timeout,
                "the cards",
            )
            cards_seconds = time.monotonic() - cards_start
            card_posts = _calls(harness.emulator.requests, cards_start, "chat.postMessage")
            # Let every bucket fill up again, as after a quiet while.
            time.sleep(max(post_limit.burst * 60 / post_limit.per_minute, 1) + 1)

            # Phase 2: every import completes, and is due now: one poll sees them all.
            load_start = os.getloadavg()
            for token in tokens:
                harness.sim.update(token, Status="Completed", Processed=RECORDS, Pending=0)
            cpu_start = process_cpu_seconds(bot.pid)
            t0_wall = datetime.now(UTC)
            t0 = time.monotonic()
            with engine.begin() as conn:
                conn.execute(update(ImportRow).values(next_poll_at=t0_wall))
            sent = NotificationRow.state == "sent"
            try:
                replies_seconds = _wait_until(
                    lambda: _count(engine, select(func.count()).where(sent)) >= s,
                    args.timeout,
                    "the replies",
                )
            except RuntimeError:  # reported as not all accepted
                replies_seconds = args.timeout
            edited = SubscriptionRow.card_done >= SubscriptionRow.card_wanted
            window = args.timeout if args.all_cards else replies_seconds + args.card_window
            all_edited = True
            try:
                _wait_until(
                    lambda: _count(engine, select(func.count()).where(edited)) >= s,
                    max(0.0, window - (time.monotonic() - t0)),
                    "the card edits",
                    step=1.0,
                )
            except RuntimeError:
                all_edited = False
            watched = time.monotonic() - t0
            cpu = process_cpu_seconds(bot.pid) - cpu_start
            load_end = os.getloadavg()
            requests = harness.emulator.requests
            with engine.connect() as conn:
                created = [
                    (c - t0_wall).total_seconds()
                    for c in conn.execute(select(NotificationRow.created_at)).scalars()
                ]
                sub_channel = dict(
                    conn.execute(select(SubscriptionRow.id, SubscriptionRow.channel_id)).all()
                )
                by_channel_created: dict[str, list[float]] = defaultdict(list)
                for sid, at in conn.execute(
                    select(NotificationRow.subscription_id, NotificationRow.created_at)
                ):
                    by_channel_created[sub_channel[sid]].append((at - t0_wall).total_seconds())

    posts = _calls(requests, t0, "chat.postMessage")
    edits = _calls(requests, t0, "chat.update")
    replies = [r for r in posts if r.ok and r.params.get("thread_ts")]
    broadcasts = [r for r in replies if r.params.get("reply_broadcast") in (True, "true", "1")]
    ok_edits = [r for r in edits if r.ok]
    last_by_channel: dict[str, float] = {}
    for r in replies:
        channel = str(r.params.get("channel"))
        last_by_channel[channel] = max(last_by_channel.get(channel, 0.0), r.at - t0)
    # The bound: each channel's replies as early as its bucket allows, from the moment
    # the bot created them; the card edits likewise under the workspace's Tier 3.
    bound_by_channel = {
        channel: max(ideal_finish(times, post_limit))
        for channel, times in by_channel_created.items()
    }
    reply_bound = max(bound_by_channel.values())
    edit_ideal = ideal_finish(created, edit_limit)
    edit_bound_all = max(edit_ideal)
    edits_possible = sum(1 for at in edit_ideal if at <= watched)
    last = [last_by_channel.get(c, math.inf) for c in bound_by_channel]

    def seconds(values: list[ApiRequest]) -> tuple[float, float]:
        times = [r.at - t0 for r in values]
        return (min(times), max(times)) if times else (math.nan, math.nan)

    rows: list[list[object]] = []
    for kind, done, all_calls, bound, wanted in (
        ("thread reply", replies, [r for r in posts if r.params.get("thread_ts")], reply_bound, s),
        ("  of which broadcast", broadcasts, [], reply_bound, s),
        ("card edit", ok_edits, edits, edit_bound_all, s),
    ):
        first, last_at = seconds(done)
        finished = len(done) >= wanted
        rows.append(
            [
                kind,
                f"{len(done)}/{wanted}",
                first,
                last_at if finished else math.nan,
                bound,
                (bound / last_at) if finished and last_at else math.nan,
                sum(1 for r in all_calls if r.status_code == 429) if all_calls else "",
            ]
        )
    print()
    print(
        table(
            ["kind", "accepted", "first s", "last s", "bound s", "bound/measured", "429s"],
            rows,
        )
    )
    spread = sorted(last)
    print()
    print(
        f"channels: {len(spread)}; last reply per channel: first channel done "
        f"{spread[0]:.2f} s, median {statistics.median(spread):.2f} s, last channel done "
        f"{spread[-1]:.2f} s (each channel's own bound: "
        f"{min(bound_by_channel.values()):.2f} to {reply_bound:.2f} s)"
    )
    print(
        f"notifications created by the poll: {min(created):.2f} to {max(created):.2f} s "
        f"after the imports were made due"
    )
    print(
        f"card edits: {len(ok_edits)} accepted in {watched:.1f} s watched; the Tier 3 bound "
        f"allows {edits_possible} by then ({len(ok_edits) / max(1, edits_possible):.2f} of it) "
        f"and all {s} after {edit_bound_all:.0f} s"
        + ("" if all_edited else " (not all waited for: --all-cards)")
    )
    print(
        f"card posts before (phase 1): {s} cards in {cards_seconds:.1f} s, "
        f"{sum(1 for r in card_posts if r.status_code == 429)} answered 429"
    )
    print(f"bot CPU during phase 2: {cpu:.2f} s over {watched:.1f} s")
    print(
        "load average: start {:.2f} {:.2f} {:.2f}, end {:.2f} {:.2f} {:.2f}".format(
            *load_start, *load_end
        )
    )
    return {
        "subscriptions": s,
        "channels": k,
        "rows": rows,
        "channel_last_reply": spread,
        "reply_bound": reply_bound,
        "edits_accepted": len(ok_edits),
        "edits_possible": edits_possible,
        "edit_bound_all": edit_bound_all,
        "watched_seconds": watched,
        "cards_seconds": cards_seconds,
        "bot_cpu_seconds": cpu,
        "load_start": load_start,
        "load_end": load_end,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--subscriptions", type=int, default=1000)
    parser.add_argument("-k", "--channels", type=int, default=100)
    parser.add_argument(
        "--round-robin",
        action="store_true",
        help="spread neighbouring subscription ids over the channels (default: grouped)",
    )
    parser.add_argument(
        "--card-window",
        type=float,
        default=60.0,
        help="seconds to keep watching card edits after the last reply",
    )
    parser.add_argument("--all-cards", action="store_true", help="wait for every card edit")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--database-url", default=None, help="default: a scratch SQLite file")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    info = print_machine()
    print(
        f"fan-out: {args.subscriptions} watches in {args.channels} channels "
        f"({'round-robin' if args.round_robin else 'grouped'} ids); emulator limits: "
        f"chat.postMessage {slack_rules.RATE_LIMITS['chat.postMessage']}, "
        f"chat.update {slack_rules.RATE_LIMITS['chat.update']}"
    )
    result = run(args)
    write_json(args.json, {"machine": info, **result})


if __name__ == "__main__":
    main()

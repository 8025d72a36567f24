"""Several replicas on one PostgreSQL: every transition reaches its channel exactly once.

Three real ``import-status-bot serve`` processes share one database. Watch
commands go round-robin to the three of them, the simulated imports move in
waves (Staging, Queued, Processing, Completed), and the emulator's threads are
read back per import. A second test kills one replica with SIGKILL while it
holds leases and checks that the others take its imports over once the leases
expire, with nothing lost and nothing sent twice.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import message_text, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

IMPORTS = 200
CHANNELS = 20
REPLICAS = 3
POLL_INTERVAL = 1.0  # active imports; the harness polls idle ones every 3 intervals
# Long enough for one replica's delivery batch on a busy machine. A replica leases up
# to 100 subscriptions at once and sends to them 10 at a time; when that outlasts the
# lease, another replica leases them too and posts the same messages again. Issue 9
# ("no lease can run out while its holder is still sending") is to fix that; with a
# 3 s lease this test found it under load. Shorten it again once that is fixed.
LEASE_SECONDS = 10
FIRST_TOKEN = 700_001
WAVE_TIMEOUT = 90.0  # generous: a busy machine slows three replicas down a lot

_TRANSITION = re.compile(r"Status: .*→ :[a-z_]+: (\w+)")
_CARD_TOKEN = re.compile(r'"import_actions_(\d+)"')


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Harness, list[BotProcess]]]:
    with Harness(
        tmp_path / "harness",
        database_url=postgres_url,
        poll_interval=POLL_INTERVAL,
        preloaded=True,
    ) as harness:
        bots = harness.start_bots(
            REPLICAS,
            LOOKUP_RATE_LIMIT=1_000_000,  # hundreds of watch commands from one user
            LEASE_SECONDS=LEASE_SECONDS,
            LOG_LEVEL="WARNING",
        )
        yield harness, bots


def _channel(index: int) -> str:
    return f"C{index % CHANNELS:04d}"


def _watch_all(harness: Harness, bots: Sequence[BotProcess], tokens: Sequence[int]) -> None:
    """Send ``watch TOKEN`` round-robin to the replicas, over CHANNELS channels."""
    users = [harness.user(bot) for bot in bots]
    try:

        def watch(index: int) -> str:
            user = users[index % len(users)]
            result = user.command(f"watch {tokens[index]}", channel_id=_channel(index))
            # No bound on the acknowledgement's time here: with 8 commands at once to
            # three replicas, it measures the machine's load (test_lookup checks it).
            assert result.status_code == 200, result
            body = result.ack_body
            if "Watching import" not in message_text(body):
                body = user.wait_response(result, timeout=15)  # a slow lookup answers later
            return message_text(body)

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(watch, range(len(tokens))))
    finally:
        for user in users:
            user.close()
    refused = [a for a in answers if "Watching import" not in a]
    assert not refused, f"{len(refused)} watch commands failed, e.g. {refused[0]!r}"


def _threads(harness: Harness) -> dict[int, list[str]]:
    """For each watched import, the statuses its thread announced, in order."""
    messages = harness.emulator.all_messages()
    card_token: dict[tuple[str, str], int] = {}
    for m in messages:
        if m.thread_ts is None:
            found = _CARD_TOKEN.search(json.dumps(m.blocks))
            assert found, f"a top-level message that is not a tracking card: {m.text!r}"
            card_token[(m.channel, m.ts)] = int(found.group(1))
    threads: dict[int, list[str]] = {token: [] for token in card_token.values()}
    for m in messages:
        if m.thread_ts is not None:
            found = _TRANSITION.search(message_text(m))
            assert found, f"an unexpected thread reply: {message_text(m)!r}"
            threads[card_token[(m.channel, m.thread_ts)]].append(found.group(1))
    return threads


def _wave(harness: Harness, tokens: Sequence[int], status: str, expected: list[str]) -> float:
    """Move every import to ``status``; wait until every thread says so; return seconds taken."""
    started = time.monotonic()
    for token in tokens:
        harness.sim.update(token, Status=status)

    def arrived() -> bool:
        threads = _threads(harness)
        return all(len(threads.get(t, [])) >= len(expected) for t in tokens)

    # On a timeout the precise assertion below says what is missing.
    with contextlib.suppress(AssertionError):
        wait_for(arrived, timeout=WAVE_TIMEOUT, interval=0.2, description=f"{status} everywhere")
    _assert_threads(harness, tokens, expected)
    return time.monotonic() - started


def _assert_threads(harness: Harness, tokens: Sequence[int], expected: list[str]) -> None:
    threads = _threads(harness)
    missing_card = [t for t in tokens if t not in threads]
    assert not missing_card, f"{len(missing_card)} imports have no tracking card"
    duplicated = {t: s for t, s in threads.items() if len(s) > len(expected)}
    missing = {t: s for t, s in threads.items() if len(s) < len(expected)}
    wrong = {t: s for t, s in threads.items() if len(s) == len(expected) and s != expected}
    assert not duplicated, f"{len(duplicated)} imports got extra replies: {_sample(duplicated)}"
    assert not missing, f"{len(missing)} imports are missing replies: {_sample(missing)}"
    assert not wrong, f"{len(wrong)} imports got the wrong replies: {_sample(wrong)}"


def _sample(by_token: dict[int, list[str]]) -> str:
    return ", ".join(f"{t}: {s}" for t, s in list(by_token.items())[:3])


def _add_imports(harness: Harness, count: int) -> list[int]:
    tokens = list(range(FIRST_TOKEN, FIRST_TOKEN + count))
    for token in tokens:
        harness.sim.add_import(token, name=f"Replica test {token}", status="Initiated")
    return tokens


def _quiet(harness: Harness) -> None:
    """Wait until no notification or card edit is waiting (nothing is in flight)."""
    engine = create_engine(harness.database_url, poolclass=NullPool)
    try:

        def settled() -> bool:
            with engine.connect() as conn:
                pending = conn.execute(
                    text("SELECT count(*) FROM notifications WHERE state = 'pending'")
                ).scalar_one()
                cards = conn.execute(
                    text("SELECT count(*) FROM subscriptions WHERE card_done < card_wanted")
                ).scalar_one()
            return pending == 0 and cards == 0

        wait_for(settled, timeout=WAVE_TIMEOUT, interval=0.2, description="no pending deliveries")
    finally:
        engine.dispose()


def test_three_replicas_post_every_transition_once_and_poll_each_import_once(
    replicas: tuple[Harness, list[BotProcess]],
) -> None:
    harness, bots = replicas
    tokens = _add_imports(harness, IMPORTS)
    _watch_all(harness, bots, tokens)
    assert len(_threads(harness)) == IMPORTS  # one tracking card per import

    _wave(harness, tokens, "Staging", ["Staging"])
    _wave(harness, tokens, "Queued", ["Staging", "Queued"])
    _wave(harness, tokens, "Processing", ["Staging", "Queued", "Processing"])
    _quiet(harness)

    # Every import is active now (polled every POLL_INTERVAL). Three replicas that
    # each polled everything would make three times the calls of one.
    harness.sim.reset_calls()
    window = 4.0
    time.sleep(window)
    calls = harness.sim.status_calls()
    one_per_cycle = IMPORTS * window / POLL_INTERVAL
    ratio = calls / one_per_cycle
    # The upper bound is the point; the lower one only says that polling goes on (a busy
    # machine polls less often than every POLL_INTERVAL, never more).
    assert 0.2 <= ratio <= 1.3, (
        f"{calls} status calls in {window:g} s for {IMPORTS} imports polled every "
        f"{POLL_INTERVAL:g} s: {ratio:.2f} x one call per import per cycle"
    )
    busiest = max(harness.sim.status_calls(t) for t in tokens)
    assert busiest <= window / POLL_INTERVAL + 2, f"one import was polled {busiest} times"

    _wave(harness, tokens, "Completed", ["Staging", "Queued", "Processing", "Completed"])
    # Completed ended every subscription: the imports are no longer polled.
    _quiet(harness)
    harness.sim.reset_calls()
    time.sleep(2 * POLL_INTERVAL)
    assert harness.sim.status_calls() == 0
    assert all(bot.running() for bot in bots)


def test_killed_replica_imports_are_taken_over_without_loss_or_duplicates(
    replicas: tuple[Harness, list[BotProcess]],
) -> None:
    harness, bots = replicas
    tokens = _add_imports(harness, IMPORTS)
    _watch_all(harness, bots, tokens)
    _wave(harness, tokens, "Queued", ["Queued"])
    _quiet(harness)

    # Slow answers keep each replica's polls (and their leases) in flight for a while;
    # nothing is waiting to be posted, so the kill cannot interrupt a Slack post.
    harness.sim.set_response_delay(0.4)
    victim = bots[0]
    engine = create_engine(harness.database_url, poolclass=NullPool)
    try:

        def victim_leases() -> dict[int, float]:
            """The imports the victim has leased, with when each lease ends (epoch seconds)."""
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT access_token, lease_until FROM imports WHERE lease_owner LIKE :o"),
                    {"o": f"%:{victim.pid}:%"},
                ).all()
            return {int(t): until.replace(tzinfo=UTC).timestamp() for t, until in rows}

        wait_for(victim_leases, timeout=30, interval=0.02, description="the victim holding leases")
        victim.kill()
        killed_at = time.monotonic()
        orphaned = victim_leases()
        assert orphaned, "the killed replica held no lease: nothing to take over"
        harness.sim.set_response_delay(0)

        # The run goes on: the orphaned imports move too, and only the lease's expiry
        # lets the survivors poll them.
        _wave(harness, tokens, "Processing", ["Queued", "Processing"])
        _wave(harness, tokens, "Completed", ["Queued", "Processing", "Completed"])
        assert not victim_leases(), "a dead replica's lease was never taken over"
    finally:
        engine.dispose()

    # The simulator's clock is this process's monotonic clock; leases are wall-clock.
    to_wall = time.time() - time.monotonic()
    calls = harness.sim.calls
    for token, lease_until in orphaned.items():
        after_kill = [c.at for c in calls if c.access_token == token and c.at > killed_at]
        assert after_kill, f"import {token} was never polled again after the kill"
        early = min(after_kill) + to_wall - lease_until
        assert early >= -0.1, f"import {token} was polled {-early:.2f} s before its lease ended"
    assert not victim.running()
    assert all(bot.running() for bot in bots[1:])

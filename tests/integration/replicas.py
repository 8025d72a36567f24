"""Three replicas on one PostgreSQL, and what their channels end up with.

The helpers of test_replicas.py. A killed replica is test_replica_takeover.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import message_text, wait_for
from tests.integration.helpers import PATIENCE

IMPORTS = 100
CHANNELS = 20
REPLICAS = 3
POLL_INTERVAL = 1.0  # active imports; the harness polls idle ones every 3 intervals
# Short, so that a lease outlived by its holder's sending would show as a message posted
# twice: delivery renews its leases while it sends (issue 9), so none may run out.
LEASE_SECONDS = 3
FIRST_TOKEN = 700_001
WAVE_TIMEOUT = 90.0  # generous: a busy machine slows three replicas down a lot

_TRANSITION = re.compile(r"Status: .*→ :[a-z_]+: (\w+)")
_CARD_TOKEN = re.compile(r'"import_actions_(\d+)"')


@contextlib.contextmanager
def running_replicas(
    tmp_path: Path, postgres_url: str
) -> Iterator[tuple[Harness, list[BotProcess]]]:
    """A harness on ``postgres_url`` and REPLICAS bot processes sharing it."""
    with Harness(
        tmp_path / "harness",
        database_url=postgres_url,
        poll_interval=POLL_INTERVAL,
        preloaded=True,
    ) as harness:
        for index in range(CHANNELS):
            harness.emulator.invite_bot(channel(index))
        # Slack's chat.update is Tier 3 (50+ edits a minute per workspace): the card edits
        # of this one-workspace load test would take many minutes at that pace. The tests
        # are about exactly-once across replicas, so they grant a bigger allowance;
        # chat.postMessage keeps Slack's real per-channel limit.
        harness.emulator.set_rate_limit("chat.update", 6000)
        bots = harness.start_bots(
            REPLICAS,
            LOOKUP_RATE_LIMIT=1_000_000,  # hundreds of watch commands from one user
            SLACK_CARD_EDITS_PER_MINUTE=6000,  # the allowance above: the bot paces to it
            LEASE_SECONDS=LEASE_SECONDS,
            LOG_LEVEL="WARNING",
        )
        yield harness, bots


def channel(index: int) -> str:
    return f"C{index % CHANNELS:04d}"


def watch_all(harness: Harness, bots: Sequence[BotProcess], tokens: Sequence[int]) -> None:
    """Send ``watch TOKEN`` round-robin to the replicas, over CHANNELS channels."""
    users = [harness.user(bot) for bot in bots]
    try:

        def watch(index: int) -> str:
            user = users[index % len(users)]
            result = user.command(f"watch {tokens[index]}", channel_id=channel(index))
            # No bound on the acknowledgement's time here: with 8 commands at once to
            # three replicas, it measures the machine's load (test_lookup checks it).
            assert result.status_code == 200, result
            body = result.ack_body
            if "Watching import" not in message_text(body):
                body = user.wait_response(result, timeout=PATIENCE)  # a slow lookup answers later
            return message_text(body)

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(watch, range(len(tokens))))
    finally:
        for user in users:
            user.close()
    refused = [a for a in answers if "Watching import" not in a]
    assert not refused, f"{len(refused)} watch commands failed, e.g. {refused[0]!r}"


def thread_statuses(harness: Harness) -> dict[int, list[str]]:
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


def wave(harness: Harness, tokens: Sequence[int], status: str, expected: list[str]) -> float:
    """Move every import to ``status``; wait until every thread says so; return seconds taken."""
    started = time.monotonic()
    for token in tokens:
        harness.sim.update(token, Status=status)

    def arrived() -> bool:
        threads = thread_statuses(harness)
        return all(len(threads.get(t, [])) >= len(expected) for t in tokens)

    # On a timeout the precise assertion below says what is missing.
    with contextlib.suppress(AssertionError):
        wait_for(arrived, timeout=WAVE_TIMEOUT, interval=0.2, description=f"{status} everywhere")
    assert_threads(harness, tokens, expected)
    return time.monotonic() - started


def assert_threads(harness: Harness, tokens: Sequence[int], expected: list[str]) -> None:
    threads = thread_statuses(harness)
    missing_card = [t for t in tokens if t not in threads]
    assert not missing_card, f"{len(missing_card)} imports have no tracking card"
    duplicated = {t: s for t, s in threads.items() if len(s) > len(expected)}
    missing = {t: s for t, s in threads.items() if len(s) < len(expected)}
    wrong = {t: s for t, s in threads.items() if len(s) == len(expected) and s != expected}
    assert not duplicated, f"{len(duplicated)} imports got extra replies: {sample(duplicated)}"
    assert not missing, f"{len(missing)} imports are missing replies: {sample(missing)}"
    assert not wrong, f"{len(wrong)} imports got the wrong replies: {sample(wrong)}"


def sample(by_token: dict[int, list[str]]) -> str:
    return ", ".join(f"{t}: {s}" for t, s in list(by_token.items())[:3])


def add_imports(harness: Harness, count: int) -> list[int]:
    tokens = list(range(FIRST_TOKEN, FIRST_TOKEN + count))
    for token in tokens:
        harness.sim.add_import(token, name=f"Replica test {token}", status="Initiated")
    return tokens


def quiet(harness: Harness) -> None:
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

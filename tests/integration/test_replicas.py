"""Several replicas on one PostgreSQL: every transition reaches its channel exactly once.

Three real ``import-status-bot serve`` processes share one database. Watch
commands go round-robin to the three of them, the simulated imports move in
waves (Staging, Queued, Processing, Completed), and the emulator's threads are
read back per import. test_replica_takeover.py kills one of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import wait_for
from tests.integration.replicas import (
    IMPORTS,
    POLL_INTERVAL,
    WAVE_TIMEOUT,
    add_imports,
    quiet,
    running_replicas,
    thread_statuses,
    watch_all,
    wave,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Harness, list[BotProcess]]]:
    with running_replicas(tmp_path, postgres_url) as started:
        yield started


def test_three_replicas_post_every_transition_once_and_poll_each_import_once(
    replicas: tuple[Harness, list[BotProcess]],
) -> None:
    harness, bots = replicas
    tokens = add_imports(harness, IMPORTS)
    watch_all(harness, bots, tokens)
    # One tracking card per import; Slack's one-a-second-per-channel limit holds some back.
    wait_for(lambda: len(thread_statuses(harness)) == IMPORTS, timeout=WAVE_TIMEOUT, interval=0.2)

    wave(harness, tokens, "Staging", ["Staging"])
    wave(harness, tokens, "Queued", ["Staging", "Queued"])
    wave(harness, tokens, "Processing", ["Staging", "Queued", "Processing"])
    quiet(harness)

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

    wave(harness, tokens, "Completed", ["Staging", "Queued", "Processing", "Completed"])
    # Completed ended every subscription: the imports are no longer polled.
    quiet(harness)
    harness.sim.reset_calls()
    time.sleep(2 * POLL_INTERVAL)
    assert harness.sim.status_calls() == 0
    assert all(bot.running() for bot in bots)

"""A replica killed while it holds leases: the others take its imports over.

Three real ``import-status-bot serve`` processes share one PostgreSQL. One is
killed with SIGKILL while it holds leases; the others take its imports over once
the leases expire, with nothing lost and nothing sent twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import wait_for
from tests.integration.replicas import (
    IMPORTS,
    add_imports,
    quiet,
    running_replicas,
    watch_all,
    wave,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Harness, list[BotProcess]]]:
    with running_replicas(tmp_path, postgres_url) as started:
        yield started


def test_killed_replica_imports_are_taken_over_without_loss_or_duplicates(
    replicas: tuple[Harness, list[BotProcess]],
) -> None:
    harness, bots = replicas
    tokens = add_imports(harness, IMPORTS)
    watch_all(harness, bots, tokens)
    wave(harness, tokens, "Queued", ["Queued"])
    quiet(harness)

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
        wave(harness, tokens, "Processing", ["Queued", "Processing"])
        wave(harness, tokens, "Completed", ["Queued", "Processing", "Completed"])
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

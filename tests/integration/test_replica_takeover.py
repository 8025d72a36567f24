"""A killed replica's imports are polled again on schedule, not after LEASE_SECONDS.

Three real ``serve`` processes share one PostgreSQL at a 1 s poll interval with
the default LEASE_SECONDS (60). One is killed with SIGKILL while it holds
leases, and every import moves on at once: each import's next transition must
reach its channel within 15 s, the dead replica's ones included (issue 10:
they used to wait out the whole 60 s lease). The figures (how long after the
kill each orphaned import was polled again and its reply posted) are printed.
"""

from __future__ import annotations

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

IMPORTS = 90
CHANNELS = 9
REPLICAS = 3
POLL_INTERVAL = 1.0
HTTP_TIMEOUT = 3.0  # the harness's; the lease is the interval plus this
FIRST_TOKEN = 710_001
TRANSITION_WITHIN = 15.0

_TRANSITION = re.compile(r"Status: .*→ :[a-z_]+: (\w+)")
_CARD_TOKEN = re.compile(r'"import_actions_(\d+)"')


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Harness, list[BotProcess]]]:
    with Harness(
        tmp_path / "harness", database_url=postgres_url, poll_interval=POLL_INTERVAL, preloaded=True
    ) as harness:
        # This test is about leases, not Slack's limits: 90 card edits in one workspace
        # would take two minutes at chat.update's Tier 3 (tests/integration/
        # test_slack_as_it_is.py covers the limits). chat.postMessage keeps its own.
        harness.emulator.set_rate_limit("chat.update", 6000)
        bots = [
            harness.start_bot(
                LOOKUP_RATE_LIMIT=1_000_000,
                LEASE_SECONDS=60,  # the default, said out loud: takeover must not wait for it
                HTTP_TIMEOUT_SECONDS=HTTP_TIMEOUT,
                LOG_LEVEL="WARNING",
            )
            for _ in range(REPLICAS)
        ]
        yield harness, bots


def _watch_all(harness: Harness, bots: Sequence[BotProcess], tokens: Sequence[int]) -> None:
    users = [harness.user(bot) for bot in bots]
    for index in range(CHANNELS):
        harness.emulator.invite_bot(f"C{index:04d}")
    try:

        def watch(index: int) -> str:
            user = users[index % len(users)]
            result = user.command(f"watch {tokens[index]}", channel_id=f"C{index % CHANNELS:04d}")
            assert result.status_code == 200, result
            body = result.ack_body
            if "Watching import" not in message_text(body):
                body = user.wait_response(result, timeout=15)
            return message_text(body)

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(watch, range(len(tokens))))
    finally:
        for user in users:
            user.close()
    refused = [a for a in answers if "Watching import" not in a]
    assert not refused, f"{len(refused)} watch commands failed, e.g. {refused[0]!r}"


def _replies(harness: Harness) -> dict[int, list[str]]:
    """For each import with a tracking card, the statuses its thread announced, in order."""
    messages = harness.emulator.all_messages()
    card_token: dict[tuple[str, str], int] = {}
    for m in messages:
        if m.thread_ts is None:
            found = _CARD_TOKEN.search(json.dumps(m.blocks))
            if found:
                card_token[(m.channel, m.ts)] = int(found.group(1))
    threads: dict[int, list[str]] = {token: [] for token in card_token.values()}
    for m in messages:
        key = (m.channel, m.thread_ts or "")
        if m.thread_ts is not None and key in card_token:
            found = _TRANSITION.search(message_text(m))
            if found:
                threads[card_token[key]].append(found.group(1))
    return threads


def test_a_killed_replicas_imports_move_on_within_15_s_at_the_default_lease(
    replicas: tuple[Harness, list[BotProcess]],
) -> None:
    harness, bots = replicas
    tokens = list(range(FIRST_TOKEN, FIRST_TOKEN + IMPORTS))
    for token in tokens:
        harness.sim.add_import(token, name=f"Takeover {token}", status="Processing")
    _watch_all(harness, bots, tokens)
    wait_for(
        lambda: len(_replies(harness)) == IMPORTS, timeout=30, description="every tracking card"
    )

    engine = create_engine(harness.database_url, poolclass=NullPool)
    try:

        def leases_of(bot: BotProcess) -> dict[int, float]:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT access_token, lease_until FROM imports WHERE lease_owner LIKE :o"),
                    {"o": f"%:{bot.pid}:%"},
                ).all()
            return {int(t): until.replace(tzinfo=UTC).timestamp() for t, until in rows}

        # A replica keeps leasing the imports it polled first, so how many each holds
        # depends on which started ticking first: the victim is the one holding most.
        held = [0] * len(bots)

        def ten_held() -> bool:
            held[:] = [len(leases_of(bot)) for bot in bots]
            return max(held) >= 10

        wait_for(ten_held, timeout=20, description="a replica holding ten leases")
        victim = bots[held.index(max(held))]

        victim.kill()
        killed_at = time.monotonic()
        orphaned = leases_of(victim)
        # Every lease ends one HTTP timeout after the import is due again, not 60 s on.
        to_wall = time.time() - time.monotonic()
        longest_lease = max(orphaned.values()) - (killed_at + to_wall)

        # Everything moves on at once.
        for token in tokens:
            harness.sim.update(token, Status="Completed", Processed=1000)
        seen: dict[int, float] = {}
        deadline = killed_at + TRANSITION_WITHIN + 5
        while len(seen) < IMPORTS and time.monotonic() < deadline:
            now = time.monotonic()
            for token, replies in _replies(harness).items():
                if "Completed" in replies and token not in seen:
                    seen[token] = now - killed_at
            time.sleep(0.1)
        leftover = leases_of(victim)
    finally:
        engine.dispose()

    late = {t: round(s, 1) for t, s in seen.items() if s > TRANSITION_WITHIN}
    missing = sorted(set(tokens) - set(seen))
    # When each orphaned import was polled again, after the kill (simulator's clock).
    calls = harness.sim.calls
    polled_again = {
        token: min(c.at for c in calls if c.access_token == token and c.at > killed_at) - killed_at
        for token in orphaned
        if any(c.access_token == token and c.at > killed_at for c in calls)
    }
    orphans_seen = [seen[t] for t in orphaned if t in seen]
    print(
        f"\n{len(orphaned)} orphaned imports of {IMPORTS}: polled again "
        f"{min(polled_again.values(), default=float('nan')):.1f}-"
        f"{max(polled_again.values(), default=float('nan')):.1f} s after the kill; their "
        f"Completed reply {min(orphans_seen, default=float('nan')):.1f}-"
        f"{max(orphans_seen, default=float('nan')):.1f} s after it "
        f"({len(orphans_seen)} of {len(orphaned)} seen); "
        f"{len(seen)} of {IMPORTS} within {max(seen.values(), default=float('nan')):.1f} s"
    )
    assert not missing, f"{len(missing)} imports never announced Completed, e.g. {missing[:3]}"
    assert not late, f"{len(late)} imports announced it more than 15 s after the kill: {late}"
    assert set(polled_again) == set(orphaned)
    # ... and never before the dead replica's lease ended: a lease is a promise.
    for token, lease_until in orphaned.items():
        early = killed_at + polled_again[token] + to_wall - lease_until
        assert early >= -0.1, f"import {token} was polled {-early:.2f} s before its lease ended"
    assert not leftover, "a dead replica's lease was never taken over"
    # Every lease ended one HTTP timeout after its import was due again, not 60 s on.
    assert longest_lease <= POLL_INTERVAL + HTTP_TIMEOUT + 0.5, longest_lease
    for token in orphaned:
        assert _replies(harness)[token] == ["Completed"], (token, _replies(harness)[token])
    assert all(bot.running() for bot in bots if bot is not victim)

"""The Completed notification's lag: fixed-interval polling against ETA-aware polling.

Two harnesses run side by side in one run, each with its own simulator, Slack
emulator, database and ``import-status-bot serve`` process: one bot with
``POLL_MIN_SPACING_SECONDS`` equal to the poll interval (no early polls: fixed-interval
polling, as before), the other with the default (a sixth of the interval). Both
watch the same N imports (same script, watched one after the other, fixed then
ETA-aware, so both see the same load): each is Queued when watched, turns
Processing after U(0.5, 1.5) intervals and processes its records at a steady
rate for U(1, 6) intervals (``SteadyRate`` in the simulator), then is Completed.

The interval is scaled down (default 4 s) so that a run takes about a minute;
TICK_SECONDS is scaled with it (I/30, as 2 s is of the default 60 s), and so
Slack's workspace-wide limit on card edits is lifted (see ``run``); the
per-channel limit on posts stays. Measured
per import, from the simulator's completion moment:

- poll lag: until the first status request that arrived after it (the poll that saw it);
- post lag: until Slack (the emulator) accepted the Completed reply in the thread;
- API calls: status requests for the import, the watch's lookup included, and
  whether they exceed what fixed-interval polling from the watch would make
  (1 + ceil(life / interval)).

    .venv/bin/python -m bench.lag                       # N=100, interval 4 s
    .venv/bin/python -m bench.lag -n 30 --interval 3    # a quick run
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import percentile, print_machine, table, write_json
from bot.sandbox.harness import Harness
from bot.sandbox.mypreferences_simulator import SteadyRate
from bot.sandbox.slack_emulator import SlackUser

FIRST_TOKEN = 700_000
RECORDS = 100_000
# From its first Processing poll, the rate is known one interval later, and an early
# poll can only come in a later interval than that: imports Processing for fewer than
# about 3 intervals finish before ETA-aware polling can move a poll (the budget).
SHORT = 3.0


@dataclass(frozen=True)
class Mode:
    name: str
    env: dict[str, str]


@dataclass(frozen=True)
class Outcome:
    """One import's fate in one mode; None where it never happened."""

    poll_lag: float | None
    post_lag: float | None
    calls: int
    fixed_bound: int
    #: How long it was Processing, in poll intervals.
    intervals: float


def modes(interval: float) -> list[Mode]:
    return [
        Mode("fixed-interval", {"POLL_MIN_SPACING_SECONDS": str(interval)}),
        Mode("ETA-aware", {}),  # the default minimum spacing: interval / 6
    ]


def measure(harness: Harness, token: int, channel: str, interval: float, seconds: float) -> Outcome:
    finish = harness.sim.finishes_at(token)
    assert finish is not None
    calls = [
        c.at for c in harness.sim.calls if c.access_token == token and c.path.endswith("/Status")
    ]
    saw = [at for at in calls if at >= finish]
    posts = [
        r.at
        for r in harness.emulator.calls("chat.postMessage")
        if r.ok
        and r.params.get("channel") == channel
        and r.params.get("thread_ts")
        and "Completed" in str(r.params.get("text", ""))
    ]
    # The watch's lookup is the first call; fixed-interval polling then polls once per
    # interval until a poll comes at or after the finish.
    bound = 1 + math.ceil((finish - calls[0]) / interval) if calls else 0
    return Outcome(
        poll_lag=saw[0] - finish if saw else None,
        post_lag=posts[0] - finish if posts else None,
        calls=len(calls),
        fixed_bound=bound,
        intervals=seconds / interval,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    interval = args.interval
    rng = random.Random(args.seed)
    plans = [
        (rng.uniform(0.5, 1.5) * interval, rng.uniform(1.0, 6.0) * interval)
        for _ in range(args.imports)
    ]
    common_env = {
        "POLL_INTERVAL_SECONDS": str(interval),
        "TICK_SECONDS": str(interval / 30),
        "LOOKUP_RATE_LIMIT": "100000",
        "LOG_LEVEL": "WARNING",
    }
    results: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="isb-lag-") as tmp:
        harnesses = [
            Harness(Path(tmp) / m.name, poll_interval=interval, quiet_logs=True)
            for m in modes(interval)
        ]
        users: list[SlackUser] = []
        try:
            for harness in harnesses:
                # Slack's workspace-wide limit on card edits (Tier 3, 50 a minute) is lifted:
                # at a scaled-down interval the cards are edited 60/I times as often as at
                # 60 s, and the edits' queue, not the schedule, would decide the lag.
                harness.emulator.set_rate_limit("chat.update", None)
            bots = [
                h.start_bot(**common_env, **m.env)
                for h, m in zip(harnesses, modes(interval), strict=True)
            ]
            users += [h.user(bot) for h, bot in zip(harnesses, bots, strict=True)]
            started = time.monotonic()
            for j, (after, seconds) in enumerate(plans):
                for harness, user in zip(harnesses, users, strict=True):
                    watch(harness, user, FIRST_TOKEN + j, after, seconds)
            took = time.monotonic() - started
            print(f"watched {args.imports} imports in each mode in {took:.1f} s")
            last_finish = max(
                h.sim.finishes_at(FIRST_TOKEN + j) or 0.0
                for h in harnesses
                for j in range(args.imports)
            )
            deadline = last_finish + 3 * interval + 30
            for harness, mode in zip(harnesses, modes(interval), strict=True):
                while time.monotonic() < deadline:
                    done = completed_posts(harness)
                    if done >= args.imports:
                        break
                    time.sleep(0.5)
                results[mode.name] = [
                    measure(harness, FIRST_TOKEN + j, channel_of(j), interval, seconds)
                    for j, (_, seconds) in enumerate(plans)
                ]
        finally:
            for user in users:
                user.close()
            for harness in harnesses:
                harness.close()
    return summarise(results, interval)


def channel_of(j: int) -> str:
    return f"CLAG{j:05d}"


def watch(harness: Harness, user: SlackUser, token: int, after: float, seconds: float) -> None:
    harness.sim.add_import(
        token,
        status="Queued",
        ValidationSuccessful=RECORDS,
        TotalRecordsReceived=RECORDS,
        steady=SteadyRate(after=after, seconds=seconds),
    )
    channel = channel_of(token - FIRST_TOKEN)
    harness.emulator.invite_bot(channel)
    result = user.command(f"watch {token}", channel_id=channel)
    if result.status_code != 200:
        raise RuntimeError(f"watch {token} answered HTTP {result.status_code}")


def completed_posts(harness: Harness) -> int:
    return sum(
        1
        for r in harness.emulator.calls("chat.postMessage")
        if r.ok and r.params.get("thread_ts") and "Completed" in str(r.params.get("text", ""))
    )


def summarise(results: dict[str, list[Outcome]], interval: float) -> dict[str, Any]:
    rows: list[list[object]] = []
    summary: dict[str, Any] = {"interval": interval, "modes": {}}
    for name, outcomes in results.items():
        polls = [o.poll_lag for o in outcomes if o.poll_lag is not None]
        posts = [o.post_lag for o in outcomes if o.post_lag is not None]
        calls = [o.calls for o in outcomes]
        over = sum(1 for o in outcomes if o.calls > o.fixed_bound)
        figures = {
            "imports": len(outcomes),
            "seen": len(polls),
            "posted": len(posts),
            "poll_p50": percentile(polls, 50),
            "poll_p95": percentile(polls, 95),
            "post_p50": percentile(posts, 50),
            "post_p95": percentile(posts, 95),
            "calls_per_import": sum(calls) / len(calls),
            "fixed_bound_per_import": sum(o.fixed_bound for o in outcomes) / len(outcomes),
            "over_bound": over,
        }
        summary["modes"][name] = figures
        rows.append(
            [
                name,
                figures["posted"],
                figures["poll_p50"],
                figures["poll_p95"],
                figures["poll_p50"] / interval,
                figures["poll_p95"] / interval,
                figures["post_p50"],
                figures["post_p95"],
                figures["post_p50"] / interval,
                figures["post_p95"] / interval,
                figures["calls_per_import"],
                figures["fixed_bound_per_import"],
                over,
            ]
        )
    print(
        table(
            [
                "mode",
                "posted",
                "poll p50 s",
                "poll p95 s",
                "p50/I",
                "p95/I",
                "post p50 s",
                "post p95 s",
                "p50/I",
                "p95/I",
                "calls/import",
                "fixed bound",
                "over bound",
            ],
            rows,
        )
    )
    print()
    print(f"post lag by how long the import was Processing (I = {interval:g} s):")
    split_rows: list[list[object]] = []
    for name, outcomes in results.items():
        for label, keep in (
            (f"under {SHORT:g} I", lambda o: o.intervals < SHORT),
            (f"{SHORT:g} I or more", lambda o: o.intervals >= SHORT),
        ):
            lags = [o.post_lag for o in outcomes if keep(o) and o.post_lag is not None]
            split_rows.append(
                [
                    name,
                    label,
                    len(lags),
                    percentile(lags, 50) / interval,
                    percentile(lags, 95) / interval,
                ]
            )
    print(table(["mode", "processing", "imports", "post p50/I", "post p95/I"], split_rows))
    fixed, eta = (summary["modes"][m.name] for m in modes(interval))
    ratios = {
        "post_p50": eta["post_p50"] / fixed["post_p50"],
        "post_p95": eta["post_p95"] / fixed["post_p95"],
        "calls": eta["calls_per_import"] / fixed["calls_per_import"],
    }
    summary["eta_over_fixed"] = ratios
    print(
        f"ETA-aware / fixed-interval: post lag p50 {ratios['post_p50']:.2f}, "
        f"p95 {ratios['post_p95']:.2f}, API calls per import {ratios['calls']:.2f}"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--imports", type=int, default=100, help="imports per mode")
    parser.add_argument("--interval", type=float, default=4.0, help="POLL_INTERVAL_SECONDS")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    info = print_machine()
    load_start = os.getloadavg()
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in load_start)}")
    print(
        f"{args.imports} imports per mode, POLL_INTERVAL_SECONDS={args.interval:g} "
        f"(scaled down), TICK_SECONDS={args.interval / 30:.3f}"
    )
    summary = run(args)
    load_end = os.getloadavg()
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in load_end)}")
    write_json(
        args.json,
        {"machine": info, "load_start": load_start, "load_end": load_end, **summary},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

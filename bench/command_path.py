"""The command path: signed ``/import-status TOKEN`` requests against a real ``serve`` process.

M lookups are sent K at a time to ``POST /slack/events`` of a real bot
process (started by ``bot.sandbox.harness.Harness``), once with the simulator
answering in 50 ms and once in 5 s. Each of the K senders sends its next
command as soon as the previous one is acknowledged, as Slack does: Slack
waits for the acknowledgement only.

Measured per request: the acknowledgement time (the HTTP response of
/slack/events) and the time to the final answer: the acknowledgement itself
when it carried the status, else the arrival of the bot's post to the
response_url, as the Slack emulator recorded it. Slack allows 3 s for the
acknowledgement.

    .venv/bin/python -m bench.command_path              # M=500 K=20
    .venv/bin/python -m bench.command_path -m 60        # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import SimulatorProcess, percentile, print_machine, table, write_json
from bot.sandbox.harness import SIGNING_SECRET, BotProcess, Harness
from bot.sandbox.slack_emulator import message_text, sign_request, slash_command_body, wait_for

SLACK_ACK_LIMIT = 3.0


@dataclass
class Lookup:
    token: int
    response_url: str
    sent_at: float
    ack_seconds: float = 0.0
    status_code: int = 0
    answered_in_ack: bool = False
    final_seconds: float | None = None
    answer: str = ""


async def send_lookups(
    harness: Harness, bot: BotProcess, tokens: Sequence[int], concurrency: int
) -> list[Lookup]:
    """Send one lookup per token, ``concurrency`` senders, each waiting for its ack only."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for token in tokens:
        queue.put_nowait(token)
    lookups: list[Lookup] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def sender(n: int) -> None:
            channel, user = f"C{n:05d}", f"U{n:05d}"
            while not queue.empty():
                token = queue.get_nowait()
                response_url = harness.emulator.new_response_url(channel=channel, user=user)
                body = slash_command_body(
                    str(token), channel_id=channel, user_id=user, response_url=response_url
                )
                headers = {
                    "Content-Type": "application/x-www-form-urlencoded",
                    **sign_request(SIGNING_SECRET, body),
                }
                lookup = Lookup(token, response_url, time.monotonic())
                async with session.post(bot.events_url, data=body, headers=headers) as answer:
                    raw = await answer.read()
                    lookup.ack_seconds = time.monotonic() - lookup.sent_at
                    lookup.status_code = answer.status
                text = message_text(_json(raw)) if raw else ""
                if text and not text.startswith("Looking up"):
                    lookup.answered_in_ack = True
                    lookup.final_seconds = lookup.ack_seconds
                    lookup.answer = text
                lookups.append(lookup)

        await asyncio.gather(*(sender(n) for n in range(concurrency)))
    return lookups


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return {"text": raw.decode(errors="replace")}


def collect_final_answers(harness: Harness, lookups: list[Lookup], timeout: float) -> None:
    """Wait for the response_url posts of lookups not answered in their ack."""
    waiting = [lk for lk in lookups if not lk.answered_in_ack]

    def arrived() -> bool:
        return all(harness.emulator.response_times(lk.response_url) for lk in waiting)

    with contextlib.suppress(AssertionError):  # missing answers are counted below
        wait_for(arrived, timeout=timeout, interval=0.1, description="every final answer")
    for lk in waiting:
        times = harness.emulator.response_times(lk.response_url)
        if times:
            lk.final_seconds = times[0] - lk.sent_at
            lk.answer = message_text(harness.emulator.responses(lk.response_url)[0])


def summarise(phase: str, lookups: list[Lookup], wall: float) -> dict[str, Any]:
    acks = [lk.ack_seconds for lk in lookups]
    finals = [lk.final_seconds for lk in lookups if lk.final_seconds is not None]
    statuses = [lk for lk in lookups if "Simulated import" in lk.answer]
    return {
        "phase": phase,
        "requests": len(lookups),
        "seconds": wall,
        "http_errors": sum(1 for lk in lookups if lk.status_code != 200),
        "answered_in_ack": sum(1 for lk in lookups if lk.answered_in_ack),
        "final_missing": len(lookups) - len(finals),
        "final_not_a_status": len(lookups) - len(statuses),
        "ack": _stats(acks),
        "final": _stats(finals),
        "acks_over_3s": sum(1 for a in acks if a >= SLACK_ACK_LIMIT),
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


async def run_phase(
    harness: Harness,
    bot: BotProcess,
    sim: SimulatorProcess,
    delay: float,
    args: argparse.Namespace,
    first: int,
) -> dict[str, Any]:
    sim.set_delay(delay)
    tokens = [sim.tokens[(first + i) % len(sim.tokens)] for i in range(args.requests)]
    started = time.monotonic()
    lookups = await send_lookups(harness, bot, tokens, args.concurrency)
    await asyncio.to_thread(collect_final_answers, harness, lookups, delay * 4 + 30)
    wall = time.monotonic() - started
    return summarise(f"API answers in {delay:g} s", lookups, wall)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with (
        SimulatorProcess(max(1000, args.requests), 0.0) as sim,
        tempfile.TemporaryDirectory(prefix="isb-bench-") as tmp,
        Harness(Path(tmp), quiet_logs=True) as harness,
    ):
        bot = harness.start_bot(
            **sim.env(),
            LOOKUP_RATE_LIMIT=1_000_000_000,
            HTTP_TIMEOUT_SECONDS=30,
            LOOKUP_BUDGET_SECONDS=60,
            LOG_LEVEL="WARNING",
        )
        await send_lookups(harness, bot, list(sim.tokens[:20]), 5)  # warm up
        results = []
        for n, delay in enumerate(args.delays):
            results.append(await run_phase(harness, bot, sim, delay, args, n * args.requests))
        return results


def _ms(seconds: float) -> int | str:
    return "-" if math.isnan(seconds) else round(seconds * 1000)


def print_report(results: list[dict[str, Any]], concurrency: int) -> None:
    rows = []
    for r in results:
        for what in ("ack", "final"):
            s = r[what]
            rows.append(
                (
                    r["phase"],
                    "acknowledgement" if what == "ack" else "final answer",
                    _ms(s["p50"]),
                    _ms(s["p95"]),
                    _ms(s["p99"]),
                    _ms(s["max"]),
                )
            )
    print(table(("phase", "time to", "p50 ms", "p95 ms", "p99 ms", "max ms"), rows))
    print()
    for r in results:
        print(
            f"{r['phase']}: {r['requests']} lookups, K={concurrency}, {r['seconds']:.1f} s; "
            f"{r['answered_in_ack']} answered in the ack, "
            f"{r['requests'] - r['answered_in_ack'] - r['final_missing']} via response_url, "
            f"{r['final_missing']} missing; non-200 acks {r['http_errors']}; "
            f"acks >= 3 s: {r['acks_over_3s']}; answers without the status: "
            f"{r['final_not_a_status']}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--requests", type=int, default=500, help="lookups per phase (M)")
    parser.add_argument("-k", "--concurrency", type=int, default=20, help="senders (K)")
    parser.add_argument(
        "--delays",
        type=float,
        nargs="+",
        default=[0.05, 5.0],
        help="API answer delays, one phase each (s)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    info = print_machine()
    results = asyncio.run(run(args))
    print_report(results, args.concurrency)
    write_json(args.json, {"machine": info, "concurrency": args.concurrency, "phases": results})
    worst = max(r["ack"]["p99"] for r in results)
    return 0 if worst < SLACK_ACK_LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())

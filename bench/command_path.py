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

``--baseline REV`` also starts a bot from the code of git revision REV
(``git archive`` into a temporary folder, run from there) beside the bot of
this checkout, on the same simulator, emulator and database; the bots are
measured in turns (``--rounds`` times each, per API delay), so all see the
same machine and load, and the table gives each one's p99 against the
baseline's. ``--also REV_OR_FOLDER`` adds more bots the same way (a folder
holding ``bot/`` and ``migrations/``, e.g. this branch with another's files).
``--profile PATH`` runs this checkout's bot under cProfile
(``bench/profiled_serve.py``) during its measured phases and prints where the
event loop's time went per request.

    .venv/bin/python -m bench.command_path              # M=500 K=20
    .venv/bin/python -m bench.command_path -m 60        # a quick run
    .venv/bin/python -m bench.command_path --baseline main --rounds 3
    .venv/bin/python -m bench.command_path --profile /tmp/ack.prof --delays 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    REPO,
    SimulatorProcess,
    percentile,
    print_machine,
    process_cpu_seconds,
    table,
    write_json,
)
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


def summarise(
    variant: str, phase: str, lookups: list[Lookup], wall: float, cpu: float, loop_cpu: float
) -> dict[str, Any]:
    acks = [lk.ack_seconds for lk in lookups]
    finals = [lk.final_seconds for lk in lookups if lk.final_seconds is not None]
    statuses = [lk for lk in lookups if "Simulated import" in lk.answer]
    return {
        "variant": variant,
        "phase": phase,
        "requests": len(lookups),
        "seconds": wall,
        "bot_cpu_ms_per_lookup": cpu * 1000 / len(lookups),
        "loop_cpu_ms_per_lookup": loop_cpu * 1000 / len(lookups),
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


class CommandBot(BotProcess):
    """A bot process started as ``argv`` from ``cwd``: another revision's code, or profiled."""

    def __init__(self, env: dict[str, str], log_path: Path, argv: list[str], cwd: Path) -> None:
        super().__init__(env, log_path)
        self.argv = argv
        self.cwd = cwd

    def spawn(self) -> BotProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self


def start_command_bot(
    harness: Harness, name: str, argv: list[str], cwd: Path, env: dict[str, str]
) -> CommandBot:
    bot = CommandBot({**harness.base_env, **env}, harness.workdir / f"{name}.log", argv, cwd)
    harness.bots.append(bot)  # the harness stops it whatever happens
    bot.start()
    return bot


def export_revision(revision: str, into: Path) -> Path:
    """The ``bot`` package and its migrations as they were at ``revision``, in ``into``.

    A folder that holds ``bot/`` already is used as it is.
    """
    if (Path(revision) / "bot").is_dir():
        return Path(revision).resolve()
    archive = subprocess.run(
        ["git", "archive", revision, "bot", "migrations"], cwd=REPO, check=True, capture_output=True
    ).stdout
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@dataclass
class Variant:
    """One bot being measured: its name in the table, its process, its phases."""

    name: str
    bot: BotProcess
    profiled: bool = False
    lookups: dict[float, list[Lookup]] = field(default_factory=dict)
    seconds: dict[float, float] = field(default_factory=dict)
    cpu_seconds: dict[float, float] = field(default_factory=dict)
    loop_cpu_seconds: dict[float, float] = field(default_factory=dict)


def loop_cpu_seconds(pid: int) -> float:
    """CPU time of the process's main thread: uvicorn's event loop, where requests are served."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_phase(
    harness: Harness,
    variant: Variant,
    sim: SimulatorProcess,
    delay: float,
    args: argparse.Namespace,
    first: int,
) -> None:
    sim.set_delay(delay)
    tokens = [sim.tokens[(first + i) % len(sim.tokens)] for i in range(args.requests)]
    if variant.profiled:
        os.kill(variant.bot.pid, signal.SIGUSR1)
    started = time.monotonic()
    cpu, loop_cpu = process_cpu_seconds(variant.bot.pid), loop_cpu_seconds(variant.bot.pid)
    lookups = await send_lookups(harness, variant.bot, tokens, args.concurrency)
    await asyncio.to_thread(collect_final_answers, harness, lookups, delay * 4 + 30)
    cpu = process_cpu_seconds(variant.bot.pid) - cpu
    loop_cpu = loop_cpu_seconds(variant.bot.pid) - loop_cpu
    if variant.profiled:
        os.kill(variant.bot.pid, signal.SIGUSR2)
        await asyncio.sleep(0.5)  # the stats are written by the signal handler
    variant.lookups.setdefault(delay, []).extend(lookups)
    variant.seconds[delay] = variant.seconds.get(delay, 0.0) + time.monotonic() - started
    variant.cpu_seconds[delay] = variant.cpu_seconds.get(delay, 0.0) + cpu
    variant.loop_cpu_seconds[delay] = variant.loop_cpu_seconds.get(delay, 0.0) + loop_cpu


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with (
        SimulatorProcess(max(1000, args.requests), 0.0) as sim,
        tempfile.TemporaryDirectory(prefix="isb-bench-") as tmp,
        Harness(Path(tmp), quiet_logs=True) as harness,
    ):
        env = {
            **sim.env(),
            "LOOKUP_RATE_LIMIT": "1000000000",
            "HTTP_TIMEOUT_SECONDS": "30",
            "LOOKUP_BUDGET_SECONDS": "60",
            "LOG_LEVEL": "WARNING",
        }
        variants = []
        others = [("baseline", args.baseline)] if args.baseline else []
        others += [(f"also-{n}", revision) for n, revision in enumerate(args.also or [])]
        for name, revision in others:
            code = export_revision(revision, Path(tmp) / name)
            serve = [sys.executable, "-m", "bot", "serve"]
            bot = start_command_bot(harness, name, serve, code, env)
            label = Path(revision).name if Path(revision).is_dir() else revision
            variants.append(Variant(f"{name.split('-')[0]} ({label})", bot))
        if args.profile:
            argv = [sys.executable, "-m", "bench.profiled_serve", str(Path(args.profile).resolve())]
            bot = start_command_bot(harness, "profiled", argv, REPO, env)
            variants.append(Variant("this checkout", bot, profiled=True))
        else:
            variants.append(Variant("this checkout", harness.start_bot(**env)))
        for variant in variants:
            await send_lookups(harness, variant.bot, list(sim.tokens[:20]), 5)  # warm up
        first = 0
        for delay in args.delays:
            for _ in range(args.rounds):
                for variant in variants:
                    await run_phase(harness, variant, sim, delay, args, first)
                    first += args.requests
        return [
            summarise(
                variant.name,
                f"API answers in {delay:g} s",
                variant.lookups[delay],
                variant.seconds[delay],
                variant.cpu_seconds[delay],
                variant.loop_cpu_seconds[delay],
            )
            for delay in args.delays
            for variant in variants
        ]


def _ms(seconds: float) -> int | str:
    return "-" if math.isnan(seconds) else round(seconds * 1000)


def print_report(results: list[dict[str, Any]], concurrency: int) -> None:
    baselines = {r["phase"]: r for r in results if r["variant"].startswith("baseline")}
    rows = []
    for r in results:
        base = baselines.get(r["phase"])
        for what in ("ack", "final"):
            s = r[what]
            ratio = "-"
            if base is not None and base is not r:
                ratio = f"{s['p99'] / base[what]['p99']:.2f}"
            rows.append(
                (
                    r["phase"],
                    r["variant"],
                    "acknowledgement" if what == "ack" else "final answer",
                    _ms(s["p50"]),
                    _ms(s["p95"]),
                    _ms(s["p99"]),
                    _ms(s["max"]),
                    ratio,
                )
            )
    headers = ("phase", "bot", "time to", "p50 ms", "p95 ms", "p99 ms", "max ms", "p99/base")
    print(table(headers, rows))
    print()
    for r in results:
        print(
            f"{r['phase']}, {r['variant']}: {r['requests']} lookups, K={concurrency}, "
            f"{r['seconds']:.1f} s; bot CPU per lookup {r['bot_cpu_ms_per_lookup']:.2f} ms "
            f"({r['loop_cpu_ms_per_lookup']:.2f} ms in the event loop's thread); "
            f"{r['answered_in_ack']} answered in the ack, "
            f"{r['requests'] - r['answered_in_ack'] - r['final_missing']} via response_url, "
            f"{r['final_missing']} missing; non-200 acks {r['http_errors']}; "
            f"acks >= 3 s: {r['acks_over_3s']}; answers without the status: "
            f"{r['final_not_a_status']}"
        )


# Where the event loop's time goes, by who does the work: (part, path fragments). A
# function of none of these (the standard library, builtins, h11, anyio...) is
# charged to whoever called it, so parse_qsl counts where it was called from.
PROFILE_PARTS = (
    ("uvicorn: HTTP parsing and writing", ("/uvicorn/",)),
    ("Starlette: routing, Request", ("/starlette/",)),
    (
        "server.py + incoming.py: signature, body checks",
        ("/bot/server.py", "/bot/slack/incoming.py"),
    ),
    ("Bolt: request, middleware chain, dispatch, ack", ("/slack_bolt/",)),
    ("slack_sdk (respond, signature verifier)", ("/slack_sdk/",)),
    ("our fast path (quick_ack.py)", ("/bot/slack/quick_ack.py",)),
    ("listeners (commands, access)", ("/bot/slack/listeners/",)),
    ("rendering Block Kit", ("/bot/slack/render",)),
    ("the API call (client, httpx, httpcore)", ("/bot/mypreferences/", "/httpx/", "/httpcore/")),
    ("database, service (to_thread hand-offs)", ("/bot/service.py", "/bot/store/", "/sqlalchemy/")),
    ("other bot code", ("/bot/",)),
)
LOOP_PARTS = ("base_events.py:", "selectors.py:", "'poll' of 'select.epoll'")
IDLE = "'poll' of 'select.epoll'"


def _part_of(function: tuple[str, int, str]) -> str | None:
    where = f"{function[0]}:{function[2]}"
    for name, fragments in PROFILE_PARTS:
        if any(fragment in where for fragment in fragments):
            return name
    if any(fragment in where for fragment in LOOP_PARTS):
        return "the event loop itself"
    return None


def profile_breakdown(path: str) -> dict[str, float]:
    """Seconds of the profiled thread per part, each function's own time charged to its part.

    A function of no part passes its own time up to its callers in proportion to
    the time spent under each caller, until a function of a part is reached (the
    shares of each function are worked out once; a cycle counts as the loop's).
    """
    import pstats

    stats: dict[Any, Any] = pstats.Stats(path).stats  # type: ignore[attr-defined]
    known: dict[Any, dict[str, float]] = {}

    def shares(function: Any, visiting: frozenset[Any]) -> dict[str, float]:
        if function in known:
            return known[function]
        part = _part_of(function)
        if IDLE in function[2]:
            part = "idle (waiting in epoll)"
        callers = {c: e for c, e in stats[function][4].items() if c in stats and c not in visiting}
        total = sum(edge[3] for edge in callers.values())
        if part is not None or total <= 0:
            result = {part or "the event loop itself": 1.0}
        else:
            result = {}
            for caller, edge in callers.items():
                for name, share in shares(caller, visiting | {function}).items():
                    result[name] = result.get(name, 0.0) + share * edge[3] / total
        if not visiting:
            known[function] = result
        return result

    parts: dict[str, float] = {}
    for function, (_, _, own, _, _) in stats.items():
        for name, share in shares(function, frozenset()).items():
            parts[name] = parts.get(name, 0.0) + own * share
    return parts


def print_profile(path: str, requests: int) -> None:
    parts = profile_breakdown(path)
    busy = sum(v for k, v in parts.items() if not k.startswith("idle"))
    rows = [
        (part, f"{seconds * 1000 / requests:.3f}", f"{100 * seconds / busy:.1f}%")
        for part, seconds in sorted(parts.items(), key=lambda item: -item[1])
        if not part.startswith("idle")
    ]
    rows.append(("all of the above", f"{busy * 1000 / requests:.3f}", "100.0%"))
    print(f"cProfile of the bot's event loop thread, {requests} lookups ({path}):")
    print(table(("part", "ms per lookup (profiled)", "share"), rows))


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
    parser.add_argument(
        "--baseline", metavar="REV", help="also measure the bot of this git revision, in turns"
    )
    parser.add_argument(
        "--also",
        metavar="REV_OR_FOLDER",
        nargs="+",
        help="more bots to measure in turns: git revisions, or folders holding bot/",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="phases per bot and delay, taken in turns"
    )
    parser.add_argument(
        "--profile", metavar="PATH", help="cProfile this checkout's bot; stats to PATH"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    info = print_machine()
    results = asyncio.run(run(args))
    print_report(results, args.concurrency)
    if args.profile:
        print()
        requests = args.requests * args.rounds * len(args.delays)
        print_profile(args.profile, requests)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    write_json(args.json, {"machine": info, "concurrency": args.concurrency, "phases": results})
    worst = max(r["ack"]["p99"] for r in results)
    return 0 if worst < SLACK_ACK_LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The poll engine: one full cycle over N watched imports with the real Poller.

The simulator runs in its own process (seeded with N identical Processing
imports, each answer delayed by D seconds), so this process's CPU time is the
bot's alone; ``--server raw`` puts ``bench/status_server.py`` in its place,
which answers the same body for half the CPU, so that its own queueing does
not count against the bot. N imports and subscriptions are written straight
into a scratch database, all due now, and one ``Poller.tick()`` polls them
all, C requests at a time. Every poll is unchanged, so nothing is sent to Slack.

Measured: the cycle time against the lower bound N*D/C, CPU ms per poll,
database rows written per poll (an ``after_cursor_execute`` listener sums the
rowcount of INSERT/UPDATE/DELETE statements), peak RSS, and a baseline: the
sequential loop a user would write by hand with the same client, over a
sample, extrapolated to N.

The product's client and, for the ratio, the client as it was before issue 13
(``--client old``: httpx's own pools, split into pools of 10 connections, through
``httpx.AsyncClient``; kept here only) run in alternation, each in a fresh
process, ``--rounds`` times; the summary gives each run and the same-round CPU
ratio against the old client.

    .venv/bin/python -m bench.poll_engine                    # N=10000 D=0.05 C=50, SQLite
    .venv/bin/python -m bench.poll_engine -c 200             # C=200 (bound 2.5 s)
    .venv/bin/python -m bench.poll_engine -n 1000            # a quick run
    .venv/bin/python -m bench.poll_engine --server raw       # an API that is not the bottleneck
    .venv/bin/python -m bench.poll_engine --client new --profile /tmp/p.prof
    .venv/bin/python -m bench.poll_engine --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import math
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import Engine, event

from bench.common import (
    CLIENT_ID,
    SEED_FIRST_TOKEN,
    SimulatorProcess,
    print_machine,
    process_cpu_seconds,
    scratch_database,
    seed_watches,
    table,
    write_json,
)
from bench.status_server import AUTHORIZATION as STATUS_AUTHORIZATION
from bot.config import Need, load_settings
from bot.domain.status import ImportStatus
from bot.metrics import METRICS
from bot.mypreferences.client import MyPreferencesClient
from bot.runtime import settle_heap
from bot.slack.delivery import Delivery
from bot.store import Store
from bot.store.engine import make_engine, migrate
from bot.watch.poller import Poller

OWNER = "bench-poll-engine"


class WriteCounter:
    """Rows written, from each INSERT/UPDATE/DELETE's cursor.rowcount."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self.statements: dict[str, int] = {}
        # SQLite reports the rowcount of an UPDATE ... RETURNING only once its rows
        # are fetched; psycopg reports it at once (and 0 after the cursor closes).
        # So the cursors are kept and the larger of the two readings counts.
        self._cursors: list[tuple[str, Any, int]] = []
        event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb not in ("INSERT", "UPDATE", "DELETE"):
            return
        kind = "lease claims" if "RETURNING" in statement.upper() else "result saves"
        with self._lock:
            self.statements[kind] = self.statements.get(kind, 0) + 1
            self._cursors.append((kind, cursor, cursor.rowcount))

    def rows(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        with self._lock:
            for kind, cursor, early in self._cursors:
                totals[kind] = totals.get(kind, 0) + max(early, cursor.rowcount, 0)
        return totals

    def reset(self) -> None:
        with self._lock:
            self.statements.clear()
            self._cursors.clear()


class SplitHttpxPools(httpx.AsyncBaseTransport):
    """The client's HTTP before issue 13, for the comparison only.

    Up to ``max_connections`` split into ``httpx.AsyncClient`` pools of at most 10
    (httpcore's pool cost grows with its size), each request on the least busy
    one, sent with ``AsyncClient.send(stream=True)`` as ``AsyncClient.stream`` did.
    """

    def __init__(self, max_connections: int, timeout: float) -> None:
        pools = math.ceil(max_connections / 10)
        size = math.ceil(max_connections / pools)
        tls = httpx.create_ssl_context()
        self._pools = [
            httpx.AsyncClient(
                timeout=timeout,
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                verify=tls,
            )
            for _ in range(pools)
        ]
        self._in_flight = [0] * pools

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        pool = min(range(len(self._pools)), key=self._in_flight.__getitem__)
        self._in_flight[pool] += 1
        try:
            return await self._pools[pool].send(request, stream=True)
        finally:
            self._in_flight[pool] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class RawStatusServer:
    """``bench/status_server.py`` in its own process, in place of the simulator.

    The same status body for every token, after D seconds, from a raw asyncio
    protocol: at C=50 the simulator (Starlette) spends about twice its CPU per
    answer and queues bursts of answers, which the bound N*D/C does not allow
    for. It does not count calls (``calls_by_token`` is None).
    """

    def __init__(self, imports: int, delay: float) -> None:
        self.tokens = range(SEED_FIRST_TOKEN, SEED_FIRST_TOKEN + imports)
        argv = [sys.executable, "-m", "bench.status_server", "--delay", str(delay), "--no-bomb"]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()  # "ready PORT"
        if ready[:1] != ["ready"]:
            self.process.kill()
            raise RuntimeError("bench.status_server did not start")
        self.port = int(ready[1])

    def __enter__(self) -> RawStatusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)

    def env(self) -> dict[str, str]:
        return {
            "MYPREFERENCES_API_URL": f"http://127.0.0.1:{self.port}/",
            "MYPREFERENCES_CLIENT_ID": CLIENT_ID,  # the server's one route: /Async/ACME/...
            "MYPREFERENCES_AUTHORIZATION": STATUS_AUTHORIZATION,
        }

    def reset_calls(self) -> None:
        pass

    def calls_by_token(self) -> None:
        return None

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)


def _seed(database_url: str, template: dict[str, Any], tokens: Sequence[int]) -> None:
    """Runs in a child process, so seeding does not count in this process's peak RSS."""
    engine = make_engine(database_url)
    seed_watches(engine, ImportStatus.from_json(template), tokens, datetime.now(UTC))
    engine.dispose()


OUTCOMES = ("unchanged", "changed", "error", "expired")


def _polls(outcome: str) -> float:
    """The watcher's own count of polls with this outcome (its Prometheus counter)."""
    return METRICS.polls.labels(outcome=outcome)._value.get()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n, delay, concurrency = args.imports, args.delay, args.concurrency
    max_connections = max(100, concurrency + 20)  # as bot.runtime does
    server = RawStatusServer if args.server == "raw" else SimulatorProcess
    with (
        server(n, delay) as sim,
        scratch_database(args.database_url) as database_url,
    ):
        settings = load_settings(
            {
                **sim.env(),
                "DATABASE_URL": database_url,
                "POLL_CONCURRENCY": str(concurrency),
                "POLL_INTERVAL_SECONDS": "3600",  # one cycle: nothing becomes due again
                "LEASE_SECONDS": "3600",
                "HTTP_TIMEOUT_SECONDS": "60",
            },
            {Need.API, Need.DATABASE},
        )
        engine = make_engine(database_url)
        migrate(engine)
        old = None
        if args.client == "old":
            old = SplitHttpxPools(max_connections, settings.http_timeout_seconds)
        api = MyPreferencesClient(settings, transport=old, max_connections=max_connections)
        template = await api.get_status(sim.tokens[0])
        seeder = multiprocessing.get_context("spawn").Process(
            target=_seed, args=(database_url, template.to_json(), list(sim.tokens))
        )
        seeder.start()
        seeder.join()
        if seeder.exitcode != 0:
            raise RuntimeError("seeding the database failed")
        sim.reset_calls()

        store = Store(engine)
        slack = AsyncWebClient(token="xoxb-bench", base_url="http://127.0.0.1:9/api/")
        delivery = Delivery(store.outbox, slack, OWNER, lease_seconds=settings.lease_seconds)
        watcher = Poller(settings, store.polls, api, delivery, OWNER)
        writes = WriteCounter(engine)
        settle_heap()  # as `serve` does once start-up is done
        rss_before = peak_rss_mb()

        before = {o: _polls(o) for o in OUTCOMES}
        # The CPU timer: on a shared machine wall time would count the waits for a core.
        profiler = cProfile.Profile(time.process_time) if args.profile else None
        sim_cpu = sim.cpu_seconds()
        cpu = time.process_time()
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        report = await watcher.tick()
        # The tick ends once nothing is left to lease; polls still in flight then
        # finish in the background (the next tick saves them). The cycle ends with them.
        stragglers = n - report.polled
        await watcher.drain(settings.http_timeout_seconds)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        cycle = time.perf_counter() - started
        cpu = time.process_time() - cpu
        sim_cpu = sim.cpu_seconds() - sim_cpu
        rows = writes.rows()
        statements = dict(writes.statements)
        calls = sim.calls_by_token()
        outcomes = {o: _polls(o) - before[o] for o in OUTCOMES}
        if outcomes["unchanged"] + outcomes["error"] != n:
            raise RuntimeError(f"the cycle polled {outcomes}, not {n} imports")
        if report.notifications:
            raise RuntimeError(f"{report.notifications} notifications: a poll was not unchanged")
        peak = peak_rss_mb()

        # Baseline: the loop a user would write by hand, same client, same simulator.
        sample = list(sim.tokens[: min(args.sample, n)])
        baseline_started = time.perf_counter()
        for token in sample:
            await api.get_status(token)
        baseline = (time.perf_counter() - baseline_started) / len(sample) * n

        await api.aclose()
        if old is not None:
            await old.aclose()
        engine.dispose()

    bound = n * delay / concurrency
    total_rows = sum(rows.values())
    return {
        "imports": n,
        "delay_s": delay,
        "concurrency": concurrency,
        "client": args.client,
        "server": args.server,
        "max_connections": max_connections,
        "database": database_url.split(":", 1)[0],
        "capacity": watcher.capacity,
        "cycle_s": cycle,
        "bound_s": bound,
        "bound_over_measured": bound / cycle,
        "polls_per_s": n / cycle,
        "cpu_ms_per_poll": cpu / n * 1000,
        "bot_cpu_util": cpu / cycle,
        "simulator_cpu_util": sim_cpu / cycle,
        "failed_polls": int(outcomes["error"]),
        "finished_after_tick": stragglers,
        "status_calls": sum(calls.values()) if calls is not None else None,
        "tokens_called_twice": sum(1 for c in calls.values() if c > 1) if calls else 0,
        "rows_written_per_poll": total_rows / n,
        "rows_written": rows,
        "write_statements": statements,
        "peak_rss_mb": peak,
        "rss_before_cycle_mb": rss_before,
        "baseline_sample": len(sample),
        "baseline_extrapolated_s": baseline,
        "speedup": baseline / cycle,
    }


def print_report(r: dict[str, Any]) -> None:
    n = r["imports"]
    lease_rows = r["rows_written"].get("lease claims", 0)
    save_rows = r["rows_written"].get("result saves", 0)
    statements = r["write_statements"]
    calls = (
        f"{r['status_calls']} status calls, {r['tokens_called_twice']} tokens twice"
        if r["status_calls"] is not None
        else "calls not counted (raw server)"
    )
    rows: list[tuple[str, object, str]] = [
        ("imports polled (N)", n, ""),
        ("API server", r["server"], SERVERS[r["server"]]),
        ("response delay D / concurrency C", f"{r['delay_s']:g} s / {r['concurrency']}", ""),
        ("database, leased in flight", f"{r['database']}, {r['capacity']}", ""),
        ("client, connections", f"{r['client']}, {r['max_connections']}", CLIENTS[r["client"]]),
        ("cycle time", f"{r['cycle_s']:.2f} s", f"{r['polls_per_s']:.0f} polls/s"),
        (
            "polls that failed",
            r["failed_polls"],
            f"{calls}, {r['finished_after_tick']} finished after the tick",
        ),
        ("lower bound N*D/C", f"{r['bound_s']:.2f} s", ""),
        ("bound / measured", f"{r['bound_over_measured']:.2f}", "goal >= 0.8"),
        (
            "CPU per poll",
            f"{r['cpu_ms_per_poll']:.3f} ms",
            f"bot {r['bot_cpu_util']:.0%} of a core, "
            f"server {r['simulator_cpu_util']:.0%} of a core",
        ),
        (
            "rows written per poll",
            f"{r['rows_written_per_poll']:.2f}",
            f"result saves {save_rows / n:.2f} + lease claims {lease_rows / n:.2f}; "
            f"{statements.get('result saves', 0)} + {statements.get('lease claims', 0)} "
            "statements",
        ),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB", f"{r['rss_before_cycle_mb']:.0f} MB before"),
        (
            "baseline: sequential loop",
            f"{r['baseline_extrapolated_s']:.1f} s",
            f"{r['baseline_sample']} polls timed, extrapolated to N",
        ),
        ("speed-up over baseline", f"{r['speedup']:.1f}x", ""),
    ]
    print(table(("measure", "value", "note"), rows))


SERVERS = {
    "simulator": "the MyPreferences simulator (Starlette), its own process",
    "raw": "bench/status_server.py (raw asyncio), its own process",
}
CLIENTS = {
    "new": "one aiohttp pool behind httpx types (the product)",
    "old": "httpx.AsyncClient pools of 10 (before issue 13)",
}


def _run_in_child(args: argparse.Namespace, client: str) -> dict[str, Any]:
    """One cycle with ``client`` in a fresh process (this module, ``--child``)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        argv = [sys.executable, "-m", "bench.poll_engine", "--child", str(out)]
        argv += ["-n", str(args.imports), "-d", str(args.delay), "-c", str(args.concurrency)]
        argv += ["--sample", str(args.sample), "--client", client, "--server", args.server]
        if args.database_url:
            argv += ["--database-url", args.database_url]
        subprocess.run(argv, check=True)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def print_summary(results: list[dict[str, Any]]) -> None:
    """One row per run; CPU against the old client of the same round."""
    rows = []
    for r in results:
        same_round = [o for o in results if o["round"] == r["round"] and o["client"] == "old"]
        ratio = r["cpu_ms_per_poll"] / same_round[0]["cpu_ms_per_poll"] if same_round else None
        rows.append(
            (
                r["round"],
                r["client"],
                r["concurrency"],
                round(r["cycle_s"], 2),
                round(r["bound_s"], 2),
                round(r["bound_over_measured"], 2),
                round(r["cpu_ms_per_poll"], 3),
                "" if ratio is None else f"{ratio:.2f}",
                round(r["peak_rss_mb"]),
                r["failed_polls"],
            )
        )
    headers = (
        "round",
        "client",
        "C",
        "cycle s",
        "bound s",
        "bound/measured",
        "CPU ms/poll",
        "CPU vs old",
        "peak RSS MB",
        "failed",
    )
    print(table(headers, rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--imports", type=int, default=10_000, help="watched imports")
    parser.add_argument("-d", "--delay", type=float, default=0.05, help="API answer delay (s)")
    parser.add_argument("-c", "--concurrency", type=int, default=50, help="POLL_CONCURRENCY")
    parser.add_argument("--sample", type=int, default=200, help="baseline sample size")
    parser.add_argument("--database-url", help="PostgreSQL server URL (default: SQLite file)")
    parser.add_argument(
        "--client",
        choices=("both", *CLIENTS),
        default="both",
        help="the product's client, the old one, or both in alternation (default)",
    )
    parser.add_argument(
        "--server",
        choices=("simulator", "raw"),
        default="simulator",
        help="the API: the MyPreferences simulator (Starlette), or bench/status_server.py "
        "(raw asyncio, about half the simulator's CPU per answer: not the bottleneck)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the clients")
    parser.add_argument(
        "--profile", metavar="PATH", help="write cProfile stats of the cycle (one client)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--child", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        Path(args.child).write_text(json.dumps(asyncio.run(run(args))))
        return 0
    if args.profile:
        if args.client == "both":
            parser.error("--profile needs --client new or --client old")
        print_machine()
        print_report(asyncio.run(run(args)))
        return 0

    info = print_machine()
    clients = ["old", "new"] if args.client == "both" else [args.client]
    results = []
    for round_ in range(1, args.rounds + 1):
        for client in clients:
            # A fresh process each: its CPU time, peak RSS and metrics are that run's alone.
            result = _run_in_child(args, client)
            result["round"] = round_
            print(f"\nround {round_}, client {client}:")
            print_report(result)
            results.append(result)
    print()
    print_summary(results)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {info['load_before']}, after: {load_after}")
    write_json(args.json, {"machine": {**info, "load_after": load_after}, "runs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

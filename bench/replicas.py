"""The poll engine across replicas: 1, 2 and 3 real bot processes on one PostgreSQL.

For each replica count k: a fresh database holds N watched imports, not yet
due; k ``import-status-bot serve`` processes start (each with
POLL_CONCURRENCY=C); then every import is made due at once, and the clock
runs until the simulator (its own process, answering in D seconds) has seen
N status calls. The scaling ratio is t1/tk. Each import must be polled
exactly once per cycle whatever k is; duplicates are counted.

    .venv/bin/python -m bench.replicas                  # N=10000 D=0.05 C=50, k=1,2,3
    .venv/bin/python -m bench.replicas -n 1000          # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from bench.common import (
    SimulatorProcess,
    print_machine,
    process_cpu_seconds,
    scratch_database,
    seed_watches,
    table,
    write_json,
)
from bot.config import Need, load_settings
from bot.mypreferences.client import MyPreferencesClient
from bot.sandbox.harness import Harness
from bot.store.engine import make_engine, migrate
from bot.store.tables import ImportRow

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total


async def _template(sim: SimulatorProcess) -> Any:
    settings = load_settings(sim.env(), {Need.API})
    async with MyPreferencesClient(settings) as api:
        return await api.get_status(sim.tokens[0])


def run_one(
    replicas: int, sim: SimulatorProcess, template: Any, args: argparse.Namespace
) -> dict[str, Any]:
    n = args.imports
    with (
        scratch_database(args.database_url) as database_url,
        tempfile.TemporaryDirectory(prefix="isb-bench-") as tmp,
    ):
        engine = make_engine(database_url)
        migrate(engine)
        seed_watches(engine, template, sim.tokens, datetime.now(UTC) + timedelta(days=1))
        with Harness(
            Path(tmp), database_url=database_url, poll_interval=3600, quiet_logs=True
        ) as harness:
            bots = [
                harness.start_bot(
                    **sim.env(),
                    POLL_CONCURRENCY=args.concurrency,
                    LEASE_SECONDS=600,
                    HTTP_TIMEOUT_SECONDS=30,
                    LOG_LEVEL="WARNING",
                )
                for _ in range(replicas)
            ]
            time.sleep(1.0)  # let every replica's scheduler settle into its ticks
            sim.reset_calls()
            cpu = [process_cpu_seconds(b.pid) for b in bots]
            sim_cpu = sim.cpu_seconds()
            busy, total = machine_busy_seconds()
            started = time.monotonic()
            with engine.begin() as conn:
                conn.execute(update(ImportRow).values(next_poll_at=datetime.now(UTC)))
            deadline = started + args.timeout
            calls = 0
            while calls < n and time.monotonic() < deadline:
                time.sleep(0.02)
                calls = sim.status_calls()
            elapsed = time.monotonic() - started
            cpu = [process_cpu_seconds(b.pid) - c for b, c in zip(bots, cpu, strict=True)]
            sim_cpu = sim.cpu_seconds() - sim_cpu
            busy2, total2 = machine_busy_seconds()
            time.sleep(0.5)  # anything polled twice would show up now
            by_token = sim.calls_by_token()
        engine.dispose()
    bound = n * args.delay / (replicas * args.concurrency)
    return {
        "replicas": replicas,
        "imports": n,
        "seconds": elapsed,
        "complete": calls >= n,
        "polls_per_s": min(calls, n) / elapsed,
        "bound_s": bound,
        "bound_over_measured": bound / elapsed,
        "polled_twice": sum(1 for c in by_token.values() if c > 1),
        "never_polled": n - len(by_token),
        "bot_cpu_util": [c / elapsed for c in cpu],
        "simulator_cpu_util": sim_cpu / elapsed,
        "machine_busy": (busy2 - busy) / (total2 - total),
    }


def print_report(results: list[dict[str, Any]]) -> None:
    t1 = next((r["seconds"] for r in results if r["replicas"] == 1), None)
    rows = []
    for r in results:
        rows.append(
            (
                r["replicas"],
                round(r["seconds"], 2),
                round(r["polls_per_s"]),
                round(r["bound_s"], 2),
                round(r["bound_over_measured"], 2),
                round(t1 / r["seconds"], 2) if t1 else "-",
                " ".join(f"{u:.0%}" for u in r["bot_cpu_util"]),
                f"{r['simulator_cpu_util']:.0%}",
                f"{r['machine_busy']:.0%}",
                r["polled_twice"] + r["never_polled"],
            )
        )
    print(
        table(
            (
                "replicas",
                "seconds",
                "polls/s",
                "bound s",
                "bound/measured",
                "t1/tk",
                "bot CPU (each)",
                "sim CPU",
                "machine busy",
                "dup+missed",
            ),
            rows,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--imports", type=int, default=10_000, help="watched imports")
    parser.add_argument("-d", "--delay", type=float, default=0.05, help="API answer delay (s)")
    parser.add_argument("-c", "--concurrency", type=int, default=50, help="POLL_CONCURRENCY")
    parser.add_argument("-r", "--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL, help="PostgreSQL server")
    parser.add_argument("--timeout", type=float, default=300, help="give up after (s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    info = print_machine()
    print(f"N={args.imports} D={args.delay:g} s C={args.concurrency} per replica")
    results = []
    with SimulatorProcess(args.imports, args.delay) as sim:
        template = asyncio.run(_template(sim))
        for k in args.replicas:
            results.append(run_one(k, sim, template, args))
            print(f"  {k} replica(s): {results[-1]['seconds']:.2f} s", flush=True)
    print_report(results)
    write_json(args.json, {"machine": info, "args": vars(args), "runs": results})
    return 0 if all(r["complete"] and not r["polled_twice"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

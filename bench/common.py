"""What the benchmarks share: a simulator in its own process, a scratch database,
bulk-seeded watches, percentiles, the machine's description and a plain-text table.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, insert
from sqlalchemy.engine import make_url

from bot.domain.status import ImportStatus
from bot.sandbox.mypreferences_simulator import (
    DEFAULT_AUTHORIZATION,
    SEED_FIRST_TOKEN,
    base_url,
)
from bot.store.tables import ImportRow, SubscriptionRow

CLIENT_ID = "ACME"
TEAM_ID = "T0001"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


class SimulatorProcess:
    """``python -m bot.sandbox.mypreferences_simulator --seed N`` in its own process.

    Its CPU is then not the bot's, and it can be measured on its own.
    """

    def __init__(self, imports: int, delay: float, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.tokens = range(SEED_FIRST_TOKEN, SEED_FIRST_TOKEN + imports)
        self._log = open(log_path or os.devnull, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot.sandbox.mypreferences_simulator",
                "--port",
                str(self.port),
                "--client-id",
                CLIENT_ID,
                "--delay",
                str(delay),
                "--seed",
                str(imports),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("_sim/calls", params={"by_token": "0"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.1)

    @property
    def api_url(self) -> str:
        return base_url(self.url)

    def env(self) -> dict[str, str]:
        """The bot's settings that point it at this simulator."""
        return {
            "MYPREFERENCES_API_URL": self.api_url,
            "MYPREFERENCES_CLIENT_ID": CLIENT_ID,
            "MYPREFERENCES_AUTHORIZATION": DEFAULT_AUTHORIZATION,
        }

    def status_calls(self) -> int:
        return int(self.http.get("_sim/calls", params={"by_token": "0"}).json()["status_calls"])

    def calls_by_token(self) -> dict[int, int]:
        by_token = self.http.get("_sim/calls").json()["by_token"]
        return {int(t): int(n) for t, n in by_token.items()}

    def reset_calls(self) -> None:
        self.http.post("_sim/calls/reset").raise_for_status()

    def set_delay(self, seconds: float) -> None:
        self.http.put("_sim/delay", json={"seconds": seconds}).raise_for_status()

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def scratch_database(url: str | None) -> Iterator[str]:
    """A fresh, empty database for one run, removed afterwards.

    No URL: a SQLite file in a temporary directory. A PostgreSQL URL names the
    server (and a database to connect to for CREATE DATABASE); the benchmark
    works in a new database beside it, never in the one named.
    """
    if url is None or url.startswith("sqlite"):
        if url is not None:
            yield url
            return
        with tempfile.TemporaryDirectory(prefix="isb-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    import psycopg

    admin = make_url(url)
    libpq = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"isb_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_watches(
    engine: Engine,
    template: ImportStatus,
    tokens: Sequence[int],
    next_poll_at: datetime,
    *,
    channels: int = 100,
) -> None:
    """Insert one import and one active subscription per token, in bulk.

    Each stored snapshot equals what the simulator will answer (``template``
    with the token and its default name), so every poll is an unchanged poll.
    The tracking card counts as posted, so delivery has nothing to do.
    """
    now = next_poll_at - timedelta(seconds=1)
    imports = [
        {
            "id": i + 1,
            "client_id": CLIENT_ID,
            "access_token": token,
            "name": f"Simulated import {token}",
            "status": template.status.value,
            "snapshot": replace(
                template, access_token=token, name=f"Simulated import {token}"
            ).to_json(),
            "expires_at": template.expires,
            "version": 1,
            "transitions": 0,
            "first_seen_at": now,
            "last_polled_at": now,
            "next_poll_at": next_poll_at,
            "failures": 0,
            "trouble_notified": False,
            # Watched for a while already: the processing rate's base is known.
            "rate_base_at": now - timedelta(minutes=5),
            "rate_base_done": template.done,
        }
        for i, token in enumerate(tokens)
    ]
    subscriptions = [
        {
            "team_id": TEAM_ID,
            "channel_id": f"C{i % channels:05d}",
            "import_id": i + 1,
            "subscribed_by": "U0001",
            "subscribed_at": now,
            "state": "active",
            "tracking_ts": f"1790000000.{i:06d}",
            "card_wanted": 1,
            "card_done": 1,
        }
        for i in range(len(tokens))
    ]
    with engine.begin() as conn:
        for start in range(0, len(imports), 2000):
            conn.execute(insert(ImportRow), imports[start : start + 2000])
        for start in range(0, len(subscriptions), 2000):
            conn.execute(insert(SubscriptionRow), subscriptions[start : start + 2000])
        if engine.dialect.name == "postgresql":
            # Explicit ids above: move the sequence past them.
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('imports', 'id'), "
                "(SELECT max(id) FROM imports))"
            )


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest-rank on sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def machine() -> dict[str, str]:
    """nproc, CPU model, RAM and Python: the context every number needs."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    load = ""
    with contextlib.suppress(OSError):
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": ram,
        "python": platform.python_version(),
        "load_before": load,
    }


def print_machine() -> dict[str, str]:
    info = machine()
    print(
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, "
        f"Python {info['python']}, load average {info['load_before']}"
    )
    return info


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows as aligned plain-text columns (numbers right-aligned, text left-aligned)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(headers))
    ]
    lines = []
    for n, row in enumerate(cells):
        parts = [
            c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}")

"""``import-status-bot serve`` with cProfile switched on and off by signals (bench only).

    python -m bench.profiled_serve STATS_PATH

runs the bot exactly as ``python -m bot serve`` does. SIGUSR1 starts the
profiler, SIGUSR2 stops it and writes its stats to STATS_PATH, so a benchmark
profiles only the requests it measures, not the start-up or the warm-up.
cProfile follows the thread it was enabled in: the event loop's, where every
request is parsed, checked, dispatched and answered. Its timer is that
thread's CPU time (``time.thread_time``), so neither the loop's idle waits in
``epoll`` nor the moments another process has the core count.
"""

from __future__ import annotations

import cProfile
import signal
import sys
import time
from types import FrameType

from bot.cli import main as bot_main


def main(argv: list[str]) -> int:
    (stats_path,) = argv
    profiler = cProfile.Profile(time.thread_time)

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(stats_path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return bot_main(["serve"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

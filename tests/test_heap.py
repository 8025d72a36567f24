"""``settle_heap``: the garbage collector set once for a long-running ``serve``.

Run in a fresh interpreter: freezing the heap of the test process would keep every
test's objects alive to the end of the run.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import gc
from bot.runtime import YOUNG_GC_THRESHOLD, settle_heap
before = gc.get_threshold()
settle_heap()
print(*before, *gc.get_threshold(), YOUNG_GC_THRESHOLD, gc.get_freeze_count())
"""


def test_settle_heap_freezes_what_start_up_made_and_collects_the_young_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    before, after = tuple(map(int, out[0:3])), tuple(map(int, out[3:6]))
    young_threshold, frozen = int(out[6]), int(out[7])
    assert after == (young_threshold, before[1], before[2])
    assert young_threshold > before[0]
    # Bolt, SQLAlchemy, httpx and aiohttp, imported by bot.runtime, are all frozen.
    assert frozen > 50_000

"""An asyncio event loop on a virtual clock, for tests that must not sleep.

The loop's clock stands still while anything is ready to run and jumps straight
to the next timer when nothing is: ``asyncio.sleep(60)``, ``asyncio.wait(...,
timeout=0.1)`` and ``asyncio.timeout(3)`` all take no real time, and what
happens at a given virtual moment is the same on every run. Blocking work in
threads would let the clock jump while it runs, so ``inline_to_thread``
replaces ``asyncio.to_thread`` for the fakes the tests hand in.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector:
    """Wraps the loop's selector: polls without blocking, then moves the clock instead."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._inner.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("virtual time: nothing is ready and nothing is scheduled (a hang)")
        self._loop.advance(timeout)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and jumps when the loop is idle."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        self._selector = _JumpingSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a fresh virtual-time loop."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


async def inline_to_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` without the thread: the call runs at once, between two yields.

    The yields stand in for the thread's round trip: other tasks that are ready
    (an API answer arriving, say) run while the "database" is being asked.
    """
    await asyncio.sleep(0)
    result = func(*args, **kwargs)
    for _ in range(3):
        await asyncio.sleep(0)
    return result

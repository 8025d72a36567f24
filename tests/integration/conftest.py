"""Fixtures for the tests that start processes: the harness, a bot, a Slack user.

A module gets one harness (MyPreferences simulator + Slack emulator + one SQLite
database), one ``import-status-bot serve`` process and one Slack user for all its
tests. The harnesses fork their bots from a process that has already imported the
bot (``preloaded=True``), so a start costs a tenth of a second of CPU, not a second.
A module tunes them with module-level settings:

    HARNESS_ENV = {"LOOKUP_RATE_LIMIT": "1000"}  # settings of every bot its harness starts
    USER_CHANNEL = "C0OPS"                         # where ``user`` types (default C0001)

    def test_something(harness: Harness, bot: BotProcess, user: SlackUser) -> None: ...

Tests of one module share that bot, so each uses its own access tokens and channels
(the ``place`` fixture hands them out). After each test, faults injected into the
module's simulator and errors injected into its emulator are cleared. A test that
needs a bot with other settings starts one on the module's harness, e.g.
``harness.start_bot(LOOKUP_BUDGET_SECONDS=20)``; the harness stops it at the end.

A test that kills or restarts bots, or needs a simulator and a database of its own,
takes ``fresh_harness`` instead: a harness of its own, torn down after the test.
A module whose tests all need that overrides ``harness`` with it (test_restart.py).

A module runs whole on one xdist worker, so its fixtures are made once per run;
mark a long test or module ``slow`` so that it starts first (tests/conftest.py).
Helpers to read back what the bot did, and to wait for it, are in ``helpers.py``:
wait for a condition with ``PATIENCE``; assert a bound on time only where time is
the point of the test, with room for a busy machine.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import SlackUser
from tests.integration.helpers import Place

_places = itertools.count(1)


@pytest.fixture(scope="module")
def harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """The module's harness, its bots configured with the module's ``HARNESS_ENV``."""
    env: dict[str, str] = getattr(request.module, "HARNESS_ENV", {})
    name = request.module.__name__.rsplit(".", 1)[-1]
    with Harness(tmp_path_factory.mktemp(name), env=env, preloaded=True) as h:
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    """The module's bot: one ``import-status-bot serve`` process."""
    return harness.start_bot()


@pytest.fixture(scope="module")
def user(request: pytest.FixtureRequest, harness: Harness, bot: BotProcess) -> Iterator[SlackUser]:
    """Someone (U0001) typing commands to the module's bot in ``USER_CHANNEL`` (C0001)."""
    channel: str = getattr(request.module, "USER_CHANNEL", "C0001")
    with harness.user(bot, channel_id=channel) as slack_user:
        yield slack_user


@pytest.fixture(autouse=True)
def _clear_injected_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """A fault one test injects into the module's harness never reaches the next test."""
    shared: Harness | None = None
    if "harness" in request.fixturenames:
        shared = request.getfixturevalue("harness")
    yield
    if shared is not None:
        shared.sim.clear_faults()
        shared.emulator.clear_errors()


@pytest.fixture
def fresh_harness(tmp_path: Path) -> Iterator[Harness]:
    """A harness of the test's own, with default settings, for bots it starts itself."""
    with Harness(tmp_path / "harness", preloaded=True) as h:
        yield h


@pytest.fixture
def place(request: pytest.FixtureRequest) -> Place:
    """Channels, a user and tokens of the test's own (unique within the test process).

    With a harness, the bot is invited to both channels, as the README tells an
    operator to do; a test about uninvited channels makes channels of its own.
    """
    n = next(_places)
    here = Place(f"CP{n:04d}", f"CQ{n:04d}", f"UP{n:04d}", 100_000 + 10 * n, 100_001 + 10 * n)
    if "harness" in request.fixturenames:
        emulator = request.getfixturevalue("harness").emulator
        emulator.invite_bot(here.channel)
        emulator.invite_bot(here.other_channel)
    return here

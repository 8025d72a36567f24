"""``import-status-bot demo``: the whole story runs for real, as a person would start it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.sandbox.demo import EXPIRING_NAME, EXPIRING_TOKEN, MOVING_NAME

REPO = Path(__file__).resolve().parents[2]


def _positions(text: str, needles: list[str]) -> list[int]:
    return [text.find(needle) for needle in needles]


@pytest.mark.slow
def test_demo_tells_the_whole_story_and_exits_0() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--fast"],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=90,
    )
    out = finished.stdout
    assert finished.returncode == 0, f"stdout:\n{out}\nstderr:\n{finished.stderr}"
    assert "Traceback" not in out and "Traceback" not in finished.stderr
    assert "\x1b[" not in out, "no ANSI colours when stdout is not a terminal"

    assert MOVING_NAME in out
    # Each status, first seen in the lookup (Initiated), then in the thread replies.
    transitions = re.findall(r"→ \S+ (\w+)", out)
    # Completed with failed records: in the thread, then in the alert channel too.
    assert transitions == ["Staging", "Queued", "Processing", "Completed", "Completed"]
    statuses = _positions(out, ["Initiated", "→ ↓ Staging", "→ ⧗ Queued", "→ ⚙ Processing"])
    statuses.append(out.find("→ ✔ Completed"))
    assert -1 not in statuses and statuses == sorted(statuses), statuses

    milestones = _positions(out, ["Progress: 25%", "Progress: 50%", "Progress: 75%"])
    assert -1 not in milestones and milestones == sorted(milestones), milestones
    assert statuses[3] < milestones[0] and milestones[-1] < statuses[4]

    warning = out.find("The access token expires in")
    expired = out.find("The access token expired before the import finished")
    assert -1 < warning < expired
    # Once in the thread, once in the alert channel.
    assert out.count("The access token expires in") == 2
    assert out.count("The access token expired before") == 2
    assert f"{EXPIRING_NAME} · import {EXPIRING_TOKEN}" in out
    assert "This channel is not watching any import" in out
    assert "@demo-user" in out and "<@U0001>" not in out
    # Import 1001 ended with failures: its exceptions are kept, in the thread and on request.
    assert "Exceptions: 60 records · file in thread" in out
    assert out.count("file import-1001-exceptions.csv") == 2  # the thread's, then the DM's
    assert "• Invalid email address: 24 (40%)" in out
    assert "@example.com" in out and "john." not in out, "personal data stays masked"
    # The channel chose an alert channel: the failure, the warning and the expiry also go there.
    assert "set alerts <#C0002|import-alerts>" in out
    assert out.count("the bot posts an alert in #import-alerts") == 3
    assert "Watched in #general · open the thread" in out
    assert "The story is complete" in out

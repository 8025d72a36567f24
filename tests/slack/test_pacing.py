"""The pacer that keeps Slack's rate limits on our side (``bot/slack/pacing.py``)."""

from __future__ import annotations

import itertools

from bot.slack.pacing import Pacer


def test_a_burst_goes_at_once_then_one_call_per_interval() -> None:
    pacer = Pacer(interval=1.0, burst=3)
    assert [pacer.take("C1", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert pacer.take("C1", 0.0) == 1.0, "the 4th waits one interval"
    assert pacer.take("C1", 0.5) == 0.5
    assert pacer.take("C1", 1.0) == 0.0
    assert pacer.take("C1", 1.0) == 1.0


def test_keys_are_paced_apart() -> None:
    pacer = Pacer(interval=1.0, burst=1)
    assert pacer.take("C1", 0.0) == 0.0
    assert pacer.take("C2", 0.0) == 0.0, "a busy channel does not slow another"
    assert pacer.take("C1", 0.0) == 1.0


def test_a_rested_key_has_its_burst_again() -> None:
    pacer = Pacer(interval=1.0, burst=2)
    for _ in range(2):
        pacer.take("C1", 0.0)
    assert pacer.take("C1", 0.0) > 0
    assert [pacer.take("C1", 5.0) for _ in range(2)] == [0.0, 0.0]


def test_a_refused_take_books_nothing() -> None:
    pacer = Pacer(interval=1.0, burst=1)
    pacer.take("C1", 0.0)
    for _ in range(5):
        assert pacer.take("C1", 0.2) == 0.8
    assert pacer.take("C1", 1.0) == 0.0


def test_reservations_hand_out_turns_one_interval_apart_after_the_burst() -> None:
    pacer = Pacer(interval=1.2, burst=3)
    turns = [pacer.reserve("T1", 0.0) for _ in range(6)]
    assert turns[:3] == [0.0, 0.0, 0.0]
    assert [round(b - a, 6) for a, b in itertools.pairwise(turns[2:])] == [1.2, 1.2, 1.2]
    # Whoever asks next is served after every booked turn.
    assert round(pacer.delay("T1", 0.0), 6) == round(turns[-1] + 1.2, 6)


def test_spent_names_the_keys_still_earning_their_burst_back() -> None:
    pacer = Pacer(interval=1.0, burst=3)
    pacer.take("C1", 0.0)
    pacer.take("C2", 0.0)
    pacer.take("C2", 0.0)
    assert pacer.spent(0.5) == {"C1", "C2"}
    assert pacer.spent(1.0) == {"C2"}, "one call is earned back after one interval"
    assert pacer.spent(2.0) == set()

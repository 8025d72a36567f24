"""The product's rules: what one poll's outcome means for the channel, tested without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.eta import Forecast, estimate_seconds_left, finish_forecast
from bot.domain.events import Event, EventKind
from bot.domain.rules import (
    EXPIRED,
    Decision,
    Failure,
    Memory,
    Outcome,
    Rules,
    decide,
)
from bot.domain.status import ImportStatus, Status

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WARNING = timedelta(minutes=30)
# Poll failures as the poller hands them to the rules (in the API errors' words).
UNAVAILABLE = Failure("MyPreferences is temporarily unavailable (server error).")
SLOW_DOWN = Failure("MyPreferences is asking the bot to slow down (HTTP 429).")
REJECTED = Failure("MyPreferences does not recognise this access token.", token_rejected=True)

RULES = Rules(expiry_warning=WARNING, trouble_after=timedelta(minutes=5))
TOTAL = 1000


def status(
    value: Status,
    done: int | None = None,
    *,
    total: int | None = TOTAL,
    expires: datetime | None = None,
) -> ImportStatus:
    return ImportStatus(
        access_token=42,
        status=value,
        name="Spring consents",
        validation_successful=total,
        processed=done,
        expires=expires,
    )


def kinds(decision: Decision) -> list[EventKind]:
    return [event.kind for event in decision.events]


def keys(decision: Decision) -> list[str]:
    return [event.key for event in decision.events]


# ----- transitions -----------------------------------------------------------


def test_status_change_is_one_transition_event_keyed_by_the_transition_count() -> None:
    decision = decide(
        Memory(status(Status.INITIATED), transitions=0), status(Status.STAGING), NOW, RULES
    )

    assert decision.events == [
        Event(
            EventKind.TRANSITION,
            "transition:1:Staging",
            old_status=Status.INITIATED,
            new_status=Status.STAGING,
        )
    ]
    assert decision.memory.transitions == 1
    assert decision.changed is True
    assert decision.finished is False


def test_a_normal_life_gives_one_transition_per_step_with_increasing_counts() -> None:
    memory = Memory(status(Status.INITIATED))
    seen: list[str] = []
    for step in (Status.STAGING, Status.QUEUED, Status.PROCESSING, Status.COMPLETED):
        done = TOTAL if step is Status.COMPLETED else None
        decision = decide(memory, status(step, done), NOW, RULES)
        seen += [e.key for e in decision.events if e.kind is EventKind.TRANSITION]
        memory = decision.memory

    assert seen == [
        "transition:1:Staging",
        "transition:2:Queued",
        "transition:3:Processing",
        "transition:4:Completed",
    ]
    assert memory.transitions == 4


def test_skipping_states_is_a_single_transition() -> None:
    decision = decide(Memory(status(Status.STAGING)), status(Status.COMPLETED, TOTAL), NOW, RULES)

    assert len(decision.events) == 1
    event = decision.events[0]
    assert event.kind is EventKind.TRANSITION
    assert (event.old_status, event.new_status) == (Status.STAGING, Status.COMPLETED)
    assert decision.finished is True


def test_going_backwards_is_a_transition_with_a_fresh_key() -> None:
    memory = Memory(status(Status.PROCESSING, 100), transitions=3)

    decision = decide(memory, status(Status.QUEUED, 100), NOW, RULES)

    assert keys(decision) == ["transition:4:Queued"]
    assert decision.events[0].old_status is Status.PROCESSING
    assert decision.events[0].new_status is Status.QUEUED
    assert decision.finished is False


def test_returning_to_an_earlier_status_does_not_reuse_its_key() -> None:
    memory = Memory(status(Status.QUEUED), transitions=2)
    first = decide(memory, status(Status.PROCESSING, 0), NOW, RULES)
    back = decide(first.memory, status(Status.QUEUED, 0), NOW, RULES)
    again = decide(back.memory, status(Status.PROCESSING, 0), NOW, RULES)

    assert keys(first) == ["transition:3:Processing"]
    assert keys(again) == ["transition:5:Processing"]


def test_same_status_and_counts_again_is_no_event_and_no_card_edit() -> None:
    same = status(Status.PROCESSING, 100)
    decision = decide(Memory(same, transitions=3), same, NOW, RULES)

    assert decision.events == []
    assert decision.changed is False
    assert decision.finished is False
    assert decision.memory.transitions == 3


def test_first_observation_without_memory_is_no_transition() -> None:
    decision = decide(Memory(None), status(Status.PROCESSING, 10), NOW, RULES)

    assert EventKind.TRANSITION not in kinds(decision)
    assert decision.changed is True


@pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.FAILED])
def test_terminal_status_finishes_the_watch(terminal: Status) -> None:
    decision = decide(Memory(status(Status.PROCESSING, 500)), status(terminal, 800), NOW, RULES)

    assert decision.finished is True
    assert kinds(decision) == [EventKind.TRANSITION]
    assert decision.events[0].ends_subscription is True


@pytest.mark.parametrize(
    "value", [Status.INITIATED, Status.STAGING, Status.QUEUED, Status.PROCESSING, Status.UNKNOWN]
)
def test_unfinished_status_keeps_the_watch(value: Status) -> None:
    decision = decide(Memory(status(Status.INITIATED)), status(value), NOW, RULES)

    assert decision.finished is False


# ----- counts and milestones ---------------------------------------------------


def test_counts_changing_without_status_change_edit_the_card_without_a_reply() -> None:
    decision = decide(
        Memory(status(Status.PROCESSING, 100)), status(Status.PROCESSING, 200), NOW, RULES
    )

    assert decision.events == []
    assert decision.changed is True


@pytest.mark.parametrize(
    ("before", "after", "milestone"),
    [
        (0, 249, None),
        (0, 250, 25),
        (240, 260, 25),
        (260, 490, None),
        (490, 510, 50),
        (0, 600, 50),  # 25 and 50 crossed at once: only the highest
        (100, 990, 75),  # 25, 50 and 75 crossed at once: only the highest
        (760, 990, None),
        (800, 1000, None),  # 100 % is announced by Completed
        (600, 1000, None),  # 75 is crossed, but the import is already at 100 %
        (600, 1200, None),  # more done than validated is still 100 %
    ],
)
def test_progress_milestone_only_the_highest_newly_crossed(
    before: int, after: int, milestone: int | None
) -> None:
    decision = decide(
        Memory(status(Status.PROCESSING, before)), status(Status.PROCESSING, after), NOW, RULES
    )

    if milestone is None:
        assert decision.events == []
    else:
        assert decision.events == [
            Event(EventKind.MILESTONE, f"milestone:{milestone}", milestone=milestone)
        ]
    assert decision.changed is True


def test_milestone_counts_while_queued_too() -> None:
    decision = decide(Memory(status(Status.QUEUED, 0)), status(Status.QUEUED, 300), NOW, RULES)

    assert keys(decision) == ["milestone:25"]


def test_transition_and_milestone_in_the_same_poll_are_both_announced() -> None:
    decision = decide(Memory(status(Status.QUEUED)), status(Status.PROCESSING, 500), NOW, RULES)

    assert keys(decision) == ["transition:1:Processing", "milestone:50"]


@pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.FAILED])
def test_no_milestone_for_a_terminal_status(terminal: Status) -> None:
    decision = decide(Memory(status(Status.PROCESSING, 100)), status(terminal, 900), NOW, RULES)

    assert kinds(decision) == [EventKind.TRANSITION]


@pytest.mark.parametrize("idle", [Status.INITIATED, Status.STAGING, Status.UNKNOWN])
def test_no_milestone_while_records_are_not_moving(idle: Status) -> None:
    decision = decide(Memory(status(idle, 0)), status(idle, 600), NOW, RULES)

    assert decision.events == []


@pytest.mark.parametrize("total", [None, 0])
def test_no_milestone_when_progress_cannot_be_computed(total: int | None) -> None:
    decision = decide(
        Memory(status(Status.PROCESSING, 0, total=total)),
        status(Status.PROCESSING, 600, total=total),
        NOW,
        RULES,
    )

    assert decision.events == []
    assert decision.changed is True


def test_counts_shrinking_then_growing_back_repeat_the_same_milestone_key() -> None:
    """The rules answer "milestone:50" again; the database's (subscription, key)
    uniqueness makes the repeat a no-op, so the channel hears 50 % once."""
    first = decide(Memory(status(Status.PROCESSING, 0)), status(Status.PROCESSING, 600), NOW, RULES)
    shrunk = decide(first.memory, status(Status.PROCESSING, 300), NOW, RULES)
    grown = decide(shrunk.memory, status(Status.PROCESSING, 600), NOW, RULES)

    assert keys(first) == ["milestone:50"]
    assert shrunk.events == []
    assert shrunk.changed is True
    # Not "milestone:25" (a lower milestone), only the highest one, with the same key.
    assert keys(grown) == ["milestone:50"]


# ----- expiry ------------------------------------------------------------------


def test_expiry_warning_inside_the_window() -> None:
    expires = NOW + timedelta(minutes=10)
    current = status(Status.PROCESSING, 100, expires=expires)

    decision = decide(Memory(current), current, NOW, RULES)

    assert decision.events == [
        Event(
            EventKind.EXPIRY_WARNING,
            "expiry_warning",
            new_status=Status.PROCESSING,
            expires=expires,
        )
    ]
    assert decision.finished is False


def test_expiry_warning_is_repeated_every_poll_in_the_window_with_the_same_key() -> None:
    expires = NOW + timedelta(minutes=20)
    current = status(Status.QUEUED, expires=expires)
    memory = Memory(current)
    seen: list[str] = []
    for minute in range(0, 20, 5):
        decision = decide(memory, current, NOW + timedelta(minutes=minute), RULES)
        seen += keys(decision)
        memory = decision.memory

    assert seen == ["expiry_warning"] * 4


@pytest.mark.parametrize(
    ("until_expiry", "warned"),
    [
        (WARNING + timedelta(seconds=1), False),
        (WARNING, True),  # the window opens exactly at Expires - EXPIRY_WARNING
        (timedelta(seconds=1), True),
        (timedelta(hours=5), False),
    ],
)
def test_expiry_warning_window_edges(until_expiry: timedelta, warned: bool) -> None:
    current = status(Status.STAGING, expires=NOW + until_expiry)

    decision = decide(Memory(current), current, NOW, RULES)

    assert (EventKind.EXPIRY_WARNING in kinds(decision)) is warned


@pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.FAILED])
def test_no_expiry_warning_for_a_finished_import(terminal: Status) -> None:
    current = status(terminal, TOTAL, expires=NOW + timedelta(minutes=5))

    decision = decide(Memory(current), current, NOW, RULES)

    assert decision.events == []
    assert decision.finished is True


def test_no_expiry_warning_when_expires_is_unknown() -> None:
    current = status(Status.PROCESSING, 100, expires=None)

    decision = decide(Memory(current), current, NOW, RULES)

    assert decision.events == []


def test_no_expiry_warning_when_expires_is_unparseable() -> None:
    # What the client makes of "Expires": "next Tuesday" (see tests/mypreferences/test_parsing.py).
    current = ImportStatus(
        42,
        Status.PROCESSING,
        validation_successful=1000,
        processed=100,
        expires_text="next Tuesday",
    )

    decision = decide(Memory(current), current, NOW, RULES)

    assert decision.events == []
    assert decision.finished is False


def test_extended_expiry_moves_the_warning_window() -> None:
    old = status(Status.PROCESSING, 100, expires=NOW + timedelta(minutes=10))
    extended = status(Status.PROCESSING, 100, expires=NOW + timedelta(hours=3))

    decision = decide(Memory(old), extended, NOW, RULES)
    later = decide(decision.memory, extended, NOW + timedelta(hours=2, minutes=40), RULES)

    assert decision.events == []
    assert decision.changed is True
    assert decision.memory.status is not None
    assert decision.memory.status.expires == NOW + timedelta(hours=3)
    assert keys(later) == ["expiry_warning"]


def test_extended_expiry_after_the_old_moment_keeps_watching() -> None:
    old = status(Status.PROCESSING, 100, expires=NOW - timedelta(minutes=1))
    extended = status(Status.PROCESSING, 100, expires=NOW + timedelta(hours=3))

    decision = decide(Memory(old), extended, NOW, RULES)

    assert decision.events == []
    assert decision.finished is False


def test_expired_outcome_is_one_expired_event_and_finishes() -> None:
    expires = NOW - timedelta(seconds=1)
    memory = Memory(status(Status.PROCESSING, 100, expires=expires), transitions=3)

    decision = decide(memory, EXPIRED, NOW, RULES)

    assert decision.events == [
        Event(EventKind.EXPIRED, "expired", old_status=Status.PROCESSING, expires=expires)
    ]
    assert decision.finished is True
    assert decision.changed is True
    assert decision.memory == memory


def test_expired_outcome_for_an_already_finished_import_says_nothing() -> None:
    memory = Memory(status(Status.COMPLETED, TOTAL, expires=NOW - timedelta(hours=1)))

    decision = decide(memory, EXPIRED, NOW, RULES)

    assert decision.events == []
    assert decision.finished is True


def test_unfinished_status_answered_after_expires_is_announced_as_expired() -> None:
    expires = NOW - timedelta(seconds=1)
    current = status(Status.PROCESSING, 100, expires=expires)

    decision = decide(Memory(current), current, NOW, RULES)

    assert kinds(decision) == [EventKind.EXPIRED]
    assert decision.finished is True


def test_completed_after_expires_is_completed_not_expired() -> None:
    expires = NOW - timedelta(minutes=1)
    decision = decide(
        Memory(status(Status.PROCESSING, 900, expires=expires)),
        status(Status.COMPLETED, TOTAL, expires=expires),
        NOW,
        RULES,
    )

    assert keys(decision) == ["transition:1:Completed"]
    assert decision.finished is True


def test_token_rejected_after_expires_means_expired() -> None:
    memory = Memory(status(Status.STAGING, expires=NOW - timedelta(minutes=1)))

    decision = decide(memory, REJECTED, NOW, RULES)

    assert kinds(decision) == [EventKind.EXPIRED]
    assert decision.finished is True


def test_token_rejected_exactly_at_expires_means_expired() -> None:
    memory = Memory(status(Status.STAGING, expires=NOW))

    decision = decide(memory, REJECTED, NOW, RULES)

    assert kinds(decision) == [EventKind.EXPIRED]


@pytest.mark.parametrize("expires", [NOW + timedelta(hours=1), None])
def test_token_rejected_before_expiry_is_api_trouble_not_expiry(expires: datetime | None) -> None:
    memory = Memory(status(Status.STAGING, expires=expires))

    decision = decide(memory, REJECTED, NOW, RULES)

    assert decision.events == []
    assert decision.finished is False
    assert decision.memory.failures == 1
    assert decision.memory.trouble_since == NOW


# ----- API trouble ------------------------------------------------------------


def run(memory: Memory, outcomes: list[tuple[int, Outcome]]) -> tuple[list[Decision], Memory]:
    """Apply (minute offset, outcome) pairs in order; return each decision and the last memory."""
    decisions = []
    for minute, outcome in outcomes:
        decision = decide(memory, outcome, NOW + timedelta(minutes=minute), RULES)
        decisions.append(decision)
        memory = decision.memory
    return decisions, memory


def test_api_trouble_is_announced_once_after_trouble_after_then_recovery_once() -> None:
    current = status(Status.PROCESSING, 100)
    outcomes: list[tuple[int, Outcome]] = [(m, UNAVAILABLE) for m in range(9)]
    outcomes += [(9, current), (10, current)]

    decisions, memory = run(Memory(current), outcomes)

    announced = [(i, e) for i, d in enumerate(decisions) for e in d.events]
    assert [(i, e.kind) for i, e in announced] == [
        (5, EventKind.API_TROUBLE),  # the first poll 5 minutes after the first failure
        (9, EventKind.RECOVERED),
    ]
    trouble, recovered = announced[0][1], announced[1][1]
    assert trouble.key == f"trouble:{NOW.isoformat()}"
    assert trouble.detail == UNAVAILABLE.message
    assert trouble.broadcast is False
    assert recovered.key == f"recovered:{NOW.isoformat()}"
    assert memory.failures == 0
    assert memory.trouble_since is None
    assert memory.trouble_notified is False


def test_failures_count_up_and_never_edit_the_card() -> None:
    current = status(Status.PROCESSING, 100)
    decisions, memory = run(Memory(current), [(0, UNAVAILABLE), (1, SLOW_DOWN)])

    assert [d.memory.failures for d in decisions] == [1, 2]
    assert all(not d.changed and not d.finished for d in decisions)
    assert memory.trouble_since == NOW
    assert memory.status == current


def test_short_trouble_is_neither_announced_nor_recovered() -> None:
    current = status(Status.PROCESSING, 100)
    decisions, memory = run(Memory(current), [(0, UNAVAILABLE), (4, UNAVAILABLE), (5, current)])

    assert [e for d in decisions for e in d.events] == []
    assert memory.failures == 0


def test_a_second_trouble_after_recovery_has_its_own_keys() -> None:
    current = status(Status.PROCESSING, 100)
    error = UNAVAILABLE
    outcomes: list[tuple[int, Outcome]] = [(0, error), (5, error), (6, current)]
    outcomes += [(20, error), (25, error), (26, current)]

    decisions, _ = run(Memory(current), outcomes)

    later = (NOW + timedelta(minutes=20)).isoformat()
    assert [e.key for d in decisions for e in d.events] == [
        f"trouble:{NOW.isoformat()}",
        f"recovered:{NOW.isoformat()}",
        f"trouble:{later}",
        f"recovered:{later}",
    ]


# ----- events -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "broadcast", "ends"),
    [
        (Event(EventKind.TRANSITION, "t", Status.PROCESSING, Status.COMPLETED), True, True),
        (Event(EventKind.TRANSITION, "t", Status.PROCESSING, Status.FAILED), True, True),
        (Event(EventKind.TRANSITION, "t", Status.QUEUED, Status.PROCESSING), False, False),
        (Event(EventKind.TRANSITION, "t", Status.PROCESSING, Status.QUEUED), False, False),
        (Event(EventKind.MILESTONE, "m", milestone=50), False, False),
        (Event(EventKind.EXPIRY_WARNING, "expiry_warning"), True, False),
        (Event(EventKind.EXPIRED, "expired"), True, True),
        (Event(EventKind.API_TROUBLE, "trouble:x"), False, False),
        (Event(EventKind.RECOVERED, "recovered:x"), False, False),
    ],
)
def test_event_broadcast_and_ends_subscription_per_kind(
    event: Event, broadcast: bool, ends: bool
) -> None:
    assert event.broadcast is broadcast
    assert event.ends_subscription is ends


def test_event_survives_the_json_round_trip() -> None:
    event = Event(
        EventKind.EXPIRY_WARNING,
        "expiry_warning",
        old_status=Status.QUEUED,
        new_status=Status.PROCESSING,
        milestone=None,
        expires=NOW,
        detail="soon",
    )

    assert Event.from_json(event.to_json()) == event


# ----- processing rate and ETA -------------------------------------------------


def test_rate_base_is_the_first_processing_observation_and_is_kept() -> None:
    first = decide(Memory(status(Status.QUEUED)), status(Status.PROCESSING, 100), NOW, RULES)
    later = decide(first.memory, status(Status.PROCESSING, 300), NOW + timedelta(minutes=1), RULES)

    assert (first.memory.rate_base_at, first.memory.rate_base_done) == (NOW, 100)
    assert (later.memory.rate_base_at, later.memory.rate_base_done) == (NOW, 100)


def test_rate_base_restarts_when_counts_shrink_and_clears_outside_processing() -> None:
    memory = Memory(status(Status.PROCESSING, 300), rate_base_at=NOW, rate_base_done=300)
    shrunk = decide(memory, status(Status.PROCESSING, 50), NOW + timedelta(minutes=1), RULES)
    queued = decide(shrunk.memory, status(Status.QUEUED, 50), NOW + timedelta(minutes=2), RULES)

    assert shrunk.memory.rate_base_at == NOW + timedelta(minutes=1)
    assert shrunk.memory.rate_base_done == 50
    assert (queued.memory.rate_base_at, queued.memory.rate_base_done) == (None, None)


def test_estimate_seconds_left_uses_the_rate_since_the_base() -> None:
    # 100 records in 100 seconds, 800 to go.
    left = estimate_seconds_left(
        status(Status.PROCESSING, 200), NOW, 100, NOW + timedelta(seconds=100)
    )

    assert left == pytest.approx(800.0)


def test_estimate_seconds_left_is_never_negative() -> None:
    left = estimate_seconds_left(
        status(Status.PROCESSING, 1200), NOW, 100, NOW + timedelta(seconds=100)
    )

    assert left == 0.0


@pytest.mark.parametrize(
    ("current", "base_at", "base_done", "elapsed"),
    [
        (status(Status.QUEUED, 200), NOW, 100, 100),  # not processing
        (status(Status.PROCESSING, 200), None, 100, 100),  # no base
        (status(Status.PROCESSING, 200), NOW, None, 100),
        (status(Status.PROCESSING, 100), NOW, 100, 100),  # no progress since the base
        (status(Status.PROCESSING, 200), NOW, 100, 0),  # no time has passed
        (status(Status.PROCESSING, None), NOW, 100, 100),  # done unknown
        (status(Status.PROCESSING, 200, total=None), NOW, 100, 100),  # total unknown
        (status(Status.PROCESSING, 200, total=0), NOW, 100, 100),
    ],
)
def test_estimate_seconds_left_is_none_when_unknown(
    current: ImportStatus, base_at: datetime | None, base_done: int | None, elapsed: int
) -> None:
    now = NOW + timedelta(seconds=elapsed)

    assert estimate_seconds_left(current, base_at, base_done, now) is None


def test_finish_forecast_is_the_moment_the_rate_since_the_base_reaches_the_total() -> None:
    now = NOW + timedelta(seconds=100)

    forecast = finish_forecast(status(Status.PROCESSING, 200), NOW, 100, now)

    assert forecast == Forecast(since=NOW, finish_at=now + timedelta(seconds=800))


def test_finish_forecast_is_none_while_the_rate_is_unknown() -> None:
    later = NOW + timedelta(seconds=100)

    assert finish_forecast(None, NOW, 100, later) is None
    assert finish_forecast(status(Status.PROCESSING, 200), None, None, later) is None
    assert finish_forecast(status(Status.PROCESSING, 100), NOW, 100, later) is None


# ----- property: transitions ------------------------------------------------------

POLL = st.one_of(
    st.tuples(st.sampled_from(list(Status)), st.integers(0, 1200)),
    st.sampled_from([UNAVAILABLE, SLOW_DOWN, REJECTED]),
)


@settings(max_examples=200, deadline=None)
@given(first=st.sampled_from(list(Status)), polls=st.lists(POLL, max_size=40))
def test_transition_keys_match_status_changes_and_are_unique(
    first: Status, polls: list[tuple[Status, int] | Failure]
) -> None:
    memory = Memory(status(first, 0))
    previous = first
    changes = 0
    transition_keys: list[str] = []
    for minute, poll in enumerate(polls):
        if isinstance(poll, Failure):
            outcome: Outcome = poll
        else:
            value, done = poll
            outcome = status(value, done)
            # Unknown after a known status is not a change: the last known one stands.
            if not (value is Status.UNKNOWN and previous is not Status.UNKNOWN):
                changes += value is not previous
                previous = value
        decision = decide(memory, outcome, NOW + timedelta(minutes=minute), RULES)
        found = [e.key for e in decision.events if e.kind is EventKind.TRANSITION]
        assert len(found) <= 1
        assert sum(e.kind is EventKind.MILESTONE for e in decision.events) <= 1
        transition_keys += found
        memory = decision.memory

    assert len(transition_keys) == changes
    assert len(set(transition_keys)) == len(transition_keys)
    assert memory.transitions == changes

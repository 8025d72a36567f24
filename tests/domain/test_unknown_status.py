"""A status the bot does not recognise is not news: flapping to Unknown writes no reply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.domain.events import EventKind
from bot.domain.rules import Memory, Rules, decide
from bot.domain.status import ImportStatus, Status

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RULES = Rules(expiry_warning=timedelta(minutes=30), trouble_after=timedelta(minutes=5))


def status(value: Status, done: int = 100, text: str | None = None) -> ImportStatus:
    return ImportStatus(
        access_token=42,
        status=value,
        status_text=text or value.value,
        name="Spring consents",
        validation_successful=1000,
        processed=done,
        expires=NOW + timedelta(days=1),
    )


def test_a_status_flapping_to_unknown_and_back_writes_no_reply_and_keeps_the_card() -> None:
    memory = Memory(status(Status.PROCESSING, 100))
    events = []
    for second in range(20):  # Processing, garbage, Processing, garbage... every second
        answer = (
            status(Status.UNKNOWN, 100, text="garbage")
            if second % 2
            else status(Status.PROCESSING, 100)
        )
        decision = decide(memory, answer, NOW + timedelta(seconds=second), RULES)
        events += decision.events
        if answer.status is Status.UNKNOWN:
            assert decision.changed is False, "the card would show Unknown"
        memory = decision.memory
        assert memory.status is not None and memory.status.status is Status.PROCESSING

    assert events == []
    assert memory.transitions == 0


def test_an_unknown_status_is_a_failed_poll_that_backs_off() -> None:
    decision = decide(Memory(status(Status.PROCESSING)), status(Status.UNKNOWN), NOW, RULES)

    assert decision.memory.failures == 1
    assert decision.memory.trouble_since == NOW
    assert decision.finished is False


def test_an_unknown_status_that_lasts_is_told_once_as_trouble_then_recovery() -> None:
    memory = Memory(status(Status.PROCESSING))
    told = []
    for minute in range(12):
        decision = decide(memory, status(Status.UNKNOWN), NOW + timedelta(minutes=minute), RULES)
        told += [e.kind for e in decision.events]
        memory = decision.memory

    assert told == [EventKind.API_TROUBLE]
    [trouble] = [
        e
        for e in decide(
            Memory(status(Status.PROCESSING), trouble_since=NOW),
            status(Status.UNKNOWN),
            NOW + timedelta(minutes=6),
            RULES,
        ).events
    ]
    assert "does not recognise" in (trouble.detail or "")
    back = decide(memory, status(Status.COMPLETED, 1000), NOW + timedelta(minutes=13), RULES)
    assert [e.kind for e in back.events] == [EventKind.RECOVERED, EventKind.TRANSITION]
    assert back.events[1].old_status is Status.PROCESSING


def test_a_watch_that_started_unknown_still_announces_the_first_known_status() -> None:
    decision = decide(Memory(status(Status.UNKNOWN)), status(Status.PROCESSING), NOW, RULES)

    assert [e.key for e in decision.events] == ["transition:1:Processing"]

"""Where each event goes for each channel setting: pure, no servers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.domain.events import Event, EventKind
from bot.domain.routing import Route, batch_end_route, broadcasts, is_failure, route
from bot.domain.settings import DEFAULTS, Broadcast, ChannelSettings, parse_setting
from bot.domain.status import ImportStatus, Status

SUBSCRIBER = "U0SUB"
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


def status(state: Status = Status.COMPLETED, *, failed: int = 0) -> ImportStatus:
    return ImportStatus(
        access_token=1001,
        status=state,
        name="Spring",
        validation_successful=100,
        processed=100 - failed,
        exceptions=failed,
        not_honored=0,
        validation_failed=0,
    )


def transition(to: Status, frm: Status = Status.PROCESSING) -> Event:
    return Event(EventKind.TRANSITION, f"transition:1:{to.value}", old_status=frm, new_status=to)


CLEAN_COMPLETED = (transition(Status.COMPLETED), status())
DIRTY_COMPLETED = (transition(Status.COMPLETED), status(failed=3))
FAILED = (transition(Status.FAILED), status(Status.FAILED))
QUEUED = (transition(Status.QUEUED, Status.STAGING), status(Status.QUEUED))
PROCESSING = (transition(Status.PROCESSING, Status.QUEUED), status(Status.PROCESSING))
MILESTONE = (Event(EventKind.MILESTONE, "milestone:50", milestone=50), status(Status.PROCESSING))
WARNING = (
    Event(EventKind.EXPIRY_WARNING, "expiry_warning", new_status=Status.QUEUED, expires=EXPIRES),
    status(Status.QUEUED),
)
EXPIRED = (Event(EventKind.EXPIRED, "expired", old_status=Status.QUEUED), status(Status.QUEUED))
TROUBLE = (Event(EventKind.API_TROUBLE, "trouble:x", detail="down"), status(Status.QUEUED))

EVENTS = {
    "clean Completed": CLEAN_COMPLETED,
    "Completed with failures": DIRTY_COMPLETED,
    "Failed": FAILED,
    "Queued": QUEUED,
    "Processing": PROCESSING,
    "milestone": MILESTONE,
    "expiry warning": WARNING,
    "expired": EXPIRED,
    "API trouble": TROUBLE,
}


def settings(**texts: str) -> ChannelSettings:
    result = DEFAULTS
    for key, text in texts.items():
        result = result.with_value(key, parse_setting(key, text, channel_id="C1")[1])
    return result


@pytest.mark.parametrize(
    ("choice", "broadcast"),
    [
        (
            Broadcast.ALL,
            {"clean Completed", "Completed with failures", "Failed", "Queued", "Processing"}
            | {"expiry warning", "expired"},
        ),
        (
            Broadcast.FINISH,
            {"clean Completed", "Completed with failures", "Failed", "expiry warning", "expired"},
        ),
        (Broadcast.FAILURES, {"Completed with failures", "Failed", "expiry warning", "expired"}),
        (Broadcast.NONE, set()),
    ],
)
def test_each_broadcast_choice_shows_exactly_its_events_in_the_channel(
    choice: Broadcast, broadcast: set[str]
) -> None:
    shown = {name for name, (event, st) in EVENTS.items() if broadcasts(event, st, choice)}
    assert shown == broadcast


def test_the_defaults_are_the_original_behaviour() -> None:
    for name, (event, st) in EVENTS.items():
        where = route(event, st, DEFAULTS, SUBSCRIBER)
        assert where.reply, name
        assert where.broadcast is event.broadcast, name
        assert where.mention == (f"<@{SUBSCRIBER}>" if event.broadcast else None), name
        assert where.alert_channel is None and not where.compact


def test_broadcast_failures_keeps_a_clean_completed_in_the_thread_and_shouts_a_failure() -> None:
    chosen = settings(broadcast="failures")
    clean = route(*CLEAN_COMPLETED, chosen, SUBSCRIBER)
    assert clean == Route(reply=True, broadcast=False, mention=None)
    failed = route(*FAILED, chosen, SUBSCRIBER)
    assert failed.broadcast and failed.mention == f"<@{SUBSCRIBER}>"


def test_mention_goes_to_the_chosen_user_group_or_person_or_nobody_on_broadcasts_only() -> None:
    group = settings(mention="<!subteam^S0OPS|@ops>")
    assert route(*FAILED, group, SUBSCRIBER).mention == "<!subteam^S0OPS>"
    assert route(*QUEUED, group, SUBSCRIBER).mention is None, "not broadcast: nobody pinged"
    assert route(*FAILED, settings(mention="<@U0BOB|bob>"), SUBSCRIBER).mention == "<@U0BOB>"
    nobody = route(*FAILED, settings(mention="none"), SUBSCRIBER)
    assert nobody.broadcast and nobody.mention is None


def test_milestones_off_skips_the_progress_replies_only() -> None:
    quiet = settings(milestones="off")
    assert not route(*MILESTONE, quiet, SUBSCRIBER).reply
    assert all(
        route(event, st, quiet, SUBSCRIBER).reply
        for name, (event, st) in EVENTS.items()
        if name != "milestone"
    )


def test_the_alert_channel_gets_failures_and_expiry_warnings_with_the_mention() -> None:
    chosen = settings(alerts="<#C0ALERT|alerts>", mention="<!subteam^S0OPS>", broadcast="none")
    alerted = {
        name
        for name, (event, st) in EVENTS.items()
        if route(event, st, chosen, SUBSCRIBER).alert_channel == "C0ALERT"
    }
    assert alerted == {"Completed with failures", "Failed", "expiry warning", "expired"}
    failed = route(*FAILED, chosen, SUBSCRIBER)
    assert not failed.broadcast, "broadcast none still alerts"
    assert failed.alert_mention == "<!subteam^S0OPS>"
    assert route(*CLEAN_COMPLETED, chosen, SUBSCRIBER).alert_mention is None


def test_compact_is_carried_to_every_reply() -> None:
    assert all(
        route(event, st, settings(compact="on"), SUBSCRIBER).compact
        for event, st in EVENTS.values()
    )


def test_a_batch_thread_takes_only_ends_and_what_went_wrong_and_broadcasts_only_trouble() -> None:
    posted = {
        name
        for name, (event, st) in EVENTS.items()
        if route(event, st, DEFAULTS, SUBSCRIBER, in_batch=True).reply
    }
    assert posted == {
        "clean Completed",
        "Completed with failures",
        "Failed",
        "expiry warning",
        "expired",
    }
    loud = {
        name
        for name, (event, st) in EVENTS.items()
        if route(event, st, settings(broadcast="all"), SUBSCRIBER, in_batch=True).broadcast
    }
    assert loud == {"Completed with failures", "Failed", "expiry warning", "expired"}
    assert route(*FAILED, DEFAULTS, SUBSCRIBER, in_batch=True).in_batch


@pytest.mark.parametrize(
    ("choice", "went_wrong", "broadcast"),
    [
        ("all", False, True),
        ("finish", False, True),
        ("failures", False, False),
        ("failures", True, True),
        ("none", True, False),
    ],
)
def test_a_batch_end_is_broadcast_as_a_finished_import_would_be(
    choice: str, went_wrong: bool, broadcast: bool
) -> None:
    where = batch_end_route(went_wrong, settings(broadcast=choice), SUBSCRIBER)
    assert where.reply and where.broadcast is broadcast
    assert where.mention == (f"<@{SUBSCRIBER}>" if broadcast else None)


def test_failure_means_failed_expired_or_failed_records() -> None:
    assert [name for name, pair in EVENTS.items() if is_failure(*pair)] == [
        "Completed with failures",
        "Failed",
        "expired",
    ]

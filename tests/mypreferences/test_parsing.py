"""Parsing a Retrieve-status body into an ImportStatus, however odd the body is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from bot.domain.status import ImportStatus, Status
from bot.mypreferences.parsing import (
    MAX_COUNT,
    MAX_NAME_LENGTH,
    parse_expires,
    parse_import_status,
)

FULL_BODY = {
    "TotalRecordsReceived": 1000,
    "ValidationSuccessful": 900,
    "ValidationFailed": 100,
    "Processed": 400,
    "Pending": 0,
    "Exceptions": 40,
    "NotHonored": 10,
    "AccessToken": 123456,
    "Status": "Processing",
    "Expires": "2030-01-02T03:04:05Z",
    "Name": "Spring newsletter consents",
    "DataStageDuration": 3,
    "ImportAction": "Add",
}


def test_full_body_is_parsed_into_every_field() -> None:
    status = parse_import_status(FULL_BODY, 123456)
    assert status == ImportStatus(
        access_token=123456,
        status=Status.PROCESSING,
        status_text="Processing",
        name="Spring newsletter consents",
        total_records_received=1000,
        validation_successful=900,
        validation_failed=100,
        processed=400,
        pending=0,
        exceptions=40,
        not_honored=10,
        expires=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        expires_text="2030-01-02T03:04:05Z",
        import_action="Add",
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Initiated", Status.INITIATED),
        ("staging", Status.STAGING),
        ("QUEUED", Status.QUEUED),
        ("  Processing ", Status.PROCESSING),
        ("Completed", Status.COMPLETED),
        ("Complete", Status.COMPLETED),
        ("complete", Status.COMPLETED),
        ("fAiLeD", Status.FAILED),
    ],
)
def test_status_is_recognised_in_any_case_and_the_complete_spelling(
    raw: str, expected: Status
) -> None:
    assert parse_import_status({"Status": raw}, 1).status is expected


@pytest.mark.parametrize("raw", ["Cancelled", "", None, 3, ["Completed"]])
def test_unrecognised_status_is_unknown_and_keeps_the_text_when_it_is_text(raw: object) -> None:
    status = parse_import_status({"Status": raw}, 1)
    assert status.status is Status.UNKNOWN
    assert status.status_text == (raw if isinstance(raw, str) else None)


def test_only_completed_and_failed_are_terminal() -> None:
    assert {s for s in Status if s.is_terminal} == {Status.COMPLETED, Status.FAILED}
    assert {s for s in Status if s.is_active} == {Status.QUEUED, Status.PROCESSING}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (42, 42),
        (0, 0),
        ("1234", 1234),
        (" 77 ", 77),
        (12.0, 12),  # an integral float from a loose serializer is still a count
        (12.5, None),
        (True, None),
        (False, None),
        (-1, None),
        ("-1", None),
        (MAX_COUNT, MAX_COUNT),
        (MAX_COUNT + 1, None),
        (str(MAX_COUNT + 1), None),
        ("1e3", None),
        ("12abc", None),
        ("١٢", None),  # Arabic-Indic digits are decimal but not ASCII
        ("9" * 5000, None),  # int() would refuse it with ValueError
        (float("nan"), None),
        (float("inf"), None),
        (None, None),
        ([1], None),
    ],
)
def test_counts_accept_only_sane_non_negative_integers(raw: object, expected: int | None) -> None:
    assert parse_import_status({"Processed": raw}, 1).processed == expected


def test_missing_fields_are_unknown() -> None:
    status = parse_import_status({}, 99)
    assert status.access_token == 99
    assert status.status is Status.UNKNOWN
    assert status.name is None
    assert status.total_records_received is None
    assert status.processed is None
    assert status.expires is None
    assert status.expires_text is None
    assert status.import_action is None


def test_extra_fields_are_ignored() -> None:
    status = parse_import_status({**FULL_BODY, "Surprise": {"nested": [1, 2]}, "X": 1}, 123456)
    assert status == parse_import_status(FULL_BODY, 123456)


def test_long_name_is_truncated_and_empty_name_is_unknown() -> None:
    assert parse_import_status({"Name": "n" * 5000}, 1).name == "n" * MAX_NAME_LENGTH
    assert parse_import_status({"Name": ""}, 1).name is None
    assert parse_import_status({"Name": 12}, 1).name is None


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_refused(body: object) -> None:
    with pytest.raises(ValueError):
        parse_import_status(body, 1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00+0200", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00-05:30", datetime(2024, 5, 1, 17, 30, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.5Z", datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        # .NET writes seven fractional digits; the seventh is below a microsecond.
        (
            "2024-05-01T12:00:00.1234567",
            datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        ),
        (
            "2024-05-01T12:00:00.1234567+01:00",
            datetime(2024, 5, 1, 11, 0, 0, 123456, tzinfo=UTC),
        ),
        ("  2024-05-01T12:00:00Z  ", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ],
)
def test_expires_parses_iso_8601_variants_to_utc(raw: str, expected: datetime) -> None:
    parsed = parse_expires(raw)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


def test_expires_without_offset_uses_the_configured_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # UTC+2 in summer
    assert parse_expires("2024-07-01T12:00:00", berlin) == datetime(2024, 7, 1, 10, tzinfo=UTC)
    fixed = timezone(timedelta(hours=-3))
    assert parse_expires("2024-07-01T12:00:00", fixed) == datetime(2024, 7, 1, 15, tzinfo=UTC)
    # An explicit offset wins over the configured zone.
    assert parse_expires("2024-07-01T12:00:00Z", berlin) == datetime(2024, 7, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "tomorrow",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-05-01T25:00:00Z",
        "2024-05-01T12:00:00+25:00",
        "2024-05-01",
        "01/05/2024 12:00",
        "2024-05-01T12:00:00Z trailing",
        "0001-01-01T00:00:00+02:00",  # before the start of datetime's range in UTC
        "9999-12-31T23:59:59-05:00",  # past its end
    ],
)
def test_expires_garbage_is_none_not_an_exception(raw: str) -> None:
    assert parse_expires(raw) is None


@pytest.mark.parametrize("raw", [None, 1714564800, 1.5, ["2024-05-01T12:00:00Z"], {}])
def test_expires_that_is_not_a_string_is_none(raw: object) -> None:
    assert parse_expires(raw) is None


def test_unparseable_expires_is_kept_as_text_to_show() -> None:
    status = parse_import_status({"Expires": "sometime soon"}, 1)
    assert status.expires is None
    assert status.expires_text == "sometime soon"
    numeric = parse_import_status({"Expires": 1714564800}, 1)
    assert numeric.expires is None
    assert numeric.expires_text == "1714564800"


def _status(**counts: int | None) -> ImportStatus:
    return ImportStatus(access_token=1, status=Status.PROCESSING, **counts)  # type: ignore[arg-type]


def test_done_sums_processed_exceptions_and_not_honored() -> None:
    assert _status(processed=400, exceptions=40, not_honored=10).done == 450
    assert _status(processed=400).done == 400  # missing parts count as zero
    assert _status().done is None  # nothing known at all


def test_progress_is_done_over_validated_records() -> None:
    assert _status(validation_successful=900, processed=450).progress == pytest.approx(0.5)
    assert _status(validation_successful=100, processed=150).progress == 1.0  # capped
    assert _status(validation_successful=0, processed=0).progress is None  # no division by 0
    assert _status(validation_successful=None, processed=5).progress is None
    assert _status(validation_successful=100).progress is None


def test_status_survives_a_json_round_trip() -> None:
    status = parse_import_status(FULL_BODY, 123456)
    assert ImportStatus.from_json(status.to_json()) == status

"""Exception records: reasons, personal-data masking and the summary a person reads."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.domain.exceptions import (
    DEFAULT_REASON_FIELDS,
    ExceptionsFile,
    Masker,
    SummaryBuilder,
    describe_cut,
    describe_partial,
    find_reason,
    mask_phone,
    mask_text,
    parse_exceptions_file,
    parse_field_names,
)

REDACTED = Masker(ExceptionsFile.REDACTED)


# -- settings --------------------------------------------------------------------------


def test_exceptions_file_modes_parse_case_insensitively() -> None:
    assert parse_exceptions_file(" Redacted ") is ExceptionsFile.REDACTED
    assert parse_exceptions_file("FULL") is ExceptionsFile.FULL
    assert parse_exceptions_file("none") is ExceptionsFile.NONE


def test_unknown_exceptions_file_mode_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected one of redacted, full, none, got 'partly'"):
        parse_exceptions_file("partly")


def test_none_mode_still_masks_the_summary_and_writes_no_file() -> None:
    assert ExceptionsFile.NONE.masks and not ExceptionsFile.NONE.has_file
    assert ExceptionsFile.REDACTED.masks and ExceptionsFile.REDACTED.has_file
    assert not ExceptionsFile.FULL.masks and ExceptionsFile.FULL.has_file


def test_field_name_lists_are_trimmed_and_deduplicated() -> None:
    assert parse_field_names(" ErrorMessage, ,message,Message ,Reason") == (
        "ErrorMessage",
        "message",
        "Reason",
    )


@pytest.mark.parametrize("text", ["", " , ,", "Ok," + "x" * 101, "Bad\nName"])
def test_malformed_field_name_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_field_names(text)


# -- reasons ---------------------------------------------------------------------------


def test_reason_is_the_first_configured_field_present_not_the_first_in_the_record() -> None:
    record = {"Reason": "second choice", "ErrorMessage": "first choice"}
    assert find_reason(record, DEFAULT_REASON_FIELDS) == ("ErrorMessage", "first choice")


def test_reason_fields_match_whatever_their_case() -> None:
    assert find_reason({"errormessage": "bad"}, ["ErrorMessage"]) == ("errormessage", "bad")
    assert find_reason({"ERRORCODE": 17}, DEFAULT_REASON_FIELDS) == ("ERRORCODE", 17)


@pytest.mark.parametrize("empty", [None, "", "   ", [], {}])
def test_empty_reason_fields_give_way_to_the_next(empty: object) -> None:
    record = {"ErrorMessage": empty, "ErrorCode": "E42"}
    assert find_reason(record, DEFAULT_REASON_FIELDS) == ("ErrorCode", "E42")


def test_record_without_any_reason_field_has_no_reason() -> None:
    assert find_reason({"Email": "a@b.com", "Status": "x"}, DEFAULT_REASON_FIELDS) is None


# -- masking free text -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("Invalid email john.doe@example.com", "Invalid email j***@example.com"),
        ("Invalid email john.doe@example.com.", "Invalid email j***@example.com."),
        ("<jane+news@mail.example.org>", "<j***@mail.example.org>"),
        ("'john@x.com' is taken", "'j***@x.com' is taken"),
        ("a;b@c.de,e@f.gh", "a;b***@c.de,e***@f.gh"),
        ("Ünïcødé Željko@例え.jp", "Ünïcødé Ž***@例え.jp"),
        ("mailto:JOHN@EXAMPLE.COM", "mailto:J***@EXAMPLE.COM"),
        ("a@john@x.com", "a@j***@x.com"),
    ],
)
def test_email_addresses_in_text_keep_first_letter_and_domain(text: str, shown: str) -> None:
    assert mask_text(text) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("555-123-1234", "***-***-1234"),
        ("(555) 123-4567", "(***) ***-4567"),
        ("+1 (555) 123-4567", "+* (***) ***-4567"),
        ("call +44 20 7946 0958 now", "call +** ** **** 0958 now"),
        ("+33 1 23 45 67 89", "+** * ** ** 67 89"),
        ("+49 30 1234567", "+** ** ***4567"),
        ("0049 30 1234567", "**** ** ***4567"),
        ("030/1234567", "***/***4567"),
        ("07700 900123", "***** **0123"),
        ("5551234567", "******4567"),
        ("tel:+15551234567", "tel:+*******4567"),
        ("+61.2.9876.5432", "+**.*.****.5432"),
        ("555 – 123 – 4567", "*** – *** – 4567"),
        ("٠١٢٣٤٥٦٧٨٩٠", "*******٧٨٩٠"),
        ("１２３-４５６-７８９０", "***-***-７８９０"),
        ("Phone 555-123-4567x89 rejected", "Phone ***-***-4567x89 rejected"),
        ("on 2024-01-15 call 555 123 4567", "on 2024-01-15 call *** *** 4567"),
    ],
)
def test_phone_numbers_keep_their_shape_and_last_four_digits(text: str, shown: str) -> None:
    assert mask_text(text) == shown


@pytest.mark.parametrize(
    "text",
    [
        "1,000,000 records",  # a count
        "49100",
        "row 1234567",  # a bare id of up to 9 digits
        "ID12345678901",  # digits glued to letters: an identifier
        "2024-01-15",
        "2024-01-15T10:30:00.123456+01:00",
        "15/01/2024 10:30:00",
        "01.02.2024",
        "12-31-2024",
        "20240115",
        "3.14159265358979",
        "1234567.89",
        "v1.2.3.4",
        "Error code E-1234-56",
        "pages 100-200",
        "Ünïcødé tëxt without numbers",
        "",
    ],
)
def test_counts_ids_dates_and_decimals_are_not_phone_numbers(text: str) -> None:
    assert mask_text(text) == text


def test_phone_mask_keeps_every_separator() -> None:
    assert mask_phone("+1-800-555-1234") == "+*-***-***-1234"
    assert mask_phone("123") == "123"


@pytest.mark.parametrize(
    "hostile",
    [
        "a" * 100_000 + "@",
        "@" * 100_000,
        "a@" * 50_000,
        "1 (" * 30_000,
        "(1" * 50_000,
        "1 " * 50_000,
        "9" * 100_000,
        "2024-01-15 " * 20_000,
    ],
)
def test_masking_stays_fast_on_hostile_long_text(hostile: str) -> None:
    started = time.perf_counter()
    mask_text(hostile)
    assert time.perf_counter() - started < 0.5


def test_very_long_value_is_masked_to_its_end() -> None:
    text = "x " * 50_000 + "john@example.com +44 20 7946 0958"
    masked = mask_text(text)
    assert masked.endswith("j***@example.com +** ** **** 0958")
    assert len(masked) == len(text)


# -- masking records -------------------------------------------------------------------


def test_values_of_personal_fields_are_masked_but_recognisable() -> None:
    record = {
        "EmailAddress": "john.doe@example.com",
        "e_mail": "JANE@EXAMPLE.ORG",
        "FirstName": "John",
        "last_name": "Doe",
        "Name": "Željko Ivanović",
        "HomePhone": "+44 20 7946 0958",
        "MOBILE_NUMBER": "07700900123",
        "ZipCode": 12345,
        "PostalCode": "SW1A 1AA",
        "DateOfBirth": "1980-02-29",
        "Address": {"Street": "221B Baker Street", "Lines": ["Flat 2", "London"]},
    }
    assert REDACTED.mask_record(record) == {
        "EmailAddress": "j***@example.com",
        "e_mail": "J***@EXAMPLE.ORG",
        "FirstName": "J***",
        "last_name": "D***",
        "Name": "Ž***",
        "HomePhone": "+** ** **** 0958",
        "MOBILE_NUMBER": "*******0123",
        "ZipCode": "1***",
        "PostalCode": "S***",
        "DateOfBirth": "1***",
        "Address": {"Street": "2***", "Lines": ["F***", "L***"]},
    }


def test_fields_that_identify_nobody_are_kept() -> None:
    record = {
        "ImportName": "Spring consents",
        "PurposeName": "Newsletter",
        "ProfileId": "P-000123",
        "RecordNumber": 5551234567,  # a JSON number: an id, not a phone
        "ErrorMessage": "Invalid phone 555-123-4567",
        "ConsentDate": "2024-01-15T10:30:00Z",
        "EmailOptIn": True,
        "Email": "",
        "Phone": None,
    }
    masked = REDACTED.mask_record(record)
    assert masked == {**record, "ErrorMessage": "Invalid phone ***-***-4567"}


def test_nested_objects_and_lists_are_masked_at_every_depth() -> None:
    record = {
        "Contacts": [
            {"Type": "Email", "Value": "jane@example.com"},
            {"Type": "Phone", "Value": "+1 555 123 4567", "Owner": {"FirstName": "Jane"}},
        ],
        "Notes": {"jane@example.com": "key is an address", "deep": [["call 555-123-4567"]]},
    }
    masked = REDACTED.mask_record(record)
    assert masked == {
        "Contacts": [
            {"Type": "Email", "Value": "j***@example.com"},
            {"Type": "Phone", "Value": "+* *** *** 4567", "Owner": {"FirstName": "J***"}},
        ],
        "Notes": {"j***@example.com": "key is an address", "deep": [["call ***-***-4567"]]},
    }


def test_field_names_holding_an_address_are_masked_too() -> None:
    assert REDACTED.mask_record({"john@example.com": 1}) == {"j***@example.com": 1}


def test_personal_field_list_is_configurable_and_supports_exact_names() -> None:
    masker = Masker(ExceptionsFile.REDACTED, ["=memberref", "loyalty"])
    masked = masker.mask_record({"MemberRef": "AB-99", "MemberRefType": "x", "LoyaltyTier": "Gold"})
    assert masked == {"MemberRef": "A***", "MemberRefType": "x", "LoyaltyTier": "G***"}
    # The default list no longer applies once replaced.
    assert masker.mask_record({"FirstName": "John"}) == {"FirstName": "John"}


def test_default_reason_fields_are_not_personal() -> None:
    assert not any(REDACTED.is_personal(name) for name in DEFAULT_REASON_FIELDS)


def test_full_mode_changes_nothing() -> None:
    record = {"Email": "john@example.com", "Reason": "Invalid phone 555-123-4567"}
    full = Masker(ExceptionsFile.FULL)
    assert full.mask_record(record) == record
    assert full.mask_text("john@example.com") == "john@example.com"


def test_none_mode_masks_like_redacted() -> None:
    record = {"Email": "john@example.com"}
    assert Masker(ExceptionsFile.NONE).mask_record(record) == {"Email": "j***@example.com"}


# -- properties: nothing personal survives ---------------------------------------------

NO_DIGITS_OR_AT = st.text(
    st.characters(exclude_categories=("Nd", "Cs"), exclude_characters="@"), max_size=30
)


@st.composite
def phone_numbers(draw: st.DrawFn) -> str:
    """Phone numbers as people write them: country codes, area codes, separators."""
    if draw(st.booleans()):
        return draw(st.from_regex(r"\A[0-9]{10,15}\Z"))
    separator = draw(st.sampled_from([" ", "-", ".", "/", " - ", "\u00a0"]))
    parts = []
    if draw(st.booleans()):
        parts.append("+" + draw(st.from_regex(r"\A[1-9][0-9]{0,2}\Z")))
    area = draw(st.from_regex(r"\A[0-9]{3}\Z"))
    parts.append(f"({area})" if draw(st.booleans()) else area)
    parts += draw(st.lists(st.from_regex(r"\A[0-9]{2,4}\Z"), min_size=2, max_size=3))
    phone = separator.join(parts)
    assume(len(re.findall(r"\d", phone)) >= 7)
    return phone


def looks_masked(email: str) -> bool:
    """True for addresses such as ``a***@x.com`` that are their own mask."""
    body = email.rpartition("@")[0].lstrip("'`")
    return not body.strip("*") or (len(body) > 1 and not body[1:].strip("*"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(email=st.emails(), before=NO_DIGITS_OR_AT, after=NO_DIGITS_OR_AT)
def test_no_email_address_survives_redacted_text(email: str, before: str, after: str) -> None:
    assume(not looks_masked(email))
    assert email not in mask_text(f"{before} {email} {after}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(phone=phone_numbers(), before=NO_DIGITS_OR_AT, after=NO_DIGITS_OR_AT)
def test_no_phone_number_survives_redacted_text(phone: str, before: str, after: str) -> None:
    masked = mask_text(f"{before} {phone} {after}")
    digits = re.findall(r"\d", phone)
    # Only the last four digits are left, and nothing else of the number.
    assert re.findall(r"\d", masked) == digits[-4:]


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    shape=st.recursive(
        st.dictionaries(st.text(max_size=8), JSON_SCALARS, max_size=4),
        lambda inner: st.dictionaries(st.text(max_size=8), inner | st.lists(inner), max_size=4),
        max_leaves=20,
    ),
)
def test_no_planted_email_or_phone_survives_anywhere_in_a_record(
    data: st.DataObject, shape: dict[str, object]
) -> None:
    email = data.draw(st.emails().filter(lambda e: not looks_masked(e)))
    phone = data.draw(phone_numbers())
    assume(phone not in email)  # the domain is kept, and may hold the same digits
    # JSON numbers are kept (ids, counts): the random shape may hold the same digits.
    assume(phone not in json.dumps(shape, ensure_ascii=False))
    record = dict(shape)
    record[data.draw(st.text(max_size=8))] = {"list": [f"write to {email} please"]}
    record[data.draw(st.text(max_size=8))] = [None, phone]
    masked = json.dumps(REDACTED.mask_record(record), ensure_ascii=False)
    assert email not in masked
    assert phone not in masked


@settings(max_examples=200, deadline=None)
@given(value=st.text(st.characters(exclude_characters="*", exclude_categories=["Cs"])))
def test_personal_fields_never_show_more_than_a_first_character(value: str) -> None:
    masked = REDACTED.mask_value("FirstName", value)
    assert isinstance(masked, str)
    if not value.strip():
        assert masked == value  # "empty" is often the very reason a record failed
    elif len(value.strip()) >= 2:
        assert value.strip() not in masked


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_masking_any_text_never_fails(text: str) -> None:
    assert isinstance(mask_text(text), str)


@settings(max_examples=100, deadline=None)
@given(count=st.integers(min_value=0, max_value=10**12), day=st.dates())
def test_counts_and_dates_survive_in_text(count: int, day: object) -> None:
    text = f"{count:,} records on {day} and {count} more"
    expected_count = str(count) if count < 10**9 else None
    masked = mask_text(text)
    assert masked.startswith(f"{count:,} records on {day} and ")
    if expected_count:
        assert masked.endswith(f" {expected_count} more")


# -- the summary -----------------------------------------------------------------------


def summary_of(
    records: Sequence[object], masker: Masker = REDACTED, **limits: Any
) -> SummaryBuilder:
    builder = SummaryBuilder(masker, **limits)
    for record in records:
        builder.add(record)
    return builder


def test_summary_shows_top_five_reasons_with_counts_and_shares() -> None:
    reasons = ["A"] * 40 + ["B"] * 25 + ["C"] * 15 + ["D"] * 10 + ["E"] * 6 + ["F"] * 4
    report = summary_of([{"ErrorMessage": reason} for reason in reasons]).report()
    assert report.total == 100
    assert [(r.reason, r.count, r.share) for r in report.top_reasons] == [
        ("A", 40, 0.40),
        ("B", 25, 0.25),
        ("C", 15, 0.15),
        ("D", 10, 0.10),
        ("E", 6, 0.06),
    ]
    assert report.rest == 4
    assert report.distinct_reasons == 6
    assert report.grouped


def test_equal_counts_keep_the_order_reasons_were_first_seen() -> None:
    report = summary_of([{"Reason": r} for r in "zyxzyx"]).report()
    assert [r.reason for r in report.top_reasons] == ["z", "y", "x"]


def test_reasons_are_masked_and_grouped_on_the_masked_text() -> None:
    records = [
        {"ErrorMessage": "Invalid email john.doe@example.com"},
        {"ErrorMessage": "Invalid email jane.roe@example.com"},
        {"ErrorMessage": "Invalid  email\njack@example.com "},
    ]
    report = summary_of(records).report()
    assert [(r.reason, r.count) for r in report.top_reasons] == [
        ("Invalid email j***@example.com", 3)
    ]
    full = summary_of(records, Masker(ExceptionsFile.FULL)).report()
    assert full.top_reasons[0].reason == "Invalid email john.doe@example.com"


def test_records_without_a_reason_field_are_counted_as_such() -> None:
    report = summary_of([{"Email": "x@y.com"}, {"Email": "z@y.com"}]).report()
    assert report.without_reason == 2
    assert report.top_reasons == ()
    assert not report.grouped
    assert report.reason_fields_used == ()


def test_summary_names_the_reason_fields_records_used_most_used_first() -> None:
    records = [{"ErrorCode": 7}, {"message": "late"}, {"message": "late"}, {"Other": 1}]
    report = summary_of(records).report()
    assert report.reason_fields_used == ("message", "ErrorCode")
    assert [(r.reason, r.count) for r in report.top_reasons] == [("late", 2), ("7", 1)]
    assert report.without_reason == 1


def test_columns_are_the_union_of_fields_in_first_seen_order() -> None:
    records = [{"b": 1, "a": 2}, {"c": 3, "a": 4}, {"john@example.com": 5}]
    report = summary_of(records).report()
    assert report.columns == ("b", "a", "c", "j***@example.com")
    assert not report.columns_capped


def test_items_that_are_not_objects_become_a_value_column() -> None:
    report = summary_of(["just text", 42]).report()
    assert report.columns == ("value",)
    assert report.total == 2


def test_samples_illustrate_the_top_reasons_and_are_masked() -> None:
    records = [
        {"Reason": "rare", "Email": "rare@example.com"},
        {"Reason": "common", "Email": "first@example.com", "Phone": "555-123-4567"},
        {"Reason": "common", "Email": "second@example.com"},
        {"Reason": "middle", "FirstName": "Ann"},
        {"Reason": "middle", "FirstName": "Bob"},
        {"Reason": "common", "Email": "third@example.com"},
    ]
    report = summary_of(records, max_samples=2).report()
    assert [sample.reason for sample in report.samples] == ["common", "middle"]
    assert report.samples[0].fields == (
        ("Reason", "common"),
        ("Email", "f***@example.com"),
        ("Phone", "***-***-4567"),
    )
    assert report.samples[1].fields == (("Reason", "middle"), ("FirstName", "A***"))


def test_samples_show_a_bounded_number_of_fields_and_short_values() -> None:
    record = {f"f{i}": "v" * 500 for i in range(40)}
    sample = summary_of([record], sample_fields=30).report().samples[0]
    assert len(sample.fields) == 30
    assert sample.more_fields == 10
    assert len(sample.fields[0][1]) == 200 and sample.fields[0][1].endswith("…")


def test_long_reasons_are_masked_before_they_are_cut() -> None:
    reason = "x" * 190 + " +44 20 7946 0958"
    report = summary_of([{"Reason": reason}]).report()
    shown = report.top_reasons[0].reason
    assert len(shown) == 200
    assert "7946" not in shown and "+** **" in shown


def test_distinct_reasons_beyond_the_limit_go_to_other() -> None:
    records = [{"Reason": f"reason {i}"} for i in range(10)] + [{"Reason": "reason 0"}] * 5
    report = summary_of(records, max_reasons=4).report()
    assert report.distinct_reasons == 4
    assert report.other_reasons == 6
    assert report.top_reasons[0].reason == "reason 0" and report.top_reasons[0].count == 6
    assert report.rest == 6


def test_columns_beyond_the_limit_are_noted() -> None:
    report = summary_of([{f"c{i}": i for i in range(5)}], max_columns=3).report()
    assert report.columns == ("c0", "c1", "c2")
    assert report.columns_capped


def test_report_is_immutable_and_reports_can_be_taken_while_adding() -> None:
    builder = summary_of([{"Reason": "a"}])
    first = builder.report()
    builder.add({"Reason": "b"})
    assert first.total == 1 and builder.report().total == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.total = 5  # type: ignore[misc]


def test_empty_summary_has_no_reasons_and_no_division_by_zero() -> None:
    report = SummaryBuilder(REDACTED).report()
    assert report.total == 0 and report.top_reasons == () and report.samples == ()


def test_summary_memory_does_not_grow_with_records() -> None:
    # Every record has a new reason, a new column and a new e-mail address: the worst case.
    def records(n: int) -> list[dict[str, object]]:
        return [{"Reason": f"case {i} for u{i}@example.com", f"col{i}": i} for i in range(n)]

    def peak(n: int) -> int:
        batch = records(n)
        tracemalloc.start()
        builder = SummaryBuilder(REDACTED)
        for record in batch:
            builder.add(record)
        builder.report()
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result

    # More records than the caches hold (4,096) in both runs, so both have filled them;
    # a summary that kept each record would grow 3 times between them.
    small, large = peak(5_000), peak(15_000)
    assert large < small * 1.5, (small, large)
    assert large < 2_000_000


# -- wording ---------------------------------------------------------------------------


def test_partial_and_cut_wording() -> None:
    assert describe_partial(1500, 2500, "the token expired") == (
        "1,500 of 2,500 records; the token expired"
    )
    assert describe_partial(1500, None, "the token expired") == "1,500 records; the token expired"
    assert describe_cut(1_000_000, 1_234_567) == (
        "cut at 1,000,000 of 1,234,567 records (EXCEPTIONS_MAX_RECORDS)"
    )

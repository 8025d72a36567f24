"""What the exceptions archive says in Slack: summaries, notes and the card's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.archive.fetch import FetchResult
from bot.domain.archiving import ArchiveKind
from bot.domain.exceptions import (
    DEFAULT_REASON_FIELDS,
    ExceptionsFile,
    Masker,
    SummaryBuilder,
)
from bot.domain.status import ImportStatus, Status
from bot.slack.render_exceptions import (
    SUMMARY_LIMIT,
    Heading,
    card_line,
    failed_text,
    summary_message,
    summary_text,
)
from bot.store.records import ArchiveNote

REDACTED, FULL, NONE = ExceptionsFile.REDACTED, ExceptionsFile.FULL, ExceptionsFile.NONE
STATUS = ImportStatus(
    access_token=1001,
    status=Status.COMPLETED,
    name="Spring <!channel> opt-ins",
    exceptions=60,
    not_honored=40,
    validation_failed=800,
)


def result(records: list[dict[str, object]], **fields: object) -> FetchResult:
    reports = {}
    for mode in (REDACTED, FULL, NONE):
        builder = SummaryBuilder(Masker(mode))
        for record in records:
            builder.add(record)
        reports[mode] = builder.report()
    values: dict[str, object] = {
        "access_token": 1001,
        "records": len(records),
        "expected": len(records),
        "pages": 1,
        "stopped": None,
        "cut": False,
        "reports": reports,
    }
    values.update(fields)
    return FetchResult(**values)  # type: ignore[arg-type]


RECORDS: list[dict[str, object]] = [
    {"RecordNumber": n, "EmailAddress": f"person.{n}@example.com", "ErrorMessage": reason}
    for n, reason in enumerate(["Invalid email address"] * 6 + ["Missing consent"] * 3 + ["Locked"])
]


def text(fetched: FetchResult, mode: ExceptionsFile = REDACTED, **heading: str) -> str:
    return summary_text(
        fetched,
        mode,
        STATUS,
        Heading(heading.get("title", "Exceptions"), heading.get("place", "attached")),
        DEFAULT_REASON_FIELDS,
    )


def test_summary_shows_top_reasons_counts_columns_and_the_cards_counts() -> None:
    shown = text(result(RECORDS))
    assert shown.startswith(":clipboard: *Exceptions of Spring &lt;!channel&gt; opt-ins (1001)*")
    assert ": 10 records" in shown.splitlines()[0]
    assert "The import reported 60 exceptions, 40 not honoured and 800 failed validation" in shown
    assert "(900 in all)" in shown
    assert "• Invalid email address: 6 (60%)" in shown
    assert "• Missing consent: 3 (30%)" in shown
    assert "`RecordNumber`, `EmailAddress`, `ErrorMessage`" in shown
    assert "<!channel>" not in shown  # outside text never pings anyone


def test_redacted_and_none_mask_samples_and_full_shows_them() -> None:
    fetched = result(RECORDS)
    assert "person.0@example.com" not in text(fetched, REDACTED)
    # Asterisks are kept from formatting text by invisible joiners; a reader sees p***@...
    assert "p***@example.com" in text(fetched, REDACTED).replace("\u200d", "")
    assert "person.0@example.com" not in text(fetched, NONE)
    assert "person.0@example.com" in text(fetched, FULL)
    assert "No file is posted: EXCEPTIONS_FILE is `none`" in text(fetched, NONE)


def test_partial_and_cut_are_said(tmp_path: Path) -> None:
    partial = result(RECORDS, expected=2500, stopped="the token expired")
    assert ":warning: *Partial:* 10 of 2,500 records; the token expired." in text(partial)
    cut = result(RECORDS, expected=2500, cut=True)
    assert "Stopped at 10 of 2,500 records (EXCEPTIONS_MAX_RECORDS)" in text(cut)


def test_no_records_is_said_plainly() -> None:
    shown = text(result([]))
    assert "MyPreferences returned no records." in shown
    assert "Top reasons" not in shown


def test_records_without_a_reason_field_are_not_grouped() -> None:
    shown = text(result([{"Id": 1}, {"Id": 2}]))
    assert "No record has a reason field (looked for ErrorMessage, Message" in shown


def test_a_summary_of_huge_records_stays_within_slacks_limits() -> None:
    wide = [
        {f"Field{i}": "x" * 500 for i in range(40)} | {"Reason": f"r{n}" * 200} for n in range(9)
    ]
    shown = text(result(wide))
    assert len(shown) <= SUMMARY_LIMIT
    message = summary_message(shown)
    assert message.blocks[0]["text"]["text"] == shown


def test_a_failure_to_fetch_is_said_in_words() -> None:
    said = failed_text(
        1001, STATUS, "the token expired before the exceptions could be fetched", ArchiveKind.FINAL
    )
    assert said.startswith(":warning: Could not keep the exceptions of Spring")
    assert said.endswith("the token expired before the exceptions could be fetched")


def note(**fields: object) -> ArchiveNote:
    values: dict[str, object] = {
        "kind": ArchiveKind.FINAL,
        "records": 2500,
        "expected": 2500,
        "stopped": None,
        "cut": False,
        "error": None,
        "mode": "redacted",
        "has_file": True,
    }
    values.update(fields)
    return ArchiveNote(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({}, ":clipboard: Exceptions: 2,500 records · file in thread"),
        (
            {"has_file": False, "mode": "none"},
            ":clipboard: Exceptions: 2,500 records · summary in thread",
        ),
        ({"records": 0, "has_file": False}, ":clipboard: Exceptions: MyPreferences returned none"),
        (
            {"records": 1500, "stopped": "the token expired"},
            ":clipboard: Exceptions: 1,500 of 2,500 (partial) records · file in thread",
        ),
        (
            {"kind": ArchiveKind.PARTIAL, "records": 120, "expected": 120},
            ":clipboard: Exceptions: 120 (partial) records · file in thread",
        ),
        (
            {"records": None, "error": "the token expired", "has_file": False},
            ":clipboard: Exceptions: could not be kept (see the thread)",
        ),
    ],
)
def test_the_cards_line(fields: dict[str, object], line: str) -> None:
    assert card_line(note(**fields)) == line

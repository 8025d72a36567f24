"""What the exceptions archive says in Slack: the summary, the card's line, the notes.

Pure functions (no I/O, no clock), beside ``render.py`` and built from its escaping
helpers: every value that came from MyPreferences (reasons, field names, samples,
the import's name) goes through ``render.escape`` and is already masked by the
report's ``EXCEPTIONS_FILE`` mode (``SummaryBuilder`` masks before it counts).

The summary is one mrkdwn text: the upload's ``initial_comment`` in a thread, and
the section of the private answer to ``/import-status exceptions``. It stays under
``SUMMARY_LIMIT`` characters whatever the records hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.archive.fetch import FetchResult
from bot.domain.archiving import ArchiveKind, failed_records
from bot.domain.exceptions import ExceptionsFile, ExceptionsReport, SampleRecord
from bot.domain.format import format_count
from bot.domain.status import ImportStatus
from bot.slack import render
from bot.store.records import ArchiveNote

SUMMARY_LIMIT = 3000  # one section block; also a comfortable initial_comment
MAX_COLUMNS_SHOWN = 15
MAX_SAMPLE_FIELDS = 6
MAX_SAMPLE_VALUE = 60
MAX_REASON_SHOWN = 150

MODE_WORDS = {
    ExceptionsFile.REDACTED: "personal data masked",
    ExceptionsFile.FULL: "personal data shown in full (EXCEPTIONS_FILE=full)",
    ExceptionsFile.NONE: "personal data masked; no file (EXCEPTIONS_FILE=none)",
}


@dataclass(frozen=True)
class Heading:
    """The first line of a summary: what the records are, and where the file went."""

    title: str  # e.g. "Exceptions", "Partial exceptions"
    #: where the file is, or None when there is none (mode none, no records)
    file_place: str | None = None


def _about(access_token: int, status: ImportStatus | None) -> str:
    if status is not None and status.name:
        return f"{render.escape(status.name, limit=100)} ({access_token})"
    return f"import {access_token}"


def _reported(status: ImportStatus | None) -> str | None:
    """The card's failure counts, to set the records against."""
    if status is None:
        return None
    return (
        f"The import reported {format_count(status.exceptions)} exceptions, "
        f"{format_count(status.not_honored)} not honoured and "
        f"{format_count(status.validation_failed)} failed validation "
        f"({failed_records(status):,} in all)."
    )


def _percent(share: float) -> str:
    if share <= 0:
        return "0%"
    if share < 0.01:
        return "<1%"
    return f"{round(share * 100)}%"


def _reasons(report: ExceptionsReport, reason_fields: tuple[str, ...]) -> list[str]:
    if not report.total:
        return []
    if not report.grouped:
        looked = ", ".join(render.escape(name, limit=40) for name in reason_fields[:8])
        return [f"No record has a reason field (looked for {looked}), so they are not grouped."]
    used = ", ".join(render.escape(f, limit=40) for f in report.reason_fields_used[:3])
    lines = [f"*Top reasons* (from {used}):"]
    for reason in report.top_reasons:
        lines.append(
            f"• {render.escape(reason.reason, limit=MAX_REASON_SHOWN)}: "
            f"{reason.count:,} ({_percent(reason.share)})"
        )
    if report.rest:
        kinds = report.distinct_reasons - len(report.top_reasons)
        what = f"{kinds:,} other reason{'s' if kinds != 1 else ''}" if kinds > 0 else "others"
        if report.other_reasons:
            what = "other reasons"
        lines.append(f"• {what}: {report.rest:,} ({_percent(report.rest / report.total)})")
    if report.without_reason:
        lines.append(
            f"• no reason given: {report.without_reason:,} "
            f"({_percent(report.without_reason / report.total)})"
        )
    return lines


def _columns(report: ExceptionsReport) -> str | None:
    if not report.columns:
        return None
    shown = ", ".join(f"`{render.escape(c, limit=40)}`" for c in report.columns[:MAX_COLUMNS_SHOWN])
    more = len(report.columns) - MAX_COLUMNS_SHOWN
    if more > 0 or report.columns_capped:
        shown += f" and {max(more, 0):,}{'+' if report.columns_capped else ''} more"
    return f"*Columns* ({len(report.columns):,}{'+' if report.columns_capped else ''}): {shown}"


def _sample(sample: SampleRecord) -> str:
    fields = [
        f"`{render.escape(name, limit=40)}` {render.escape(value, limit=MAX_SAMPLE_VALUE) or '∅'}"
        for name, value in sample.fields[:MAX_SAMPLE_FIELDS]
    ]
    hidden = len(sample.fields) - MAX_SAMPLE_FIELDS + sample.more_fields
    if hidden > 0:
        fields.append(f"+{hidden} more")
    return "> " + " · ".join(fields)


def summary_text(
    result: FetchResult,
    mode: ExceptionsFile,
    status: ImportStatus | None,
    heading: Heading,
    reason_fields: tuple[str, ...] = (),
) -> str:
    """The summary of one fetch as the channel (or the person who asked) reads it."""
    report = result.reports[mode]
    about = _about(result.access_token, status)
    if result.records == 0:
        lines = [f":clipboard: *{heading.title} of {about}*: MyPreferences returned no records."]
        reported = _reported(status)
        if reported:
            lines.append(reported)
        if result.stopped:
            lines.append(f":warning: Paging stopped: {render.escape(result.stopped, limit=300)}.")
        return render._fit("\n".join(lines), SUMMARY_LIMIT)
    lines = [f":clipboard: *{heading.title} of {about}*: {result.records:,} records"]
    reported = _reported(status)
    if reported:
        lines.append(reported)
    partial = result.partial_text()
    if partial:
        lines.append(f":warning: *Partial:* {render.escape(partial, limit=300)}.")
    if result.cut:
        total = f" of {result.expected:,}" if result.expected else ""
        lines.append(
            f":scissors: Stopped at {result.records:,}{total} records (EXCEPTIONS_MAX_RECORDS)."
        )
    lines += _reasons(report, reason_fields)
    columns = _columns(report)
    if columns:
        lines.append(columns)
    if report.samples:
        masked = "personal data masked" if mode.masks else "as MyPreferences sent them"
        lines.append(f"*Samples* ({masked}):")
        lines += [_sample(sample) for sample in report.samples]
    archive = result.files.get(mode)
    if archive is not None and heading.file_place:
        size = "gzip, " if archive.gzipped else ""
        lines.append(
            f":page_facing_up: `{render.escape(archive.filename, limit=80)}` "
            f"({size}{MODE_WORDS[mode]}) {heading.file_place}."
        )
    elif not mode.has_file:
        lines.append("No file is posted: EXCEPTIONS_FILE is `none` (summary only).")
    return _fit_lines(lines)


def _fit_lines(lines: list[str]) -> str:
    """Join lines, dropping sample lines first (then cutting) to stay under the limit."""
    text = "\n".join(lines)
    while render._slack_len(text) > SUMMARY_LIMIT and any(line.startswith(">") for line in lines):
        last = max(i for i, line in enumerate(lines) if line.startswith(">"))
        del lines[last]
        text = "\n".join(lines)
    return render._fit(text, SUMMARY_LIMIT)


def summary_message(text: str) -> render.Message:
    """A summary as a private answer (one section, same text as the fallback)."""
    return render.Message(
        text=render._fit(text, render.FALLBACK_TEXT_LIMIT), blocks=[_section(text)]
    )


def _section(text: str) -> dict[str, object]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


def failed_text(access_token: int, status: ImportStatus | None, why: str, kind: ArchiveKind) -> str:
    """A thread's note when the exceptions could not be fetched at all."""
    what = "partial exceptions" if kind is ArchiveKind.PARTIAL else "exceptions"
    return render._fit(
        f":warning: Could not keep the {what} of {_about(access_token, status)}: "
        f"{render.escape(why, limit=500)}",
        SUMMARY_LIMIT,
    )


def card_line(note: ArchiveNote) -> str:
    """The card's line about the exceptions: "Exceptions: 2,500 records · file in thread"."""
    if note.error is not None and note.records is None:
        return ":clipboard: Exceptions: could not be kept (see the thread)"
    records = note.records or 0
    if records == 0:
        return ":clipboard: Exceptions: MyPreferences returned none"
    count = f"{records:,}"
    if note.stopped is not None or note.kind is ArchiveKind.PARTIAL:
        of = f" of {note.expected:,}" if note.expected and note.expected > records else ""
        count = f"{records:,}{of} (partial)"
    where = "file in thread" if note.has_file else "summary in thread"
    return f":clipboard: Exceptions: {count} records · {where}"

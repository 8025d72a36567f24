"""The status of an import as plain text, for the terminal (`status` and `demo`)."""

from __future__ import annotations

from datetime import datetime

from bot.domain.archiving import failed_records
from bot.domain.exceptions import ExceptionsReport
from bot.domain.format import format_count, progress_bar, relative_time
from bot.domain.status import STATUS_LOOKS, ImportStatus, Status


def status_label(status: ImportStatus) -> str:
    """The status with its terminal symbol, and what the API said when it was unreadable."""
    label = f"{STATUS_LOOKS[status.status].symbol} {status.status.value}"
    if status.status is Status.UNKNOWN and status.status_text:
        label += f" ({status.status_text!r})"
    return label


def format_status(status: ImportStatus, now: datetime) -> str:
    """A readable multi-line summary; control characters from the API are removed."""
    name = _printable(status.name) if status.name else "Unnamed import"
    lines = [
        f"{name}  (import {status.access_token})",
        f"  Status:            {status_label(status)}",
        f"  Received:          {format_count(status.total_records_received)}",
        f"  Validated OK:      {format_count(status.validation_successful)}",
        f"  Validation failed: {format_count(status.validation_failed)}",
        f"  Processed:         {format_count(status.processed)}",
        f"  Pending:           {format_count(status.pending)}",
        f"  Exceptions:        {format_count(status.exceptions)}",
        f"  Not honoured:      {format_count(status.not_honored)}",
    ]
    if status.status.is_active and status.progress is not None:
        lines.append(f"  Progress:          {progress_bar(status.progress)}")
    if status.expires is not None:
        when = status.expires.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"  Token expires:     {relative_time(status.expires, now)} ({when})")
    elif status.expires_text:
        lines.append(f"  Token expires:     {_printable(status.expires_text)} (could not be read)")
    else:
        lines.append("  Token expires:     unknown")
    return "\n".join(lines)


def format_exceptions(
    report: ExceptionsReport,
    *,
    access_token: int,
    status: ImportStatus | None,
    expected: int | None,
    partial: str | None,
    cut: bool,
    reason_fields: tuple[str, ...],
) -> str:
    """The summary of an import's exception records (``exceptions TOKEN``), as plain text."""
    name = _printable(status.name) if status is not None and status.name else "Unnamed import"
    lines = [f"Exceptions of {name}  (import {access_token}): {report.total:,} records"]
    if status is not None:
        lines.append(
            f"  The import reported {format_count(status.exceptions)} exceptions, "
            f"{format_count(status.not_honored)} not honoured and "
            f"{format_count(status.validation_failed)} failed validation "
            f"({failed_records(status):,} in all)."
        )
    if partial:
        lines.append(f"  Partial: {_printable(partial)}.")
    if cut:
        of = f" of {expected:,}" if expected else ""
        lines.append(f"  Stopped at {report.total:,}{of} records (EXCEPTIONS_MAX_RECORDS).")
    if report.total == 0:
        lines.append("  MyPreferences returned no records.")
        return "\n".join(lines)
    if report.grouped:
        used = ", ".join(report.reason_fields_used[:3])
        lines.append(f"  Top reasons (from {_printable(used)}):")
        width = max(len(f"{r.count:,}") for r in report.top_reasons)
        for reason in report.top_reasons:
            lines.append(
                f"    {reason.count:>{width},}  {reason.share:>4.0%}  {_printable(reason.reason)}"
            )
        if report.rest:
            lines.append(
                f"    {report.rest:>{width},}  {report.rest / report.total:>4.0%}  (others)"
            )
        if report.without_reason:
            share = report.without_reason / report.total
            lines.append(f"    {report.without_reason:>{width},}  {share:>4.0%}  (no reason given)")
    else:
        looked = ", ".join(reason_fields[:8])
        lines.append(f"  No record has a reason field (looked for {looked}); not grouped.")
    more = "+" if report.columns_capped else ""
    lines.append(
        f"  Columns ({len(report.columns)}{more}): {_printable(', '.join(report.columns))}"
    )
    for sample in report.samples:
        shown = " | ".join(f"{_printable(k)}={_printable(v)}" for k, v in sample.fields[:8])
        lines.append(f"  Sample: {shown}")
    return "\n".join(lines)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)

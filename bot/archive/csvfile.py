"""The exceptions archive file: records streamed to disk, then one CSV (gzip when large).

A CSV's header is the union of every record's fields in first-seen order, which is
only known after the last record, so the file is made in two passes with memory that
does not grow with the number of records:

1. ``add``: each record is masked (``bot.domain.exceptions.Masker``: in ``redacted``
   mode nothing personal reaches the disk, not even the temporary file) and appended
   to a spool file, one length-prefixed ``marshal`` frame per record (several times
   cheaper than JSON lines, and only ever read back by the same process); the field
   names are collected (at most ``max_columns``; fields beyond go, as one JSON object,
   into a last column ``(more fields)``).
2. ``finish``: the spool is read back record by record into the CSV, then removed.

Everything lives in a private folder (mode 0700) made inside the caller's directory:
containers may run with a read-only root filesystem and only /data writable, so the
directory is never assumed. The folder and whatever is in it are removed on every
error, on ``discard()``, and when a ``with`` block ends without ``finish``; after
``finish`` the CSV is the caller's, to upload and then ``ArchiveFile.discard()``.
``sweep_stale`` removes what a killed process left behind.

The file:

- UTF-8 with a byte-order mark, so spreadsheet programs read accented names right;
  rows end with CRLF (the csv module's default, as RFC 4180 says).
- Nested objects and lists are JSON-encoded; null is an empty cell, booleans ``true``
  and ``false``.
- Cells starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return get a
  leading ``'`` so a spreadsheet shows them as text instead of running them as a
  formula; plain numbers such as ``-12`` or ``+3.5`` are left alone (not formulas).
- A cell is cut at 32,000 characters (a spreadsheet cell holds 32,767) ending in ``…``.
- Notes come last, as one-cell rows starting with ``#``: the cut at ``max_records``
  (``EXCEPTIONS_MAX_RECORDS``), the partial marker (``N of M records; the token
  expired``), or that there were no records.
- Gzip when the CSV is larger than ``gzip_above_bytes`` (5 MiB by default): about
  20,000 typical records; below it the plain CSV opens straight from Slack, above it
  an upload of text that compresses 5 to 10 times is worth the extra click. The CSV
  is written compressed and unpacked again when it turns out small, so large files
  never hit the disk uncompressed.

The writer's I/O blocks: an asyncio caller runs ``add`` batches and ``finish`` in a
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import marshal
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bot.domain.exceptions import (
    Masker,
    as_record,
    describe_cut,
    describe_partial,
    display_value,
    shorten,
)

DEFAULT_MAX_RECORDS = 1_000_000
GZIP_ABOVE_BYTES = 5 * 1024 * 1024
DEFAULT_MAX_COLUMNS = 1000
MAX_CELL_LENGTH = 32_000
MORE_FIELDS_COLUMN = "(more fields)"
PRIVATE_PREFIX = ".exceptions-"
STALE_AFTER_SECONDS = 24 * 3600  # an access token lives about 12 hours: no archive runs longer
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_COPY_CHUNK = 1024 * 1024
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)
_FRAME = struct.Struct("<I")  # the length of one marshalled record


def archive_filename(access_token: object, gzipped: bool) -> str:
    """``import-12345-exceptions.csv`` (``.csv.gz`` when gzipped); unsafe characters dropped."""
    token = re.sub(r"[^A-Za-z0-9_-]", "", str(access_token))[:40] or "unknown"
    return f"import-{token}-exceptions.csv" + (".gz" if gzipped else "")


@dataclass(frozen=True)
class ArchiveFile:
    """A finished archive file on disk. The caller removes it with ``discard()`` once used."""

    path: Path
    #: the name to show and upload under, e.g. ``import-12345-exceptions.csv.gz``
    filename: str
    #: data rows in the file
    records_written: int
    #: records given to the writer (more than written when cut)
    records_seen: int
    #: True when records beyond ``max_records`` were left out
    cut: bool
    #: True when the caller said the records are incomplete (e.g. the token expired)
    partial: bool
    gzipped: bool
    size_bytes: int

    def discard(self) -> None:
        """Remove the file and the writer's private folder around it. Safe to call twice."""
        self.path.unlink(missing_ok=True)
        if self.path.parent.name.startswith(PRIVATE_PREFIX):
            shutil.rmtree(self.path.parent, ignore_errors=True)

    def move_to(self, destination: Path) -> ArchiveFile:
        """Move the file to ``destination`` (e.g. the CLI's ``--out``) and drop the folder."""
        shutil.move(self.path, destination)
        moved = replace(self, path=Path(destination))
        if self.path.parent.name.startswith(PRIVATE_PREFIX):
            shutil.rmtree(self.path.parent, ignore_errors=True)
        return moved


class CsvArchiveWriter:
    """Stream exception records into one CSV; see the module docstring for the file's shape.

    Use it as a context manager so temporary files go whatever happens::

        with CsvArchiveWriter(directory, token, masker) as writer:
            for record in records:
                writer.add(record)
            archive = writer.finish(partial="the token expired", expected_total=2500)
    """

    def __init__(
        self,
        directory: Path,
        access_token: object,
        masker: Masker,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        gzip_above_bytes: int | None = GZIP_ABOVE_BYTES,
        max_columns: int = DEFAULT_MAX_COLUMNS,
    ) -> None:
        if not masker.mode.has_file:
            raise ValueError("EXCEPTIONS_FILE is none: no file is written")
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        if max_columns < 1:
            raise ValueError("max_columns must be at least 1")
        directory = Path(directory)
        if not directory.is_dir():
            raise ValueError(f"not a directory: {directory}")
        self.masker = masker
        self.access_token = access_token
        self.max_records = max_records
        self.gzip_above_bytes = gzip_above_bytes
        self.max_columns = max_columns
        self.records_seen = 0
        self.records_written = 0
        self._columns: dict[str, None] = {}
        self._overflow = False  # some record had fields beyond max_columns
        self._spool: IO[bytes] | None = None  # set just below; None once closed
        self._folder: Path | None = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=directory))
        self._spool_path = self._folder / "records.spool"
        try:
            self._spool = open(self._spool_path, "wb")  # noqa: SIM115 (closed in finish/discard)
        except BaseException:
            self.discard()
            raise
        self._finished = False

    # -- pass 1 ------------------------------------------------------------------------

    def add(self, item: object) -> None:
        """Mask one record and spool it; beyond ``max_records`` it is only counted."""
        if self._spool is None:
            raise RuntimeError("the archive writer is finished or discarded")
        self.records_seen += 1
        if self.records_written >= self.max_records:
            return
        try:
            record = self.masker.mask_record(item if isinstance(item, Mapping) else as_record(item))
            self._note_columns(record)
            self._spool.write(_frame(record))
        except BaseException:
            self.discard()
            raise
        self.records_written += 1

    def _note_columns(self, record: Mapping[str, object]) -> None:
        for key in record:
            if key not in self._columns:
                if len(self._columns) < self.max_columns:
                    self._columns[key] = None
                else:
                    self._overflow = True

    # -- pass 2 ------------------------------------------------------------------------

    def finish(
        self,
        *,
        partial: str | None = None,
        expected_total: int | None = None,
        cut: bool = False,
    ) -> ArchiveFile:
        """Write the CSV and return it. ``partial``: why the records are incomplete, if so.

        With ``partial`` the file ends with e.g. ``# partial: 1,500 of 2,500 records; the
        token expired`` (``expected_total`` is the API's TotalResults, when known).
        ``cut``: the caller stopped giving records at ``max_records`` while more existed
        (it need not fetch records only to count them); the cut note then counts
        ``expected_total`` when known.
        """
        if self._spool is None or self._folder is None:
            raise RuntimeError("the archive writer is finished or discarded")
        try:
            self._spool.close()
            self._spool = None
            result = self._write_csv(self._folder, partial, expected_total, cut)
            self._spool_path.unlink()
        except BaseException:
            self.discard()
            raise
        self._finished = True
        return result

    def _write_csv(
        self, folder: Path, partial: str | None, expected_total: int | None, cut: bool = False
    ) -> ArchiveFile:
        gz_path = folder / archive_filename(self.access_token, gzipped=True)
        with gzip.open(gz_path, "wb", compresslevel=6) as raw:
            # mtime=0 is not offered by gzip.open; the header's time is harmless.
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            self._write_rows(text, partial, expected_total, cut)
            text.flush()
            plain_size = raw.tell()  # in write mode: uncompressed bytes written
            text.detach()
        gzipped = self.gzip_above_bytes is not None and plain_size > self.gzip_above_bytes
        path = gz_path
        if not gzipped:
            path = folder / archive_filename(self.access_token, gzipped=False)
            with gzip.open(gz_path, "rb") as source, open(path, "wb") as target:
                shutil.copyfileobj(source, target, _COPY_CHUNK)
            gz_path.unlink()
        return ArchiveFile(
            path=path,
            filename=path.name,
            records_written=self.records_written,
            records_seen=self.records_seen,
            cut=cut or self.records_seen > self.records_written,
            partial=partial is not None,
            gzipped=gzipped,
            size_bytes=path.stat().st_size,
        )

    def _write_rows(
        self, out: IO[str], partial: str | None, expected_total: int | None, cut: bool = False
    ) -> None:
        columns = list(self._columns)
        more_column = _unique(MORE_FIELDS_COLUMN, self._columns) if self._overflow else None
        writer = csv.writer(out)
        if columns:
            writer.writerow(
                [_cell(name) for name in columns + ([more_column] if more_column else [])]
            )
        # Each record fills only its own fields into a row of empty cells: records are
        # often much narrower than the union of all their fields.
        position = {name: index for index, name in enumerate(columns)}
        width = len(columns)
        with open(self._spool_path, "rb") as spool:
            for record in _read_frames(spool):
                row = [""] * width
                extra: dict[str, object] = {}
                for key, value in record.items():
                    index = position.get(key)
                    if index is None:
                        extra[key] = value
                    elif value is not None:
                        row[index] = _cell(value)
                if more_column is not None:
                    row.append(_cell(extra) if extra else "")
                writer.writerow(row)
        if self.records_written == 0:
            writer.writerow(["# no exception records"])
        if cut or self.records_seen > self.records_written:
            known = max(self.records_seen, expected_total or 0)
            seen = known if known > self.records_written else None
            writer.writerow([f"# {describe_cut(self.records_written, seen)}"])
        if partial is not None:
            line = describe_partial(self.records_seen, expected_total, " ".join(partial.split()))
            writer.writerow([f"# partial: {line}"])

    # -- clean-up ----------------------------------------------------------------------

    def discard(self) -> None:
        """Remove every file this writer made (the finished CSV too). Safe to call twice."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> CsvArchiveWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # On error, or when no file was finished, nothing may stay on disk.
        if exc_type is not None or not self._finished:
            self.discard()


def sweep_stale(directory: Path, max_age_seconds: float = STALE_AFTER_SECONDS) -> int:
    """Remove private folders older than ``max_age_seconds`` (left by a killed process).

    Young folders are left alone: another worker sharing the directory may be writing.
    Returns how many were removed.
    """
    removed = 0
    cutoff = time.time() - max_age_seconds
    for entry in Path(directory).glob(PRIVATE_PREFIX + "*"):
        try:
            if entry.is_dir() and not entry.is_symlink() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry)
                removed += 1
        except OSError:
            continue  # gone already, or not ours to remove: the next sweep tries again
    return removed


def _frame(record: Any) -> bytes:  # Any: marshal types its input narrowly
    try:
        data = marshal.dumps(record)
    except ValueError:
        # A value marshal does not know (it did not come from JSON): store what JSON shows.
        data = marshal.dumps(json.loads(_JSON.encode(record)))
    return _FRAME.pack(len(data)) + data


def _read_frames(spool: IO[bytes]) -> Iterator[dict[str, object]]:
    while header := spool.read(_FRAME.size):
        (size,) = _FRAME.unpack(header)
        record: dict[str, object] = marshal.loads(spool.read(size))
        yield record


def _cell(value: object) -> str:
    text = value if isinstance(value, str) else display_value(value)
    if len(text) > MAX_CELL_LENGTH:
        text = shorten(text, MAX_CELL_LENGTH)
    if "\0" in text:
        text = text.replace("\0", "\ufffd")  # spreadsheet programs stop reading at NUL
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _unique(name: str, taken: Mapping[str, None]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name} {number}", number + 1
    return candidate


__all__ = [
    "DEFAULT_MAX_RECORDS",
    "GZIP_ABOVE_BYTES",
    "ArchiveFile",
    "CsvArchiveWriter",
    "archive_filename",
    "sweep_stale",
]

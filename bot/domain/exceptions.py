"""Exception records: their reasons, personal-data masking and a streaming summary.

Retrieve exceptions returns pages of records whose fields the public pages do not
name, so everything here is generic: a record is a mapping from field name to any
JSON value. Pure: standard library only, no I/O, no clock.

Three pieces, used by the archive (``bot.archive``), the Slack summary and the CLI:

- ``find_reason``: which field explains a record's failure.
- ``Masker``: the personal-data rule of ``EXCEPTIONS_FILE`` (``redacted`` | ``full`` |
  ``none``), applied to whole records, single values and free text.
- ``SummaryBuilder``: fed one record at a time with bounded memory; ``report()``
  returns an immutable ``ExceptionsReport`` with plain fields (already masked).

The personal-data rule, in ``redacted`` and ``none`` (``none`` posts the summary only,
and the summary follows the same rule; only ``full`` shows values as they are):

1. Field names. A field is personal when its name, case-folded with every character
   that is not a letter or a digit removed ("E-Mail_Address" -> "emailaddress"),
   contains one of the patterns of ``DEFAULT_PERSONAL_FIELDS`` (configurable); a
   pattern written ``=name`` must equal the whole normalised name instead. Every value
   of a personal field is masked: an e-mail address as ``j***@example.com``, a phone
   number (7+ digits) as ``***-***-1234`` (separators kept, every digit but the last
   four hidden), anything else as its first character and ``***`` (``John`` ->
   ``J***``; the length is not kept). Empty strings, ``null`` and booleans are kept:
   they identify nobody and "the e-mail address is empty" is often the very reason a
   record failed. Numbers are masked as text. Inside a personal field, nested objects
   and lists are masked leaf by leaf. Names are checked at every depth.
2. Free text. In every other string value, in the reason, in samples, and in field
   names themselves, e-mail addresses and phone numbers are masked in place: "Invalid
   email john.doe@example.com" -> "Invalid email j***@example.com".
   - E-mail: one or more characters other than spaces and ``@<>()[],;:"``, an ``@``,
     and a domain of letters, digits, ``-`` and ``_`` labels joined by dots.
   - Phone: a run of digits that may start with ``+`` and may contain single spaces,
     ``.``, ``-``, ``/`` and parenthesised groups, not glued to a preceding letter or
     digit. It is a phone number when it has at least 7 digits and starts with ``+``
     or contains a separator, or when it is a bare run of at least 10 digits. Not
     phones: a leading date (``2024-01-15``, ``15/01/2024``, ``01.02.2024``) whose
     remainder is judged alone, a decimal number (two groups joined by one ``.``),
     counts written with commas (``1,000,000``), bare runs of up to 9 digits (ids,
     compact dates), and numbers stored as JSON numbers (ids, counts, timestamps;
     a phone number is text, since a JSON number cannot keep ``+`` or a leading 0).

Known limits, on purpose: a name or street inside free text ("Invalid name John
Smith") cannot be told from other words and is kept; digits glued to a preceding
letter (``ID12345678901``) are an identifier, not a phone; runs of 7+ digits with
spaces or dots (``1 000 000``, an IP address, a UUID's all-digit last group) are
masked as phones, because privacy wins a tie.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

DEFAULT_REASON_FIELDS: tuple[str, ...] = (
    "ErrorMessage",
    "Message",
    "Reason",
    "Error",
    "ExceptionMessage",
    "Description",
    "ErrorCode",
)

# Substrings of normalised field names (see the module docstring); "=x" means "exactly x".
# "name" alone would also hide ImportName, PurposeName or FieldName, which identify nobody
# and explain failures, so person names are listed one by one.
DEFAULT_PERSONAL_FIELDS: tuple[str, ...] = (
    "mail",
    "phone",
    "mobile",
    "cellular",
    "fax",
    "msisdn",
    "=name",
    "firstname",
    "lastname",
    "middlename",
    "fullname",
    "givenname",
    "familyname",
    "surname",
    "maidenname",
    "nickname",
    "username",
    "displayname",
    "contactname",
    "customername",
    "personname",
    "address",
    "street",
    "city",
    "postal",
    "postcode",
    "zip",
    "birth",
    "dob",
    "ssn",
    "socialsecurity",
    "passport",
    "gender",
)

MASK = "***"
MAX_REASON_LENGTH = 200  # characters of a reason kept for grouping and display
MAX_SAMPLE_VALUE_LENGTH = 200  # characters of one value shown in a sample
MAX_FIELD_NAME_LENGTH = 100  # of a name given in EXCEPTIONS_REASON_FIELDS or ..._PERSONAL_FIELDS
ELLIPSIS = "…"


class ExceptionsFile(Enum):
    """What an exceptions archive puts into Slack (``EXCEPTIONS_FILE``)."""

    REDACTED = "redacted"
    FULL = "full"
    NONE = "none"

    @property
    def masks(self) -> bool:
        """True when personal data is masked. ``none`` still posts a summary, so it masks."""
        return self is not ExceptionsFile.FULL

    @property
    def has_file(self) -> bool:
        """True when a file is written and uploaded."""
        return self is not ExceptionsFile.NONE


def parse_exceptions_file(text: str) -> ExceptionsFile:
    """The mode named by ``text`` (case and surrounding spaces ignored). Raises ValueError."""
    value = text.strip().casefold()
    for mode in ExceptionsFile:
        if mode.value == value:
            return mode
    choices = ", ".join(mode.value for mode in ExceptionsFile)
    raise ValueError(f"expected one of {choices}, got {text.strip()[:40]!r}")


def parse_field_names(text: str) -> tuple[str, ...]:
    """A comma-separated list of field names, e.g. ``EXCEPTIONS_REASON_FIELDS``.

    Names are stripped; empty items are skipped; duplicates (ignoring case) are dropped,
    first one kept. Raises ValueError when nothing is left or a name is malformed.
    """
    names: list[str] = []
    seen: set[str] = set()
    for item in text.split(","):
        name = item.strip()
        if not name:
            continue
        if len(name) > MAX_FIELD_NAME_LENGTH or not name.isprintable():
            raise ValueError(
                f"field names are printable and at most {MAX_FIELD_NAME_LENGTH} characters"
            )
        if name.casefold() not in seen:
            seen.add(name.casefold())
            names.append(name)
    if not names:
        raise ValueError("expected a comma-separated list of field names")
    return tuple(names)


def as_record(item: object) -> dict[str, object]:
    """An item of the API's collection as a record; a non-object item becomes ``{"value": item}``.

    The public pages do not promise objects, and one odd item must not stop an archive.
    """
    if isinstance(item, Mapping):
        return {key if isinstance(key, str) else str(key): value for key, value in item.items()}
    return {"value": item}


# ---------------------------------------------------------------------------------------
# Reasons


def find_reason(record: Mapping[str, object], fields: Iterable[str]) -> tuple[str, object] | None:
    """The reason field of a record and its value, or None when it has none.

    The first name of ``fields`` (in their order) that the record has with a value that
    is present and not empty: not null, not a blank string, not an empty list or object.
    Names match case-insensitively ("errorMessage" answers to ErrorMessage), because the
    API's spelling of these fields is not documented; the field is returned as the record
    spells it. When a record has two spellings of one name, the first in the record wins.
    """
    return _ReasonFinder(tuple(fields)).find(record)


class _ReasonFinder:
    def __init__(self, fields: tuple[str, ...]) -> None:
        self.rank: dict[str, int] = {}
        for index, name in enumerate(fields):
            self.rank.setdefault(name.casefold(), index)

    def find(self, record: Mapping[str, object]) -> tuple[str, object] | None:
        best: tuple[int, str, object] | None = None
        for key, value in record.items():
            rank = self.rank.get(key.casefold())
            if rank is None or (best is not None and rank >= best[0]) or _is_empty(value):
                continue
            best = (rank, key, value)
            if rank == 0:
                break
        return None if best is None else (best[1], best[2])


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | dict):
        return not value
    return False


# ---------------------------------------------------------------------------------------
# Masking

# An address starts after a delimiter (or an "@", so "a@john@x.com" still finds john's
# address) and its domain must not run on into another "@". Possessive quantifiers keep
# the scan linear on hostile input such as 100,000 characters without a domain.
_EMAIL_DELIMITERS = r'\s@<>()\[\],;:"'
_EMAIL_RE = re.compile(
    rf"(?<![^{_EMAIL_DELIMITERS}])[^{_EMAIL_DELIMITERS}]++@[\w-]++(?:\.[\w-]++)*+(?![@\w-])"
)
# One separator between digit groups: a space, or one of . - / with optional spaces.
_SEP = r"(?:[ \u00a0]?[./\-\u2010-\u2013][ \u00a0]?|[ \u00a0])"
_GROUP = r"(?:\d|\(\d+\))"
# A digit run not glued to a preceding letter or digit. Possessive (*+) so a run is
# always judged whole: backtracking must never turn a rejected run into a shorter match.
_RUN_RE = re.compile(rf"(?<![^\W_])\+?{_GROUP}(?:\d|\(\d+\)|{_SEP}(?={_GROUP}))*+")
_SEPARATORS = " \u00a0./-\u2010\u2011\u2012\u2013"
_DIGIT_RE = re.compile(r"\d")
_DIGIT_GROUP_RE = re.compile(r"\d+")
_PHONE_ONLY_RE = re.compile(rf"\+?{_GROUP}(?:\d|\(\d+\)|{_SEP}(?={_GROUP}))*+")
_DATE_RE = re.compile(
    r"(?P<y>\d{4})(?P<s1>[./\-])(?P<m>\d{1,2})(?P=s1)(?P<d>\d{1,2})"
    r"|(?P<a>\d{1,2})(?P<s2>[./\-])(?P<b>\d{1,2})(?P=s2)(?P<c>\d{4}|\d{2})"
)
MIN_PHONE_DIGITS = 7
MIN_BARE_PHONE_DIGITS = 10
KEPT_PHONE_DIGITS = 4
_CACHE_LIMIT = 4096
_K = TypeVar("_K")
_V = TypeVar("_V")


def mask_email(address: str) -> str:
    """``john.doe@example.com`` -> ``j***@example.com``: the first character and the domain.

    Quotes in front of the address (``'john@…``) are kept as they are, so the first
    character shown is the address's own.
    """
    local, _, domain = address.rpartition("@")
    body = local.lstrip("'`")
    quotes = local[: len(local) - len(body)]
    if not body.strip("*"):
        return f"{quotes}{MASK}@{domain}"  # nothing of the address left to hide
    return f"{quotes}{body[0]}{MASK}@{domain}"


def mask_phone(text: str) -> str:
    """Every digit but the last four replaced by ``*``; ``+``, separators and brackets kept.

    ``555-123-1234`` -> ``***-***-1234``; ``+44 20 7946 0958`` -> ``+** ** **** 0958``.
    """
    total = len(_DIGIT_RE.findall(text))
    hidden = total - KEPT_PHONE_DIGITS
    out: list[str] = []
    for char in text:
        if hidden > 0 and char.isdecimal():
            out.append("*")
            hidden -= 1
        else:
            out.append(char)
    return "".join(out)


def mask_text(text: str) -> str:
    """Free text with every e-mail address and phone number masked in place."""
    if "@" in text:
        text = _EMAIL_RE.sub(_email_match, text)
    if len(text) >= MIN_PHONE_DIGITS and _DIGIT_RE.search(text):
        text = _RUN_RE.sub(_run_match, text)
    return text


def _email_match(match: re.Match[str]) -> str:
    return mask_email(match.group())


def _run_match(match: re.Match[str]) -> str:
    return _judge_run(match.group())


def _judge_run(run: str) -> str:
    """A digit run, masked when it is a phone number (rules in the module docstring)."""
    if len(run) < MIN_PHONE_DIGITS:
        return run
    if run.startswith("+"):
        return mask_phone(run)
    # Leading dates are kept and what follows them is judged alone ("2024-01-15 555 123
    # 4567"). A loop over positions: a long list of dates must cost neither stack nor copies.
    start = 0
    while (end := _date_end(run, start)) is not None:
        start = end
        while start < len(run) and run[start] in _SEPARATORS:
            start += 1
    return run[:start] + _judge_undated(run[start:]) if start else _judge_undated(run)


def _judge_undated(run: str) -> str:
    digits = len(_DIGIT_RE.findall(run))
    if digits < MIN_PHONE_DIGITS:
        return run
    groups = _DIGIT_GROUP_RE.findall(run)
    if len(groups) == 1 and run.isdecimal():
        return mask_phone(run) if digits >= MIN_BARE_PHONE_DIGITS else run
    if len(groups) == 2 and run == f"{groups[0]}.{groups[1]}":
        return run  # a decimal number
    return mask_phone(run)


def _date_end(run: str, start: int = 0) -> int | None:
    """Where a date starting at ``start`` ends, or None when no date starts there."""
    match = _DATE_RE.match(run, start)
    if match is None or not _plausible_date(match):
        return None
    end = match.end()
    # "2024-01-155" is not a date followed by something: the digits run on.
    return end if end == len(run) or not run[end].isdecimal() else None


def _plausible_date(match: re.Match[str]) -> bool:
    if match.group("y"):
        return 1 <= int(match.group("m")) <= 12 and 1 <= int(match.group("d")) <= 31
    first, second = int(match.group("a")), int(match.group("b"))
    # Day-month or month-day: either order must make sense.
    return 1 <= first <= 31 and 1 <= second <= 31 and min(first, second) <= 12


def _normalise_field_name(name: str) -> str:
    return "".join(char for char in name.casefold() if char.isalnum())


class Masker:
    """The personal-data rule of one ``ExceptionsFile`` mode (see the module docstring).

    In ``full`` mode every method returns its input unchanged (records are still copied
    into plain dicts with string keys).
    """

    def __init__(
        self,
        mode: ExceptionsFile = ExceptionsFile.REDACTED,
        personal_fields: Iterable[str] = DEFAULT_PERSONAL_FIELDS,
    ) -> None:
        self.mode = mode
        self.active = mode.masks
        self._contains: list[str] = []
        self._exact: set[str] = set()
        for pattern in personal_fields:
            if pattern.startswith("="):
                self._exact.add(_normalise_field_name(pattern[1:]))
            elif normalised := _normalise_field_name(pattern):
                self._contains.append(normalised)
        # Field names and many values (dates, topics, reasons) repeat on every record:
        # remember the answers, in bounded caches.
        self._keys: dict[object, tuple[str, bool]] = {}
        self._texts: dict[str, str] = {}

    def is_personal(self, field: str) -> bool:
        """True when a field's name suggests personal data (whatever the mode)."""
        return self._plan(field)[1]

    def mask_key(self, field: str) -> str:
        """A field name with e-mail addresses and phone numbers masked."""
        return self._plan(field)[0] if self.active else field

    def mask_text(self, text: str) -> str:
        """Free text (a reason, a message) with e-mail addresses and phone numbers masked."""
        return self._text(text) if self.active else text

    def mask_value(self, field: str, value: object) -> object:
        """The value of ``field`` as it may be shown or stored."""
        if not self.active:
            return value
        return self._mask(value, self._plan(field)[1])

    def mask_record(self, record: Mapping[str, object]) -> dict[str, object]:
        """A masked copy of a record (keys included). Two keys masked alike: the last wins."""
        if not self.active:
            return as_record(record)
        masked: dict[str, object] = {}
        for key, value in record.items():
            shown, personal = self._keys.get(key) or self._plan(key)
            masked[shown] = self._mask(value, personal)
        return masked

    def _plan(self, key: object) -> tuple[str, bool]:
        """(the key as shown, whether its values are personal), remembered."""
        plan = self._keys.get(key)
        if plan is None:
            field = key if isinstance(key, str) else str(key)
            name = _normalise_field_name(field)
            personal = name in self._exact or any(pattern in name for pattern in self._contains)
            plan = (mask_text(field), personal)
            _remember(self._keys, key, plan)
        return plan

    def _text(self, text: str) -> str:
        if len(text) < MIN_PHONE_DIGITS and "@" not in text:
            return text  # too short to hold a phone number, and no address
        masked = self._texts.get(text)
        if masked is None:
            masked = mask_text(text)
            if len(text) <= 200:
                _remember(self._texts, text, masked)
        return masked

    def _mask(self, value: object, personal: bool) -> object:
        if isinstance(value, str):
            return _mask_personal(value) if personal else self._text(value)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return _mask_personal(str(value)) if personal else value
        if isinstance(value, Mapping):
            nested: dict[str, object] = {}
            for key, item in value.items():
                shown, named_personal = self._plan(key)
                nested[shown] = self._mask(item, personal or named_personal)
            return nested
        if isinstance(value, list | tuple):
            return [self._mask(item, personal) for item in value]
        # Not a JSON type: show it as text, under the same rule.
        return self._mask(str(value), personal)


def _mask_personal(value: str) -> str:
    """Any value of a personal field: an e-mail or phone shape kept recognisable, else ``J***``."""
    text = value.strip()
    if not text:
        return value
    if _EMAIL_RE.fullmatch(text):
        return mask_email(text)
    if (
        _PHONE_ONLY_RE.fullmatch(text)
        and len(_DIGIT_RE.findall(text)) >= MIN_PHONE_DIGITS
        and _date_end(text) is None  # a date of birth is not shown as ****-*2-29
    ):
        return mask_phone(text)
    return text[0] + MASK


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> None:
    # A plain dict cleared when full: the few names and reasons that repeat on every
    # record are back in it after one record, and memory stays bounded.
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value


# ---------------------------------------------------------------------------------------
# Showing values


# One encoder for every call: json.dumps with options builds a new one each time.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def display_value(value: object) -> str:
    """A value as one text cell: strings as they are, null empty, the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)  # the common case, without the encoder's cost
    return _JSON.encode(value)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``…`` when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + ELLIPSIS


def reason_text(value: object) -> str:
    """A reason value as one line: whitespace collapsed, at most ``MAX_REASON_LENGTH``."""
    return shorten(" ".join(display_value(value).split()), MAX_REASON_LENGTH)


def describe_partial(fetched: int, expected: int | None, why: str) -> str:
    """Words for an archive that stopped early: ``1,500 of 2,500 records; the token expired``."""
    if expected is None or expected < fetched:
        return f"{fetched:,} records; {why}"
    return f"{fetched:,} of {expected:,} records; {why}"


def describe_cut(written: int, seen: int | None) -> str:
    """The words for a file cut at ``EXCEPTIONS_MAX_RECORDS`` (``seen`` None: more, not counted)."""
    if seen is None or seen <= written:
        return f"cut at {written:,} records (EXCEPTIONS_MAX_RECORDS); more were not fetched"
    return f"cut at {written:,} of {seen:,} records (EXCEPTIONS_MAX_RECORDS)"


# ---------------------------------------------------------------------------------------
# The summary


@dataclass(frozen=True)
class ReasonCount:
    """One reason and how many records gave it; ``share`` is of all records (0.0 to 1.0)."""

    reason: str
    count: int
    share: float


@dataclass(frozen=True)
class SampleRecord:
    """One record as it may be shown: (field, value as text) pairs, masked and shortened."""

    reason: str | None
    fields: tuple[tuple[str, str], ...]
    #: fields of the record not shown (beyond the sample's field limit)
    more_fields: int


@dataclass(frozen=True)
class ExceptionsReport:
    """What a set of exception records says, ready to render. Texts are already masked."""

    mode: ExceptionsFile
    total: int
    #: union of the records' field names, first seen first (at most the builder's limit)
    columns: tuple[str, ...]
    #: True when more field names existed than ``columns`` lists
    columns_capped: bool
    #: the reason fields records actually used, most used first
    reason_fields_used: tuple[str, ...]
    #: the most frequent reasons, most frequent first (ties: first seen first)
    top_reasons: tuple[ReasonCount, ...]
    #: reasons counted one by one (top ones included)
    distinct_reasons: int
    #: records whose reason was new after the limit of distinct reasons: counted, not named
    other_reasons: int
    #: records without any reason field
    without_reason: int
    samples: tuple[SampleRecord, ...]

    @property
    def grouped(self) -> bool:
        """True when at least one record had a reason (else say "no reason field")."""
        return self.without_reason < self.total

    @property
    def rest(self) -> int:
        """Records with a reason outside the top list (the named rest and the other bucket)."""
        return self.total - self.without_reason - sum(r.count for r in self.top_reasons)


class SummaryBuilder:
    """Fed one record at a time (``add``); ``report()`` at any moment, as often as wanted.

    Memory is bounded whatever the number of records: at most ``max_reasons`` distinct
    reasons are counted by name (later new ones go to ``other_reasons``), at most
    ``max_columns`` field names are kept, and a pool of at most ``sample_pool`` masked
    samples (the first record of each of the first reasons) is kept to pick samples from.
    """

    def __init__(
        self,
        masker: Masker,
        reason_fields: Iterable[str] = DEFAULT_REASON_FIELDS,
        *,
        top: int = 5,
        max_reasons: int = 1000,
        max_columns: int = 200,
        max_samples: int = 3,
        sample_pool: int = 20,
        sample_fields: int = 30,
    ) -> None:
        self.masker = masker
        self._finder = _ReasonFinder(tuple(reason_fields))
        self._top = top
        self._max_reasons = max_reasons
        self._max_columns = max_columns
        self._max_samples = max_samples
        self._sample_pool = sample_pool
        self._sample_fields = sample_fields
        self.total = 0
        self._columns: dict[str, None] = {}
        self._columns_capped = False
        self._counts: dict[str, int] = {}
        self._other = 0
        self._without = 0
        self._fields_used: dict[str, int] = {}
        self._samples: dict[str | None, SampleRecord] = {}
        self._reason_cache: dict[tuple[str, str], str] = {}

    def add(self, item: object) -> None:
        """Count one record (a mapping from the API; anything else is kept as ``value``)."""
        record = as_record(item)
        self.total += 1
        self._add_columns(record)
        found = self._finder.find(record)
        reason: str | None = None
        if found is None:
            self._without += 1
        else:
            field, value = found
            if field in self._fields_used or len(self._fields_used) < 20:
                self._fields_used[field] = self._fields_used.get(field, 0) + 1
            reason = self._reason(field, value)
            if reason in self._counts:
                self._counts[reason] += 1
            elif len(self._counts) < self._max_reasons:
                self._counts[reason] = 1
            else:
                self._other += 1
        if reason not in self._samples and len(self._samples) < self._sample_pool:
            self._samples[reason] = self._sample(reason, record)

    def _add_columns(self, record: dict[str, object]) -> None:
        if len(self._columns) >= self._max_columns:
            if not self._columns_capped:
                self._columns_capped = any(
                    self.masker.mask_key(key) not in self._columns for key in record
                )
            return
        for key in record:
            shown = self.masker.mask_key(key)
            if shown not in self._columns:
                if len(self._columns) >= self._max_columns:
                    self._columns_capped = True
                    return
                self._columns[shown] = None

    def _reason(self, field: str, value: object) -> str:
        # Masked first, then shortened: a cut must never leave half a phone number unmasked.
        if isinstance(value, str):
            cached = self._reason_cache.get((field, value))
            if cached is None:
                cached = reason_text(self.masker.mask_value(field, value))
                _remember(self._reason_cache, (field, value), cached)
            return cached
        return reason_text(self.masker.mask_value(field, value))

    def _sample(self, reason: str | None, record: dict[str, object]) -> SampleRecord:
        fields = tuple(
            (
                shorten(self.masker.mask_key(key), MAX_FIELD_NAME_LENGTH),
                shorten(display_value(self.masker.mask_value(key, value)), MAX_SAMPLE_VALUE_LENGTH),
            )
            for key, value in list(record.items())[: self._sample_fields]
        )
        return SampleRecord(reason, fields, max(len(record) - self._sample_fields, 0))

    def report(self) -> ExceptionsReport:
        """The summary of every record added so far."""
        ranked = sorted(self._counts.items(), key=_by_count)  # stable: ties keep first seen
        top = tuple(
            ReasonCount(reason, count, count / self.total) for reason, count in ranked[: self._top]
        )
        used = tuple(field for field, _ in sorted(self._fields_used.items(), key=_by_count))
        return ExceptionsReport(
            mode=self.masker.mode,
            total=self.total,
            columns=tuple(self._columns),
            columns_capped=self._columns_capped,
            reason_fields_used=used,
            top_reasons=top,
            distinct_reasons=len(self._counts),
            other_reasons=self._other,
            without_reason=self._without,
            samples=self._pick_samples([reason.reason for reason in top]),
        )

    def _pick_samples(self, top: list[str]) -> tuple[SampleRecord, ...]:
        # One sample per top reason first, so the samples illustrate what matters most.
        order: list[str | None] = [reason for reason in top if reason in self._samples]
        order += [reason for reason in self._samples if reason not in order]
        return tuple(self._samples[reason] for reason in order[: self._max_samples])


def _by_count(item: tuple[str, int]) -> int:
    return -item[1]

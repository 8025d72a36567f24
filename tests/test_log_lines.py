"""No outside text can forge a log line: one record is one line (plus an indented traceback).

The attacker's tool is a line break (or a character a log viewer takes for
one) inside anything that reaches a record: the message, its arguments, a
context field, an exception's message. Each test logs such text through the
bot's own logging setup and reads the output the way an operator's tools do,
line by line.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator

import pytest

from bot import logs
from bot.logs import setup_logging

FORGED = "2026-12-02 04:00:00,000 ERROR bot.watch.notifier: forged"
# Everything Python's str.splitlines() (and so many log viewers) treats as a line break.
BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
RECORD_START = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ ")


@pytest.fixture
def logged() -> Iterator[Callable[[str], io.StringIO]]:
    """Configure logging as the bot does, into a buffer; restore the root afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = ("httpx", "httpcore", "apscheduler", "bot.startup")
    saved_levels = {name: logging.getLogger(name).level for name in quiet}

    def configure(fmt: str) -> io.StringIO:
        setup_logging("DEBUG", fmt, ["a-secret-value"])
        buffer = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        return buffer

    yield configure
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def _raise_with(message: str) -> None:
    try:
        raise ValueError(message)
    except ValueError:
        logging.getLogger("bot.test").exception("lookup failed")


CARRIERS: dict[str, Callable[[str], None]] = {
    "message": lambda text: logging.getLogger("bot.test").warning(text),
    "argument": lambda text: logging.getLogger("bot.test").warning("refused %s", text),
    "context_field": lambda text: logging.getLogger("bot.test").warning(
        "denied", extra={"user": text, "team": text}
    ),
    "exception_message": _raise_with,
    "stack_info": lambda text: logging.getLogger("bot.test").warning(text, stack_info=True),
}


@pytest.mark.parametrize("brk", BREAKS, ids=[f"U+{ord(b[0]):04X}" for b in BREAKS])
@pytest.mark.parametrize("carrier", sorted(CARRIERS))
def test_no_text_can_start_a_line_of_the_text_log(
    logged: Callable[[str], io.StringIO], carrier: str, brk: str
) -> None:
    buffer = logged("text")

    CARRIERS[carrier](f"payload=x{brk}{FORGED}")

    lines = buffer.getvalue().splitlines()
    records = [line for line in lines if RECORD_START.match(line)]
    assert len(records) == 1, lines
    assert not any(line.startswith(FORGED) for line in lines), lines
    # Every other line is a traceback's, and indented.
    assert all(line.startswith(" ") for line in lines if not RECORD_START.match(line)), lines


def test_control_characters_are_shown_escaped_not_interpreted(
    logged: Callable[[str], io.StringIO],
) -> None:
    buffer = logged("text")

    logging.getLogger("bot.test").warning("a\x1b[2Jb\x00c\u202ed\te\nf")

    assert buffer.getvalue().rstrip("\n").endswith("a\\x1b[2Jb\\x00c\\u202ed\\te\\nf")


def test_a_context_value_cannot_pass_for_another_field(
    logged: Callable[[str], io.StringIO],
) -> None:
    buffer = logged("text")

    logging.getLogger("bot.test").warning("denied", extra={"user": "U1 team=T_FORGED"})

    assert 'user="U1 team=T_FORGED"' in buffer.getvalue()
    assert " team=T_FORGED" not in buffer.getvalue().replace('"U1 team=T_FORGED"', "")


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
def test_json_log_is_one_object_per_line_whatever_the_text(
    logged: Callable[[str], io.StringIO], carrier: str
) -> None:
    buffer = logged("json")
    text = "x" + "".join(f"{brk}{FORGED}" for brk in BREAKS)

    CARRIERS[carrier](text)

    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    # Nothing lost: the text is in the record, whole, once decoded.
    assert any(isinstance(v, str) and text in v for v in record.values()), record


def test_one_line_keeps_ordinary_text_as_it_is() -> None:
    text = "Import «Paie» 4242 — 75 % done, café ☕ <@U123>"

    assert logs.one_line(text) == text


def test_bolt_verification_notice_is_one_short_line(
    logged: Callable[[str], io.StringIO],
) -> None:
    from bot.slack.app import _short_verification_notice

    buffer = logged("text")
    bolt = logging.getLogger("slack_bolt.RequestVerification")
    saved = bolt.level, bolt.disabled
    # Bolt sets this logger's level from the root's when an app is built: pin it here.
    bolt.setLevel(logging.INFO)
    bolt.disabled = False
    bolt.addFilter(_short_verification_notice)
    body = "x" * 200_000 + "\n" + FORGED
    try:
        bolt.info(
            f"Invalid request signature detected (signature: v0=00, timestamp: 1, body: {body})"
        )
    finally:
        bolt.setLevel(saved[0])
        bolt.disabled = saved[1]

    written = buffer.getvalue()
    assert len(written.splitlines()) == 1 and len(written) < 200

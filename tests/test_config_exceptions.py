"""The exceptions archive's settings: documented defaults, one clear line per bad value."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings
from bot.domain.exceptions import DEFAULT_PERSONAL_FIELDS, DEFAULT_REASON_FIELDS, ExceptionsFile


def error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_defaults_are_the_documented_ones() -> None:
    settings = load_settings({})
    assert settings.exceptions_file is ExceptionsFile.REDACTED
    assert settings.exceptions_max_records == 1_000_000
    assert settings.exceptions_reason_fields == DEFAULT_REASON_FIELDS
    assert settings.exceptions_reason_fields[:3] == ("ErrorMessage", "Message", "Reason")
    assert settings.exceptions_personal_fields == DEFAULT_PERSONAL_FIELDS
    assert settings.exceptions_dir == tempfile.gettempdir()
    assert settings.exceptions_page_size == 1000
    assert settings.exceptions_requests_per_second == 2.0
    assert settings.exceptions_offset == "record"


def test_every_setting_can_be_given(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "EXCEPTIONS_FILE": " Full ",
            "EXCEPTIONS_MAX_RECORDS": "5000",
            "EXCEPTIONS_REASON_FIELDS": "Why, ErrorCode,why",
            "EXCEPTIONS_PERSONAL_FIELDS": "mail,=name",
            "EXCEPTIONS_DIR": str(tmp_path),
            "EXCEPTIONS_PAGE_SIZE": "250",
            "EXCEPTIONS_REQUESTS_PER_SECOND": "0.5",
            "MYPREFERENCES_EXCEPTIONS_OFFSET": "page",
        }
    )
    assert settings.exceptions_file is ExceptionsFile.FULL
    assert settings.exceptions_max_records == 5000
    assert settings.exceptions_reason_fields == ("Why", "ErrorCode")
    assert settings.exceptions_personal_fields == ("mail", "=name")
    assert settings.exceptions_dir == str(tmp_path)
    assert settings.exceptions_page_size == 250
    assert settings.exceptions_requests_per_second == 0.5
    assert settings.exceptions_offset == "page"


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"EXCEPTIONS_FILE": "masked"}, "EXCEPTIONS_FILE: expected one of redacted, full, none"),
        ({"EXCEPTIONS_MAX_RECORDS": "0"}, "EXCEPTIONS_MAX_RECORDS: expected a whole number of at"),
        ({"EXCEPTIONS_MAX_RECORDS": "1e6"}, "EXCEPTIONS_MAX_RECORDS: expected a whole number"),
        (
            {"EXCEPTIONS_REASON_FIELDS": " , ,"},
            "EXCEPTIONS_REASON_FIELDS: expected a comma-separated",
        ),
        ({"EXCEPTIONS_PERSONAL_FIELDS": "x" * 101}, "EXCEPTIONS_PERSONAL_FIELDS: field names are"),
        ({"EXCEPTIONS_DIR": "/no/such/dir"}, "EXCEPTIONS_DIR: expected an existing directory"),
        (
            {"EXCEPTIONS_PAGE_SIZE": "20000"},
            "EXCEPTIONS_PAGE_SIZE: expected a whole number of at most",
        ),
        (
            {"EXCEPTIONS_REQUESTS_PER_SECOND": "0"},
            "EXCEPTIONS_REQUESTS_PER_SECOND: expected a number",
        ),
        ({"MYPREFERENCES_EXCEPTIONS_OFFSET": "bytes"}, "expected one of record, page"),
    ],
)
def test_a_bad_value_is_one_clear_line_naming_the_variable(env: dict[str, str], words: str) -> None:
    assert words in error(env)

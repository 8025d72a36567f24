"""The program's exit codes: one list, named, used by every command."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INCOMPLETE = 1  # the demo's story did not complete
    NOT_FOUND = 2  # the API does not know the token, or it expired (401)
    CONFIG = 3  # settings, credentials, permissions, or the database/port cannot be used
    UNAVAILABLE = 4  # the API is down, slow, or answered nonsense
    USAGE = 64  # the command line itself is wrong (a malformed token)
    INTERRUPTED = 130  # Ctrl-C

"""One exception type for problems a user can fix (bad input, bad config).

The CLI prints these as a single line and exits non-zero, with no traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class VilocalError(Exception):
    """A user-facing error: the message names the file (if any) and the problem."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class InputError(VilocalError):
    """Unreadable, corrupt or inconsistent input data."""


class ConfigError(VilocalError):
    """An invalid configuration, spec or command-line value."""

"""The one exception type for a user's data mistakes (missing files, malformed CSVs, bad images)."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset that cannot be used as given. ``str()`` is the full message for the user: it
    names the file (and line, for CSV rows) and what is wrong; command-line entry points print
    it without a traceback."""


class DatasetNotFoundError(DatasetError):
    """A dataset, file or folder that is not where it was looked for."""

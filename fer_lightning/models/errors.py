"""The errors of loading and fetching networks: a leaf, shared by the reader, the loader and
the download cache (and caught by the commands, which print them as one line)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the requested architecture."""


class PretrainedDownloadError(CheckpointError):
    """A published file is not in the cache and could not be downloaded from any source, or
    could not be kept there."""

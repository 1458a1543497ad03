"""Errors that reach the user as one line naming the fix (the CLI exits with code 2)."""

from __future__ import annotations


class LayerpolicyError(Exception):
    """A user-facing error: its message is one line that says what went wrong and how to fix it."""


class ModelNotFoundError(LayerpolicyError):
    """A model spec names nothing layerpolicy can load."""


class OfflineError(LayerpolicyError):
    """A model or dataset needs the hub, and the hub cannot be reached (or --offline was given)."""


class ChecksumError(LayerpolicyError):
    """A downloaded or cached file does not have the expected sha256."""


class PromptSourceError(LayerpolicyError):
    """A prompt source is missing, unreadable, empty, or lacks a needed column."""


class RunDirectoryError(LayerpolicyError):
    """A run directory is missing, incomplete, or was made with incompatible settings."""

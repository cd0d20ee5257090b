"""The converter's single error type."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the file or key and the fix."""

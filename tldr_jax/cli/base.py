"""The lowest floor of the command line: its name and its error type (every ``tldr_jax.cli`` module may
import this one; it imports none of them)."""

from __future__ import annotations

__all__ = ["PROG", "CliError"]

#: The command's name, as error and progress lines show it.
PROG = "tldr-jax"


class CliError(ValueError):
    """A user error (a bad flag value, model source or input): printed as one line, exit status 2.

    A ``ValueError``, so callers of a command's ``main`` catch it as they catch the library's own
    bad-value errors."""

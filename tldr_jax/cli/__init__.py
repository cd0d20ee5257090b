"""The ``tldr-jax`` command line (:func:`~tldr_jax.cli.main.main`); one module per command."""

from tldr_jax.cli.common import (
    APPLY_FLAGS,
    GENERIC_R,
    NOT_ON_CLI,
    TINY_OVERRIDES,
    CliError,
    apply_options,
    default_r,
    format_r,
    parse_r,
)
from tldr_jax.cli.main import build_parser, main, one_line
from tldr_jax.cli.sources import conversion_cache_path, load_model, resolve_model

__all__ = [
    "APPLY_FLAGS",
    "GENERIC_R",
    "NOT_ON_CLI",
    "TINY_OVERRIDES",
    "CliError",
    "apply_options",
    "build_parser",
    "conversion_cache_path",
    "default_r",
    "format_r",
    "load_model",
    "main",
    "one_line",
    "parse_r",
    "resolve_model",
]

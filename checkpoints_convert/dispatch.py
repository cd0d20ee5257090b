"""Which converter a source goes to: one table of converters by checkpoint kind, and the entry points.

Each kind of tldr_jax checkpoint (``config.json``'s ``"kind"``, see :mod:`tldr_jax.loading`) has one
converter. A source goes to the first :data:`CONVERTERS` entry whose format (``--format``) is asked
for or whose options (``--vocab``, ...) are given; otherwise to the vision converter. Converters are
named as ``"module:function"`` and imported on first use, so adding a kind is one entry here and no
converter imports another to be found. Every converter is called as
``fn(src, out, fmt=..., overwrite=..., **options)`` and returns an object with ``.params``,
``.summary()`` and ``.report_lines()``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from checkpoints_convert.errors import ConversionError

__all__ = ["CONVERTERS", "VISION", "Converter", "convert", "convert_detailed", "converter_for"]


@dataclasses.dataclass(frozen=True)
class Converter:
    """One kind of checkpoint the converter writes.

    Attributes:
      kind: the checkpoint kind written (``"vision"``, ``"umt_retrieval"``, ...).
      target: ``"module:function"`` of the converter.
      formats: ``--format`` values that select it.
      options: converter options (``vocab``, ...) whose presence selects it; other converters are
        called without them.
    """

    kind: str
    target: str
    formats: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def function(self) -> Callable[..., Any]:
        """The converter function (imported on first use)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


#: The vision encoder (UMT, VideoMAE, ViViT): the default for any source.
VISION = Converter("vision", "checkpoints_convert.core:convert_vision_detailed")

#: The converters other than :data:`VISION`, tried in order.
CONVERTERS: tuple[Converter, ...] = (
    Converter(
        "umt_retrieval", "checkpoints_convert.retrieval:convert_retrieval",
        formats=("umt_retrieval",), options=("vocab", "text_config"),
    ),
    Converter(
        "umt_qa", "checkpoints_convert.qa:convert_qa", formats=("umt_qa",), options=("vocab", "text_config")
    ),
)


def converter_for(fmt: str, options: Mapping[str, Any]) -> Converter:
    """The converter ``fmt`` and the given (not None) ``options`` select (:data:`VISION` by default)."""
    for conv in CONVERTERS:  # an explicit --format first, then the options
        if fmt in conv.formats:
            return conv
    for conv in CONVERTERS:
        if any(options.get(name) is not None for name in conv.options):
            return conv
    return VISION


def convert_detailed(
    src: str | Path, out: str | Path, *, fmt: str = "auto", overwrite: bool = False, **options: Any
) -> Any:
    """Like :func:`convert`, returning the converter's result (a
    :class:`~checkpoints_convert.core.Conversion` for a vision encoder, a
    :class:`~checkpoints_convert.retrieval.RetrievalConversion` for a retrieval model, ...)."""
    conv = converter_for(fmt, options)
    for name in {n for c in CONVERTERS for n in c.options} - set(conv.options):
        if options.pop(name, None) is not None:  # another converter's option, e.g. vocab with --format umt
            raise ConversionError(
                f"{name} does not apply to a {conv.kind} conversion (--format {fmt}); drop it or the format."
            )
    return conv.function()(src, out, fmt=fmt, overwrite=overwrite, **options)


def convert(src: str | Path, out: str | Path, **options: Any) -> Any:
    """Convert a checkpoint file / HF model directory / ``hf:ORG/NAME`` into a tldr_jax checkpoint.

    The output is written atomically; on any error nothing is left at ``out`` (and an existing
    ``out`` is untouched).

    Args:
      src: a ``.pth`` / ``.bin`` / ``.safetensors`` file, a Hugging Face model directory
        (``config.json`` + weights) or ``"hf:ORG/NAME"``.
      out: the checkpoint directory to create.
      **options: ``fmt`` (default ``"auto"``), ``overwrite`` and everything
        :func:`~checkpoints_convert.core.convert_state_dict` accepts; ``vocab`` (a ``vocab.txt``) and
        optionally ``text_config`` (a BERT ``config.json``) convert an official UMT retrieval checkpoint
        with both towers (:mod:`checkpoints_convert.retrieval`).

    Returns:
      The converted :class:`~tldr_jax.api.Params` (also loadable with ``tldr_jax.load``), or a
      :class:`tldr_jax.retrieval.RetrievalModel` for a retrieval conversion.

    Raises:
      ConversionError: unreadable / truncated / non-checkpoint source, unknown architecture,
        missing / unexpected / mis-shaped keys, or an existing ``out`` without ``overwrite``.
    """
    return convert_detailed(src, out, **options).params

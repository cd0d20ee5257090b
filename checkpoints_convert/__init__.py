"""Convert PyTorch video-transformer checkpoints (official UMT / vid-TLDR, original VideoMAE,
Hugging Face VideoMAE and ViViT) into tldr_jax checkpoints.

Command line::

    python -m checkpoints_convert SRC OUT [--arch A] [--num-heads N] [--num-frames T] [--img-size S]
                                  [--num-classes K] [--overwrite]

Python::

    from checkpoints_convert import convert, convert_state_dict
    params = convert("b16_25m.pth", "umt_b16_ckpt", num_frames=12)
    params = convert_state_dict(torch_model.state_dict(), "hf_vivit", hf_config=torch_model.config)

Modules, lowest first: ``errors``, ``rules`` (rename tables), ``readers`` (files -> state dicts),
``formats`` (layout detection, config inference), ``common`` (what every converter shares), ``core``
(the vision converter), ``retrieval`` (UMT retrieval: vision + text towers, built on ``core``),
``dispatch`` (the table of converters by checkpoint kind; :func:`convert`), ``cli``.
"""

from checkpoints_convert.core import Conversion, convert_state_dict, convert_state_dict_detailed
from checkpoints_convert.dispatch import convert, convert_detailed
from checkpoints_convert.errors import ConversionError
from checkpoints_convert.formats import FORMATS, detect_format


def main(argv: list[str] | None = None) -> int:
    """The command-line entry point (see :mod:`checkpoints_convert.cli`)."""
    from checkpoints_convert.cli import main as _main

    return _main(argv)


__all__ = [
    "FORMATS",
    "Conversion",
    "ConversionError",
    "convert",
    "convert_detailed",
    "convert_state_dict",
    "convert_state_dict_detailed",
    "detect_format",
    "main",
]

"""Save and load a :class:`~tldr_jax.retrieval.RetrievalModel` as one self-contained directory.

Layout of ``PATH``::

    PATH/config.json   # format "tldr_jax.checkpoint", "kind": "umt_retrieval", the vision config, the text
                       # config, metadata and crc32 checksums of the text arrays and the vocabulary
    PATH/vision/       # the vision encoder: an ordinary tldr_jax checkpoint (tldr_jax.load(PATH / "vision"))
    PATH/text/         # orbax checkpoint of the text tree (text tower, text_proj, itm_head, temp)
    PATH/vocab.txt     # the WordPiece vocabulary, one token per line

``tldr_jax.load(PATH)`` recognises the ``kind`` and returns the ``RetrievalModel``. :func:`save` is
atomic (a temporary sibling renamed once complete); :func:`load` checks the text tree against the text
config and every array and the vocabulary against their checksums, raising
:class:`~tldr_jax.checkpoint.CheckpointError` in one line on a damaged directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tldr_jax.checkpoint as base
from tldr_jax import multimodal_checkpoint as parts
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.retrieval.model import RetrievalModel
from tldr_jax.text.bert import TextConfig, expected_text_shapes

KIND = "umt_retrieval"
KIND_VERSION = 1
TEXT_DIR = "text"

_REDO = (
    "Convert it again (python -m checkpoints_convert SRC OUT --vocab vocab.txt --overwrite) or re-save it."
)


def save(
    model: RetrievalModel,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` to the directory ``path`` atomically (see the module docstring for the layout).

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      CheckpointError: the text tree does not match its config.
      TypeError: ``model`` is not a RetrievalModel, or ``metadata`` is not JSON-serialisable.
    """
    if not isinstance(model, RetrievalModel):
        raise TypeError(f"save() needs a tldr_jax.retrieval.RetrievalModel; got {type(model).__name__}.")
    return parts.save_parts(
        path, kind=KIND, kind_version=KIND_VERSION, vision=model.vision, text_config=model.text_config,
        trees={TEXT_DIR: model.text}, expected={TEXT_DIR: expected_text_shapes(model.text_config)},
        vocab=model.vocab, metadata=metadata, overwrite=overwrite,
    )


def is_retrieval_dir(path: str | Path) -> bool:
    """True when ``path`` holds a retrieval model directory (reads ``config.json`` only)."""
    try:
        return base.read_info(path).get("kind") == KIND
    except (CheckpointError, OSError):
        return False


def load_retrieval_model(path: str | Path, what: str | None = None) -> RetrievalModel:
    """Load a retrieval model directory, with one clear error when ``path`` is not one.

    Args:
      path: the directory (``python -m checkpoints_convert ret.pth OUT --vocab vocab.txt``'s OUT).
      what: how error messages name the path (default ``model PATH``).

    Raises:
      FileNotFoundError: nothing at ``path``. ValueError: not a retrieval model directory (a
        vision-only checkpoint, or not a checkpoint), with the conversion command as the fix.
    """
    path = Path(path).expanduser()
    what = what or f"model {path}"
    if not path.exists():
        raise FileNotFoundError(f"{what} does not exist; give a retrieval model directory.")
    if not is_retrieval_dir(path):
        raise ValueError(
            f"{what} is not a retrieval model directory (a vision-only checkpoint, or not a "
            "checkpoint); convert the official retrieval checkpoint with `python -m checkpoints_convert "
            "ret.pth OUT --vocab vocab.txt [--text-config config_bert.json]`."
        )
    return load(path)


def read_text_config(path: str | Path) -> TextConfig:
    """The :class:`TextConfig` of a retrieval directory, without reading weights."""
    path = Path(path).expanduser()
    info = base.read_info(path)
    return _text_config(path, info)


def _text_config(path: Path, info: Mapping[str, Any]) -> TextConfig:
    return parts.read_text_config(
        path, info, kind=KIND, kind_version=KIND_VERSION, what="retrieval model", redo=_REDO,
        wrong_kind=(
            f"{path} is a tldr_jax checkpoint of a vision encoder, not a retrieval model; load it with "
            "tldr_jax.load, or convert a UMT retrieval checkpoint with --vocab to get both towers."
        ),
    )


def load(path: str | Path) -> RetrievalModel:
    """Load a retrieval directory written by :func:`save` or the converter (``tldr_jax.load`` calls this).

    Raises:
      CheckpointNotFoundError, CheckpointError: missing pieces, a newer format, a tree that does not
        match its config, or arrays / vocabulary that do not match their checksums.
    """
    path = Path(path).expanduser()
    info = base.read_info(path)
    tcfg = _text_config(path, info)
    vision = base.load(path / parts.VISION_DIR)
    if vision.config.vision_proj_dim != tcfg.embed_dim or vision.config.embed_dim != tcfg.encoder_width:
        raise CheckpointError(
            f"{path}: the vision encoder (width {vision.config.embed_dim}, vision_proj "
            f"{vision.config.vision_proj_dim})"
            f" does not fit the text tower (encoder_width {tcfg.encoder_width}, embed_dim "
            f"{tcfg.embed_dim}). {_REDO}"
        )
    sums = info.get("checksums") if isinstance(info.get("checksums"), dict) else {}
    vocab = parts.read_vocab(path, tcfg, sums.get("vocab"), what="retrieval", redo=_REDO)
    text = parts.read_tree(
        path / TEXT_DIR, expected_text_shapes(tcfg), sums.get("text") or {}, what="text", redo=_REDO
    )
    return RetrievalModel(vision=vision, text=text, text_config=tcfg, vocab=vocab)

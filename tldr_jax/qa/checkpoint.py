"""Save and load a :class:`~tldr_jax.qa.QAModel` as one self-contained directory (checkpoint kind
``"umt_qa"``).

Layout of ``PATH``::

    PATH/config.json   # format "tldr_jax.checkpoint", "kind": "umt_qa", the vision config, the
                       # question encoder's text config, metadata, crc32 checksums of the text arrays
                       # and of the vocabulary
    PATH/vision/       # the vision encoder: an ordinary tldr_jax checkpoint (tldr_jax.load(PATH / "vision"))
    PATH/question/     # orbax checkpoint of the question-encoder tree
    PATH/decoder/      # orbax checkpoint of the answer-decoder tree (LM head included; projection tied)
    PATH/vocab.txt     # the WordPiece vocabulary, one token per line

``tldr_jax.load(PATH)`` recognises the kind and returns the ``QAModel``. :func:`save` is atomic (a
temporary sibling renamed once complete); :func:`load` checks both trees against the text config and
every array and the vocabulary against their checksums, raising
:class:`~tldr_jax.checkpoint.CheckpointError` in one line on a damaged directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tldr_jax import checkpoint as base
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.multimodal_checkpoint import VISION_DIR, read_text_config, read_tree, read_vocab, save_parts
from tldr_jax.qa.model import QAModel, QuestionEncoder, check_parts
from tldr_jax.text.bert import TextConfig
from tldr_jax.text.decoder import AnswerDecoder, decoder_config, module_shapes

KIND = "umt_qa"
KIND_VERSION = 1
#: The two text trees: directory name -> the module whose tree it holds.
TREES = {"question": QuestionEncoder, "decoder": AnswerDecoder}

_REDO = (
    "Convert it again (python -m checkpoints_convert SRC OUT --format umt_qa --vocab vocab.txt --overwrite) "
    "or re-save it."
)


def _expected(tc: TextConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Tree name -> its flat shapes under ``tc`` (the decoder's config derived from it)."""
    configs = {"question": tc, "decoder": decoder_config(tc)}
    return {name: module_shapes(TREES[name], cfg) for name, cfg in configs.items()}


def save(
    model: QAModel, path: str | Path, *, metadata: Mapping[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write ``model`` to the directory ``path`` atomically (see the module docstring for the layout).

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      CheckpointError: a text tree does not match its config.
      TypeError: ``model`` is not a QAModel, or ``metadata`` is not JSON-serialisable.
    """
    if not isinstance(model, QAModel):
        raise TypeError(f"save() needs a tldr_jax.qa.QAModel; got {type(model).__name__}.")
    return save_parts(
        path, kind=KIND, kind_version=KIND_VERSION, vision=model.vision, text_config=model.text_config,
        trees={"question": model.question, "decoder": model.decoder}, expected=_expected(model.text_config),
        vocab=model.vocab, metadata=metadata, overwrite=overwrite,
    )


def load(path: str | Path) -> QAModel:
    """Load a QA directory written by :func:`save` or the converter (``tldr_jax.load`` calls this).

    Raises:
      CheckpointNotFoundError, CheckpointError: missing pieces, a newer format, a tree that does not
        match its config, or arrays / vocabulary that do not match their checksums.
    """
    path = Path(path).expanduser()
    info = base.read_info(path)
    tc = read_text_config(
        path, info, kind=KIND, kind_version=KIND_VERSION, what="QA model", redo=_REDO,
        wrong_kind=(
            f"{path} holds a {info.get('kind', 'vision')!r} checkpoint, not a QA model; load it with "
            "tldr_jax.load, or convert a UMT-QA checkpoint with --format umt_qa --vocab vocab.txt."
        ),
    )
    vision = base.load(path / VISION_DIR)
    vc = vision.config
    try:
        check_parts(vc.embed_dim, vc.pool_norm, vc.vision_proj_dim, tc)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e} {_REDO}") from e
    sums = info.get("checksums") if isinstance(info.get("checksums"), dict) else {}
    vocab = read_vocab(path, tc, sums.get("vocab"), what="QA", redo=_REDO)
    trees = {
        name: read_tree(path / name, shapes, sums.get(name) or {}, what="QA", redo=_REDO)
        for name, shapes in _expected(tc).items()
    }
    return QAModel(vision=vision, text_config=tc, vocab=vocab, **trees)

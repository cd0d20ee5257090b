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

import datetime
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tldr_jax.checkpoint as base
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.files import atomic_directory
from tldr_jax.retrieval.model import RetrievalModel
from tldr_jax.text.bert import TextConfig, expected_text_shapes
from tldr_jax.text.tokenizer import Vocabulary, check_vocab
from tldr_jax.version import __version__

KIND = "umt_retrieval"
KIND_VERSION = 1
VISION_DIR = "vision"
TEXT_DIR = "text"
VOCAB_FILE = "vocab.txt"

_REDO = (
    "Convert it again (python -m checkpoints_convert SRC OUT --vocab vocab.txt --overwrite) or re-save it."
)


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def _vocab_bytes(vocab: Vocabulary) -> bytes:
    return ("\n".join(vocab.tokens) + "\n").encode("utf-8")


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
    path = Path(path).expanduser().absolute()
    found = {p: tuple(x.shape) for p, x in base.flatten_tree(model.text).items()}
    diff = base.compare_trees(found, expected_text_shapes(model.text_config))
    if not diff.ok:
        raise CheckpointError(
            f"the text tree does not match its TextConfig; refusing to save.\n{diff.report()}"
        )
    payload = {
        "format": base.FORMAT,
        "format_version": base.FORMAT_VERSION,
        "kind": KIND,
        "kind_version": KIND_VERSION,
        "tldr_jax_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": model.vision.config.to_dict(),
        "labels": None,
        "text_config": model.text_config.to_dict(),
        "metadata": dict(metadata or {}),
        "checksums": {
            "algorithm": base.CHECKSUM,
            "text": base.tree_checksums(model.text),
            "vocab": _crc(_vocab_bytes(model.vocab)),
        },
    }
    text = json.dumps(payload, indent=2) + "\n"  # TypeError here for bad metadata, before any write
    with atomic_directory(path, overwrite=overwrite) as tmp:
        base.save(model.vision, tmp / VISION_DIR, metadata={"part_of": KIND})
        base.write_tree(tmp / TEXT_DIR, model.text)
        (tmp / VOCAB_FILE).write_bytes(_vocab_bytes(model.vocab))
        (tmp / base.CONFIG_FILE).write_text(text, encoding="utf-8")
    return path


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
    if info.get("kind") != KIND:
        raise CheckpointError(
            f"{path} is a tldr_jax checkpoint of a vision encoder, not a retrieval model; load it with "
            "tldr_jax.load, or convert a UMT retrieval checkpoint with --vocab to get both towers."
        )
    version = info.get("kind_version")
    if not isinstance(version, int) or version > KIND_VERSION:
        raise CheckpointError(
            f"{path} holds a retrieval model of version {version!r}; this tldr_jax reads versions <= "
            f"{KIND_VERSION}. Upgrade tldr_jax."
        )
    try:
        return TextConfig.from_dict(info["text_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / base.CONFIG_FILE} holds no valid text_config ({e}). {_REDO}") from e


def load(path: str | Path) -> RetrievalModel:
    """Load a retrieval directory written by :func:`save` or the converter (``tldr_jax.load`` calls this).

    Raises:
      CheckpointNotFoundError / CheckpointError: missing pieces, a newer format, a tree that does not match
      its config, or arrays / vocabulary that do not match their checksums.
    """
    path = Path(path).expanduser()
    info = base.read_info(path)
    tcfg = _text_config(path, info)
    vision = base.load(path / VISION_DIR)
    if vision.config.vision_proj_dim != tcfg.embed_dim or vision.config.embed_dim != tcfg.encoder_width:
        raise CheckpointError(
            f"{path}: the vision encoder (width {vision.config.embed_dim}, vision_proj "
            f"{vision.config.vision_proj_dim})"
            f" does not fit the text tower (encoder_width {tcfg.encoder_width}, embed_dim "
            f"{tcfg.embed_dim}). {_REDO}"
        )
    vocab_file = path / VOCAB_FILE
    if not vocab_file.is_file():
        raise CheckpointError(f"{path} has no {VOCAB_FILE}; the retrieval directory is incomplete. {_REDO}")
    sums = info.get("checksums") if isinstance(info.get("checksums"), dict) else {}
    if sums.get("vocab") and _crc(vocab_file.read_bytes()) != sums["vocab"]:
        raise CheckpointError(
            f"{vocab_file} does not match its recorded checksum: the file is corrupt. {_REDO}"
        )
    try:
        vocab = Vocabulary.from_file(vocab_file)
        check_vocab(vocab, tcfg)
    except ValueError as e:
        raise CheckpointError(f"{vocab_file}: {e}") from e
    text = _read_tree(path / TEXT_DIR, tcfg)
    wanted = sums.get("text") or {}
    bad = [p for p, c in base.tree_checksums(text).items() if p in wanted and wanted[p] != c]
    if bad:
        raise CheckpointError(
            f"the text weights in {path / TEXT_DIR} do not match their checksums ({len(bad)} arrays differ, "
            f"e.g. {bad[0]}): the checkpoint is corrupt. {_REDO}"
        )
    return RetrievalModel(vision=vision, text=text, text_config=tcfg, vocab=vocab)


def _read_tree(directory: Path, cfg: TextConfig) -> dict[str, Any]:
    """The text weights in ``directory``, checked against ``cfg``'s shapes."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory.parent} has no {directory.name}/ with the text weights. {_REDO}")
    stored = base.stored_shapes(directory, redo=_REDO)
    diff = base.compare_trees({p: s for p, (s, _) in stored.items()}, expected_text_shapes(cfg))
    if not diff.ok:
        raise CheckpointError(
            f"the text weights in {directory} do not match the text_config:\n{diff.report()}"
        )
    return base.restore_tree(directory, stored, redo=_REDO)

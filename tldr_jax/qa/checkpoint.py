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

import datetime
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tldr_jax import checkpoint as base
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.files import atomic_directory
from tldr_jax.qa.model import QAModel, QuestionEncoder, check_parts
from tldr_jax.text.bert import TextConfig
from tldr_jax.text.decoder import AnswerDecoder, decoder_config, module_shapes
from tldr_jax.text.tokenizer import Vocabulary, check_vocab
from tldr_jax.version import __version__

KIND = "umt_qa"
KIND_VERSION = 1
VISION_DIR = "vision"
#: The two text trees: directory name -> the module whose tree it holds.
TREES = {"question": QuestionEncoder, "decoder": AnswerDecoder}
VOCAB_FILE = "vocab.txt"

_REDO = (
    "Convert it again (python -m checkpoints_convert SRC OUT --format umt_qa --vocab vocab.txt --overwrite) "
    "or re-save it."
)


def _vocab_bytes(vocab: Vocabulary) -> bytes:
    return ("\n".join(vocab.tokens) + "\n").encode("utf-8")


def _tree_configs(tc: TextConfig) -> dict[str, TextConfig]:
    return {"question": tc, "decoder": decoder_config(tc)}


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
    path = Path(path).expanduser().absolute()
    trees = {"question": model.question, "decoder": model.decoder}
    for name, cfg in _tree_configs(model.text_config).items():
        found = {p: tuple(x.shape) for p, x in base.flatten_tree(trees[name]).items()}
        diff = base.compare_trees(found, module_shapes(TREES[name], cfg))
        if not diff.ok:
            raise CheckpointError(
                f"the {name} tree does not match its TextConfig; refusing to save.\n{diff.report()}"
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
            **{name: base.tree_checksums(tree) for name, tree in trees.items()},
            "vocab": f"{zlib.crc32(_vocab_bytes(model.vocab)):08x}",
        },
    }
    text = json.dumps(payload, indent=2) + "\n"  # TypeError here for bad metadata, before any write
    with atomic_directory(path, overwrite=overwrite) as tmp:
        base.save(model.vision, tmp / VISION_DIR, metadata={"part_of": KIND})
        for name, tree in trees.items():
            base.write_tree(tmp / name, tree)
        (tmp / VOCAB_FILE).write_bytes(_vocab_bytes(model.vocab))
        (tmp / base.CONFIG_FILE).write_text(text, encoding="utf-8")
    return path


def _text_config(path: Path, info: Mapping[str, Any]) -> TextConfig:
    if info.get("kind") != KIND:
        raise CheckpointError(
            f"{path} holds a {info.get('kind', 'vision')!r} checkpoint, not a QA model; load it with "
            "tldr_jax.load, or convert a UMT-QA checkpoint with --format umt_qa --vocab vocab.txt."
        )
    version = info.get("kind_version")
    if not isinstance(version, int) or version > KIND_VERSION:
        raise CheckpointError(
            f"{path} holds a QA model of version {version!r}; this tldr_jax reads versions <= "
            f"{KIND_VERSION}. Upgrade tldr_jax."
        )
    try:
        return TextConfig.from_dict(info["text_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / base.CONFIG_FILE} holds no valid text_config ({e}). {_REDO}") from e


def _read_vocab(path: Path, tc: TextConfig, wanted: str | None) -> Vocabulary:
    vocab_file = path / VOCAB_FILE
    if not vocab_file.is_file():
        raise CheckpointError(f"{path} has no {VOCAB_FILE}; the QA directory is incomplete. {_REDO}")
    if wanted and f"{zlib.crc32(vocab_file.read_bytes()):08x}" != wanted:
        raise CheckpointError(
            f"{vocab_file} does not match its recorded checksum: the file is corrupt. {_REDO}"
        )
    try:
        vocab = Vocabulary.from_file(vocab_file)
        check_vocab(vocab, tc)
    except ValueError as e:
        raise CheckpointError(f"{vocab_file}: {e}") from e
    return vocab


def _read_tree(directory: Path, expected: Mapping[str, tuple[int, ...]], wanted: Mapping[str, str]) -> dict:
    """The weights in ``directory``, checked against ``expected`` shapes and ``wanted`` checksums."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory.parent} has no {directory.name}/ with the QA weights. {_REDO}")
    stored = base.stored_shapes(directory, redo=_REDO)
    diff = base.compare_trees({p: s for p, (s, _) in stored.items()}, expected)
    if not diff.ok:
        raise CheckpointError(f"the weights in {directory} do not match the text_config:\n{diff.report()}")
    tree = base.restore_tree(directory, stored, redo=_REDO)
    bad = [p for p, c in base.tree_checksums(tree).items() if p in wanted and wanted[p] != c]
    if bad:
        raise CheckpointError(
            f"the weights in {directory} do not match their checksums ({len(bad)} arrays differ, e.g. "
            f"{bad[0]}): the checkpoint is corrupt. {_REDO}"
        )
    return tree


def load(path: str | Path) -> QAModel:
    """Load a QA directory written by :func:`save` or the converter (``tldr_jax.load`` calls this).

    Raises:
      CheckpointNotFoundError / CheckpointError: missing pieces, a newer format, a tree that does not match
      its config, or arrays / vocabulary that do not match their checksums.
    """
    path = Path(path).expanduser()
    info = base.read_info(path)
    tc = _text_config(path, info)
    vision = base.load(path / VISION_DIR)
    vc = vision.config
    try:
        check_parts(vc.embed_dim, vc.pool_norm, vc.vision_proj_dim, tc)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e} {_REDO}") from e
    sums = info.get("checksums") if isinstance(info.get("checksums"), dict) else {}
    vocab = _read_vocab(path, tc, sums.get("vocab"))
    trees = {
        name: _read_tree(path / name, module_shapes(TREES[name], cfg), sums.get(name) or {})
        for name, cfg in _tree_configs(tc).items()
    }
    return QAModel(vision=vision, text_config=tc, vocab=vocab, **trees)

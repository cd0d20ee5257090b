"""The directory format shared by the multi-modal checkpoints (vision encoder + BERT text trees +
vocabulary): :mod:`tldr_jax.retrieval.checkpoint` (kind ``"umt_retrieval"``) and
:mod:`tldr_jax.qa.checkpoint` (kind ``"umt_qa"``) write and read through these functions.

Layout of ``PATH``::

    PATH/config.json   # format "tldr_jax.checkpoint", the kind and its version, the vision config, the
                       # text config, metadata, crc32 checksums of every text tree's arrays and of the
                       # vocabulary
    PATH/vision/       # the vision encoder: an ordinary tldr_jax checkpoint (tldr_jax.load(PATH / "vision"))
    PATH/<tree>/       # one orbax checkpoint per text tree (named by the kind's module)
    PATH/vocab.txt     # the WordPiece vocabulary, one token per line

Writing is atomic (a temporary sibling renamed once complete); every reader raises
:class:`~tldr_jax.checkpoint.CheckpointError` in one line that names the damage and ``redo`` (the fix).
"""

from __future__ import annotations

import datetime
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tldr_jax import checkpoint as base
from tldr_jax.api import Params
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.files import atomic_directory
from tldr_jax.text.bert import TextConfig
from tldr_jax.text.tokenizer import Vocabulary, check_vocab
from tldr_jax.version import __version__

VISION_DIR = "vision"
VOCAB_FILE = "vocab.txt"

__all__ = ["VISION_DIR", "VOCAB_FILE", "read_text_config", "read_tree", "read_vocab", "save_parts"]


def _vocab_bytes(vocab: Vocabulary) -> bytes:
    return ("\n".join(vocab.tokens) + "\n").encode("utf-8")


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def save_parts(
    path: str | Path,
    *,
    kind: str,
    kind_version: int,
    vision: Params,
    text_config: TextConfig,
    trees: Mapping[str, Any],
    expected: Mapping[str, Mapping[str, tuple[int, ...]]],
    vocab: Vocabulary,
    metadata: Mapping[str, Any] | None,
    overwrite: bool,
) -> Path:
    """Write one multi-modal checkpoint directory atomically (see the module docstring for the layout).

    Args:
      kind / kind_version: what ``config.json`` records (``tldr_jax.load`` dispatches on the kind).
      vision: the vision encoder's Params (written as ``vision/``).
      trees: directory name -> text tree; each is checked against ``expected[name]`` (flat path -> shape).

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      CheckpointError: a text tree does not match its expected shapes.
      TypeError: ``metadata`` is not JSON-serialisable (raised before anything is written).
    """
    path = Path(path).expanduser().absolute()
    for name, tree in trees.items():
        found = {p: tuple(x.shape) for p, x in base.flatten_tree(tree).items()}
        diff = base.compare_trees(found, expected[name])
        if not diff.ok:
            raise CheckpointError(
                f"the {name} tree does not match its TextConfig; refusing to save.\n{diff.report()}"
            )
    payload = {
        "format": base.FORMAT,
        "format_version": base.FORMAT_VERSION,
        "kind": kind,
        "kind_version": kind_version,
        "tldr_jax_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": vision.config.to_dict(),
        "labels": None,
        "text_config": text_config.to_dict(),
        "metadata": dict(metadata or {}),
        "checksums": {
            "algorithm": base.CHECKSUM,
            **{name: base.tree_checksums(tree) for name, tree in trees.items()},
            "vocab": _crc(_vocab_bytes(vocab)),
        },
    }
    text = json.dumps(payload, indent=2) + "\n"  # TypeError here for bad metadata, before any write
    with atomic_directory(path, overwrite=overwrite) as tmp:
        base.save(vision, tmp / VISION_DIR, metadata={"part_of": kind})
        for name, tree in trees.items():
            base.write_tree(tmp / name, tree)
        (tmp / VOCAB_FILE).write_bytes(_vocab_bytes(vocab))
        (tmp / base.CONFIG_FILE).write_text(text, encoding="utf-8")
    return path


def read_text_config(
    path: Path,
    info: Mapping[str, Any],
    *,
    kind: str,
    kind_version: int,
    what: str,
    wrong_kind: str,
    redo: str,
) -> TextConfig:
    """The :class:`TextConfig` recorded in ``info`` (``path``'s ``config.json``).

    Args:
      what: how messages name the model (``"retrieval model"``).
      wrong_kind: the message when ``info`` is not of ``kind``.

    Raises:
      CheckpointError: another kind, a newer kind version, or no valid text config.
    """
    if info.get("kind") != kind:
        raise CheckpointError(wrong_kind)
    version = info.get("kind_version")
    if not isinstance(version, int) or version > kind_version:
        raise CheckpointError(
            f"{path} holds a {what} of version {version!r}; this tldr_jax reads versions <= "
            f"{kind_version}. Upgrade tldr_jax."
        )
    try:
        return TextConfig.from_dict(info["text_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / base.CONFIG_FILE} holds no valid text_config ({e}). {redo}") from e


def read_vocab(path: Path, tc: TextConfig, wanted: str | None, *, what: str, redo: str) -> Vocabulary:
    """The vocabulary of the directory ``path``, checked against its checksum ``wanted`` and ``tc``.

    Raises:
      CheckpointError: no ``vocab.txt``, a checksum mismatch, or a vocabulary that does not fit ``tc``.
    """
    vocab_file = path / VOCAB_FILE
    if not vocab_file.is_file():
        raise CheckpointError(f"{path} has no {VOCAB_FILE}; the {what} directory is incomplete. {redo}")
    if wanted and _crc(vocab_file.read_bytes()) != wanted:
        raise CheckpointError(
            f"{vocab_file} does not match its recorded checksum: the file is corrupt. {redo}"
        )
    try:
        vocab = Vocabulary.from_file(vocab_file)
        check_vocab(vocab, tc)
    except ValueError as e:
        raise CheckpointError(f"{vocab_file}: {e}") from e
    return vocab


def read_tree(
    directory: Path,
    expected: Mapping[str, tuple[int, ...]],
    wanted: Mapping[str, str],
    *,
    what: str,
    redo: str,
) -> dict[str, Any]:
    """The weights in ``directory``, checked against ``expected`` shapes (flat path -> shape) and
    ``wanted`` checksums (flat path -> crc32).

    Raises:
      CheckpointError: no such directory, shapes that differ, or arrays that do not match their checksums.
    """
    if not directory.is_dir():
        raise CheckpointError(f"{directory.parent} has no {directory.name}/ with the {what} weights. {redo}")
    stored = base.stored_shapes(directory, redo=redo)
    diff = base.compare_trees({p: s for p, (s, _) in stored.items()}, expected)
    if not diff.ok:
        raise CheckpointError(f"the weights in {directory} do not match the text_config:\n{diff.report()}")
    tree = base.restore_tree(directory, stored, redo=redo)
    bad = [p for p, c in base.tree_checksums(tree).items() if p in wanted and wanted[p] != c]
    if bad:
        raise CheckpointError(
            f"the weights in {directory} do not match their checksums ({len(bad)} arrays differ, e.g. "
            f"{bad[0]}): the checkpoint is corrupt. {redo}"
        )
    return tree

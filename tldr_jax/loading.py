"""``tldr_jax.load``: open any tldr_jax checkpoint directory, whatever model it holds.

Every checkpoint directory records what it holds in its ``config.json`` (``"kind"``; a vision encoder
written by :func:`tldr_jax.save` records none). This module reads that kind and hands the directory to
the loader of that kind, so the kind is decided *above* every loader: ``tldr_jax.checkpoint`` (vision)
never imports the multi-modal packages, and a new kind of model is one line in :data:`LOADERS`.

=================  ===================================================  ==========================
kind               loader                                               returns
=================  ===================================================  ==========================
``vision``         :func:`tldr_jax.checkpoint.load`                     :class:`~tldr_jax.api.Params`
``umt_retrieval``  :func:`tldr_jax.retrieval.checkpoint.load`           ``RetrievalModel``
``umt_qa``         :func:`tldr_jax.qa.checkpoint.load`                  ``QAModel``
=================  ===================================================  ==========================

Loaders are named as ``"module:function"`` strings and imported on first use, so ``import tldr_jax``
does not import the text side.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from tldr_jax.checkpoint import VISION_KIND, CheckpointError, read_kind
from tldr_jax.checkpoint import load as load_checkpoint

if TYPE_CHECKING:
    from tldr_jax.api import Params
    from tldr_jax.retrieval.model import RetrievalModel

__all__ = ["LOADERS", "VISION_PARTS", "kind_of", "load", "load_vision", "loader_for", "vision_path"]

#: checkpoint kind (``config.json``'s ``"kind"``) -> ``"module:function"`` that loads it.
LOADERS: dict[str, str] = {
    VISION_KIND: "tldr_jax.checkpoint:load",
    "umt_retrieval": "tldr_jax.retrieval.checkpoint:load",
    "umt_qa": "tldr_jax.qa.checkpoint:load",
}


def kind_of(path: str | Path) -> str:
    """The kind of model the checkpoint directory ``path`` holds (reads ``config.json`` only).

    Raises:
      CheckpointNotFoundError, CheckpointError: not a readable tldr_jax checkpoint.
    """
    return read_kind(path)


def loader_for(kind: str) -> Callable[[str | Path], Any]:
    """The load function of a checkpoint kind (imported on first use).

    Raises:
      CheckpointError: a kind this tldr_jax has no loader for (written by a newer version).
    """
    target = LOADERS.get(kind)
    if target is None:
        raise CheckpointError(
            f"checkpoint kind {kind!r} is unknown to this tldr_jax (it loads {', '.join(sorted(LOADERS))}); "
            "upgrade tldr_jax to load it."
        )
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@overload
def load(path: str | Path, *, kind: Literal["vision"]) -> Params: ...
@overload
def load(path: str | Path, *, kind: Literal["umt_retrieval"]) -> RetrievalModel: ...
@overload
def load(path: str | Path, *, kind: str | None = None) -> Params | RetrievalModel: ...


def load(path: str | Path, *, kind: str | None = None) -> Any:
    """Load the checkpoint directory ``path``, whatever model it holds.

    Args:
      path: a directory written by :func:`tldr_jax.save`, ``tldr_jax.retrieval.save`` or the converter
        (``python -m checkpoints_convert SRC OUT``).
      kind: the kind the caller expects (``"vision"``, ``"umt_retrieval"``); None accepts any. A
        directory of another kind is refused with one line naming both.

    Returns:
      For a vision encoder (kind ``"vision"``): :class:`~tldr_jax.api.Params` (tree, config, labels).
      For a UMT retrieval model (kind ``"umt_retrieval"``): a
      :class:`~tldr_jax.retrieval.RetrievalModel` (vision ``Params``, text tower, vocabulary); its
      encoder alone is ``model.vision``, or ``tldr_jax.load(path / "vision")``.

    Raises:
      CheckpointNotFoundError: no directory at ``path``.
      CheckpointError: not a tldr_jax checkpoint, a newer format or an unknown kind, a kind other than
        ``kind``, or damaged contents (each loader's checks: missing, unexpected, mis-shaped or corrupt
        arrays).
    """
    found = kind_of(path)
    if kind is not None and found != kind:
        raise CheckpointError(
            f"{path} holds a {found!r} checkpoint, not the {kind!r} model asked for; give a {kind!r} "
            "checkpoint directory."
        )
    return loader_for(found)(path)


#: kind -> the sub-directory that holds its vision encoder as an ordinary vision checkpoint.
VISION_PARTS: dict[str, str] = {"umt_retrieval": "vision", "umt_qa": "vision"}


def vision_path(path: str | Path) -> Path:
    """The checkpoint directory of the vision encoder in ``path``: ``path`` itself for a vision
    checkpoint, its :data:`VISION_PARTS` sub-directory for a multi-modal model (reads ``config.json``).

    Raises:
      CheckpointNotFoundError, CheckpointError: not a readable checkpoint, or a kind without a vision
        encoder.
    """
    path = Path(path).expanduser()
    kind = kind_of(path)
    if kind == VISION_KIND:
        return path
    part = VISION_PARTS.get(kind)
    if part is None:
        raise CheckpointError(f"{path} holds a {kind!r} model, which has no vision encoder to load.")
    return path / part


def load_vision(path: str | Path) -> Params:
    """The vision encoder of any checkpoint directory: the :class:`~tldr_jax.api.Params` of a vision
    checkpoint, or the vision tower of a multi-modal model (without reading its other weights)."""
    return load_checkpoint(vision_path(path))

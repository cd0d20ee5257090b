"""The retrieval model pytree: the UMT vision encoder (:class:`tldr_jax.Params`) plus the text tower.

``RetrievalModel`` is what ``tldr_jax.load`` returns for a retrieval directory and what every function
of :mod:`tldr_jax.retrieval` takes. Its array leaves are the vision tree and the text tree, so
``jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)`` casts the whole model; the
architecture (vision ``ArchConfig``, :class:`~tldr_jax.text.bert.TextConfig`) and the vocabulary
are static metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import struct

from tldr_jax.api import Params
from tldr_jax.api import init as init_vision
from tldr_jax.configs import get_config
from tldr_jax.text.bert import TextConfig, init_text
from tldr_jax.text.tokenizer import Vocabulary, check_vocab, default_vocab
from tldr_jax.trees import cast_floating

Array = jax.Array


@struct.dataclass
class RetrievalModel:
    """A complete UMT retrieval model.

    Attributes:
      vision: the video encoder as :class:`tldr_jax.Params` (its config has ``vision_proj_dim``).
      text: the text tower's parameter tree (see :mod:`tldr_jax.text.bert` for the names).
      text_config: the :class:`TextConfig` (static).
      vocab: the :class:`Vocabulary` (static), used by :func:`tldr_jax.text.tokenize`.
    """

    vision: Params
    text: dict[str, Any]
    text_config: TextConfig = struct.field(pytree_node=False)
    vocab: Vocabulary = struct.field(pytree_node=False)

    @property
    def dtype(self) -> Any:
        """Dtype of the text tower's weights (``float64`` after casting under ``jax.enable_x64``)."""
        return self.text["text_proj"]["kernel"].dtype

    def num_params(self) -> int:
        """Total parameters of both towers."""
        return self.vision.num_params() + int(
            sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.text))
        )

    def astype(self, dtype: Any) -> RetrievalModel:
        """Every floating leaf cast to ``dtype`` (use ``float64`` inside ``jax.enable_x64(True)``)."""
        return cast_floating(self, dtype)


def init(
    rng: int = 0,
    arch: str = "umt_b16",
    *,
    text_config: TextConfig | None = None,
    vocab: Vocabulary | Sequence[str] | None = None,
    temp: float = 0.07,
    **vision_overrides: Any,
) -> RetrievalModel:
    """A randomly initialised retrieval model (for tests, notebooks and synthetic benchmarks).

    Args:
      rng: int seed.
      arch: the vision architecture name (``"umt_b16"``, ``"umt_l16"``).
      text_config: text tower sizes (default: BERT-base with UMT-B's fusion layer 9, widths matched to
        the vision encoder and ``vision_proj_dim``).
      vocab: the vocabulary (default: a placeholder of ``text_config.vocab_size`` tokens).
      temp: the stored contrastive temperature.
      **vision_overrides: ``tldr_jax.init`` overrides (``depth=2, embed_dim=64, img_size=32, ...``);
        ``vision_proj_dim`` defaults to ``text_config.embed_dim``.
    """
    tc = (text_config or TextConfig()).validate()
    vision_overrides.setdefault("vision_proj_dim", tc.embed_dim)
    cfg = get_config(arch, **vision_overrides)
    if tc.encoder_width != cfg.embed_dim or tc.embed_dim != cfg.vision_proj_dim:
        raise ValueError(
            f"text_config does not fit the vision encoder: encoder_width {tc.encoder_width} vs vision width "
            f"{cfg.embed_dim}, embed_dim {tc.embed_dim} vs vision_proj_dim {cfg.vision_proj_dim}; make "
            "them equal."
        )
    if vocab is None:
        vocab = default_vocab(tc.vocab_size)
    elif not isinstance(vocab, Vocabulary):
        vocab = Vocabulary(vocab)
    check_vocab(vocab, tc)
    vision = init_vision(int(rng), cfg)
    return RetrievalModel(
        vision=vision, text=init_text(int(rng) + 1, tc, temp=temp), text_config=tc, vocab=vocab
    )


def check_model(model: Any) -> RetrievalModel:
    """``model`` when it is a :class:`RetrievalModel`; ``TypeError`` naming what it is otherwise."""
    if not isinstance(model, RetrievalModel):
        raise TypeError(
            "expected a tldr_jax.retrieval.RetrievalModel (tldr_jax.load of a converted UMT retrieval "
            "checkpoint, "
            f"or tldr_jax.retrieval.init); got {type(model).__name__}."
        )
    return model

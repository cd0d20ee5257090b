"""The video QA model pytree (official ``models/umt_qa.py::UMT_QA``): vision encoder, question encoder,
answer decoder and vocabulary.

``QAModel`` is what ``tldr_jax.load`` returns for a QA directory and what every function of
:mod:`tldr_jax.qa` takes. Its array leaves are the three parameter trees, so
``jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)`` casts the whole model; the sizes
(vision ``ArchConfig``, :class:`~tldr_jax.text.bert.TextConfig`) and the vocabulary are static metadata.

* **vision**: the UMT encoder without ``pool_norm`` and without ``vision_proj`` (the official QA model
  deletes the retrieval heads); its merged tokens after the final norm feed the question encoder.
* **question**: the BERT text tower in the official multi-modal mode: layers ``0 .. fusion_layer - 1``
  text-only, the later ones cross-attending to all the video tokens (no mask); no heads. Parameter names
  as the retrieval text tower's (:mod:`tldr_jax.text.bert`) without ``text_proj`` / ``itm_head`` /
  ``temp``.
* **decoder**: :class:`~tldr_jax.text.decoder.AnswerDecoder` with
  :func:`~tldr_jax.text.decoder.decoder_config` sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx, struct

from tldr_jax.api import Params
from tldr_jax.api import init as init_vision
from tldr_jax.configs import get_config
from tldr_jax.text.bert import BertLayer, Embeddings, TextConfig, padding_bias
from tldr_jax.text.decoder import AnswerDecoder, decoder_config, init_module
from tldr_jax.text.tokenizer import Vocabulary, check_vocab, default_vocab
from tldr_jax.trees import cast_floating

Array = jax.Array


class QuestionEncoder(nnx.Module):
    """The text tower of the QA model: embeddings and ``num_layers`` BERT layers, cross-attention to the
    video from ``fusion_layer`` on (official ``BertModel`` without pooler, ``mode="multi_modal"``)."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        for i in range(cfg.num_layers):
            setattr(self, f"layer_{i}", BertLayer(cfg, i >= cfg.fusion_layer, rngs=rngs))

    def layers(self) -> list[BertLayer]:
        """The layers in order."""
        return [getattr(self, f"layer_{i}") for i in range(self.cfg.num_layers)]

    def __call__(self, ids: Array, mask: Array, video: Array, question_video: Array) -> Array:
        """The question states.

        Args:
          ids: ``(n, Lq)`` question token ids.
          mask: ``(n, Lq)`` their padding mask.
          video: ``(B, N', encoder_width)`` the merged tokens of the videos (all attended, no mask).
          question_video: ``(n,)`` int, the video of each question: each video's cross-attention keys
            and values are computed once for all its questions.

        Returns:
          ``(n, Lq, H)`` the last layer's output (padded positions computed too, as the official code).
        """
        x = self.embeddings(ids)
        bias = padding_bias(mask, x.dtype)
        for layer in self.layers():
            x = layer.attention(x, x, bias)
            if hasattr(layer, "crossattention"):
                keys, values = layer.crossattention.keys_values(video)  # (B, heads, N', d)
                x = layer.crossattention.attend(x, keys[question_video], values[question_video], None)
            x = layer.mlp(x)
        return x


@struct.dataclass
class QAModel:
    """A complete UMT video question-answering model.

    Attributes:
      vision: the video encoder as :class:`tldr_jax.Params` (no ``pool_norm``, no ``vision_proj``).
      question: the question encoder's parameter tree (:class:`QuestionEncoder`).
      decoder: the answer decoder's parameter tree (:class:`~tldr_jax.text.decoder.AnswerDecoder`).
      text_config: the question encoder's :class:`TextConfig` (static); the decoder's sizes follow from
        it (:attr:`decoder_config`).
      vocab: the :class:`Vocabulary` (static).
    """

    vision: Params
    question: dict[str, Any]
    decoder: dict[str, Any]
    text_config: TextConfig = struct.field(pytree_node=False)
    vocab: Vocabulary = struct.field(pytree_node=False)

    @property
    def decoder_config(self) -> TextConfig:
        """The answer decoder's sizes (:func:`~tldr_jax.text.decoder.decoder_config`)."""
        return decoder_config(self.text_config)

    @property
    def dtype(self) -> Any:
        """Dtype of the decoder's weights (``float64`` after casting under ``jax.enable_x64``)."""
        return self.decoder["head"]["bias"].dtype

    def num_params(self) -> int:
        """Total parameters of the three parts (the tied projection counted once)."""
        text = jax.tree_util.tree_leaves((self.question, self.decoder))
        return self.vision.num_params() + int(sum(np.prod(x.shape) for x in text))

    def astype(self, dtype: Any) -> QAModel:
        """Every floating leaf cast to ``dtype`` (use ``float64`` inside ``jax.enable_x64(True)``)."""
        return cast_floating(self, dtype)


def check_parts(vision_width: int, pool_norm: bool, proj_dim: int, tc: TextConfig) -> None:
    """The vision encoder fits a QA model with text config ``tc``; ``ValueError`` naming the mismatch."""
    if tc.encoder_width != vision_width:
        raise ValueError(
            f"the question encoder reads {tc.encoder_width}-wide video tokens but the vision encoder is "
            f"{vision_width} wide; make text_config.encoder_width equal the vision width."
        )
    if pool_norm or proj_dim:
        raise ValueError(
            "the QA model's vision encoder has no pool_norm and no vision_proj (the official UMT_QA drops "
            "them); build it with pool_norm=False, vision_proj_dim=0."
        )
    decoder_config(tc)


def init(
    rng: int = 0,
    arch: str = "umt_b16",
    *,
    text_config: TextConfig | None = None,
    vocab: Vocabulary | Sequence[str] | None = None,
    **vision_overrides: Any,
) -> QAModel:
    """A randomly initialised QA model (for tests, notebooks and synthetic benchmarks).

    Args:
      rng: int seed.
      arch: the vision architecture name (``"umt_b16"``, ``"umt_l16"``).
      text_config: question-encoder sizes (default: BERT-base with UMT-B's fusion layer 9, so a
        3-layer decoder); ``encoder_width`` must equal the vision width.
      vocab: the vocabulary (default: a placeholder of ``text_config.vocab_size`` tokens).
      **vision_overrides: ``tldr_jax.init`` overrides (``depth=2, embed_dim=64, img_size=32, ...``).
    """
    tc = (text_config or TextConfig()).validate()
    vision_overrides.update(pool_norm=False, vision_proj_dim=0)
    cfg = get_config(arch, **vision_overrides)
    check_parts(cfg.embed_dim, cfg.pool_norm, cfg.vision_proj_dim, tc)
    if vocab is None:
        vocab = default_vocab(tc.vocab_size)
    elif not isinstance(vocab, Vocabulary):
        vocab = Vocabulary(vocab)
    check_vocab(vocab, tc)
    return QAModel(
        vision=init_vision(int(rng), cfg),
        question=init_module(QuestionEncoder, tc, int(rng) + 1),
        decoder=init_module(AnswerDecoder, decoder_config(tc), int(rng) + 2),
        text_config=tc,
        vocab=vocab,
    )


def check_model(model: Any) -> QAModel:
    """``model`` itself when it is a :class:`QAModel`; ``TypeError`` with the fix otherwise."""
    if not isinstance(model, QAModel):
        raise TypeError(
            "expected a tldr_jax.qa.QAModel (tldr_jax.load of a converted UMT-QA checkpoint, or "
            f"tldr_jax.qa.init); got {type(model).__name__}."
        )
    return model

"""The UMT text tower in Flax NNX: a BERT whose last layers cross-attend to the video tokens.

As the official UMT code builds it (``models/backbones/bert/xbert.py``, ``BertModel`` without pooler):

* **embeddings**: word + token type (always type 0) + absolute position, then LayerNorm;
* **text layers** ``0 .. fusion_layer - 1``: post-norm BERT layers with self-attention only
  (``mode="text"``); their last hidden state is ``text_embeds`` and its CLS row feeds ``text_proj``;
* **fusion layers** ``fusion_layer .. num_layers - 1``: self-attention over the text, then
  cross-attention whose keys and values are the (merged) video tokens, then the MLP
  (``mode="fusion"``); the CLS row of the last one feeds ``itm_head``, whose class-1 logit is the
  video-text matching score;
* padded text positions get ``(1 - mask) * -10000`` added to the attention scores, as the official
  ``get_extended_attention_mask`` does; the video tokens are never masked.

Parameter names (``RetrievalModel.text``; :func:`init_text` makes one, :func:`build_text` wraps one)::

    embeddings/{word, position, token_type}/embedding (V | P | 2, H), embeddings/norm/{scale, bias}
    layer_{l}/attention/{query, key, value, dense}/{kernel, bias}, layer_{l}/attention/norm/{scale, bias}
    layer_{l}/crossattention/...        # l >= fusion_layer; key/value kernels (encoder_width, H)
    layer_{l}/intermediate/{kernel (H, F), bias}, layer_{l}/output/{kernel (F, H), bias}
    layer_{l}/output_norm/{scale, bias}
    text_proj/{kernel (H, E), bias}, itm_head/{kernel (H, 2), bias}, temp ()
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tldr_jax.checkpoint import flatten_tree
from tldr_jax.configs import DictConfig

Array = jax.Array

#: Hidden activations of the BERT config (``hidden_act``) -> tanh approximation of GELU or not.
GELU_KINDS: dict[str, bool] = {"gelu": False, "gelu_new": True, "gelu_fast": True, "gelu_pytorch_tanh": True}

#: What the official code adds to the scores of padded text positions.
MASK_BIAS = -10000.0


@dataclasses.dataclass(frozen=True)
class TextConfig(DictConfig):
    """Sizes of the text tower (hashable: static under ``jax.jit``).

    Attributes:
      vocab_size: tokens in the vocabulary (BERT-base: 30522).
      hidden_size: the tower's width.
      num_layers: transformer layers.
      num_heads: attention heads per layer.
      intermediate_size: MLP width.
      max_position_embeddings: rows of the position embedding table (the longest text).
      type_vocab_size: rows of the token-type embedding table.
      layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
      fusion_layer: first layer with cross-attention (UMT-B: 9 of 12, UMT-L: 19 of 24).
      encoder_width: width of the video tokens the cross-attention reads (the vision width).
      embed_dim: width of ``text_proj`` / ``vision_proj`` (the ITC space).
      hidden_act: ``"gelu"`` (exact erf GELU, BERT's) or a tanh variant of
        :data:`~tldr_jax.text.bert.GELU_KINDS`.
      pad_token_id: id of ``[PAD]``.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    fusion_layer: int = 9
    encoder_width: int = 768
    embed_dim: int = 512
    hidden_act: str = "gelu"
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    def validate(self) -> TextConfig:
        """Check sizes; raise ``ValueError`` naming the bad field and the fix. Returns ``self``."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "encoder_width",
            "embed_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TextConfig.{name} must be a positive int; got {value!r}.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TextConfig.hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                "set num_attention_heads in the BERT config to a divisor of hidden_size."
            )
        if not 0 <= self.fusion_layer <= self.num_layers:
            raise ValueError(
                f"TextConfig.fusion_layer {self.fusion_layer} must lie in [0, num_layers={self.num_layers}]."
            )
        if self.hidden_act not in GELU_KINDS:
            raise ValueError(
                f"TextConfig.hidden_act {self.hidden_act!r} is not supported; use one of "
                f"{sorted(GELU_KINDS)}."
            )
        if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
            raise ValueError(f"TextConfig.layer_norm_eps must be > 0; got {self.layer_norm_eps!r}.")
        return self

    @classmethod
    def from_bert_config(cls, bert: Mapping[str, Any], **overrides: Any) -> TextConfig:
        """From a Hugging Face / official ``config_bert.json`` dict (extra keys are ignored).

        ``num_hidden_layers`` -> ``num_layers``, ``num_attention_heads`` -> ``num_heads``; ``fusion_layer``,
        ``encoder_width`` and ``embed_dim`` are read when present; ``overrides`` win over the file.
        """
        keys = {
            "vocab_size": "vocab_size",
            "hidden_size": "hidden_size",
            "num_layers": "num_hidden_layers",
            "num_heads": "num_attention_heads",
            "intermediate_size": "intermediate_size",
            "max_position_embeddings": "max_position_embeddings",
            "type_vocab_size": "type_vocab_size",
            "layer_norm_eps": "layer_norm_eps",
            "fusion_layer": "fusion_layer",
            "encoder_width": "encoder_width",
            "embed_dim": "embed_dim",
            "hidden_act": "hidden_act",
            "pad_token_id": "pad_token_id",
        }
        fields = {ours: bert[theirs] for ours, theirs in keys.items() if theirs in bert}
        fields.update(overrides)
        return cls(**fields).validate()


# --------------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------------


def _layer_norm(cfg: TextConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch.nn.LayerNorm computes it.
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False, rngs=rngs)


class Embeddings(nnx.Module):
    """Word + token type 0 + absolute position embeddings, then LayerNorm."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.word = nnx.Embed(cfg.vocab_size, h, rngs=rngs)
        self.position = nnx.Embed(cfg.max_position_embeddings, h, rngs=rngs)
        self.token_type = nnx.Embed(cfg.type_vocab_size, h, rngs=rngs)
        self.norm = _layer_norm(cfg, rngs)

    def __call__(self, ids: Array) -> Array:
        """``(B, L)`` token ids -> ``(B, L, H)`` (positions ``0 .. L-1``, token type 0)."""
        length = ids.shape[1]
        x = jnp.take(self.word.embedding[...], ids, axis=0)
        x = x + self.token_type.embedding[...][0]
        x = x + self.position.embedding[...][:length]
        return self.norm(x)


class BertAttention(nnx.Module):
    """BERT attention block: multi-head attention, output projection, residual, LayerNorm.

    Self-attention reads keys and values from the text (``kv_width = hidden_size``); cross-attention
    from the video tokens (``kv_width = encoder_width``).
    """

    def __init__(self, cfg: TextConfig, kv_width: int, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.query = nnx.Linear(h, h, rngs=rngs)
        self.key = nnx.Linear(kv_width, h, rngs=rngs)
        self.value = nnx.Linear(kv_width, h, rngs=rngs)
        self.dense = nnx.Linear(h, h, rngs=rngs)
        self.norm = _layer_norm(cfg, rngs)

    def keys_values(self, kv: Array) -> tuple[Array, Array]:
        """``(..., N, kv_width)`` -> keys and values ``(..., heads, N, head_dim)``."""
        split = "... n (h d) -> ... h n d"
        return (
            einops.rearrange(self.key(kv), split, h=self.num_heads),
            einops.rearrange(self.value(kv), split, h=self.num_heads),
        )

    def attend(self, x: Array, keys: Array, values: Array, bias: Array | None) -> Array:
        """Attention of ``x (..., L, H)`` over given ``keys``/``values`` ``(..., heads, N, d)``.

        ``bias`` is added to the ``(..., heads, L, N)`` scores (padding mask), or None.
        """
        q = einops.rearrange(self.query(x), "... l (h d) -> ... h l d", h=self.num_heads)
        scores = jnp.einsum("...hld,...hnd->...hln", q, keys) / math.sqrt(q.shape[-1])
        if bias is not None:
            scores = scores + bias
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = einops.rearrange(jnp.einsum("...hln,...hnd->...hld", probs, values), "... h l d -> ... l (h d)")
        return self.norm(self.dense(ctx) + x)

    def __call__(self, x: Array, kv: Array, bias: Array | None) -> Array:
        """``x (..., L, H)`` attending to ``kv (..., N, kv_width)``."""
        keys, values = self.keys_values(kv)
        return self.attend(x, keys, values, bias)


class BertLayer(nnx.Module):
    """Self-attention, optional cross-attention to the video, and the MLP (post-norm, as BERT)."""

    def __init__(self, cfg: TextConfig, cross: bool, *, rngs: nnx.Rngs):
        h, f = cfg.hidden_size, cfg.intermediate_size
        self.approximate = GELU_KINDS[cfg.hidden_act]
        self.attention = BertAttention(cfg, h, rngs=rngs)
        if cross:
            self.crossattention = BertAttention(cfg, cfg.encoder_width, rngs=rngs)
        self.intermediate = nnx.Linear(h, f, rngs=rngs)
        self.output = nnx.Linear(f, h, rngs=rngs)
        self.output_norm = _layer_norm(cfg, rngs)

    def mlp(self, x: Array) -> Array:
        """``(..., L, H)`` -> ``LayerNorm(x + output(gelu(intermediate(x))))``."""
        y = self.output(jax.nn.gelu(self.intermediate(x), approximate=self.approximate))
        return self.output_norm(y + x)


class TextTower(nnx.Module):
    """Embeddings, ``num_layers`` BERT layers (cross-attention from ``fusion_layer`` on), the ITC
    projection ``text_proj``, the matching head ``itm_head`` and the contrastive temperature ``temp``."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, temp: float = 0.07):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        for i in range(cfg.num_layers):
            setattr(self, f"layer_{i}", BertLayer(cfg, i >= cfg.fusion_layer, rngs=rngs))
        self.text_proj = nnx.Linear(cfg.hidden_size, cfg.embed_dim, rngs=rngs)
        self.itm_head = nnx.Linear(cfg.hidden_size, 2, rngs=rngs)
        self.temp = nnx.Param(jnp.asarray(temp, jnp.float32))

    def layers(self, start: int, stop: int) -> list[BertLayer]:
        """Layers ``start .. stop - 1``."""
        return [getattr(self, f"layer_{i}") for i in range(start, stop)]

    def encode(self, ids: Array, mask: Array, *, hidden_states: bool = False) -> Array | tuple[Array, ...]:
        """The text layers (official ``mode="text"``).

        Args:
          ids: ``(B, L)`` token ids.
          mask: ``(B, L)`` 1 for tokens, 0 for padding.
          hidden_states: also return the embedding output and each text layer's input, as the official
            ``output_hidden_states=True`` does (a tuple of ``fusion_layer + 1`` arrays, last = result).

        Returns:
          ``text_embeds (B, L, H)`` (padded positions computed too), or the tuple of hidden states.
        """
        x = self.embeddings(ids)
        bias = padding_bias(mask, x.dtype)
        states = [x]
        for layer in self.layers(0, self.cfg.fusion_layer):
            x = layer.mlp(layer.attention(x, x, bias))
            states.append(x)
        return tuple(states) if hidden_states else x

    def fusion_self_attention(self, text_embeds: Array, mask: Array) -> Array:
        """The self-attention sub-block of the first fusion layer: ``(..., L, H)`` -> ``(..., L, H)``.

        It reads only the text, so re-ranking computes it once per text instead of once per (text, video)
        pair and passes it to :meth:`fuse` with ``self_attended=True``.
        """
        layer = getattr(self, f"layer_{self.cfg.fusion_layer}")
        return layer.attention(text_embeds, text_embeds, padding_bias(mask, text_embeds.dtype))

    def fuse(self, text_embeds: Array, mask: Array, video: Array, *, self_attended: bool = False) -> Array:
        """The fusion layers (official ``mode="fusion"``) for groups of texts sharing one video.

        Each video's cross-attention keys and values are computed once per group, not once per text, and
        the last layer runs its queries, cross-attention and MLP for the CLS row only (the only row the
        matching head reads; every row of a layer depends on the others only through the keys and
        values). Both leave the CLS output exactly as the full computation gives it.

        Args:
          text_embeds: ``(G, B, L, H)`` output of :meth:`encode` for ``B`` texts per group, or, with
            ``self_attended``, of :meth:`fusion_self_attention`.
          mask: ``(G, B, L)`` their padding masks.
          video: ``(G, N, encoder_width)`` one video's tokens per group (all ``N`` attended, no mask).
          self_attended: ``text_embeds`` already went through :meth:`fusion_self_attention`.

        Returns:
          ``(G, B, H)``: the CLS row of the last layer (what ``itm_head`` scores).
        """
        x = text_embeds
        bias = padding_bias(mask, x.dtype)
        layers = self.layers(self.cfg.fusion_layer, self.cfg.num_layers)
        for j, layer in enumerate(layers):
            rows = slice(0, 1) if j == len(layers) - 1 else slice(None)
            if j == 0 and self_attended:
                x = x[..., rows, :]
            else:
                keys, values = layer.attention.keys_values(x)
                x = layer.attention.attend(x[..., rows, :], keys, values, bias)
            keys, values = layer.crossattention.keys_values(video)  # (G, heads, N, d)
            x = layer.crossattention.attend(x, keys[:, None], values[:, None], None)
            x = layer.mlp(x)
        return x[..., 0, :]


def check_token_ids(
    ids: Any, mask: Any, cfg: TextConfig, *, what: str = "text", make: str = "tldr_jax.text.tokenize"
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, L)`` int32 ids and mask, checked against ``cfg``'s vocabulary and positions.

    Args:
      ids: ``(n, L)`` token ids.
      mask: ``(n, L)`` attention mask.
      what: how messages name the inputs (``"question"``, ``"answer"``, ``"text"``).
      make: the call that makes valid inputs (named in the fix).

    Raises:
      ValueError: other shapes, ids outside ``[0, vocab_size)``, or more tokens than position embeddings.
    """
    ids, mask = np.asarray(ids), np.asarray(mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(
            f"{what} ids and mask must both be (n, L); got {ids.shape} and {mask.shape}. Make them with "
            f"{make}."
        )
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        raise ValueError(f"{what} token ids must lie in [0, {cfg.vocab_size}); got {ids.min()}..{ids.max()}.")
    if ids.shape[1] > cfg.max_position_embeddings:
        raise ValueError(
            f"{what}s of {ids.shape[1]} tokens exceed the {cfg.max_position_embeddings} position embeddings."
        )
    return ids.astype(np.int32), mask.astype(np.int32)


def padding_bias(mask: Array, dtype: Any) -> Array:
    """``(..., L)`` 0/1 mask -> ``(..., 1, 1, L)`` additive score bias ``(1 - mask) * -10000``."""
    m = mask.astype(dtype)
    return ((1.0 - m) * MASK_BIAS)[..., None, None, :]


def normalize(x: Array, eps: float = 1e-12) -> Array:
    """``x / max(||x||, eps)`` along the last axis (``torch.nn.functional.normalize``)."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


# --------------------------------------------------------------------------------------------------
# Parameter trees.
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def text_graphdef(cfg: TextConfig) -> nnx.GraphDef:
    """The (cached) NNX graph definition of a text tower, built abstractly."""
    abstract = nnx.eval_shape(lambda: TextTower(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    return graphdef


def build_text(cfg: TextConfig, tree: dict[str, Any]) -> TextTower:
    """The NNX text tower holding ``tree`` (works eagerly and under tracing)."""
    return nnx.merge(text_graphdef(cfg), tree)


@functools.lru_cache(maxsize=32)
def _text_shapes(cfg: TextConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    abstract = jax.eval_shape(
        lambda: nnx.to_pure_dict(nnx.state(TextTower(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    )
    return tuple((p, tuple(x.shape)) for p, x in flatten_tree(abstract).items())


def expected_text_shapes(cfg: TextConfig) -> dict[str, tuple[int, ...]]:
    """Flat ``{path: shape}`` of the text tree a :class:`TextConfig` needs (nothing is allocated)."""
    return dict(_text_shapes(cfg))


def init_text(rng: int | Array, cfg: TextConfig, *, temp: float = 0.07) -> dict[str, Any]:
    """A random text tree (Flax default initialisers; for tests and synthetic benchmarks)."""
    key = jax.random.key(int(rng)) if isinstance(rng, (int, np.integer)) else rng
    return _init_text(cfg, key, float(temp))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_text(cfg: TextConfig, key: Array, temp: float) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.state(TextTower(cfg, rngs=nnx.Rngs(params=key), temp=temp), nnx.Param))

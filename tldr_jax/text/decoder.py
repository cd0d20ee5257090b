"""The answer decoder of UMT's video QA model, in Flax NNX (the official xbert ``BertLMHeadModel``).

The official ``build_bert_decoder`` builds it from the text tower's BERT config with ``fusion_layer = 0``
and ``num_layers - fusion_layer`` layers (UMT-B: 3, UMT-L: 5):

* **embeddings** of its own (word + token type 0 + position, LayerNorm), as the text tower's;
* **layers**: causal self-attention over the answer (a token sees itself and the tokens before it, padded
  tokens masked), cross-attention to the question states (padded question positions masked), the MLP;
  post-norm, as BERT;
* **LM head** ``cls.predictions``: dense, GELU, LayerNorm, then the projection onto the vocabulary, whose
  weight is the decoder's own word-embedding table (tied), plus a bias;
* the **loss** of an answer is the summed next-token cross-entropy, padded targets (``[PAD]``) ignored.

The cross-attention keys and values of the question states are computed once per question
(:meth:`AnswerDecoder.cross_keys_values`) and shared by every answer candidate of that question, and the
loss reads the vocabulary in chunks (:func:`chunked_logsumexp`), so ranking ``k`` candidates never holds
the ``(n, k, L, V)`` logits.

Parameter names (``QAModel.decoder``)::

    embeddings/{word, position, token_type}/embedding, embeddings/norm/{scale, bias}
    layer_{l}/attention/{query, key, value, dense}/{kernel, bias}, layer_{l}/attention/norm/{scale, bias}
    layer_{l}/crossattention/...     # key/value kernels (encoder_width, H)
    layer_{l}/intermediate/..., layer_{l}/output/..., layer_{l}/output_norm/...
    head/dense/{kernel (H, H), bias}, head/norm/{scale, bias}, head/bias (V,)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tldr_jax.checkpoint import flatten_tree
from tldr_jax.text.bert import GELU_KINDS, MASK_BIAS, BertLayer, Embeddings, TextConfig

Array = jax.Array
#: Per layer, the cross-attention keys and values of the question states, each ``(..., heads, Lq, d)``.
CrossKV = Sequence[tuple[Array, Array]]

#: Vocabulary columns per chunk of the answer loss (bounds the ``(..., L, chunk)`` logits held at once).
VOCAB_CHUNK = 2048


def decoder_config(cfg: TextConfig) -> TextConfig:
    """The decoder's sizes as the official ``build_bert_decoder`` derives them from the text tower's.

    ``num_layers - fusion_layer`` layers, all with cross-attention (``fusion_layer = 0``); the other sizes
    (vocabulary, width, heads, MLP, positions, ``encoder_width``) are the text tower's.

    Raises:
      ValueError: the text tower has no fusion layer to mirror, or its cross-attention width differs from
        its hidden width (the decoder's cross-attention reads the ``hidden_size``-wide question states).
    """
    if cfg.fusion_layer >= cfg.num_layers:
        raise ValueError(
            f"the text config has fusion_layer {cfg.fusion_layer} of {cfg.num_layers} layers: the QA decoder "
            "gets num_layers - fusion_layer layers, so fusion_layer must be < num_layers."
        )
    if cfg.encoder_width != cfg.hidden_size:
        raise ValueError(
            f"the QA decoder's cross-attention reads encoder_width={cfg.encoder_width} features but the "
            f"question states are hidden_size={cfg.hidden_size} wide; the official model needs them equal "
            "(text width = vision width)."
        )
    return dataclasses.replace(cfg, num_layers=cfg.num_layers - cfg.fusion_layer, fusion_layer=0).validate()


class LMHead(nnx.Module):
    """``cls.predictions``: dense, GELU, LayerNorm, then the tied vocabulary projection plus ``bias``."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.approximate = GELU_KINDS[cfg.hidden_act]
        self.dense = nnx.Linear(h, h, rngs=rngs)
        self.norm = nnx.LayerNorm(h, epsilon=cfg.layer_norm_eps, use_fast_variance=False, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))

    def transform(self, x: Array) -> Array:
        """``(..., H)`` -> ``(..., H)``: the features the vocabulary projection reads."""
        return self.norm(jax.nn.gelu(self.dense(x), approximate=self.approximate))


class AnswerDecoder(nnx.Module):
    """Embeddings, ``cfg.num_layers`` decoder layers and the LM head (build with :func:`decoder_config`)."""

    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        for i in range(cfg.num_layers):
            setattr(self, f"layer_{i}", BertLayer(cfg, True, rngs=rngs))
        self.head = LMHead(cfg, rngs=rngs)

    def layers(self) -> list[BertLayer]:
        """The decoder layers in order."""
        return [getattr(self, f"layer_{i}") for i in range(self.cfg.num_layers)]

    def cross_keys_values(self, states: Array) -> list[tuple[Array, Array]]:
        """Question states ``(..., Lq, H)`` -> per layer keys and values ``(..., heads, Lq, d)``."""
        return [layer.crossattention.keys_values(states) for layer in self.layers()]

    def hidden(self, ids: Array, mask: Array, cross: CrossKV, cross_bias: Array) -> Array:
        """The last layer's output for answer tokens.

        Args:
          ids: ``(..., La)`` answer token ids (``[CLS]`` first).
          mask: ``(..., La)`` 1 for tokens, 0 for padding.
          cross: :meth:`cross_keys_values` of the question states, broadcastable to ``ids``'s leading axes.
          cross_bias: ``(..., 1, 1, Lq)`` additive score bias of the padded question positions.

        Returns:
          ``(..., La, H)``.
        """
        lead, length = ids.shape[:-1], ids.shape[-1]
        x = self.embeddings(ids.reshape(-1, length)).reshape(*lead, length, -1)
        self_bias = causal_bias(mask, x.dtype)
        for layer, (keys, values) in zip(self.layers(), cross):
            x = layer.attention(x, x, self_bias)
            x = layer.crossattention.attend(x, keys, values, cross_bias)
            x = layer.mlp(x)
        return x

    def logits(self, x: Array) -> Array:
        """``(..., H)`` decoder output -> ``(..., V)`` vocabulary logits."""
        table = self.embeddings.word.embedding[...]
        return self.head.transform(x) @ table.T + self.head.bias[...]

    def answer_loss(self, x: Array, ids: Array, pad_id: int, chunk: int = VOCAB_CHUNK) -> Array:
        """Summed next-token cross-entropy of each answer (official ``reduction="none"`` loss).

        Args:
          x: ``(..., La, H)`` :meth:`hidden` of ``ids``.
          ids: ``(..., La)`` the answers; position ``t`` predicts token ``t + 1``; ``[PAD]`` targets count
            nothing.
          pad_id: the ``[PAD]`` id.
          chunk: vocabulary columns per step of the log-sum-exp.

        Returns:
          ``(...,)`` the loss of each answer.
        """
        feats = self.head.transform(x[..., :-1, :])
        targets = ids[..., 1:]
        table = self.embeddings.word.embedding[...]
        bias = self.head.bias[...]
        picked = jnp.einsum("...h,...h->...", feats, jnp.take(table, targets, axis=0)) + bias[targets]
        token_loss = chunked_logsumexp(feats, table, bias, chunk) - picked
        return jnp.sum(jnp.where(targets != pad_id, token_loss, 0.0), axis=-1)


def causal_bias(mask: Array, dtype: Any) -> Array:
    """``(..., L)`` padding mask -> ``(..., 1, L, L)`` score bias: 0 where token ``j <= i`` is a real token,
    ``-10000`` elsewhere (the official decoder's extended attention mask)."""
    length = mask.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype))
    allowed = causal * mask.astype(dtype)[..., None, None, :]
    return (1.0 - allowed) * MASK_BIAS


def chunked_logsumexp(feats: Array, table: Array, bias: Array, chunk: int = VOCAB_CHUNK) -> Array:
    """``logsumexp(feats @ table.T + bias)`` over the vocabulary, ``chunk`` columns at a time.

    Args:
      feats: ``(..., H)``.
      table: ``(V, H)`` the vocabulary projection (the tied word embeddings).
      bias: ``(V,)``.
      chunk: columns per step (a running maximum and sum combine the steps).

    Returns:
      ``(...,)``; the ``(..., V)`` logits are never held at once when ``V > chunk``.
    """
    vocab = table.shape[0]
    if vocab <= chunk:
        return jax.nn.logsumexp(feats @ table.T + bias, axis=-1)
    top = jnp.full(feats.shape[:-1], -jnp.inf, feats.dtype)
    total = jnp.zeros(feats.shape[:-1], feats.dtype)
    for start in range(0, vocab, chunk):
        logits = feats @ table[start : start + chunk].T + bias[start : start + chunk]
        new_top = jax.lax.stop_gradient(jnp.maximum(top, jnp.max(logits, axis=-1)))
        total = total * jnp.exp(top - new_top) + jnp.sum(jnp.exp(logits - new_top[..., None]), axis=-1)
        top = new_top
    return top + jnp.log(total)


# --------------------------------------------------------------------------------------------------
# Parameter trees of NNX modules built from a config (the decoder here, the QA question encoder).
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def module_graphdef(module: Callable[..., nnx.Module], cfg: Any) -> nnx.GraphDef:
    """The (cached) NNX graph definition of ``module(cfg, rngs=...)``, built abstractly."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: module(cfg, rngs=nnx.Rngs(0))))
    return graphdef


def build_module(module: Callable[..., nnx.Module], cfg: Any, tree: dict[str, Any]) -> Any:
    """The NNX module ``module(cfg)`` holding the parameter ``tree`` (eagerly and under tracing)."""
    return nnx.merge(module_graphdef(module, cfg), tree)


@functools.lru_cache(maxsize=32)
def _module_shapes(module: Callable[..., nnx.Module], cfg: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    abstract = jax.eval_shape(lambda: nnx.to_pure_dict(nnx.state(module(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
    return tuple((p, tuple(x.shape)) for p, x in flatten_tree(abstract).items())


def module_shapes(module: Callable[..., nnx.Module], cfg: Any) -> dict[str, tuple[int, ...]]:
    """Flat ``{path: shape}`` of the parameter tree of ``module(cfg)`` (nothing is allocated)."""
    return dict(_module_shapes(module, cfg))


def init_module(module: Callable[..., nnx.Module], cfg: Any, rng: int | Array) -> dict[str, Any]:
    """A random parameter tree of ``module(cfg)`` (Flax default initialisers; tests and benchmarks)."""
    key = jax.random.key(int(rng)) if isinstance(rng, (int, np.integer)) else rng
    return _init_module(module, cfg, key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_module(module: Callable[..., nnx.Module], cfg: Any, key: Array) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.state(module(cfg, rngs=nnx.Rngs(params=key)), nnx.Param))

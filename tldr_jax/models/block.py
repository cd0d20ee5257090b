"""The transformer block with token merging: attention, one :func:`~tldr_jax.merge.merge_step`, MLP.

Block order follows the official vid-TLDR code: attention (with the ``log(size)`` proportional bias),
residual, *merge*, MLP, residual. A block returns the new :class:`TokenState` and a dict of its
intermediates (big_vision's ``(x, out)``): ``attn`` (the attention branch, ``(B, N, D)``), the
attention statistic the merge used (``sharpness`` ``(B, N)`` for vid-TLDR, ``keys`` ``(B, N, Dh)`` for
ToMe) and, in merging blocks, the ``plan`` and the ``saliency`` (``(B, N)``, None for ToMe). Under
``jit`` the ones nobody reads cost nothing: XLA drops them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from tldr_jax.configs import ArchConfig
from tldr_jax.merge import TokenOrigin, merge_step
from tldr_jax.models.layers import DEFAULT_TUNING, Attention, Mlp, Need
from tldr_jax.options import AttentionTuning, Method

Array = jax.Array
#: A merge step with the signature of :func:`tldr_jax.merge.merge_step` (the benchmarks swap in variants).
MergeFn = Callable[..., tuple[Array, Array, Any, dict[str, Any]]]

__all__ = ["Block", "MergeFn", "MergeSpec", "TokenState", "pad_tokens"]


@dataclasses.dataclass(frozen=True)
class MergeSpec:
    """Static per-block merge settings.

    Attributes:
      r: tokens this block removes (0: no merge).
      method: ``"vid_tldr"`` (metric = hidden states, saliency-weighted) or ``"tome"``.
      protected: leading tokens never merged.
      prop_attn: add ``log(size)`` to the attention logits (once sizes exist).
    """

    r: int = 0
    method: Method = "vid_tldr"
    protected: int = 0
    prop_attn: bool = True

    @property
    def need(self) -> Need:
        """Which attention statistic the merge needs (vid-TLDR's sharpness, ToMe's keys, none without r)."""
        if not self.r:
            return None
        return "sharpness" if self.method == "vid_tldr" else "keys"


@struct.dataclass
class TokenState:
    """What flows between blocks.

    Attributes:
      x: ``(B, N, D)`` tokens.
      size: ``(B, N, 1)`` float32 token sizes, or None before the first merge.
      source: None, a dense ``(B, N, N0)`` map, or a :class:`~tldr_jax.merge.TokenOrigin`.
      count: static; None, or the real tokens when padded (``AttentionTuning.token_bucket``):
        ``x[:, :count]`` are real, the rest size-0 padding; ``source`` covers the real tokens only.
    """

    x: Array
    size: Array | None = None
    source: Array | TokenOrigin | None = None
    count: int | None = struct.field(pytree_node=False, default=None)


def pad_tokens(state: TokenState, bucket: int) -> TokenState:
    """``state`` (unpadded) with its ``N`` tokens padded up to a multiple of ``bucket``: zero tokens of
    size 0 at the end (``(B, N, D)`` -> ``(B, P, D)``, ``count = N``)."""
    n = state.x.shape[1]
    extra = -(-n // bucket) * bucket - n
    x = jnp.pad(state.x, ((0, 0), (0, extra), (0, 0)))
    size = None if state.size is None else jnp.pad(state.size, ((0, 0), (0, extra), (0, 0)))
    return TokenState(x, size, state.source, n)


def real_tokens(state: TokenState) -> TokenState:
    """The real tokens of a padded ``state`` (``state`` itself when not padded)."""
    if state.count is None:
        return state
    size = None if state.size is None else state.size[:, : state.count]
    return TokenState(state.x[:, : state.count], size, state.source)


def _key_mask(state: TokenState) -> np.ndarray | None:
    """``(P,)`` additive mask: 0 on the real tokens, ``-inf`` on the padding (None without padding)."""
    n, padded = state.count, state.x.shape[1]
    if n is None or n == padded:
        return None
    return np.where(np.arange(padded) < n, 0.0, -np.inf).astype(np.float32)


class Block(nnx.Module):
    """Pre-norm transformer block with the merge between the attention residual and the MLP."""

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(cfg.embed_dim, epsilon=cfg.norm_eps, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = nnx.LayerNorm(cfg.embed_dim, epsilon=cfg.norm_eps, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(
        self,
        state: TokenState,
        spec: MergeSpec,
        merge: MergeFn = merge_step,
        attention: AttentionTuning = DEFAULT_TUNING,
    ) -> tuple[TokenState, dict[str, Any]]:
        """``x (B, N, D)`` -> ``(B, N - spec.r, D)`` with sizes and source map; and the intermediates.

        ``attention`` (static) tunes how the attention is computed, not what it computes. A padded
        ``state`` (``attention.token_bucket``) stays padded: ``N`` and ``N - spec.r`` are then the real
        counts, each padded up to the bucket.
        """
        size = state.size
        log_size = jnp.log(size[..., 0]) if spec.prop_attn and size is not None else None
        h, stats = self.attn(self.norm1(state.x), log_size, spec.need, attention, _key_mask(state))
        state = state.replace(x=state.x + h)
        out: dict[str, Any] = {"attn": h, **stats}
        if spec.r:
            real = real_tokens(state)
            n = real.x.shape[1]  # the matching, the saliency and the merge see the real tokens only
            x, size, source, merged = merge(
                real.x, spec.r, metric=_first(stats.get("keys"), n),
                sharpness=_first(stats.get("sharpness"), n), size=real.size, source=real.source,
                protected=spec.protected, method=spec.method,
            )
            out.update(merged)
            state = TokenState(x, size, source)
            if attention.token_bucket:
                state = pad_tokens(state, attention.token_bucket)
        x = state.x + self.mlp(self.norm2(state.x))
        return state.replace(x=x), out


def _first(a: Array | None, n: int) -> Array | None:
    """The first ``n`` tokens (axis 1) of a per-token statistic, or None."""
    return None if a is None else a[:, :n]

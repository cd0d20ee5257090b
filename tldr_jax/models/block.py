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
from flax import nnx, struct

from tldr_jax.configs import ArchConfig
from tldr_jax.merge import TokenOrigin, merge_step
from tldr_jax.models.layers import DEFAULT_TUNING, Attention, Mlp, Need
from tldr_jax.options import AttentionTuning, Method

Array = jax.Array
#: A merge step with the signature of :func:`tldr_jax.merge.merge_step` (the benchmarks swap in variants).
MergeFn = Callable[..., tuple[Array, Array, Any, dict[str, Any]]]

__all__ = ["Block", "MergeFn", "MergeSpec", "TokenState"]


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
        """The attention statistic the merge needs: vid-TLDR's sharpness or ToMe's keys (none without r)."""
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
    """

    x: Array
    size: Array | None = None
    source: Array | TokenOrigin | None = None


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

        ``attention`` (static) tunes how the attention is computed, not what it computes.
        """
        x, size, source = state.x, state.size, state.source
        log_size = jnp.log(size[..., 0]) if spec.prop_attn and size is not None else None
        h, stats = self.attn(self.norm1(x), log_size, spec.need, attention)
        x = x + h
        out: dict[str, Any] = {"attn": h, **stats}
        if spec.r:
            x, size, source, merged = merge(
                x, spec.r, metric=stats.get("keys"), sharpness=stats.get("sharpness"), size=size,
                source=source, protected=spec.protected, method=spec.method,
            )
            out.update(merged)
        x = x + self.mlp(self.norm2(x))
        return TokenState(x, size, source), out

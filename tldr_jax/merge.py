"""Pure, jit-friendly token merging: ToMe bipartite soft matching and the vid-TLDR saliency merge.

Every function here is a pure function of arrays and static Python ints, so every shape is known at
trace time. The matching is computed once as a :class:`MergePlan` (a small pytree of index arrays)
and then applied to any number of arrays: tokens, sizes, the dense source map. :func:`merge_step`
is that sequence for one layer (plan, then tokens and sizes, then the source map); the encoder blocks,
:func:`merge_tokens` and the benchmarks all run it.

Token layout (as in ToMe and the official vid-TLDR): tokens alternate between a source set ``A``
(even indices) and a destination set ``B`` (odd indices). Each source picks its most similar
destination (cosine similarity of the metric); the ``r`` sources with the most similar match are
merged into their destinations. The output order is ``[unmerged sources, destinations]``, with
protected tokens moved first. The two methods differ only in details that the official code fixes:

* ``"vid_tldr"`` (official vid-TLDR): unmerged sources keep their original order; merged sources are
  scaled by their saliency; sizes are rescaled by their maximum inside the weighted average.
* ``"tome"`` (ToMe's ``bipartite_soft_matching`` + ``merge_wavg``): unmerged sources stay in
  descending match-score order (sorted by index only when a token is protected, as ToMe does for its
  class token); plain size-weighted average.

:mod:`tldr_jax.matching` holds the plan (:class:`MergePlan`, :func:`bipartite_plan`, :func:`apply_plan`,
:func:`merge_wavg`) and :mod:`tldr_jax.source_map` the source maps (:class:`TokenOrigin`,
:func:`merge_source`, :func:`unmerge`, ...); this module composes them and re-exports their names, so
``tldr_jax.merge.X`` reaches all of them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tldr_jax.matching import (
    MergePlan,
    apply_plan,
    bipartite_plan,
    check_static_int,
    check_tokens,
    merge_wavg,
)
from tldr_jax.options import Method
from tldr_jax.saliency import saliency_from_sharpness
from tldr_jax.saliency import sharpness as attention_sharpness
from tldr_jax.schedule import ScheduleCapWarning, resolve_r  # merge_tokens caps r with a warning
from tldr_jax.source_map import (
    TokenOrigin,
    destination_index,
    identity_origin,
    identity_source,
    merge_source,
    origin_to_dense,
    unmerge,
    update_origin,
)

Array = jax.Array

__all__ = [
    "MergePlan",
    "ScheduleCapWarning",
    "TokenOrigin",
    "bipartite_plan",
    "apply_plan",
    "merge_wavg",
    "merge_source",
    "merge_step",
    "merge_tokens",
    "unmerge",
    "destination_index",
    "identity_source",
    "identity_origin",
    "update_origin",
    "origin_to_dense",
]

# --------------------------------------------------------------------------------------------------
# The merge step: plan once, apply to tokens, sizes and source.
# --------------------------------------------------------------------------------------------------


def merge_step(
    x: Array,
    r: int,
    *,
    metric: Array | None = None,
    sharpness: Array | None = None,
    size: Array | None = None,
    source: Array | TokenOrigin | None = None,
    protected: int = 0,
    method: Method | None = None,
) -> tuple[Array, Array, Array | TokenOrigin | None, dict[str, Any]]:
    """One merge step, the one the encoder blocks, :func:`merge_tokens` and the benchmarks run.

    The matching is planned once (:func:`bipartite_plan`) and applied to the tokens and sizes
    (:func:`merge_wavg`) and to the source map (:func:`merge_source`). With ``sharpness`` this is
    vid-TLDR's merge: the saliency is computed here from it (no gradient) and scales the merged sources.

    Args:
      x: ``(B, N, C)`` tokens.
      r: static number of tokens to remove, ``0 <= r <= (N - protected) // 2``.
      metric: ``(B, N, C')`` matching features; defaults to ``x`` (vid-TLDR's metric).
      sharpness: ``(B, N)`` vid-TLDR attention sharpness of this layer (pre size bias), or None.
      size: ``(B, N, 1)`` token sizes; ones when None.
      source: None (stays None), a dense ``(B, N, N0)`` map or a :class:`TokenOrigin`.
      protected: static number of leading tokens never merged.
      method: as :func:`bipartite_plan` (default: ``"vid_tldr"`` with a sharpness, ``"tome"`` without).

    Returns:
      ``(x (B, N - r, C), size (B, N - r, 1), source, aux)``; ``aux`` holds the ``plan`` and the
      ``(B, N)`` ``saliency`` (None without a sharpness).
    """
    sal = None if sharpness is None else saliency_from_sharpness(jax.lax.stop_gradient(sharpness))
    metric = x if metric is None else metric
    plan = bipartite_plan(metric, r, protected=protected, saliency=sal, method=method)
    x, size = merge_wavg(plan, x, size)
    if source is not None:
        source = merge_source(plan, source)
    return x, size, source, {"plan": plan, "saliency": sal}


def merge_tokens(
    x: Array,
    r: int | float,
    *,
    attn: Array | None = None,
    size: Array | None = None,
    metric: Array | None = None,
    protected: int = 0,
    source: Array | TokenOrigin | None = None,
) -> tuple[Array, Array, Array | TokenOrigin | None]:
    """One token-merging step, for users patching their own Flax models.

    With ``attn`` this is vid-TLDR's saliency-aware merge (the official operation); without it,
    ToMe's plain size-weighted merge. Checks its inputs, resolves ``r``, then runs :func:`merge_step`.

    Args:
      x: ``(B, N, C)`` float tokens.
      r: static tokens to remove (int) or a fraction ``< 1`` of ``N``; capped at
        ``(N - protected) // 2`` with a :class:`ScheduleCapWarning`.
      attn: ``(B, H, N, N)`` softmax attention probabilities of this layer, before any size bias.
      size: ``(B, N, 1)`` running token sizes; ones when ``None``.
      metric: ``(B, N, C')`` matching features; defaults to ``x``.
      protected: leading tokens never merged (e.g. 1 for a CLS token).
      source: ``None`` (stays ``None``), the dense ``(B, N, N0)`` map, or a :class:`TokenOrigin`.

    Returns:
      ``(x, size, source)`` with ``N - r`` tokens; ``size`` is float32 ``(B, N - r, 1)``.
    """
    check_tokens("x", x)
    bsz, n, _ = x.shape
    protected = check_static_int("protected", protected)
    if protected > n:
        raise ValueError(f"protected = {protected} is more than the {n} tokens of x.")
    if metric is not None:
        check_tokens("metric", metric)
        if metric.shape[:2] != (bsz, n):
            raise ValueError(
                f"metric must share x's batch and token dims {(bsz, n)}; got shape {metric.shape}."
            )
    if size is not None and size.shape != (bsz, n, 1):
        raise ValueError(f"size must have shape (B, N, 1) = {(bsz, n, 1)}; got {size.shape}.")
    if attn is not None:
        if attn.ndim != 4 or attn.shape[0] != bsz or attn.shape[2:] != (n, n):
            raise ValueError(
                f"attn must have shape (B, H, N, N) with B = {bsz} and N = {n} to match x "
                f"{tuple(x.shape)}; got {tuple(attn.shape)}. Pass the attention of the same layer."
            )
        if not jnp.issubdtype(attn.dtype, jnp.floating):
            raise TypeError(f"attn must be floating-point probabilities; got dtype {attn.dtype}.")
    count = resolve_r(r, n, protected)
    if count == 0:
        if size is None:
            size = jnp.ones((bsz, n, 1), jnp.float32)
        return x, size, source
    sharp = None if attn is None else attention_sharpness(attn)
    x, size, source, _ = merge_step(x, count, metric=metric, sharpness=sharp, size=size, source=source,
                                    protected=protected)
    return x, size, source

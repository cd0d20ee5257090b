"""Bipartite soft matching as a plan: choose once which tokens merge, apply to any array.

The ToMe / vid-TLDR matching (see :mod:`tldr_jax.merge` for the token layout and the two methods) is
computed once as a :class:`MergePlan`, a small pytree of index arrays, by :func:`bipartite_plan`, then
applied to any per-token array by :func:`apply_plan` (tokens, sizes, a dense source map) or, for tokens
and their sizes together, by :func:`merge_wavg`. Every function is a pure function of arrays and static
Python ints, so every shape is known at trace time. The input checks shared with :mod:`tldr_jax.merge`
and :mod:`tldr_jax.source_map` live here too.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tldr_jax.numerics import acc_dtype
from tldr_jax.options import Method

Array = jax.Array
Mode = Literal["sum", "mean", "amax"]

__all__ = ["MergePlan", "apply_plan", "bipartite_plan", "merge_wavg"]


@struct.dataclass
class MergePlan:
    """Indices of one bipartite merge step, computed once and applied to many arrays.

    Attributes:
      unm_idx: ``(B, Na - r)`` int32 indices into the source set of the unmerged sources, in output
        order (ascending for vid-TLDR; match-score order for ToMe without protected tokens).
      src_idx: ``(B, r)`` int32 indices into the source set of the merged sources.
      dst_idx: ``(B, r)`` int32 indices into the destination set each merged source joins.
      src_weight: ``(B, r)`` float32 saliency of each merged source (vid-TLDR) or ``None``.
      num_tokens: static token count ``N`` the plan was made for.
      protected: static number of leading tokens that are never merged.
      method: static ``"vid_tldr"`` or ``"tome"``: which arithmetic :func:`merge_wavg` follows.

    A plan with ``r = 0`` is the identity: applying it returns its input unchanged.
    """

    unm_idx: Array
    src_idx: Array
    dst_idx: Array
    src_weight: Array | None
    num_tokens: int = struct.field(pytree_node=False)
    protected: int = struct.field(pytree_node=False, default=0)
    method: Method = struct.field(pytree_node=False, default="vid_tldr")

    @property
    def r(self) -> int:
        """Number of tokens this plan removes."""
        return int(self.src_idx.shape[-1])

    @property
    def num_out(self) -> int:
        """Token count after the merge, ``N - r``."""
        return self.num_tokens - self.r


# --------------------------------------------------------------------------------------------------
# Validation helpers (clear errors that name the bad value and the fix).
# --------------------------------------------------------------------------------------------------


def check_tokens(name: str, x: Array, rank: int = 3) -> None:
    """Raise unless ``x`` is a floating array of rank ``rank`` (``(B, N, C)`` by default)."""
    if not hasattr(x, "ndim") or x.ndim != rank:
        shape = getattr(x, "shape", type(x).__name__)
        raise ValueError(
            f"`{name}` must have rank {rank} (B, N, C); got shape {shape}. "
            "Add a batch axis with x[None] or flatten the tokens to (B, N, C)."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must be a floating-point array; got dtype {x.dtype}. "
            f"Cast it first, e.g. {name}.astype(jnp.float32)."
        )


def check_static_int(name: str, value: object, minimum: int = 0) -> int:
    """``value`` as a static Python int ``>= minimum``, or an error naming the fix."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a static Python int; got {value!r} of type {type(value).__name__}. "
            "Pass it as a static argument (e.g. jax.jit(..., static_argnames=...))."
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return int(value)


# --------------------------------------------------------------------------------------------------
# Planning and applying a merge.
# --------------------------------------------------------------------------------------------------


def _protected_masks(num_tokens: int, protected: int) -> tuple[np.ndarray, np.ndarray]:
    """Static boolean masks over the source and destination sets marking protected tokens."""
    idx = np.arange(num_tokens)
    prot = idx < protected
    return prot[0::2], prot[1::2]


def bipartite_plan(
    metric: Array,
    r: int,
    *,
    protected: int = 0,
    saliency: Array | None = None,
    method: Method | None = None,
) -> MergePlan:
    """Bipartite soft matching: choose which ``r`` tokens merge into which.

    Args:
      metric: ``(B, N, C)`` similarity features (vid-TLDR: the hidden states; ToMe: mean keys).
        No gradient flows through the matching.
      r: static number of tokens to remove, ``0 <= r <= (N - protected) // 2``; ``0`` gives the
        identity plan.
      protected: static number of leading tokens (e.g. a CLS token) never merged.
      saliency: optional ``(B, N)`` vid-TLDR saliency; merged sources are scaled by it.
      method: ``"vid_tldr"`` (the official vid-TLDR matching, output order and arithmetic) or
        ``"tome"`` (ToMe's, exactly). Default: ``"vid_tldr"`` with a saliency, ``"tome"`` without.

    Returns:
      A :class:`MergePlan`.
    """
    check_tokens("metric", metric)
    r = check_static_int("r", r)
    protected = check_static_int("protected", protected)
    method = _check_method(method, saliency)
    bsz, n, _ = metric.shape
    if protected > n:
        raise ValueError(f"protected = {protected} is more than the {n} tokens of the metric.")
    cap = max((n - protected) // 2, 0)
    if r > cap:
        raise ValueError(
            f"r = {r} is more than a bipartite merge of {n} tokens ({protected} protected) can remove "
            f"(at most {cap}). Resolve r with tldr_jax.schedule.resolve_r, which caps it."
        )
    if saliency is not None and saliency.shape != (bsz, n):
        raise ValueError(
            f"saliency must have shape (B, N) = {(bsz, n)} to match the metric; got {saliency.shape}."
        )
    n_a = (n + 1) // 2
    if r == 0:
        unm_idx = jnp.broadcast_to(jnp.arange(n_a, dtype=jnp.int32), (bsz, n_a))
        empty = jnp.zeros((bsz, 0), jnp.int32)
        weight = None if saliency is None else jnp.zeros((bsz, 0), acc_dtype(saliency.dtype))
        return MergePlan(unm_idx, empty, empty, weight, num_tokens=n, protected=protected, method=method)
    node_max, node_idx = _best_destinations(metric, protected, method)
    edge_idx = jnp.argsort(node_max, axis=-1, descending=True, stable=True).astype(jnp.int32)
    src_idx = edge_idx[:, :r]
    unm_idx = edge_idx[:, r:]
    if method == "vid_tldr" or protected:  # ToMe sorts only to keep its class token first
        unm_idx = jnp.sort(unm_idx, axis=-1)
    dst_idx = jnp.take_along_axis(node_idx, src_idx, axis=-1)
    src_weight = None
    if saliency is not None:
        sal = jax.lax.stop_gradient(saliency).astype(acc_dtype(saliency.dtype))
        src_weight = jnp.take_along_axis(sal[:, 0::2], src_idx, axis=-1)
    return MergePlan(
        unm_idx, src_idx, dst_idx, src_weight, num_tokens=n, protected=protected, method=method
    )


def _check_method(method: object, saliency: Array | None) -> Method:
    """Resolve a plan's method: explicit, else vid-TLDR with a saliency and ToMe without."""
    if method is None:
        return "tome" if saliency is None else "vid_tldr"
    if method not in ("vid_tldr", "tome"):
        raise ValueError(f"method must be 'vid_tldr' or 'tome'; got {method!r}.")
    if method == "tome" and saliency is not None:
        raise ValueError("ToMe has no saliency: pass saliency=None with method='tome'.")
    return method


def _best_destinations(metric: Array, protected: int, method: Method) -> tuple[Array, Array]:
    """Best destination of every source token and its score.

    Args:
      metric: ``(B, N, C)``.

    Returns:
      ``(node_max, node_idx)``, both ``(B, Na)``: the cosine similarity to the closest destination
      (vid-TLDR maps it to ``(cos + 1) / 2`` as its code does) and that destination's index.
      Protected sources score ``-inf``; protected destinations are never chosen.
    """
    n = metric.shape[1]
    metric = jax.lax.stop_gradient(metric).astype(acc_dtype(metric.dtype))
    metric = metric / jnp.linalg.norm(metric, axis=-1, keepdims=True)
    a, b = metric[:, 0::2], metric[:, 1::2]
    scores = jnp.einsum("bic,bjc->bij", a, b, precision=jax.lax.Precision.HIGHEST)
    if method == "vid_tldr":
        scores = (scores + 1.0) / 2.0
    if protected:
        prot_a, prot_b = _protected_masks(n, protected)
        scores = jnp.where(prot_a[None, :, None], -jnp.inf, scores)
        scores = jnp.where(prot_b[None, None, :], -jnp.inf, scores)
    return jnp.max(scores, axis=-1), jnp.argmax(scores, axis=-1).astype(jnp.int32)


def front_permutation(plan: MergePlan) -> np.ndarray | None:
    """Static output permutation that moves protected destination tokens to the front.

    Protected source tokens are never merged and sort first among the unmerged sources already;
    protected destination tokens (index 1, 3, ...) need to be moved up. ``None`` when no move is needed.
    """
    p = plan.protected
    if p <= 1:
        return None
    n_unm = (plan.num_tokens + 1) // 2 - plan.r
    front = [t // 2 if t % 2 == 0 else n_unm + t // 2 for t in range(p)]
    rest = [i for i in range(plan.num_out) if i not in set(front)]
    return np.asarray(front + rest, dtype=np.int32)


def _scatter(dst: Array, idx: Array, src: Array, mode: Mode) -> Array:
    """Batched scatter-reduce along axis 1 (``include_self=True`` semantics, as torch)."""
    if mode == "sum":
        return jax.vmap(lambda d, i, s: d.at[i].add(s))(dst, idx, src)
    if mode == "amax":
        return jax.vmap(lambda d, i, s: d.at[i].max(s))(dst, idx, src)
    if mode == "mean":
        total = jax.vmap(lambda d, i, s: d.at[i].add(s))(dst, idx, src)
        ones = jnp.ones(src.shape[:2] + (1,) * (src.ndim - 2), dst.dtype)
        count = jax.vmap(lambda i, o: jnp.ones((dst.shape[1],) + o.shape[1:], dst.dtype).at[i].add(o))(
            idx, ones
        )
        return total / count
    raise ValueError(f"mode must be 'sum', 'mean' or 'amax'; got {mode!r}.")


def apply_plan(plan: MergePlan, x: Array, mode: Mode = "sum") -> Array:
    """Apply a merge plan to any per-token array.

    The arithmetic runs in float32 (float64 for float64 input) whatever the input dtype, and the
    result is cast back.
    Merged sources are scaled by ``plan.src_weight`` (vid-TLDR) before the reduction.

    Args:
      plan: from :func:`bipartite_plan`.
      x: ``(B, N, ...)`` per-token values (tokens, sizes ``(B, N, 1)``, a dense source map).
      mode: ``"sum"``, ``"mean"`` (ToMe's include-self mean) or ``"amax"`` (source maps).

    Returns:
      ``(B, N - r, ...)``; ``x`` itself when ``plan.r == 0``.
    """
    check_plan(plan)
    if mode not in ("sum", "mean", "amax"):
        raise ValueError(f"mode must be 'sum', 'mean' or 'amax'; got {mode!r}.")
    if getattr(x, "ndim", 0) < 2 or x.shape[1] != plan.num_tokens:
        raise ValueError(
            f"this plan was made for {plan.num_tokens} tokens on axis 1; got an array of shape "
            f"{getattr(x, 'shape', type(x).__name__)}. Apply a plan to arrays of the layer it was made for."
        )
    if x.shape[0] != plan.src_idx.shape[0]:
        raise ValueError(
            f"this plan was made for a batch of {plan.src_idx.shape[0]}; got an array of shape {x.shape}."
        )
    if plan.r == 0:
        return x
    dtype = x.dtype
    x = x.astype(acc_dtype(dtype))
    a, b = x[:, 0::2], x[:, 1::2]
    expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    # One gather for the unmerged and the merged sources (fewer kernels to trace and compile).
    idx = jnp.concatenate([plan.unm_idx, plan.src_idx], axis=1)
    picked = jnp.take_along_axis(a, idx[expand], axis=1)
    n_unm = plan.unm_idx.shape[1]
    unm, src = picked[:, :n_unm], picked[:, n_unm:]
    if plan.src_weight is not None:
        src = src * plan.src_weight[expand]
    b = _scatter(b, plan.dst_idx, src, mode)
    out = jnp.concatenate([unm, b], axis=1)
    perm = front_permutation(plan)
    if perm is not None:
        out = out[:, perm]
    return out.astype(dtype)


def check_plan(plan: object) -> None:
    """Raise unless ``plan`` is a :class:`MergePlan`."""
    if not isinstance(plan, MergePlan):
        raise TypeError(
            f"expected a MergePlan from tldr_jax.bipartite_plan; got {type(plan).__name__}."
        )


def merge_wavg(plan: MergePlan, x: Array, size: Array | None = None) -> tuple[Array, Array]:
    """Size-weighted merge of tokens (ToMe's ``merge_wavg``; vid-TLDR's saliency-weighted variant).

    ``x' = sum(w * size * x) / sum(w * size)`` over each merged group, where ``w`` is the saliency of
    merged sources (1 for destinations, unmerged tokens and ToMe). For ``plan.method == "vid_tldr"``
    the sizes are first rescaled by their per-sample maximum, as the official code does (a numerical
    step that cancels exactly); ToMe's plan follows ToMe's arithmetic.

    Args:
      plan: from :func:`bipartite_plan`.
      x: ``(B, N, C)`` tokens, any float dtype (merged in float32, returned in the input dtype).
      size: ``(B, N, 1)`` token sizes; ones when ``None``.

    Returns:
      ``(x, size)`` of shapes ``(B, N - r, C)`` and ``(B, N - r, 1)`` (size in float32). With
      ``plan.r == 0``, ``x`` unchanged and the sizes (ones when ``None``).
    """
    check_plan(plan)
    check_tokens("x", x)
    acc = acc_dtype(x.dtype)
    bsz, n = x.shape[:2]
    if size is None:
        size = jnp.ones((bsz, n, 1), acc)
    elif getattr(size, "shape", None) != (bsz, n, 1):
        raise ValueError(
            f"size must have shape (B, N, 1) = {(bsz, n, 1)} to match x; got "
            f"{getattr(size, 'shape', type(size).__name__)}. A (B, N) array needs size[..., None]."
        )
    size = size.astype(jnp.promote_types(size.dtype, acc))
    if plan.r == 0:
        apply_plan(plan, x)  # checks that the plan fits x
        return x, size
    dtype = x.dtype
    x = x.astype(acc)
    # Tokens and sizes go through one apply_plan as one array (the size as a last channel): each
    # channel is merged on its own, so the result is the same as two calls, with fewer kernels.
    if plan.method == "tome":
        merged = apply_plan(plan, jnp.concatenate([x * size, size], axis=-1), "sum")
        x, size = merged[..., :-1], merged[..., -1:]
        return (x / size).astype(dtype), size
    size_max = jnp.max(size, axis=1, keepdims=True)
    merged = apply_plan(plan, jnp.concatenate([x * (size / size_max), size], axis=-1), "sum")
    x, size = merged[..., :-1], merged[..., -1:]
    x = x / (size / size_max)
    return x.astype(dtype), size

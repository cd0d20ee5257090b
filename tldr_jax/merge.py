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
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tldr_jax.numerics import acc_dtype
from tldr_jax.options import Method
from tldr_jax.saliency import saliency_from_sharpness
from tldr_jax.saliency import sharpness as attention_sharpness
from tldr_jax.schedule import ScheduleCapWarning, resolve_r  # merge_tokens caps r with a warning

Array = jax.Array
Mode = Literal["sum", "mean", "amax"]

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


class TokenOrigin(NamedTuple):
    """O(N) source map: for each input token, the output token that holds it and its weight.

    Attributes:
      owner: ``(B, N0)`` int32, index of the current token that contains input token ``j``.
      weight: ``(B, N0)`` float32, the product of the saliency factors applied to input token ``j``
        on its way (1 for ToMe; 0 once vid-TLDR dropped it as background).

    ``origin_to_dense`` turns it into the official dense ``(B, N, N0)`` map.
    """

    owner: Array
    weight: Array


# --------------------------------------------------------------------------------------------------
# Validation helpers (clear errors that name the bad value and the fix).
# --------------------------------------------------------------------------------------------------


def _check_tokens(name: str, x: Array, rank: int = 3) -> None:
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


def _check_static_int(name: str, value: object, minimum: int = 0) -> int:
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
    _check_tokens("metric", metric)
    r = _check_static_int("r", r)
    protected = _check_static_int("protected", protected)
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


def _front_permutation(plan: MergePlan) -> np.ndarray | None:
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
    _check_plan(plan)
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
    perm = _front_permutation(plan)
    if perm is not None:
        out = out[:, perm]
    return out.astype(dtype)


def _check_plan(plan: object) -> None:
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
    _check_plan(plan)
    _check_tokens("x", x)
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


def merge_source(plan: MergePlan, source: Array | TokenOrigin | None) -> Array | TokenOrigin:
    """Update a source map after a merge.

    Args:
      plan: from :func:`bipartite_plan`.
      source: the official dense ``(B, N, N0)`` map (updated with an ``amax`` merge, so merged rows
        are saliency-scaled, exactly as the official code), a :class:`TokenOrigin`, or ``None`` to
        start from the dense identity (as ToMe's ``merge_source`` does).

    Returns:
      The same kind of map for the ``N - r`` output tokens.
    """
    _check_plan(plan)
    if source is None:
        source = identity_source(plan.src_idx.shape[0], plan.num_tokens)
    if isinstance(source, TokenOrigin):
        return update_origin(plan, source)
    if not hasattr(source, "ndim") or source.ndim != 3:
        raise TypeError(
            "source must be a dense (B, N, N0) map, a TokenOrigin or None; got "
            f"{getattr(source, 'shape', type(source).__name__)}. Start one with "
            "identity_source(B, N) or identity_origin(B, N)."
        )
    return apply_plan(plan, source, "amax")


def unmerge(where: MergePlan | TokenOrigin, x: Array) -> Array:
    """Spread merged tokens back to the positions they came from (ToMe's ``unmerge``).

    Args:
      where: a :class:`MergePlan` (undo one step) or a :class:`TokenOrigin` (undo a whole schedule:
        the ``source="origin"`` output of :func:`tldr_jax.apply`, or :func:`update_origin` chains).
      x: ``(B, N', ...)`` values of the merged tokens (``N' = N - r`` for a plan).

    Returns:
      ``(B, N, ...)``: every input position gets the value of the output token that holds it
      (protected tokens included, whatever their number). Saliency weights are not applied.
    """
    if isinstance(where, MergePlan):
        if getattr(x, "ndim", 0) < 2 or x.shape[1] != where.num_out:
            raise ValueError(
                f"this plan merges {where.num_tokens} tokens into {where.num_out}; got values of shape "
                f"{getattr(x, 'shape', type(x).__name__)} (expected (B, {where.num_out}, ...))."
            )
        if where.r == 0:
            return x
        owner, _ = destination_index(where)
    elif isinstance(where, TokenOrigin):
        owner = where.owner
        if getattr(x, "ndim", 0) < 2 or x.shape[0] != owner.shape[0]:
            raise ValueError(
                f"x must be (B, N', ...) with B = {owner.shape[0]} to match the origin map; got "
                f"{getattr(x, 'shape', type(x).__name__)}."
            )
    else:
        raise TypeError(f"unmerge takes a MergePlan or a TokenOrigin; got {type(where).__name__}.")
    expand = (slice(None), slice(None)) + (None,) * (x.ndim - 2)
    return jnp.take_along_axis(x, owner[expand], axis=1)


# --------------------------------------------------------------------------------------------------
# Source tracking.
# --------------------------------------------------------------------------------------------------


def identity_source(batch: int, num_tokens: int, dtype=jnp.float32) -> Array:
    """Dense identity source map ``(B, N, N)``: every token holds only itself."""
    return jnp.broadcast_to(jnp.eye(num_tokens, dtype=dtype), (batch, num_tokens, num_tokens))


def identity_origin(batch: int, num_tokens: int) -> TokenOrigin:
    """O(N) identity source map: ``owner = arange(N)``, ``weight = 1``; each ``(B, N)``."""
    owner = jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (batch, num_tokens))
    return TokenOrigin(owner, jnp.ones((batch, num_tokens), jnp.float32))


def destination_index(plan: MergePlan) -> tuple[Array, Array]:
    """Where each of the ``N`` input tokens of a merge ends up, and with which factor.

    Returns:
      ``(dest, factor)``, both ``(B, N)``: ``dest[b, i]`` is the output index holding input token
      ``i``; ``factor[b, i]`` is its saliency weight if it was a merged source, else 1.
    """
    _check_plan(plan)
    bsz = plan.src_idx.shape[0]
    n, r = plan.num_tokens, plan.r
    if r == 0:
        fac_dtype = jnp.float32 if plan.src_weight is None else plan.src_weight.dtype
        return jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (bsz, n)), jnp.ones((bsz, n), fac_dtype)
    n_a, n_b = (n + 1) // 2, n // 2
    n_unm = n_a - r

    def per_sample(unm, src, dst):
        d = jnp.zeros((n_a,), jnp.int32).at[unm].set(jnp.arange(n_unm, dtype=jnp.int32))
        return d.at[src].set(n_unm + dst)

    dest_a = jax.vmap(per_sample)(plan.unm_idx, plan.src_idx, plan.dst_idx)
    dest_b = jnp.broadcast_to(n_unm + jnp.arange(n_b, dtype=jnp.int32), (bsz, n_b))
    fac_dtype = jnp.float32 if plan.src_weight is None else plan.src_weight.dtype
    fac_a = jnp.ones((bsz, n_a), fac_dtype)
    if plan.src_weight is not None:
        fac_a = jax.vmap(lambda f, s, w: f.at[s].set(w))(fac_a, plan.src_idx, plan.src_weight)
    dest = jnp.zeros((bsz, n), jnp.int32).at[:, 0::2].set(dest_a).at[:, 1::2].set(dest_b)
    factor = jnp.ones((bsz, n), fac_dtype).at[:, 0::2].set(fac_a)
    perm = _front_permutation(plan)
    if perm is not None:
        inverse = np.argsort(perm).astype(np.int32)
        dest = jnp.asarray(inverse)[dest]
    return dest, factor


def update_origin(plan: MergePlan, origin: TokenOrigin) -> TokenOrigin:
    """Compose an O(N) source map with one merge step. Shapes stay ``(B, N0)``."""
    if not isinstance(origin, TokenOrigin):
        raise TypeError(f"origin must be a TokenOrigin (see identity_origin); got {type(origin).__name__}.")
    dest, factor = destination_index(plan)
    owner = jnp.take_along_axis(dest, origin.owner, axis=1)
    weight = origin.weight * jnp.take_along_axis(factor, origin.owner, axis=1)
    return TokenOrigin(owner, weight)


def origin_to_dense(origin: TokenOrigin, num_tokens: int) -> Array:
    """Dense ``(B, N, N0)`` source map from a :class:`TokenOrigin` (equal to the official map)."""
    bsz, n0 = origin.owner.shape
    onehot = jax.nn.one_hot(origin.owner, num_tokens, dtype=jnp.float32, axis=1)  # (B, N, N0)
    return onehot * origin.weight[:, None, :]


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
    _check_tokens("x", x)
    bsz, n, _ = x.shape
    protected = _check_static_int("protected", protected)
    if protected > n:
        raise ValueError(f"protected = {protected} is more than the {n} tokens of x.")
    if metric is not None:
        _check_tokens("metric", metric)
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

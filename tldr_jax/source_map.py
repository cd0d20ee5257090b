"""Source maps: which input tokens each merged token holds, through one merge or a whole schedule.

Two forms: the official dense ``(B, N, N0)`` map (updated by an ``amax``
:func:`~tldr_jax.matching.apply_plan`, as the official code does) and the O(N) :class:`TokenOrigin`
(the owner of every input token and its saliency weight), which :func:`origin_to_dense` turns into the
dense one. :func:`unmerge` spreads merged values back to the input positions with either a
:class:`~tldr_jax.matching.MergePlan` or a :class:`TokenOrigin`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.matching import MergePlan, apply_plan, check_plan, front_permutation

Array = jax.Array

__all__ = [
    "TokenOrigin", "destination_index", "identity_origin", "identity_source", "merge_source",
    "origin_to_dense", "unmerge", "update_origin",
]


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
    check_plan(plan)
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
    check_plan(plan)
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
    perm = front_permutation(plan)
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


"""The numerics shared by attention, saliency and merging: accumulation dtype, ``x log x``, safe division.

Merge and saliency arithmetic runs in float32 whatever the compute dtype (float64 for float64 input),
as the official PyTorch code does under autocast; :func:`acc_dtype` is that rule, in one place.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "LOW_PRECISION", "acc_dtype", "dot_kwargs", "is_low_precision", "matmul_precision", "min_max",
    "safe_div", "xlogx",
]

#: Compute dtypes whose products run with float32 accumulation (``preferred_element_type``).
LOW_PRECISION: tuple[str, ...] = ("bfloat16", "float16")


def acc_dtype(dtype) -> jnp.dtype:
    """Accumulation dtype of merge and saliency arithmetic: float32, or float64 for float64 input."""
    return jnp.promote_types(dtype, jnp.float32)


def is_low_precision(dtype) -> bool:
    """True for bfloat16 / float16: products accumulate in float32 and the residual stream stays float32."""
    return jnp.dtype(dtype).name in LOW_PRECISION


def dot_kwargs(dtype) -> dict:
    """Extra ``dot_general`` / ``einsum`` arguments for operands of ``dtype``.

    ``{"preferred_element_type": float32}`` for low precision (the product runs on the bfloat16 / float16
    units and accumulates in float32, which XLA CPU also runs faster than bfloat16 results;
    docs/guides/scale_precision.md);
    ``{}`` otherwise, so float32 / float64 programs stay exactly as they were.
    """
    return {"preferred_element_type": jnp.float32} if is_low_precision(dtype) else {}


def matmul_precision(precision: str | None) -> contextlib.AbstractContextManager:
    """The context that runs matrix products at ``precision`` (a name of ``tldr_jax.options.PRECISIONS``).

    ``jax.default_matmul_precision(precision)``, or a no-op context for None (JAX's own setting stays in
    charge). The one home of this rule: every compiled forward (vision, text, retrieval) traces its body
    inside it.
    """
    return jax.default_matmul_precision(precision) if precision is not None else contextlib.nullcontext()


def xlogx(p: Array) -> Array:
    """``p * log(p)`` with ``0 * log(0) = 0``; finite value and gradient at 0. Shape-preserving."""
    positive = p > 0
    safe = jnp.where(positive, p, 1.0)
    return jnp.where(positive, p * jnp.log(safe), 0.0)


def safe_div(num: Array, den: Array, fill: float) -> Array:
    """``num / den`` where ``den > 0``, else ``fill`` (no NaN or inf, and no NaN gradient). Broadcasts."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), fill)


# XLA CPU splits every single-output reduction over more than 32 elements into three kernels (a tree
# of reduce-windows, for the precision of sums). A minimum and a maximum are exact in any order, so
# min_max computes both in one variadic reduction: one kernel instead of six, the same values bit for
# bit (except that a NaN propagates, as in NumPy and PyTorch, where XLA CPU's plain jnp.max may skip
# it). The vid-TLDR saliency runs it in every merging layer: fewer kernels to compile.


def min_max(x: Array) -> tuple[Array, Array]:
    """``(..., N)`` -> ``(min, max)``, each ``(..., 1)``, in one reduction (a NaN propagates to both)."""
    def pick(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
        return jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1])

    inits = (jnp.array(jnp.inf, x.dtype), jnp.array(-jnp.inf, x.dtype))
    lo, hi = jax.lax.reduce((x, x), inits, pick, (x.ndim - 1,))
    return lo[..., None], hi[..., None]

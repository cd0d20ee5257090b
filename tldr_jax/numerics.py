"""The numerics shared by attention, saliency and merging: accumulation dtype, ``x log x``, safe division.

Merge and saliency arithmetic runs in float32 whatever the compute dtype (float64 for float64 input),
as the official PyTorch code does under autocast; :func:`acc_dtype` is that rule, in one place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["acc_dtype", "safe_div", "xlogx"]


def acc_dtype(dtype) -> jnp.dtype:
    """Accumulation dtype of merge and saliency arithmetic: float32, or float64 for float64 input."""
    return jnp.promote_types(dtype, jnp.float32)


def xlogx(p: Array) -> Array:
    """``p * log(p)`` with ``0 * log(0) = 0``; finite value and gradient at 0. Shape-preserving."""
    positive = p > 0
    safe = jnp.where(positive, p, 1.0)
    return jnp.where(positive, p * jnp.log(safe), 0.0)


def safe_div(num: Array, den: Array, fill: float) -> Array:
    """``num / den`` where ``den > 0``, else ``fill`` (no NaN or inf, and no NaN gradient). Broadcasts."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), fill)

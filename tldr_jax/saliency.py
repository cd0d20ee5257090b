"""vid-TLDR saliency: attention sharpness, background removal and foreground sharpening.

The official vid-TLDR code scores each query token by the negative entropy of its head-averaged
softmax attention row (computed *before* the proportional-attention ``log(size)`` bias), min-max
normalises the scores per sample, zeroes every token below the mean ("background removal") and
re-stretches the rest from ``[mean, max]`` to ``[0, 1]`` ("foreground sharpening").

Two documented fixes (the official code produces NaN in both cases):

* ``0 * log(0)`` is taken as ``0``, so attention rows with exact zeros stay finite.
* A constant score vector (all tokens equally sharp) would divide 0 by 0. There the min-max step
  gives zeros and the sharpening step gives ones: every token counts as fully salient, which makes
  the merge fall back to ToMe's plain size-weighted average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tldr_jax.numerics import acc_dtype, min_max, safe_div, xlogx

Array = jax.Array

__all__ = ["saliency", "saliency_from_sharpness", "sharpness", "sharpness_from_mean"]


def sharpness(attn: Array) -> Array:
    """Negative entropy of the head-averaged attention rows.

    Args:
      attn: ``(B, H, N, N)`` softmax attention probabilities (rows sum to 1), pre size bias.

    Returns:
      ``(B, N)`` float32 scores ``sum_j A_ij log A_ij`` of ``A = mean_h attn``: higher is sharper.
    """
    return sharpness_from_mean(jnp.mean(attn.astype(acc_dtype(attn.dtype)), axis=1))


def sharpness_from_mean(mean_attn: Array) -> Array:
    """``(B, N, N)`` head-averaged attention -> ``(B, N)`` negative row entropy ``sum_j A_ij log A_ij``."""
    return jnp.sum(xlogx(mean_attn.astype(acc_dtype(mean_attn.dtype))), axis=-1)


def saliency_from_sharpness(scores: Array) -> Array:
    """Background removal and foreground sharpening of per-token scores.

    Args:
      scores: ``(B, N)`` sharpness scores (see :func:`sharpness`).

    Returns:
      ``(B, N)`` float32 saliency in ``[0, 1]``: 0 for tokens whose min-max normalised score is below
      the per-sample mean, ``(s - mean) / max(s - mean)`` otherwise. A constant row gives all ones.
    """
    s = scores.astype(acc_dtype(scores.dtype))
    lo, hi = min_max(s)  # one reduction; max(s - lo) is hi - lo exactly (subtraction is monotonic)
    s = safe_div(s - lo, hi - lo, 0.0)
    mean = jnp.mean(s, axis=-1, keepdims=True)
    background = s < mean
    s = s - mean
    s = safe_div(s, jnp.max(s, axis=-1, keepdims=True), 1.0)
    return jnp.where(background, 0.0, s)


def saliency(attn: Array) -> Array:
    """vid-TLDR saliency of every token from one layer's attention.

    Args:
      attn: ``(B, H, N, N)`` softmax attention probabilities before the ``log(size)`` bias.

    Returns:
      ``(B, N)`` float32 saliency in ``[0, 1]`` (no gradient flows through it: the official code
      computes it under ``no_grad``).
    """
    return jax.lax.stop_gradient(saliency_from_sharpness(sharpness(attn)))

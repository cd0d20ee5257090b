"""tldr_jax.numerics: the accumulation dtype, ``x log x`` and safe division."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldr_jax.numerics import acc_dtype, min_max, safe_div, xlogx
from tldr_jax.saliency import saliency_from_sharpness


def test_accumulation_is_float32_or_float64():
    assert acc_dtype(jnp.bfloat16) == acc_dtype(jnp.float16) == acc_dtype(jnp.float32) == jnp.float32
    with jax.enable_x64(True):
        assert acc_dtype(jnp.float64) == jnp.float64


def test_xlogx_is_finite_with_a_finite_gradient_at_zero():
    p = jnp.asarray([0.0, 0.25, 1.0])
    np.testing.assert_allclose(xlogx(p), [0.0, 0.25 * np.log(0.25), 0.0], rtol=1e-6)
    grad = jax.grad(lambda q: jnp.sum(xlogx(q)))(p)
    assert np.isfinite(grad).all() and grad[0] == 0.0
    np.testing.assert_allclose(grad[1:], np.log([0.25, 1.0]) + 1, rtol=1e-6)


def test_safe_div_fills_where_the_denominator_is_not_positive():
    num, den = jnp.asarray([1.0, 2.0, 3.0]), jnp.asarray([2.0, 0.0, -1.0])
    np.testing.assert_array_equal(safe_div(num, den, 7.0), [0.5, 7.0, 7.0])
    grad = jax.grad(lambda d: jnp.sum(safe_div(num, d, 0.0)))(den)
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_min_max_equals_separate_reductions_bit_for_bit(dtype):
    with jax.enable_x64(dtype == "float64"):
        _check_min_max(np.dtype(dtype))


def _check_min_max(dtype: np.dtype) -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 33, 1176, 2352):
        a = rng.normal(size=(2, 3, n)) * 10.0 ** rng.uniform(-3, 3)
        a[0, 0] = np.round(a[0, 0])  # ties
        a[1, 2] = -np.inf
        x = jnp.asarray(a, dtype)
        lo, hi = jax.jit(min_max)(x)
        assert lo.shape == hi.shape == (2, 3, 1)
        np.testing.assert_array_equal(np.asarray(lo[..., 0]), a.min(-1).astype(dtype))
        np.testing.assert_array_equal(np.asarray(hi[..., 0]), a.max(-1).astype(dtype))


def test_min_max_propagates_nan():
    x = jnp.asarray([[1.0, np.nan, 3.0], [1.0, 2.0, 3.0]], jnp.float32)
    lo, hi = min_max(x)
    assert np.isnan(np.asarray(lo[0, 0])) and np.isnan(np.asarray(hi[0, 0]))
    assert float(lo[1, 0]) == 1.0 and float(hi[1, 0]) == 3.0


def _kernels(fn, x) -> int:
    """Top-level kernels (fusions, reductions) of the compiled program."""
    text = jax.jit(fn).lower(x).compile().as_text()
    entry = text[text.index("ENTRY"):]
    return len(re.findall(r"= \S+ (?:fusion|reduce|reduce-window|custom-call)\(", entry))


def test_min_max_compiles_to_fewer_kernels_than_two_reductions():
    x = jnp.zeros((1, 2352), jnp.float32)
    separate = _kernels(lambda v: (jnp.min(v, -1), jnp.max(v, -1)), x)
    assert _kernels(min_max, x) < separate


def test_saliency_with_min_max_equals_the_two_reduction_form():
    """The saliency's min-max step in one reduction gives the same bits as min, then max(s - min)."""
    def two_reductions(scores):
        s = scores - jnp.min(scores, axis=-1, keepdims=True)
        s = safe_div(s, jnp.max(s, axis=-1, keepdims=True), 0.0)
        mean = jnp.mean(s, axis=-1, keepdims=True)
        background = s < mean
        s = safe_div(s - mean, jnp.max(s - mean, axis=-1, keepdims=True), 1.0)
        return jnp.where(background, 0.0, s)

    rng = np.random.default_rng(1)
    for n in (2, 50, 1452, 2352):
        for a in (rng.normal(size=(2, n)), np.round(rng.normal(size=(2, n))), np.full((2, n), 0.3)):
            x = jnp.asarray(a, jnp.float32)
            np.testing.assert_array_equal(
                np.asarray(jax.jit(saliency_from_sharpness)(x)), np.asarray(jax.jit(two_reductions)(x))
            )

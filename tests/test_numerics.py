"""tldr_jax.numerics: the accumulation dtype, ``x log x`` and safe division."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.numerics import acc_dtype, safe_div, xlogx


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

"""tldr_jax.saliency: attention sharpness, background removal and foreground sharpening."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import tldr_jax
from tldr_jax.saliency import saliency_from_sharpness, sharpness_from_mean


def _rand(seed, b, n, c, h=2):
    """The tokens and attention of ``test_merge._rand`` (the same draws)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (b, n, c))
    attn = jax.nn.softmax(jax.random.normal(k2, (b, h, n, n)) * 3, axis=-1)
    return x, attn


def test_saliency_range_and_background():
    _, attn = _rand(5, 2, 30, 4)
    sal = np.asarray(tldr_jax.saliency(attn))
    assert sal.min() == 0.0 and np.allclose(sal.max(-1), 1.0)
    s = np.asarray(tldr_jax.sharpness(attn))
    s = (s - s.min(-1, keepdims=True)) / np.ptp(s, -1, keepdims=True)
    assert np.all(sal[s < s.mean(-1, keepdims=True)] == 0)


def test_sharpness_is_the_negative_entropy_of_the_head_mean():
    _, attn = _rand(6, 2, 9, 4, h=3)
    mean = np.asarray(attn, np.float64).mean(1)
    want = (mean * np.log(mean)).sum(-1)
    np.testing.assert_allclose(tldr_jax.sharpness(attn), want, rtol=1e-5)
    np.testing.assert_allclose(sharpness_from_mean(jnp.asarray(mean, jnp.float32)), want, rtol=1e-5)


def test_constant_scores_give_all_ones_and_no_gradient_flows():
    np.testing.assert_array_equal(saliency_from_sharpness(jnp.full((2, 7), -3.0)), np.ones((2, 7)))
    _, attn = _rand(7, 1, 8, 4)
    grad = jax.grad(lambda a: jnp.sum(tldr_jax.saliency(a)))(attn)
    np.testing.assert_array_equal(grad, np.zeros_like(attn))

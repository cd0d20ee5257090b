"""Differentiability of ``tldr_jax.apply`` with token merging on.

* Finite differences in float64: the directional derivative ``<grad L, d>`` along a random direction
  ``d`` equals the central difference ``(L(p + eps d) - L(p - eps d)) / (2 eps)``. The matching is
  piecewise constant, so the test checks that no matching index changes between ``p - eps d`` and
  ``p + eps d`` (the ``TokenOrigin`` owners are equal at all three points). Measured relative errors
  at ``eps = 1e-5`` (unit-norm ``d``, directional derivative ~0.06): 1.7e-10 (ToMe) and 9.6e-10
  (vid-TLDR); the test allows 1e-6.
* ToMe: the only ``stop_gradient`` is on the matching metric, which only decides indices, so the
  gradient is the derivative of the function itself.
* vid-TLDR: the saliency is ``stop_gradient``-ed by design (it weighs the merge but is treated as a
  constant), so the gradient is the derivative of the function *with the saliency held at its value
  at p*; the finite difference is taken of exactly that function (the saliency is replaced by its
  recorded value). Differencing the full function instead differs by the saliency path (~15% here).
* ``remat=True`` (``jax.checkpoint`` per block) gives the same gradients as ``remat=False``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tldr_jax
from tldr_jax import merge
from tldr_jax.api import build
from tldr_jax.models import MergeSpec

# merge.destination_index scatters the float64 saliency into a float32 TokenOrigin weight (the
# owners, which these tests compare, are exact); JAX warns about the implicit cast.
F64_ORIGIN_CAST = pytest.mark.filterwarnings("ignore:scatter inputs have incompatible types:FutureWarning")

TINY = dict(depth=2, num_heads=2, embed_dim=32, mlp_dim=64, num_frames=4, img_size=32, patch_size=8)
EPS = 1e-5
FD_RTOL = 1e-6


def _compile(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` at XLA optimisation level 0 (these checks are about values,
    not speed, and the unoptimised build compiles about twice as fast on CPU)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _axpy(alpha: float, d, tree):
    return jax.tree_util.tree_map(lambda x, y: x + alpha * y, tree, d)


def _f64_problem(num_classes: int = 3):
    """A tiny float64 classifier, a batch, loss weights and a random unit-norm direction."""
    params = tldr_jax.init(0, "videomae_s", num_classes=num_classes, **TINY)
    tree = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params.tree)
    k_video, k_w, k_dir = jax.random.split(jax.random.key(1), 3)
    video = jax.random.normal(k_video, (2, 4, 32, 32, 3), jnp.float64)
    weights = jax.random.normal(k_w, (2, num_classes), jnp.float64)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(k_dir, len(leaves))
    d = treedef.unflatten([jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    norm = jnp.sqrt(_tree_vdot(d, d))
    d = jax.tree_util.tree_map(lambda x: x / norm, d)
    return params.config, tree, video, weights, d


def _rel_err(analytic: float, numeric: float) -> float:
    return abs(analytic - numeric) / max(abs(analytic), 1e-12)


@F64_ORIGIN_CAST
def test_finite_difference_tome_float64():
    r = (8, 6)  # 32 -> 24 -> 18 tokens
    with jax.enable_x64(True):
        cfg, tree, video, w, d = _f64_problem()

        def forward(t):
            out = tldr_jax.apply(tldr_jax.Params(t, cfg), video, r, method="tome", source="origin")
            return jnp.sum(out.logits * w), out.source.owner

        loss_and_owner = _compile(forward, tree)
        grad = _compile(jax.grad(lambda t: forward(t)[0]), tree)(tree)
        analytic = float(_tree_vdot(grad, d))
        _, owner0 = loss_and_owner(tree)
        plus, owner_p = loss_and_owner(_axpy(EPS, d, tree))
        minus, owner_m = loss_and_owner(_axpy(-EPS, d, tree))
        # No tie is crossed: the matching is the same at p - eps d, p and p + eps d.
        np.testing.assert_array_equal(owner_p, owner0)
        np.testing.assert_array_equal(owner_m, owner0)
        numeric = float((plus - minus) / (2 * EPS))
    assert np.isfinite(analytic) and abs(analytic) > 1e-3
    assert _rel_err(analytic, numeric) < FD_RTOL, (analytic, numeric)


@F64_ORIGIN_CAST
def test_finite_difference_vid_tldr_float64_saliency_held(monkeypatch):
    r = (8, 6)
    with jax.enable_x64(True):
        cfg, tree, video, w, d = _f64_problem()

        def loss(t):
            return jnp.sum(tldr_jax.apply(tldr_jax.Params(t, cfg), video, r, method="vid_tldr").logits * w)

        grad = _compile(jax.grad(loss), tree)(tree)
        analytic = float(_tree_vdot(grad, d))
        ref = tldr_jax.apply(tldr_jax.Params(tree, cfg), video, r, return_saliency=True, source="origin")
        assert ref.saliency is not None and len(ref.saliency) == 2

        specs = tuple(MergeSpec(n, "vid_tldr", cfg.protected, True) for n in r)
        real_saliency = merge.saliency_from_sharpness

        def held_saliency_forward(t, saliencies):
            """The same forward with each merging layer's saliency replaced by a recorded value."""
            recorded = iter(saliencies)
            monkeypatch.setattr(merge, "saliency_from_sharpness", lambda _sharp: next(recorded))
            try:
                out, _ = build(tldr_jax.Params(t, cfg))(video, specs, source="origin")
            finally:
                monkeypatch.setattr(merge, "saliency_from_sharpness", real_saliency)
            return jnp.sum(out["logits"] * w), out["source"].owner

        held = _compile(held_saliency_forward, tree, ref.saliency)
        base, owner0 = held(tree, ref.saliency)
        np.testing.assert_allclose(float(base), float(jnp.sum(ref.logits * w)), rtol=1e-12)
        np.testing.assert_array_equal(owner0, ref.source.owner)
        plus, owner_p = held(_axpy(EPS, d, tree), ref.saliency)
        minus, owner_m = held(_axpy(-EPS, d, tree), ref.saliency)
        np.testing.assert_array_equal(owner_p, owner0)
        np.testing.assert_array_equal(owner_m, owner0)
        numeric = float((plus - minus) / (2 * EPS))
    assert np.isfinite(analytic) and abs(analytic) > 1e-3
    assert _rel_err(analytic, numeric) < FD_RTOL, (analytic, numeric)


def _grads(params, video, r, method, remat):
    def loss(tree):
        out = tldr_jax.apply(tldr_jax.Params(tree, params.config), video, r, method=method, remat=remat)
        feat = out.logits if out.logits is not None else out.pooled
        return jnp.sum(jnp.sin(feat))

    return _compile(jax.grad(loss), params.tree)(params.tree)


@pytest.mark.parametrize(
    "arch, extra, method, r",
    [
        ("videomae_s", dict(num_classes=3), "vid_tldr", 0.25),  # fraction of the current tokens
        ("vivit_b", dict(num_classes=3), "tome", 8),  # int; CLS token protected, learned pos_embed
    ],
    ids=["videomae-vid_tldr-fraction", "vivit-tome-int"],
)
def test_grad_with_merging_equal_with_and_without_remat(arch, extra, method, r):
    params = tldr_jax.init(0, arch, **{**TINY, **extra})
    video = jax.random.normal(jax.random.key(2), (2, params.config.num_frames, 32, 32, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tldr_jax.ScheduleCapWarning)
        sched = tldr_jax.schedule(params, r)
        plain = _grads(params, video, r, method, remat=False)
        remat = _grads(params, video, r, method, remat=True)
    assert sched.last_merge >= 0, sched
    flat_plain = jax.tree_util.tree_leaves_with_path(plain)
    flat_remat = jax.tree_util.tree_leaves(remat)
    for (path, a), b in zip(flat_plain, flat_remat):
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    # Every block (merging or not) receives a gradient.
    for i in range(params.config.depth):
        block = plain[f"blocks_{i}"]
        total = sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree_util.tree_leaves(block))
        assert total > 0, f"blocks_{i} got no gradient"

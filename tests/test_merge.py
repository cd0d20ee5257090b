"""Merge ops: parity with the official vid-TLDR step, invariants, errors, tracing."""

from __future__ import annotations

import warnings

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import golden
from hypothesis import given, settings

import tldr_jax
from tldr_jax import merge as M
from tldr_jax.saliency import ordered_sum

CASES = ("0", "1")


def _case(data, k):
    return (
        jnp.asarray(data[f"{k}/x"]),
        jnp.asarray(data[f"{k}/attn"]),
        jnp.asarray(data[f"{k}/size_in"]),
        int(data[f"{k}/r"]),
    )


@pytest.mark.parametrize("k", CASES)
@pytest.mark.parametrize("jit", [False, True])
def test_golden_merge_step(k, jit):
    data = golden("golden_merge.npz")
    x, attn, size, r = _case(data, k)
    src = M.identity_source(x.shape[0], x.shape[1])

    def step(x, attn, size, src):
        return M.merge_tokens(x, r, attn=attn, size=size, source=src)

    fn = jax.jit(step) if jit else step
    x_out, size_out, src_out = fn(x, attn, size, src)
    np.testing.assert_allclose(x_out, data[f"{k}/x_out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(size_out, data[f"{k}/size_out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(src_out, data[f"{k}/source_out"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", CASES)
def test_golden_origin_map_equals_dense(k):
    data = golden("golden_merge.npz")
    x, attn, size, r = _case(data, k)
    origin = M.identity_origin(x.shape[0], x.shape[1])
    _, _, origin = M.merge_tokens(x, r, attn=attn, size=size, source=origin)
    dense = M.origin_to_dense(origin, x.shape[1] - r)
    np.testing.assert_allclose(dense, data[f"{k}/source_out"], atol=1e-5, rtol=0)


def _rand(seed, b, n, c, h=2):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (b, n, c))
    attn = jax.nn.softmax(jax.random.normal(k2, (b, h, n, n)) * 3, axis=-1)
    return x, attn


shapes = st.tuples(st.integers(1, 3), st.integers(2, 40), st.integers(1, 12), st.integers(0, 10**6))


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_r_zero_is_identity(shape):
    b, n, c, seed = shape
    x, attn = _rand(seed, b, n, c)
    out, size, src = M.merge_tokens(x, 0, attn=attn)
    assert out is x and src is None
    np.testing.assert_array_equal(size, np.ones((b, n, 1)))


@settings(max_examples=25, deadline=None)
@given(shapes, st.data())
def test_tome_conserves_size_and_averages_groups(shape, data):
    b, n, c, seed = shape
    r = data.draw(st.integers(0, n // 2))
    x, _ = _rand(seed, b, n, c)
    size = jax.random.uniform(jax.random.key(seed + 1), (b, n, 1), minval=1.0, maxval=4.0)
    origin = M.identity_origin(b, n)
    out, new_size, origin = M.merge_tokens(x, r, size=size, source=origin)
    assert out.shape == (b, n - r, c)
    np.testing.assert_allclose(new_size.sum(1), size.sum(1), rtol=1e-5)
    # every output token is the size-weighted mean of the input tokens it holds
    onehot = np.asarray(M.origin_to_dense(origin, n - r))  # (B, N', N)
    w = onehot * np.asarray(size)[:, None, :, 0]
    expect = np.einsum("bon,bnc->boc", w, np.asarray(x)) / w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, expect, atol=1e-5, rtol=1e-5)
    # source rows account for every input token exactly once
    np.testing.assert_array_equal(onehot.sum(1), np.ones((b, n)))


@settings(max_examples=25, deadline=None)
@given(shapes, st.data())
def test_vid_tldr_background_sources_add_nothing(shape, data):
    b, n, c, seed = shape
    n = max(n, 4)
    r = data.draw(st.integers(1, n // 2))
    x, attn = _rand(seed, b, n, c)
    sal = tldr_jax.saliency(attn)
    plan = M.bipartite_plan(x, r, saliency=sal)
    out, size = M.merge_wavg(plan, x)
    # mass: each destination gains exactly the saliency of the sources merged into it
    dense = np.asarray(M.origin_to_dense(M.update_origin(plan, M.identity_origin(b, n)), n - r))
    np.testing.assert_allclose(size[..., 0], dense.sum(-1), atol=1e-5)
    # zeroing the features of background merged sources changes nothing
    w = np.asarray(plan.src_weight)
    src_tokens = np.asarray(plan.src_idx) * 2  # source set A = even indices
    x_np = np.asarray(x).copy()
    for bi in range(b):
        for j, tok in enumerate(src_tokens[bi]):
            if w[bi, j] == 0:
                x_np[bi, tok] = 1e3
    out2, _ = M.merge_wavg(plan, jnp.asarray(x_np))
    np.testing.assert_allclose(out2, out, atol=1e-4)
    assert float(size.min()) >= 1.0 - 1e-6


@settings(max_examples=20, deadline=None)
@given(shapes, st.integers(1, 3), st.data())
def test_protected_tokens_stay_first_and_untouched(shape, p, data):
    b, n, c, seed = shape
    n = max(n, p + 2)
    r = data.draw(st.integers(0, (n - p) // 2))
    x, attn = _rand(seed, b, n, c)
    origin = M.identity_origin(b, n)
    out, size, origin = M.merge_tokens(x, r, attn=attn, protected=p, source=origin)
    np.testing.assert_array_equal(out[:, :p], x[:, :p])
    np.testing.assert_array_equal(size[:, :p], np.ones((b, p, 1)))
    np.testing.assert_array_equal(origin.owner[:, :p], np.broadcast_to(np.arange(p), (b, p)))
    # nothing else ends up in a protected token
    assert not np.isin(np.asarray(origin.owner[:, p:]), np.arange(p)).any()


def test_unmerged_sources_keep_order_and_output_layout():
    x, attn = _rand(0, 2, 20, 8)
    plan = M.bipartite_plan(x, 4)
    assert np.all(np.diff(np.asarray(plan.unm_idx), axis=-1) > 0)
    out = M.apply_plan(plan, x)
    np.testing.assert_array_equal(out[:, :6], jnp.take_along_axis(x[:, 0::2], plan.unm_idx[..., None], 1))
    assert out.shape == (2, 16, 8)


def test_merge_is_float32_for_bf16_input():
    x, attn = _rand(1, 2, 16, 8)
    out32, size32, _ = M.merge_tokens(x, 5, attn=attn)
    out16, size16, _ = M.merge_tokens(x.astype(jnp.bfloat16), 5, attn=attn, metric=x)
    assert out16.dtype == jnp.bfloat16 and size16.dtype == jnp.float32
    np.testing.assert_allclose(size16, size32, atol=1e-6)
    np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=3e-2)


def test_vmap_over_batch_matches_batched():
    x, attn = _rand(2, 3, 18, 6)
    batched = M.merge_tokens(x, 5, attn=attn)[0]
    mapped = jax.vmap(lambda xi, ai: M.merge_tokens(xi[None], 5, attn=ai[None])[0][0])(x, attn)
    np.testing.assert_allclose(mapped, batched, atol=1e-6)


def test_one_trace_per_r():
    @jax.jit
    @chex.assert_max_traces(n=2)
    def step(x, attn):
        return M.merge_tokens(x, 4, attn=attn)[0]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step_other(x, attn):
        return M.merge_tokens(x, 6, attn=attn)[0]

    for seed in range(3):
        x, attn = _rand(seed, 2, 16, 8)
        step(x, attn)
        step_other(x, attn)
    chex.clear_trace_counter()


def test_no_unrolled_scatter_in_graph():
    x, attn = _rand(0, 2, 64, 8)

    def count(r):
        hlo = jax.jit(lambda x, a: M.merge_tokens(x, r, attn=a)[0]).lower(x, attn).as_text()
        return hlo.count("stablehlo.scatter")

    assert count(2) == count(30) <= 4, "the merge should use a few batched scatters, not one per token"


def test_zero_attention_entries_do_not_give_nan():
    x, attn = _rand(3, 2, 12, 4)
    attn = attn.at[:, :, :, 0].set(0.0)
    attn = attn / attn.sum(-1, keepdims=True)
    out, size, _ = M.merge_tokens(x, 5, attn=attn)
    assert np.isfinite(out).all() and np.isfinite(size).all()


def test_constant_saliency_falls_back_to_tome():
    x, _ = _rand(4, 2, 12, 4)
    uniform = jnp.full((2, 2, 12, 12), 1 / 12)
    sal = tldr_jax.saliency(uniform)
    np.testing.assert_array_equal(sal, np.ones((2, 12)))
    out_v, size_v, _ = M.merge_tokens(x, 5, attn=uniform)
    out_t, size_t, _ = M.merge_tokens(x, 5)
    np.testing.assert_allclose(out_v, out_t, atol=1e-6)
    np.testing.assert_allclose(size_v, size_t, atol=1e-6)


def test_saliency_range_and_background():
    _, attn = _rand(5, 2, 30, 4)
    sal = np.asarray(tldr_jax.saliency(attn))
    assert sal.min() == 0.0 and np.allclose(sal.max(-1), 1.0)
    s = np.asarray(tldr_jax.sharpness(attn))
    s = (s - s.min(-1, keepdims=True)) / np.ptp(s, -1, keepdims=True)
    assert np.all(sal[s < s.mean(-1, keepdims=True)] == 0)


def _sum_in_official_order(x: np.ndarray, lanes: int = 8, accumulators: int = 4) -> np.ndarray:
    """NumPy statement of the order ``ordered_sum`` promises: float32 adds, one vector at a time."""
    x = np.asarray(x, np.float32)
    n = x.shape[-1]
    vecs = [x[..., i * lanes : (i + 1) * lanes] for i in range(n // lanes)]
    parts: list = [None] * accumulators
    full = len(vecs) // accumulators * accumulators
    for i, v in enumerate(vecs[:full]):
        k = i % accumulators
        parts[k] = v.copy() if parts[k] is None else parts[k] + v
    for v in vecs[full:]:
        parts[0] = v.copy() if parts[0] is None else parts[0] + v
    for p in parts[1:]:
        if p is not None:
            parts[0] = parts[0] + p
    total = np.zeros(x.shape[:-1], np.float32)
    for k in range(len(vecs) * lanes, n):
        total = total + x[..., k]
    for lane in range(lanes if parts[0] is not None else 0):
        total = total + parts[0][..., lane]
    return total


@pytest.mark.parametrize("n", [*range(1, 70), 127, 129, 942, 1452, 2352])
def test_ordered_sum_adds_in_the_official_order(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal((2, 3, n)) * np.exp(3 * rng.standard_normal((2, 3, n)))).astype(np.float32)
    want = _sum_in_official_order(x)
    np.testing.assert_array_equal(jax.jit(ordered_sum)(x), want)
    assert n < 40 or not np.array_equal(want, x.sum(-1, dtype=np.float32))  # the order matters here


def test_ordered_sum_stays_small_for_the_compiler():
    # One slice per 32 tokens (plus a fixed tail), not one per 8: the program of a 12-layer merging
    # schedule compiles faster with it. 2352 tokens: 73 row slices + at most 2 + 3 + 7 + 8 others.
    jaxpr = jax.make_jaxpr(ordered_sum)(jnp.zeros((1, 4, 2352)))
    slices = sum(e.primitive.name == "slice" for e in jaxpr.eqns)
    assert 2352 // 32 <= slices <= 2352 // 32 + 25, slices


def test_cap_warns_and_matches_official_rule():
    x, _ = _rand(6, 1, 11, 4)
    with pytest.warns(M.ScheduleCapWarning, match="capped at 5"):
        out, _, _ = M.merge_tokens(x, 9)
    assert out.shape[1] == 6
    assert M.resolve_r(0.5, 11) == 5 and M.resolve_r(0.3, 10) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert M.resolve_r(3, 11) == 3


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda x, a: M.merge_tokens(x[0], 2), ValueError, "rank 3"),
        (lambda x, a: M.merge_tokens(x, -1), ValueError, ">= 0"),
        (lambda x, a: M.merge_tokens(x, 1.5), ValueError, "neither a whole count nor a fraction"),
        (lambda x, a: M.merge_tokens(x, 2, attn=a[:1]), ValueError, r"attn must have shape \(B, H, N, N\)"),
        (lambda x, a: M.merge_tokens(x, 2, attn=a[..., :5, :5]), ValueError, "N = 10"),
        (lambda x, a: M.merge_tokens(x.astype(jnp.int32), 2), TypeError, "floating-point"),
        (lambda x, a: M.merge_tokens(x, 2, size=jnp.ones((2, 10))), ValueError, r"size must have shape"),
        (lambda x, a: M.bipartite_plan(x, 6), ValueError, "at most 5"),
        (lambda x, a: M.merge_tokens(x, 2, protected=11), ValueError, "protected = 11"),
    ],
)
def test_errors_name_the_value_and_fix(call, exc, pattern):
    x, attn = _rand(7, 2, 10, 4)
    with pytest.raises(exc, match=pattern):
        call(x, attn)

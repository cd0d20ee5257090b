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
from tldr_jax.api import build
from tldr_jax.models import MergeSpec
from tldr_jax.schedule import ScheduleCapWarning, resolve_r

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


def _rand_np(seed, b, n, c, h=2):
    """``_rand``'s distributions drawn with NumPy: the property tests below compile nothing to make data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, n, c)).astype(np.float32)
    logits = 3 * rng.standard_normal((b, h, n, n))
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    return jnp.asarray(x), jnp.asarray((attn / attn.sum(-1, keepdims=True)).astype(np.float32))


# The property tests draw a new shape per example; each runs the merge as one jitted program (one compile
# per shape; eager dispatch would compile every primitive separately). Eager and jit agree
# (test_golden_merge_step).
shapes = st.tuples(st.integers(1, 3), st.integers(2, 40), st.integers(1, 12), st.integers(0, 10**6))


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_r_zero_is_identity(shape):
    b, n, c, seed = shape
    x, attn = _rand_np(seed, b, n, c)
    out, size, src = M.merge_tokens(x, 0, attn=attn)
    assert out is x and src is None
    np.testing.assert_array_equal(size, np.ones((b, n, 1)))


@settings(max_examples=10, deadline=None)  # ToMe exactly: test_tome_three_step_chain_is_tome_exactly
@given(shapes, st.data())
def test_tome_conserves_size_and_averages_groups(shape, data):
    b, n, c, seed = shape
    r = data.draw(st.integers(0, n // 2))
    x, _ = _rand_np(seed, b, n, c)
    size = jnp.asarray(np.random.default_rng(seed + 1).uniform(1.0, 4.0, (b, n, 1)).astype(np.float32))
    origin = M.identity_origin(b, n)

    @jax.jit
    def step(x, size, origin):
        out, new_size, origin = M.merge_tokens(x, r, size=size, source=origin)
        return out, new_size, M.origin_to_dense(origin, n - r)

    out, new_size, onehot = step(x, size, origin)
    assert out.shape == (b, n - r, c)
    np.testing.assert_allclose(new_size.sum(1), size.sum(1), rtol=1e-5)
    # every output token is the size-weighted mean of the input tokens it holds
    onehot = np.asarray(onehot)  # (B, N', N)
    w = onehot * np.asarray(size)[:, None, :, 0]
    expect = np.einsum("bon,bnc->boc", w, np.asarray(x)) / w.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, expect, atol=1e-5, rtol=1e-5)
    # source rows account for every input token exactly once
    np.testing.assert_array_equal(onehot.sum(1), np.ones((b, n)))


@settings(max_examples=12, deadline=None)  # the official step: test_golden_merge_step
@given(shapes, st.data())
def test_vid_tldr_background_sources_add_nothing(shape, data):
    b, n, c, seed = shape
    n = max(n, 4)
    r = data.draw(st.integers(1, n // 2))
    x, attn = _rand_np(seed, b, n, c)

    @jax.jit
    def merge(x, attn):
        plan = M.bipartite_plan(x, r, saliency=tldr_jax.saliency(attn))
        dense = M.origin_to_dense(M.update_origin(plan, M.identity_origin(b, n)), n - r)
        # the same plan on tokens whose background merged sources (weight 0; source set = even
        # indices) are replaced by 1e3
        background = jnp.zeros((b, n), bool).at[jnp.arange(b)[:, None], 2 * plan.src_idx].set(
            plan.src_weight == 0
        )
        moved = jnp.where(background[..., None], 1e3, x)
        return plan, *M.merge_wavg(plan, x), dense, M.merge_wavg(plan, moved)[0]

    plan, out, size, dense, out2 = merge(x, attn)
    # mass: each destination gains exactly the saliency of the sources merged into it
    np.testing.assert_allclose(size[..., 0], dense.sum(-1), atol=1e-5)
    # changing the features of background merged sources (saliency 0) changes nothing
    assert np.asarray(plan.src_weight).min() >= 0
    np.testing.assert_allclose(out2, out, atol=1e-4)
    assert float(size.min()) >= 1.0 - 1e-6


@settings(max_examples=10, deadline=None)  # also test_unmerge_gives_every_position_*
@given(shapes, st.integers(1, 3), st.data())
def test_protected_tokens_stay_first_and_untouched(shape, p, data):
    b, n, c, seed = shape
    n = max(n, p + 2)
    r = data.draw(st.integers(0, (n - p) // 2))
    x, attn = _rand_np(seed, b, n, c)
    origin = M.identity_origin(b, n)
    step = jax.jit(lambda x, attn, origin: M.merge_tokens(x, r, attn=attn, protected=p, source=origin))
    out, size, origin = step(x, attn, origin)
    np.testing.assert_array_equal(out[:, :p], x[:, :p])
    np.testing.assert_array_equal(size[:, :p], np.ones((b, p, 1)))
    np.testing.assert_array_equal(origin.owner[:, :p], np.broadcast_to(np.arange(p), (b, p)))
    # nothing else ends up in a protected token
    assert not np.isin(np.asarray(origin.owner[:, p:]), np.arange(p)).any()


def test_unmerged_sources_keep_order_and_output_layout():
    # vid-TLDR (a saliency given): unmerged sources in their original order, then the destinations.
    x, attn = _rand(0, 2, 20, 8)
    plan = M.bipartite_plan(x, 4, saliency=tldr_jax.saliency(attn))
    assert plan.method == "vid_tldr"
    assert np.all(np.diff(np.asarray(plan.unm_idx), axis=-1) > 0)
    out = M.apply_plan(plan, x)
    np.testing.assert_array_equal(out[:, :6], jnp.take_along_axis(x[:, 0::2], plan.unm_idx[..., None], 1))
    assert out.shape == (2, 16, 8)
    # ToMe (no saliency, nothing protected): unmerged sources stay in descending match-score order.
    tome = M.bipartite_plan(x, 4)
    assert tome.method == "tome"
    assert not np.all(np.diff(np.asarray(tome.unm_idx), axis=-1) > 0)
    np.testing.assert_array_equal(np.sort(tome.unm_idx, -1), plan.unm_idx)


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
    out_v, size_v, _ = M.merge_tokens(x, 3, attn=uniform)
    # the unweighted merge in vid-TLDR's order ...
    plain = M.bipartite_plan(x, 3, method="vid_tldr")
    out_p, size_p = M.merge_wavg(plain, x)
    np.testing.assert_allclose(out_v, out_p, atol=1e-6)
    np.testing.assert_allclose(size_v, size_p, atol=1e-6)
    # ... which is ToMe's merge up to the order of the unmerged tokens
    tome = M.bipartite_plan(x, 3)
    out_t, size_t = M.merge_wavg(tome, x)
    np.testing.assert_array_equal(tome.src_idx, plain.src_idx)
    np.testing.assert_array_equal(tome.dst_idx, plain.dst_idx)
    n_unm = tome.unm_idx.shape[1]
    back = np.argsort(np.asarray(tome.unm_idx), -1)[..., None]  # ToMe's unmerged tokens in index order
    np.testing.assert_allclose(np.take_along_axis(np.asarray(out_t[:, :n_unm]), back, 1), out_p[:, :n_unm],
                               atol=1e-6)
    np.testing.assert_allclose(out_t[:, n_unm:], out_p[:, n_unm:], atol=1e-6)
    np.testing.assert_allclose(size_t[:, n_unm:], size_p[:, n_unm:], atol=1e-6)


def test_cap_warns_and_matches_official_rule():
    x, _ = _rand(6, 1, 11, 4)
    with pytest.warns(ScheduleCapWarning, match="capped at 5"):
        out, _, _ = M.merge_tokens(x, 9)
    assert out.shape[1] == 6
    assert resolve_r(0.5, 11) == 5 and resolve_r(0.3, 10) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_r(3, 11) == 3


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


# --------------------------------------------------------------------------------------------------
# ToMe, exactly: a NumPy statement of ToMe's bipartite soft matching, merge_wavg, merge_source and
# unmerge (facebookresearch/ToMe, tome/merge.py), written from its description, in float64.
# --------------------------------------------------------------------------------------------------


def _tome_reference_plan(metric: np.ndarray, r: int, protected: int):
    """ToMe's matching: cosine scores A x B, protected rows/columns at -inf, edges by descending
    score, the first r merge; unmerged sources stay in score order unless a token is protected."""
    m = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    scores = m[:, 0::2] @ np.swapaxes(m[:, 1::2], 1, 2)
    if protected >= 1:
        scores[:, 0, :] = -np.inf  # the class token never leaves
    if protected >= 2:
        scores[:, :, 0] = -np.inf  # the distillation token never receives
    node_max, node_idx = scores.max(-1), scores.argmax(-1)
    edges = np.argsort(-node_max, axis=-1, kind="stable")
    src, unm = edges[:, :r], edges[:, r:]
    if protected:
        unm = np.sort(unm, axis=-1)
    return unm, src, np.take_along_axis(node_idx, src, -1)


def _tome_reference_merge(plan, v: np.ndarray, reduce) -> np.ndarray:
    unm, src, dst = plan
    a, b = v[:, 0::2], v[:, 1::2].copy()
    for i in range(v.shape[0]):
        reduce.at(b[i], dst[i], a[i, src[i]])
    kept = np.take_along_axis(a, unm.reshape(unm.shape + (1,) * (v.ndim - 2)), 1)
    return np.concatenate([kept, b], axis=1)


def _tome_reference_chain(x, rs, protected):
    """Three ToMe steps on (B, N, C): tokens (metric = tokens), sizes and the dense source map."""
    size = np.ones(x.shape[:2] + (1,))
    source = np.broadcast_to(np.eye(x.shape[1]), (x.shape[0],) + (x.shape[1],) * 2).copy()
    for r in rs:
        plan = _tome_reference_plan(x, r, protected)
        source = _tome_reference_merge(plan, source, np.maximum)
        x = _tome_reference_merge(plan, x * size, np.add)
        size = _tome_reference_merge(plan, size, np.add)
        x = x / size
        if protected == 2:  # ToMe's layout with a distillation token: [cls, dist, rest..., dests...]
            n_unm = plan[0].shape[1]
            order = [0, n_unm] + list(range(1, n_unm)) + list(range(n_unm + 1, x.shape[1]))
            x, size, source = x[:, order], size[:, order], source[:, order]
    return x, size, source


@pytest.mark.parametrize("protected", [0, 1, 2])
@pytest.mark.parametrize("seed", range(10))
def test_tome_three_step_chain_is_tome_exactly(seed, protected):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 37, 6))
    rs = (9, 7, 5)
    want_x, want_size, want_src = _tome_reference_chain(x, rs, protected)
    with jax.enable_x64(True):
        got, size, src = jnp.asarray(x), None, M.identity_source(2, 37, jnp.float64)
        for r in rs:
            got, size, src = M.merge_tokens(got, r, size=size, source=src, protected=protected)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want_x, atol=1e-12, rtol=0)  # same tokens, same order
        np.testing.assert_allclose(size, want_size, atol=1e-12, rtol=0)
        np.testing.assert_array_equal(src, want_src)
    # float32 makes the same decisions on these inputs (score gaps >> float32 rounding)
    got32 = jnp.asarray(x, jnp.float32)
    size32 = None
    for r in rs:
        got32, size32, _ = M.merge_tokens(got32, r, size=size32, protected=protected)
    np.testing.assert_allclose(got32, want_x, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(size32, want_size)


def test_model_tome_method_keeps_tomes_order():
    # In the encoder, method="tome" merges on the head-mean keys with ToMe's plan: the unmerged
    # sources come out in ToMe's (score) order.
    params = tldr_jax.init(0, "umt_b16", depth=1, embed_dim=32, num_heads=2, mlp_dim=64, num_frames=4,
                           img_size=32, tubelet_size=1)
    video = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
    out = tldr_jax.apply(params, video, r=(4,), method="tome", source="origin")
    # The keys the block matched on, read from the encoder's intermediates (jitted: XLA keeps only
    # what the keys need).
    keys = jax.jit(lambda v: build(params)(v, (MergeSpec(4, "tome"),))[1]["blocks_0"]["keys"])(video)
    unm, _, _ = _tome_reference_plan(np.asarray(keys, np.float64), 4, 0)
    assert not np.all(np.diff(unm, axis=-1) > 0)  # score order differs from index order here
    owner = np.asarray(out.source.owner)
    first_four = np.broadcast_to(np.arange(4), (2, 4))  # ToMe's unmerged sources lead, in score order
    np.testing.assert_array_equal(np.take_along_axis(owner, 2 * unm, 1), first_four)


def _tome_reference_unmerge(plan, merged: np.ndarray, n: int) -> np.ndarray:
    """ToMe's unmerge for nothing or one protected token: odd slots from the destinations, unmerged
    sources back to their slots, merged sources get their destination's value."""
    unm, src, dst = plan
    n_unm = unm.shape[1]
    kept, dests = merged[:, :n_unm], merged[:, n_unm:]
    out = np.zeros((merged.shape[0], n) + merged.shape[2:])
    out[:, 1::2] = dests
    for i in range(merged.shape[0]):
        out[i, 2 * unm[i]] = kept[i]
        out[i, 2 * src[i]] = dests[i, dst[i]]
    return out


@pytest.mark.parametrize("protected", [0, 1])
@pytest.mark.parametrize("n", [9, 16])
def test_unmerge_equals_tomes_unmerge(n, protected):
    rng = np.random.default_rng(n + protected)
    x = rng.standard_normal((3, n, 5)).astype(np.float32)
    r = (n - protected) // 2 - 1
    plan = M.bipartite_plan(jnp.asarray(x), r, protected=protected)
    merged = M.apply_plan(plan, jnp.asarray(x), "mean")
    ref = _tome_reference_plan(x.astype(np.float64), r, protected)
    np.testing.assert_array_equal(plan.unm_idx, ref[0])
    want = _tome_reference_unmerge(ref, np.asarray(merged), n)
    np.testing.assert_array_equal(M.unmerge(plan, merged), want)


@pytest.mark.parametrize("method", ["tome", "vid_tldr"])
@pytest.mark.parametrize("protected", [0, 1, 2, 3])
def test_unmerge_gives_every_position_its_tokens_value(method, protected):
    # ToMe's unmerge puts its protected tokens in the wrong slots when two are protected; this one
    # must not: an unmerged token (protected ones included) gets back exactly its own value.
    x, attn = _rand(protected, 2, 21, 4)
    sal = tldr_jax.saliency(attn) if method == "vid_tldr" else None
    plan = M.bipartite_plan(x, 6, protected=protected, saliency=sal)
    merged = M.apply_plan(plan, x)
    back = np.asarray(M.unmerge(plan, merged))
    assert back.shape == x.shape
    np.testing.assert_array_equal(back[:, :protected], x[:, :protected])
    dest, _ = M.destination_index(plan)
    want = np.take_along_axis(np.asarray(merged), np.asarray(dest)[..., None], 1)
    np.testing.assert_array_equal(back, want)
    merged_src = 2 * np.asarray(plan.src_idx)  # token positions of the merged sources
    for b in range(2):
        untouched = np.setdiff1d(np.arange(0, 21, 2), merged_src[b])
        np.testing.assert_array_equal(back[b, untouched], np.asarray(x)[b, untouched])


def test_unmerge_whole_schedule_through_the_origin_map():
    x, attn = _rand(11, 2, 30, 4)

    @jax.jit
    def schedule(x):
        origin = M.identity_origin(2, 30)
        y, size = x, None
        plans = []
        for r in (8, 5, 3):
            plan = M.bipartite_plan(y, r)
            plans.append(plan)
            y, size = M.merge_wavg(plan, y, size)
            origin = M.update_origin(plan, origin)
        # undo the steps one by one
        step_by_step = y
        for plan in reversed(plans):
            step_by_step = M.unmerge(plan, step_by_step)
        return y, origin, step_by_step

    y, origin, step_by_step = schedule(x)
    # one gather through the O(N) map equals undoing the steps one by one
    np.testing.assert_array_equal(M.unmerge(origin, y), step_by_step)
    assert M.unmerge(origin, y).shape == (2, 30, 4)
    # and it works on any trailing shape, e.g. per-token class maps (B, N', K, 2)
    extra = jnp.arange(2 * 14 * 6, dtype=jnp.float32).reshape(2, 14, 3, 2)
    assert M.unmerge(origin, extra).shape == (2, 30, 3, 2)


def test_r_zero_is_a_no_op_everywhere():
    x, attn = _rand(12, 2, 11, 4)
    for sal in (None, tldr_jax.saliency(attn)):
        plan = M.bipartite_plan(x, 0, saliency=sal)
        assert plan.r == 0 and plan.num_out == 11
        assert M.apply_plan(plan, x) is x
        out, size = M.merge_wavg(plan, x)
        assert out is x
        np.testing.assert_array_equal(size, np.ones((2, 11, 1)))
        dest, factor = M.destination_index(plan)
        np.testing.assert_array_equal(dest, np.broadcast_to(np.arange(11), (2, 11)))
        np.testing.assert_array_equal(factor, np.ones((2, 11)))
        assert M.unmerge(plan, x) is x
        origin = M.update_origin(plan, M.identity_origin(2, 11))
        np.testing.assert_array_equal(origin.owner, np.broadcast_to(np.arange(11), (2, 11)))
        np.testing.assert_array_equal(M.merge_source(plan, None), M.identity_source(2, 11))


def test_merge_source_none_starts_from_the_identity():
    x, _ = _rand(13, 2, 10, 4)
    plan = M.bipartite_plan(x, 3)
    np.testing.assert_array_equal(M.merge_source(plan, None), M.merge_source(plan, M.identity_source(2, 10)))


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda x, p: M.merge_source(p, jnp.ones((2, 10))), TypeError, r"dense \(B, N, N0\) map"),
        (lambda x, p: M.merge_source(None, None), TypeError, "MergePlan"),
        (lambda x, p: M.merge_wavg(p, x, jnp.ones((2, 10))), ValueError, r"size\[\.\.\., None\]"),
        (lambda x, p: M.merge_wavg(p, x[:, :8]), ValueError, "made for 10 tokens"),
        (lambda x, p: M.merge_wavg(p, x[:1]), ValueError, "batch of 2"),
        (lambda x, p: M.apply_plan(p, x, "median"), ValueError, "'sum', 'mean' or 'amax'"),
        (lambda x, p: M.unmerge(p, x), ValueError, r"expected \(B, 7, \.\.\.\)"),
        (lambda x, p: M.unmerge(x, x), TypeError, "MergePlan or a TokenOrigin"),
        (lambda x, p: M.update_origin(p, x), TypeError, "TokenOrigin"),
        (lambda x, p: M.bipartite_plan(x, 2, method="bipartite"), ValueError, "'vid_tldr' or 'tome'"),
        (lambda x, p: M.bipartite_plan(x, 2, method="tome", saliency=x[..., 0]), ValueError, "no saliency"),
        (lambda x, p: M.bipartite_plan(x, 2, protected=11), ValueError, "protected = 11"),
    ],
)
def test_low_level_errors_name_the_value_and_fix(call, exc, pattern):
    x, _ = _rand(14, 2, 10, 4)
    plan = M.bipartite_plan(x, 3)
    with pytest.raises(exc, match=pattern):
        call(x, plan)


def test_merge_tokens_is_merge_step_with_the_attention_sharpness():
    """merge_tokens checks and resolves, then runs the one merge step the encoder blocks run."""
    x, attn = _rand(11, 2, 12, 4)
    size = 1.0 + jax.random.uniform(jax.random.key(12), (2, 12, 1))
    got = M.merge_tokens(x, 3, attn=attn, size=size, source=M.identity_origin(2, 12))
    sharp = tldr_jax.sharpness(attn)
    want = M.merge_step(x, 3, sharpness=sharp, size=size, source=M.identity_origin(2, 12))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want[:3])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(want[3]["saliency"], tldr_jax.saliency(attn))
    assert want[3]["plan"].method == "vid_tldr" and M.merge_step(x, 3)[3]["plan"].method == "tome"


@pytest.mark.parametrize("method", ["vid_tldr", "tome"])
def test_merge_wavg_in_one_pass_equals_tokens_and_sizes_merged_apart(method):
    """merge_wavg sends tokens and sizes through one apply_plan; the bits equal two separate calls."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 31, 8)), jnp.float32)
    size = jnp.asarray(rng.integers(1, 5, size=(2, 31, 1)), jnp.float32)
    sal = jnp.asarray(rng.uniform(size=(2, 31)), jnp.float32) if method == "vid_tldr" else None
    plan = tldr_jax.bipartite_plan(x, 9, saliency=sal, method=method)
    got_x, got_size = jax.jit(tldr_jax.merge_wavg)(plan, x, size)

    def apart(plan, x, size):
        scale = size if method == "tome" else size / jnp.max(size, axis=1, keepdims=True)
        merged_x = tldr_jax.apply_plan(plan, x * scale, "sum")
        merged_size = tldr_jax.apply_plan(plan, size, "sum")
        merged_scale = merged_size if method == "tome" else merged_size / jnp.max(size, axis=1, keepdims=True)
        return merged_x / merged_scale, merged_size

    want_x, want_size = jax.jit(apart)(plan, x, size)
    np.testing.assert_array_equal(np.asarray(got_size), np.asarray(want_size))
    np.testing.assert_array_equal(np.asarray(got_x), np.asarray(want_x))

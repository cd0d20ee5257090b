"""Mixed precision: ``tldr_jax.apply(..., dtype=bfloat16 / float16)`` against the float64 truth.

The reference is the official vid-TLDR code run in float64 (``shared/golden/golden_model_f64.npz``, see
conftest), so the errors below are those of the low precision alone, on any CPU. Every matrix product
(patch embedding, qkv, ``QK^T``, ``PV``, proj, MLP) takes low-precision operands and accumulates in
float32; the residual stream, LayerNorms, softmax, saliency, merge arithmetic and token sizes stay in
float32, and the outputs are rounded to the low precision at the end. Measured on the tiny golden UMT
(outputs of magnitude <= 3.7), all five schedules (worst case), AMD EPYC (Zen 5):

======== ============== ================ ============== ================ ============
dtype    tokens max abs tokens rel (L2)  pooled max abs pooled rel (L2)  size max abs
======== ============== ================ ============== ================ ============
bfloat16 1.7e-2         3.9e-3           1.0e-2         3.2e-3           2.0e-2
float16  2.2e-3         5.0e-4           1.3e-3         4.0e-4           6.1e-3
======== ============== ================ ============== ================ ============

("rel (L2)" is ``|ours - ref| / |ref|`` over the whole array: about one bfloat16 ulp, 2**-8 = 3.9e-3,
and one float16 ulp, 2**-11 = 4.9e-4; much of it is the final rounding of the outputs.) The previous
mode (products rounded to the low precision, residual stream in it too) measured bfloat16 tokens
4.4e-2 / 7.4e-3, pooled 1.9e-2 / 5.4e-3, sizes 3.5e-2. These are several hundred (bfloat16) and
about 70 (float16) times the float32 error on this model (tokens 3e-5 max abs), so the float64 and
the float32 references give the same numbers to two digits, and the tolerances below, with about 2x
headroom, do not depend on the CPU's float32 rounding. The merge decisions (which token goes where,
which tokens vid-TLDR drops) match float32's in all ten schedule/dtype cases measured; the saliency
values differ because its min-max normalisation amplifies the rounding of the attention logits,
which the token sizes inherit.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import F64_ATOL, as_float64, golden_output, golden_video

import tldr_jax
from tldr_jax.configs import get_config
from tldr_jax.options import AttentionTuning
from tldr_jax.schedule import resolve_schedule

# dtype -> (tokens max abs, tokens rel L2, pooled max abs, pooled rel L2, size max abs)
TOLERANCES = {
    "bfloat16": (3.5e-2, 8e-3, 2e-2, 6.5e-3, 4e-2),
    "float16": (4.5e-3, 1e-3, 2.6e-3, 8e-4, 1.2e-2),
}


def _schedule(data: dict[str, np.ndarray], name: str) -> tuple[float, ...]:
    return tuple(float(v) for v in data[f"{name}/schedule"])


def _errors(ours, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, relative L2 error) of ``ours`` against ``ref``."""
    d = np.asarray(ours, np.float64) - ref
    return float(np.abs(d).max()), float(np.linalg.norm(d) / np.linalg.norm(ref))


def _apply(params, video, sched, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "capped" schedule warns by design
        return tldr_jax.apply(params, video, sched, **kwargs)


# Tests run a subset to stay fast (each schedule is a separate compile); the table covers all five.
CASES = [("bfloat16", "ints"), ("bfloat16", "capped"), ("float16", "ints")]


@pytest.mark.parametrize("dtype,name", CASES)
def test_low_precision_matches_golden(umt_golden_params, golden_f64, dtype, name):
    """Tokens/pooled/sizes within the documented tolerance of the float64 truth; same token counts."""
    if f"{name}/schedule" not in golden_f64:
        pytest.skip(f"schedule {name} not in golden_model_f64.npz")
    tok_abs, tok_rel, pool_abs, pool_rel, size_abs = TOLERANCES[dtype]
    video = jnp.asarray(golden_video(golden_f64))
    sched = _schedule(golden_f64, name)
    out = _apply(umt_golden_params, video, sched, dtype=jnp.dtype(dtype), source="origin")
    ref_tokens = golden_output(golden_f64, name, "tokens")
    assert out.tokens.dtype == jnp.dtype(dtype)
    assert out.size.dtype == jnp.float32
    assert out.tokens.shape == ref_tokens.shape
    assert out.schedule.tokens[-1] == ref_tokens.shape[1]
    assert np.isfinite(np.asarray(out.tokens, np.float32)).all()
    err_abs, err_rel = _errors(out.tokens, ref_tokens)
    assert err_abs < tok_abs and err_rel < tok_rel, (err_abs, err_rel)
    err_abs, err_rel = _errors(out.pooled, golden_output(golden_f64, name, "pooled"))
    assert err_abs < pool_abs and err_rel < pool_rel, (err_abs, err_rel)
    assert _errors(out.size, golden_output(golden_f64, name, "size"))[0] < size_abs
    if (dtype, name) == ("bfloat16", "ints"):
        # The merge plan stays float32's: the merge similarities are computed in float32 from float32
        # hidden states, so only the rounding of the products upstream could flip a near-tied match
        # (measured: none in all ten schedule/dtype cases; the previous bfloat16 mode flipped 5 of the
        # 72 input tokens here). A few flips stay allowed for other CPUs' rounding.
        ref = _apply(umt_golden_params, video, sched, source="origin")
        assert out.schedule == ref.schedule
        changed = np.mean(np.asarray(out.source.owner) != np.asarray(ref.source.owner))
        assert changed <= 0.05, changed


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_products_accumulate_in_float32(dtype):
    """Every dot / convolution of the low-precision program takes ``dtype`` operands and gives float32
    (``preferred_element_type``), except the merge similarity, which is float32 throughout; the
    float32 program has no low-precision value at all."""
    import re

    from tldr_jax import api

    params = tldr_jax.init(0, "umt_b16", depth=2, embed_dim=32, num_heads=2, mlp_dim=64, num_frames=4,
                           img_size=32)
    video = jnp.zeros((1, 4, 32, 32, 3), jnp.float32)
    sched = tldr_jax.schedule(params, 3)

    def hlo(dt):
        return api.lower(params, video, sched, dtype=dt).as_text()

    short = {"bfloat16": "bf16", "float16": "f16"}[dtype]
    products = [line for line in hlo(jnp.dtype(dtype)).splitlines()
                if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
    signatures = [re.search(r": \((.*)\) -> (tensor<[^>]*>)", line).groups() for line in products]
    low = [(ins, out) for ins, out in signatures if short in ins]
    # patch embed + per block qkv, QK^T, PV, proj, fc1, fc2
    assert len(low) == 1 + 6 * 2, signatures
    assert all(ins.count(short) == 2 and out.endswith("xf32>") for ins, out in low), low
    assert all(ins.count("xf32>") == 2 for ins, out in signatures if short not in ins)  # the matching
    assert "bf16" not in hlo(None) and "f16>" not in hlo(None)


# --------------------------------------------------------------------------------------------------
# Query-chunked attention (long videos): same numbers as the standard path.
# --------------------------------------------------------------------------------------------------


def _attention_pair(need, with_bias, key_block=None):
    """(standard, chunked) outputs and input gradients of one attention layer, N = 37, chunks of 8
    (with ``key_block``: both key-blocked)."""
    import jax
    from flax import nnx

    from tldr_jax.models import Attention

    cfg = get_config("umt_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 37, 32))
    sizes = jax.random.uniform(jax.random.key(2), (2, 37), minval=1, maxval=4)
    log_size = jnp.log(sizes) if with_bias else None

    def run(tuning):
        def f(y):
            out, stats = attn(y, log_size, need, tuning)
            return jnp.sum(out**2), (out, stats[need])

        (_, (out, aux)), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(x)
        return out, aux, grad

    standard = AttentionTuning(query_chunk=8, chunk_min_elements=10**18, key_block=key_block)
    return run(standard), run(standard.replace(chunk_min_elements=0))


def test_cpu_cache_blocking_chooses_rows_by_need():
    """On CPU, layers above ``cpu_block_min_elements`` run in query chunks of ``cpu_head_rows`` (512)
    rows, one head at a time; with ``cpu_head_rows = None`` all heads at once, 512 rows where the
    vid-TLDR sharpness is computed and 128 elsewhere; a smaller ``chunk_min_elements`` (the memory
    guard) and its ``query_chunk`` still win; the chunked program has a loop (two: chunks, heads),
    the small one none; without ``cpu_blocking`` only the guard chunks."""
    import jax
    from flax import nnx

    from tldr_jax.models import Attention
    from tldr_jax.models.layers import chunking

    assert jax.default_backend() == "cpu"
    cfg = get_config("umt_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    t = AttentionTuning()
    assert chunking(t, "sharpness") == (512, 2**22, False, True)
    assert chunking(t, None) == (512, 2**22, True, True)  # normalised after PV (softmax_values)
    assert chunking(t, None, backend="gpu") == (512, 2**28, False, False)
    assert chunking(t.replace(cpu_blocking=False), None) == (512, 2**28, False, False)
    t = t.replace(cpu_head_rows=None)
    assert chunking(t, "sharpness") == (512, 2**22, False, False)
    assert chunking(t, None) == (128, 2**22, True, False)
    assert chunking(t, "keys") == (128, 2**22, True, False)
    t = t.replace(chunk_min_elements=0)
    assert chunking(t, None) == (t.query_chunk, 0, True, False)
    t = t.replace(normalise_after_values=False)
    assert chunking(t, None) == (t.query_chunk, 0, False, False)
    t = t.replace(cpu_head_rows=64)
    assert chunking(t, None) == (t.query_chunk, 0, False, True)  # the guard's rows win
    t = t.replace(chunk_min_elements=2**28, cpu_block_min_elements=2**40)
    assert chunking(t, "sharpness") == (t.query_chunk, 2**28, False, True)

    t = t.replace(cpu_block_min_elements=2 * 2 * 40 * 40 - 1, cpu_head_rows=8)  # B=2, H=2, N=40 above
    x = jax.random.normal(jax.random.key(0), (2, 40, 32))

    def loops(n: int, tuning: AttentionTuning) -> int:
        jaxpr = jax.make_jaxpr(lambda y: attn(y, None, None, tuning)[0])(x[:, :n])
        return str(jaxpr).count("scan[")

    assert loops(40, t) == 2 and loops(39, t) == 0
    t = t.replace(cpu_head_rows=None, cpu_block_rows=8)
    assert loops(40, t) == 1 and loops(39, t) == 0
    assert loops(40, t.replace(cpu_blocking=False)) == 0


def test_fast_compile_drops_the_cpu_blocking_and_keeps_the_numbers():
    """``apply(..., fast_compile=True)``: no attention loop in the traced program (the blocked one has
    the chunk and head loops), the same outputs up to float rounding, compiled by its own jit (the one
    with XLA's older CPU emitter); a non-bool value is refused with the option's name."""
    import jax

    from tldr_jax import api
    from tldr_jax.xla_options import FAST_COMPILE_XLA_CPU

    tuning = AttentionTuning(cpu_block_min_elements=1000, cpu_head_rows=16)
    params = tldr_jax.init(0, "umt_b16", depth=2, embed_dim=40, num_heads=2, mlp_dim=72, num_frames=4,
                           img_size=64)
    video = jax.random.normal(jax.random.key(4), (1, 4, 64, 64, 3))

    def loops(fast: bool) -> int:
        text = api.lower(params, video, (8, 4), fast_compile=fast, attention=tuning).as_text()
        return text.count("stablehlo.while")

    assert loops(False) == 2 * 2 and loops(True) == 0  # 2 layers x (chunk loop, head loop)
    fast_jit = api._jitted(tuple(sorted(FAST_COMPILE_XLA_CPU.items())))
    before = fast_jit._cache_size()
    blocked, fast = (tldr_jax.apply(params, video, (8, 4), fast_compile=f, attention=tuning)
                     for f in (False, True))
    assert fast_jit._cache_size() == before + 1
    np.testing.assert_allclose(np.asarray(fast.pooled), np.asarray(blocked.pooled), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fast.size), np.asarray(blocked.size), rtol=1e-5)
    with pytest.raises(TypeError, match="fast_compile must be True or False; got 'yes'"):
        tldr_jax.apply(params, video, (8, 4), fast_compile="yes")


@pytest.mark.parametrize("need", ["sharpness", None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_heads_one_by_one_equals_all_heads_in_float64(need, with_bias):
    """Chunks attended one head at a time (``per_head``) give the all-heads chunks' output and
    sharpness to float64 rounding (N = 37, chunks of 8, 3 heads), with and without the size bias."""
    import jax

    from tldr_jax.models.layers import _attend

    keys = jax.random.split(jax.random.key(3), 4)
    with jax.enable_x64(True):
        q, k, v = (jax.random.normal(kk, (2, 3, 37, 8), jnp.float64) for kk in keys[:3])
        bias = None
        if with_bias:
            bias = jnp.log(jax.random.uniform(keys[3], (2, 1, 1, 37), jnp.float64, minval=1, maxval=5))
        kw = dict(need_sharpness=need == "sharpness", query_chunk=8, chunk_min_elements=0,
                  normalise_after=need is None)
        out_a, sharp_a = jax.jit(lambda *a: _attend(*a, **kw, per_head=False))(q, k, v, bias)
        out_b, sharp_b = jax.jit(lambda *a: _attend(*a, **kw, per_head=True))(q, k, v, bias)
    assert out_b.shape == out_a.shape == (2, 3, 37, 8) and out_b.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out_b), np.asarray(out_a), rtol=0, atol=1e-13)
    if need == "sharpness":
        assert sharp_b.shape == (2, 37)
        np.testing.assert_allclose(np.asarray(sharp_b), np.asarray(sharp_a), rtol=0, atol=1e-13)
    else:
        assert sharp_a is None and sharp_b is None


@pytest.mark.parametrize("need,with_bias", [("sharpness", False), ("sharpness", True), ("keys", False),
                                            ("keys", True)])
def test_chunked_attention_equals_standard(need, with_bias):
    """Chunked = unchunked (outputs, statistic, input gradients); without sharpness the chunks
    normalise after the value product (softmax_values), the standard path before it."""
    (out_a, aux_a, grad_a), (out_b, aux_b, grad_b) = _attention_pair(need, with_bias)
    np.testing.assert_allclose(out_b, out_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux_b, aux_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_b, grad_a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_softmax_values_equals_softmax_then_values(with_bias):
    """softmax_values (normalised after PV) = softmax, then PV: to 1e-13 in float64; in bfloat16 its
    error against the float64 truth is no larger than the standard path's (both round the weights)."""
    import jax

    from tldr_jax.models.layers import softmax_values
    from tldr_jax.numerics import dot_kwargs

    def standard(logits, bias, v):
        s = logits if bias is None else logits + bias
        p = jax.nn.softmax(s.astype(jnp.promote_types(s.dtype, jnp.float32)), axis=-1)
        return jnp.einsum("bhnm,bhmd->bhnd", p.astype(v.dtype), v, **dot_kwargs(v.dtype)).astype(v.dtype)

    keys = jax.random.split(jax.random.key(5), 3)
    with jax.enable_x64(True):
        logits = 4.0 * jax.random.normal(keys[0], (2, 3, 40, 300), jnp.float64)
        v = jax.random.normal(keys[1], (2, 3, 300, 16), jnp.float64)
        bias = None
        if with_bias:
            bias = jnp.log(jax.random.uniform(keys[2], (2, 1, 1, 300), jnp.float64, minval=1, maxval=9))
        truth = np.asarray(standard(logits, bias, v))
        np.testing.assert_allclose(np.asarray(jax.jit(softmax_values)(logits, bias, v)), truth, rtol=0,
                                   atol=1e-13)
        low = (logits.astype(jnp.float32), None if bias is None else bias.astype(jnp.float32),
               v.astype(jnp.bfloat16))
        errors = [np.abs(np.asarray(jax.jit(fn)(*low), np.float64) - truth).max()
                  for fn in (standard, softmax_values)]
    assert errors[1] <= 1.25 * errors[0], errors
    assert 0 < errors[1] < 2e-2, errors  # bfloat16 output: one unit in the last place is 2**-8 here


def test_chunked_attention_keeps_golden_parity(umt_golden_params, golden_f64):
    """The whole model with every layer chunked (8 query rows) still equals the official code, in
    float64 (1e-10; measured 3e-14 on the ``ints`` schedule, as unchunked)."""
    import jax

    cfg = umt_golden_params.config
    sched = resolve_schedule(
        _schedule(golden_f64, "ints"), num_tokens=cfg.num_tokens, depth=cfg.depth
    )
    chunked = AttentionTuning(query_chunk=8, chunk_min_elements=0)  # part of apply's cache key
    with jax.enable_x64(True):
        video = jnp.asarray(golden_video(golden_f64, np.float64))
        out = tldr_jax.apply(as_float64(umt_golden_params), video, sched, attention=chunked)
        out = {k: np.asarray(getattr(out, k)) for k in ("tokens", "pooled", "size")}
    for key in ("tokens", "pooled", "size"):
        assert out[key].dtype == np.float64
        np.testing.assert_allclose(out[key], golden_output(golden_f64, "ints", key), atol=F64_ATOL, rtol=0,
                                   err_msg=key)


# --------------------------------------------------------------------------------------------------
# Key-blocked attention (online softmax): the same numbers as the standard path.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("need_sharpness,with_bias", [(False, False), (True, False), (True, True),
                                                      (False, True)])
def test_blocked_attention_equals_standard_in_float64(need_sharpness, with_bias):
    """Output and sharpness of :func:`attend_blocked` equal :func:`_attend` to float64 rounding (N = 37,
    blocks of 8: four full blocks and one padded)."""
    import jax

    from tldr_jax.models.layers import _attend, attend_blocked

    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(3), 4)
        q, k, v = (2.0 * jax.random.normal(kk, (2, 3, 37, 8), jnp.float64) for kk in keys[:3])
        bias = None
        if with_bias:
            bias = jnp.log(jax.random.uniform(keys[3], (2, 1, 1, 37), jnp.float64, minval=1, maxval=5))
        ref_out, ref_sharp = _attend(q, k, v, bias, need_sharpness=need_sharpness, query_chunk=512,
                                     chunk_min_elements=10**18)
        out, sharp = jax.jit(lambda q, k, v, b: attend_blocked(q, k, v, b, need_sharpness=need_sharpness,
                                                               block=8))(q, k, v, bias)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), rtol=0, atol=1e-13)
        if need_sharpness:
            np.testing.assert_allclose(np.asarray(sharp), np.asarray(ref_sharp), rtol=0, atol=1e-13)
        else:
            assert sharp is None and ref_sharp is None


def test_blocked_attention_layer_float32_and_gradients():
    """The attention layer with ``key_block`` set: outputs, sharpness and input gradients equal the
    standard layer's in float32 (bias on: proportional attention)."""
    standard, _ = _attention_pair("sharpness", True)
    blocked, _ = _attention_pair("sharpness", True, key_block=8)
    for a, b in zip(standard, blocked):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_attention_equals_standard(with_bias):
    """``AttentionTuning.fused`` (``jax.nn.dot_product_attention``, used on GPUs in low precision for layers
    that need no statistic) gives the standard layer's output; forced on here, on CPU."""
    import jax
    from flax import nnx

    from tldr_jax.models import Attention

    cfg = get_config("umt_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 37, 32))
    sizes = jax.random.uniform(jax.random.key(2), (2, 37), minval=1, maxval=4)
    log_size = jnp.log(sizes) if with_bias else None
    outs = {}
    for fused in (False, True):
        tuning = AttentionTuning(fused=fused)
        outs[fused] = jax.jit(lambda y, t=tuning: attn(y, log_size, None, t))(x)
    assert outs[True][1] == {} and outs[False][1] == {}
    np.testing.assert_allclose(outs[True][0], outs[False][0], rtol=1e-5, atol=1e-6)
    assert not float(jnp.abs(outs[False][0]).max()) == 0.0


def test_precision_bench_quick(tmp_path):
    """``benchmarks.precision_bench --quick`` runs every variant, the GEMM probe and the profile split and
    writes its report (tiny UMT; the numbers themselves are not asserted)."""
    pytest.importorskip("torch")
    from benchmarks import precision_bench

    result = precision_bench.main(["--quick", "--rounds", "1", "--out", str(tmp_path / "p")])
    assert set(result["timing"]) == {
        "tldr_jax f32", "tldr_jax bf16", "tldr_jax bf16, weights cast once", "tldr_jax f32, key-blocked",
        "tldr_jax bf16, key-blocked", "official f32", "official bf16 (autocast)",
    }
    assert all(row["median_s"] > 0 and row["gflops_per_s"] > 0 for row in result["timing"].values())
    assert all(row["gflops"] > 0 for row in result["gemm"].values())
    for prof in result["profile"].values():
        assert prof["sum"] > 0 and prof["merge"] > 0 and prof["gemm_mlp"] > 0
    report = (tmp_path / "p.md").read_text()
    assert "| tldr_jax bf16 / official bf16 |" in report
    assert "| tldr_jax bf16, weights cast once / official bf16 |" in report
    assert result["malloc"] == "tuned" and "malloc tuned" in report
    tokens = set(tldr_jax.schedule(tldr_jax.init(0, "umt_b16", depth=2, embed_dim=64, num_heads=2,
                                                 mlp_dim=128, num_frames=4, img_size=32), (4, 4)).tokens[:-1])
    for precision in ("f32", "bf16"):
        ceiling = result["ceiling"][precision]
        assert set(ceiling["rates"]["qk"]) == set(ceiling["rates"]["pv"]) == tokens
        assert ceiling["rates"]["gemm"] == precision_bench.gemm_peaks(result["gemm"])[precision]
        parts = [ceiling["bound"][k] for k in ("linear_s", "qk_s", "pv_s", "exp_s")]
        assert all(p > 0 for p in parts) and ceiling["bound"]["total_s"] == pytest.approx(sum(parts))
    assert "Ceiling (benchmarks.ceiling)" in report and "| bf16 |" in report


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_cast_once_equals_casting_in_every_call(umt_golden_params, golden_f64, dtype):
    """tldr_jax.cast applies apply(dtype=...)'s rule once: same outputs, kernels stored in the dtype."""
    import jax

    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        cast = tldr_jax.cast(umt_golden_params, dt)
        kernels = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.dtype
                   for path, leaf in jax.tree_util.tree_leaves_with_path(cast.tree)}
        assert all((d == dt) == (p.endswith("kernel") or dtype == "float64") for p, d in kernels.items())
        assert cast.config == umt_golden_params.config
        video = jnp.asarray(golden_video(golden_f64), dt)
        sched = _schedule(golden_f64, "ints")
        want = _apply(umt_golden_params, video, sched, dtype=dt)
        for got in (_apply(cast, video, sched, dtype=dt), _apply(cast, video, sched)):
            assert got.pooled.dtype == dt
            np.testing.assert_array_equal(np.asarray(got.pooled), np.asarray(want.pooled))
            np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))


def test_cast_refuses_bad_arguments(umt_golden_params):
    with pytest.raises(ValueError, match="cast needs a dtype"):
        tldr_jax.cast(umt_golden_params, None)
    with pytest.raises(ValueError, match="int32"):
        tldr_jax.cast(umt_golden_params, jnp.int32)
    with pytest.raises(TypeError, match="cast takes tldr_jax Params"):
        tldr_jax.cast(umt_golden_params.tree, jnp.bfloat16)

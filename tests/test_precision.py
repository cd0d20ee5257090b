"""Mixed precision: ``tldr_jax.apply(..., dtype=bfloat16 / float16)`` against the float64 truth.

The reference is the official vid-TLDR code run in float64 (``shared/golden/golden_model_f64.npz``, see
conftest), so the errors below are those of the low precision alone, on any CPU. Matmuls, LayerNorms
and the MLP run in the low precision; softmax, saliency, merge arithmetic and token sizes stay in
float32. Measured on the tiny golden UMT (outputs of magnitude <= 3.7), all five schedules, AMD EPYC:

======== ============== ================ ============== ================ ============
dtype    tokens max abs tokens rel (L2)  pooled max abs pooled rel (L2)  size max abs
======== ============== ================ ============== ================ ============
bfloat16 4.4e-2         7.4e-3           1.9e-2         5.4e-3           3.5e-2
float16  5.3e-3         9.8e-4           2.7e-3         6.5e-4           5.0e-3
======== ============== ================ ============== ================ ============

("rel (L2)" is ``|ours - ref| / |ref|`` over the whole array: about one bfloat16 ulp, 2**-8 = 3.9e-3,
and one float16 ulp, 2**-11 = 4.9e-4.) These are 1000x (bfloat16) and 100x (float16) the float32
error on this model (tokens 3e-5 max abs), so the float64 and the float32 references give the same
numbers to two digits, and the tolerances below, with about 2x headroom, do not depend on the CPU's
float32 rounding. The merge decisions (which token goes where, which tokens vid-TLDR drops) match
float32's but for a few near-tied matches (see the test); the saliency values differ because its
min-max normalisation amplifies the rounding of the attention logits, which the token sizes inherit.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import F64_ATOL, as_float64, golden_output, golden_video

import tldr_jax
from tldr_jax.configs import get_config
from tldr_jax.schedule import resolve_schedule

# dtype -> (tokens max abs, tokens rel L2, pooled max abs, pooled rel L2, size max abs)
TOLERANCES = {
    "bfloat16": (8e-2, 1.5e-2, 4e-2, 1.2e-2, 7e-2),
    "float16": (1.2e-2, 2e-3, 6e-3, 1.5e-3, 1.2e-2),
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
        # The merge plan stays close to float32's: bfloat16 rounding of the similarities can flip
        # near-tied matches (measured: 5 of 72 input tokens change group here, none in the other 9
        # schedule/dtype cases), but the schedule is identical and most tokens keep their group.
        ref = _apply(umt_golden_params, video, sched, source="origin")
        assert out.schedule == ref.schedule
        changed = np.mean(np.asarray(out.source.owner) != np.asarray(ref.source.owner))
        assert changed <= 0.1, changed


# --------------------------------------------------------------------------------------------------
# Query-chunked attention (long videos): same numbers as the standard path.
# --------------------------------------------------------------------------------------------------


def _attention_pair(monkeypatch, need, with_bias):
    """(standard, chunked) outputs and input gradients of one attention layer, N = 37, chunks of 8."""
    import jax
    from flax import nnx

    from tldr_jax.models import Attention

    cfg = get_config("umt_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 37, 32))
    sizes = jax.random.uniform(jax.random.key(2), (2, 37), minval=1, maxval=4)
    log_size = jnp.log(sizes) if with_bias else None

    def run():
        def f(y):
            out, stats = attn(y, log_size, need)
            return jnp.sum(out**2), (out, stats[need])

        (_, (out, aux)), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(x)
        return out, aux, grad

    monkeypatch.setattr(Attention, "query_chunk", 8)
    monkeypatch.setattr(Attention, "chunk_min_elements", 10**18)
    standard = run()
    monkeypatch.setattr(Attention, "chunk_min_elements", 0)
    return standard, run()


@pytest.mark.parametrize("need,with_bias", [("sharpness", False), ("sharpness", True)])
def test_chunked_attention_equals_standard(monkeypatch, need, with_bias):
    (out_a, aux_a, grad_a), (out_b, aux_b, grad_b) = _attention_pair(monkeypatch, need, with_bias)
    np.testing.assert_allclose(out_b, out_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux_b, aux_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_b, grad_a, rtol=1e-4, atol=1e-5)


def test_chunked_attention_keeps_golden_parity(monkeypatch, umt_golden_params, golden_f64):
    """The whole model with every layer chunked (8 query rows) still equals the official code, in
    float64 (1e-10; measured 3e-14 on the ``ints`` schedule, as unchunked)."""
    import functools

    import jax

    from tldr_jax import api
    from tldr_jax.models import Attention

    monkeypatch.setattr(Attention, "query_chunk", 8)
    monkeypatch.setattr(Attention, "chunk_min_elements", 0)
    cfg = umt_golden_params.config
    sched = resolve_schedule(
        _schedule(golden_f64, "ints"), num_tokens=cfg.num_tokens, depth=cfg.depth
    )
    forward = functools.partial(  # a fresh jit: apply's cache may hold an unchunked trace
        api._forward.__wrapped__, cfg=cfg, sched=sched, method="vid_tldr", pool="mean", source=None,
        return_saliency=False, prop_attn=True,
    )
    with jax.enable_x64(True):
        video = jnp.asarray(golden_video(golden_f64, np.float64))
        out = jax.jit(forward)(as_float64(umt_golden_params).tree, video)
        out = {k: np.asarray(out[k]) for k in ("tokens", "pooled", "size")}
    for key in ("tokens", "pooled", "size"):
        assert out[key].dtype == np.float64
        np.testing.assert_allclose(out[key], golden_output(golden_f64, "ints", key), atol=F64_ATOL, rtol=0,
                                   err_msg=key)

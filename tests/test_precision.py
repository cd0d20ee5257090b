"""Mixed precision: ``tldr_jax.apply(..., dtype=bfloat16 / float16)`` against the official float32 numbers.

The golden data come from the official vid-TLDR code in float32 (``shared/golden``, see conftest).
Matmuls, LayerNorms and the MLP run in the low precision; softmax, saliency, merge arithmetic and token
sizes stay in float32. Measured on the tiny golden UMT (outputs of magnitude <= 3.7), all schedules:

======== ============== ================ ============== ================
dtype    tokens max abs tokens rel (L2)  pooled max abs pooled rel (L2)
======== ============== ================ ============== ================
bfloat16 3.8e-2         7.2e-3           1.9e-2         5.4e-3
float16  5.3e-3         9.8e-4           2.7e-3         6.9e-4
======== ============== ================ ============== ================

("rel (L2)" is ``|ours - ref| / |ref|`` over the whole array: about one bfloat16 ulp, 2**-8 = 3.9e-3,
and one float16 ulp, 2**-11 = 4.9e-4.) The tolerances below leave about 2x headroom. The merge
decisions (which token goes where, which tokens vid-TLDR drops) are identical to float32 for every
golden schedule; the saliency values differ (bfloat16: up to 6e-2) because its min-max normalisation
amplifies the rounding of the attention logits, which the token sizes inherit (bfloat16: up to 6e-2).
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import tldr_jax

# dtype -> (tokens max abs, tokens rel L2, pooled max abs, pooled rel L2, size max abs)
TOLERANCES = {
    "bfloat16": (8e-2, 1.5e-2, 4e-2, 1.2e-2, 0.12),
    "float16": (1.2e-2, 2e-3, 6e-3, 1.5e-3, 1.2e-2),
}


def _schedule(data: dict[str, np.ndarray], name: str) -> tuple[float, ...]:
    return tuple(float(v) for v in data[f"{name}/schedule"])


def _errors(ours, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, relative L2 error) of ``ours`` against ``ref``."""
    d = np.asarray(ours, np.float32) - ref
    return float(np.abs(d).max()), float(np.linalg.norm(d) / np.linalg.norm(ref))


def _apply(params, video, sched, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the "capped" schedule warns by design
        return tldr_jax.apply(params, video, sched, **kwargs)


# Tests run a subset to stay fast (each schedule is a separate compile); the table covers all five.
CASES = [("bfloat16", "ints"), ("bfloat16", "capped"), ("float16", "ints")]


@pytest.mark.parametrize("dtype,name", CASES)
def test_low_precision_matches_golden(umt_golden_params, golden_model, dtype, name):
    """Tokens/pooled/sizes within the documented tolerance; the same schedule and token counts."""
    if f"{name}/schedule" not in golden_model:
        pytest.skip(f"schedule {name} not in golden_model.npz")
    tok_abs, tok_rel, pool_abs, pool_rel, size_abs = TOLERANCES[dtype]
    video = jnp.asarray(golden_model["video_bcthw"].transpose(0, 2, 3, 4, 1))
    sched = _schedule(golden_model, name)
    out = _apply(umt_golden_params, video, sched, dtype=jnp.dtype(dtype), source="origin")
    ref_tokens = golden_model[f"{name}/tokens"]
    assert out.tokens.dtype == jnp.dtype(dtype)
    assert out.size.dtype == jnp.float32
    assert out.tokens.shape == ref_tokens.shape
    assert out.schedule.tokens[-1] == ref_tokens.shape[1]
    assert np.isfinite(np.asarray(out.tokens, np.float32)).all()
    err_abs, err_rel = _errors(out.tokens, ref_tokens)
    assert err_abs < tok_abs and err_rel < tok_rel, (err_abs, err_rel)
    err_abs, err_rel = _errors(out.pooled, golden_model[f"{name}/pooled"][:, 0])
    assert err_abs < pool_abs and err_rel < pool_rel, (err_abs, err_rel)
    assert _errors(out.size, golden_model[f"{name}/size"])[0] < size_abs
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

    cfg = tldr_jax.get_config("umt_b16", embed_dim=32, depth=1, num_heads=2, mlp_dim=64)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 37, 32))
    sizes = jax.random.uniform(jax.random.key(2), (2, 37), minval=1, maxval=4)
    log_size = jnp.log(sizes) if with_bias else None

    def run():
        def f(y):
            out, aux = attn(y, log_size, need)
            return jnp.sum(out**2), (out, aux)

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


def test_chunked_attention_keeps_golden_parity(monkeypatch, umt_golden_params, golden_model):
    """The whole model with every layer chunked (8 query rows) still matches the official numbers.

    The unchunked path gives 2.3e-5 (max abs, tokens) on this schedule; chunked gives 2.2e-5. The
    saliency's min-max normalisation amplifies rounding ~200x on this near-uniform tiny model.
    """
    import functools

    import jax
    from conftest import MODEL_ATOL

    from tldr_jax import api
    from tldr_jax.models import Attention

    monkeypatch.setattr(Attention, "query_chunk", 8)
    monkeypatch.setattr(Attention, "chunk_min_elements", 0)
    video = jnp.asarray(golden_model["video_bcthw"].transpose(0, 2, 3, 4, 1))
    cfg = umt_golden_params.config
    sched = tldr_jax.resolve_schedule(
        _schedule(golden_model, "ints"), num_tokens=cfg.num_tokens, depth=cfg.depth
    )
    forward = functools.partial(  # a fresh jit: apply's cache may hold an unchunked trace
        api._forward.__wrapped__, cfg=cfg, sched=sched, method="vid_tldr", pool="mean", source=None,
        return_saliency=False, prop_attn=True,
    )
    out = jax.jit(forward)(umt_golden_params.tree, video)
    assert out["tokens"].shape == golden_model["ints/tokens"].shape
    np.testing.assert_allclose(out["tokens"], golden_model["ints/tokens"], atol=MODEL_ATOL, rtol=1e-5)
    np.testing.assert_allclose(out["pooled"], golden_model["ints/pooled"][:, 0], atol=MODEL_ATOL, rtol=1e-5)

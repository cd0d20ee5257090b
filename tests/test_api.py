"""Encoders and ``tldr_jax.apply``: golden parity, schedules for every architecture, tracing, errors."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    F32_FACTOR,
    as_float64,
    assert_float64_parity,
    golden_schedule,
    golden_schedules,
    golden_video,
    official_f32_yardstick,
    rms_distance,
)

import tldr_jax
from tldr_jax.merge import origin_to_dense

TINY = dict(embed_dim=32, depth=3, num_heads=2, mlp_dim=64, num_frames=4, img_size=32)


def _video(golden_model):
    return jnp.asarray(golden_model["video_bcthw"].transpose(0, 2, 3, 4, 1))


def _apply(params, video, sched, jit: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tldr_jax.ScheduleCapWarning)  # "capped" asks for more than N // 2
        if jit:
            return jax.jit(tldr_jax.apply, static_argnames="r")(params, video, r=sched)
        return tldr_jax.apply(params, video, sched)


@pytest.mark.parametrize("jit", [False, True])
def test_golden_model_every_schedule(umt_golden_params, golden_f64, jit):
    """Float64 parity with the official code run in float64: tokens, pooled, sizes within 1e-10."""
    names = golden_schedules(golden_f64)
    assert set(names) >= {"ints", "const4", "fractions", "zero", "capped"}
    with jax.enable_x64(True):
        params = as_float64(umt_golden_params)
        video = jnp.asarray(golden_video(golden_f64, np.float64))
        for name in names:
            out = _apply(params, video, golden_schedule(golden_f64, name), jit)
            assert out.tokens.shape == golden_f64[f"{name}/tokens"].shape, name
            assert_float64_parity(out, golden_f64, name)
            assert out.schedule.tokens[-1] == golden_f64[f"{name}/tokens"].shape[1]


def test_golden_model_float32_within_official_yardstick(umt_golden_params, golden_f64, golden_model):
    """Float32 is as close to the float64 truth as the official float32 (see conftest.F32_FACTOR)."""
    video = jnp.asarray(golden_video(golden_f64))
    outputs = {}
    for name in golden_schedules(golden_f64):
        out = _apply(umt_golden_params, video, golden_schedule(golden_f64, name), jit=False)
        assert out.tokens.dtype == jnp.float32 and out.tokens.shape == golden_f64[f"{name}/tokens"].shape
        outputs[name] = {"tokens": out.tokens, "pooled": out.pooled, "size": out.size}
    ours = rms_distance(outputs, golden_f64)
    official = official_f32_yardstick(golden_f64, golden_model)
    for key, dist in ours.items():
        assert 0 < dist <= F32_FACTOR * official[key], (key, dist, official[key])


def test_source_maps_in_model_agree(umt_golden_params, golden_model):
    video = _video(golden_model)
    dense = tldr_jax.apply(umt_golden_params, video, (12, 6, 3), source="dense")
    origin = tldr_jax.apply(umt_golden_params, video, (12, 6, 3), source="origin")
    np.testing.assert_allclose(
        origin_to_dense(origin.source, dense.tokens.shape[1]), dense.source, atol=1e-6
    )
    # every input token is held by exactly one output token (weights may be saliency-scaled)
    assert dense.source.shape == (2, 15, 36)
    assert np.all((np.asarray(dense.source) > 0).sum(1) <= 1)


def test_jit_traces_once_per_schedule():
    params = tldr_jax.init(0, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))

    @chex.assert_max_traces(n=2)
    def run(p, v, r):
        return tldr_jax.apply(p, v, r)

    fn = jax.jit(run, static_argnames="r")
    for _ in range(3):
        fn(params, video, r=(4, 2)).tokens.block_until_ready()
        fn(params, video + 1.0, r=5).tokens.block_until_ready()
    chex.clear_trace_counter()


ARCH_CASES = {
    "umt_b16": dict(num_frames=4, tubelet_size=1),
    "umt_l16": dict(num_frames=4, tubelet_size=1),
    "videomae_s": dict(num_frames=4, num_classes=5),
    "videomae_b": dict(num_frames=4, num_classes=5),
    "vivit_b": dict(num_frames=4, num_classes=5),
}


@pytest.mark.parametrize("arch", sorted(ARCH_CASES))
@pytest.mark.parametrize("method", ["vid_tldr", "tome"])
def test_shapes_follow_schedule_every_arch(arch, method):
    over = dict(embed_dim=32, depth=3, num_heads=2, mlp_dim=64, img_size=32) | ARCH_CASES[arch]
    params = tldr_jax.init(1, arch, **over)
    video = jax.random.normal(jax.random.key(1), (2, over["num_frames"], 32, 32, 3))
    sched = tldr_jax.schedule(params, (3, 0.25))
    out = tldr_jax.apply(params, video, (3, 0.25), method=method)
    cfg = params.config
    assert out.tokens.shape == (2, sched.tokens[-1], 32)
    assert out.size.shape == (2, sched.tokens[-1], 1)
    assert out.pooled.shape == (2, 32)
    assert sched.tokens[0] == cfg.num_tokens
    if cfg.num_classes:
        assert out.logits.shape == (2, cfg.num_classes)
    else:
        assert out.logits is None
    assert np.isfinite(out.tokens).all()
    if cfg.cls_token:  # protected: CLS keeps size 1
        np.testing.assert_array_equal(out.size[:, 0], 1.0)


def test_umt_b16_msrvtt_full_size_shapes_without_compute():
    params = jax.eval_shape(lambda k: tldr_jax.init(k, "umt_b16"), jax.random.key(0))
    video = jax.ShapeDtypeStruct((1, 12, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(lambda p, v: tldr_jax.apply(p, v, "msrvtt"), params, video)
    assert out.tokens.shape == (1, 1452, 768)
    assert tldr_jax.schedule("umt_b16", "msrvtt").tokens[:4] == (2352, 1752, 1552, 1452)


def test_pooling_options():
    params = tldr_jax.init(2, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(2), (2, 4, 32, 32, 3))
    mean = tldr_jax.apply(params, video, 6)
    weighted = tldr_jax.apply(params, video, 6, pool="weighted")
    np.testing.assert_allclose(mean.tokens, weighted.tokens)
    assert not np.allclose(mean.pooled, weighted.pooled)
    same0 = tldr_jax.apply(params, video, 0, pool="weighted").pooled
    np.testing.assert_allclose(same0, tldr_jax.apply(params, video, 0).pooled, atol=1e-6)


def test_saliency_returned_per_merging_layer():
    params = tldr_jax.init(3, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(3), (1, 4, 32, 32, 3))
    out = tldr_jax.apply(params, video, (4, 0, 2), return_saliency=True)
    assert [s.shape for s in out.saliency] == [(1, 16), (1, 12)]
    assert all(float(s.max()) == pytest.approx(1.0) for s in out.saliency)


def test_other_frame_count_recomputes_sinusoid_table():
    params = tldr_jax.init(4, "umt_b16", **TINY)
    out = tldr_jax.apply(params, jax.random.normal(jax.random.key(4), (1, 8, 32, 32, 3)), 0)
    assert out.tokens.shape == (1, 32, 32)


def test_remat_and_bf16_run():
    params = tldr_jax.init(5, "videomae_s", **TINY, num_classes=3)
    video = jax.random.normal(jax.random.key(5), (2, 4, 32, 32, 3))
    ref = tldr_jax.apply(params, video, 4)
    np.testing.assert_allclose(tldr_jax.apply(params, video, 4, remat=True).logits, ref.logits, atol=1e-6)
    half = tldr_jax.apply(params, video, 4, dtype=jnp.bfloat16)
    assert half.tokens.dtype == jnp.bfloat16 and half.schedule == ref.schedule


@pytest.mark.parametrize(
    "video_shape, exc, pattern",
    [
        ((4, 32, 32, 3), ValueError, r"\(B, T, H, W, 3\).*video\[None\]"),
        ((1, 3, 4, 32, 32), ValueError, "channels"),
        ((1, 4, 32, 32, 1), ValueError, "1 channels"),
        ((1, 5, 32, 32, 3), ValueError, "not divisible by the tubelet size 2"),
        ((1, 4, 40, 40, 3), ValueError, "built for 32x32"),
    ],
)
def test_bad_video(video_shape, exc, pattern):
    params = tldr_jax.init(6, "videomae_s", **TINY)
    with pytest.raises(exc, match=pattern):
        tldr_jax.apply(params, jnp.zeros(video_shape), 0)


def test_bad_arguments():
    params = tldr_jax.init(7, "umt_b16", **TINY)
    video = jnp.zeros((1, 4, 32, 32, 3))
    with pytest.raises(ValueError, match="unknown architecture 'umt_b61'.*Did you mean 'umt_b16'"):
        tldr_jax.init(0, "umt_b61")
    with pytest.raises(ValueError, match="unknown schedule preset 'msrvt'"):
        tldr_jax.apply(params, video, "msrvt")
    with pytest.raises(ValueError, match="4 entries but the model has only 3 layers"):
        tldr_jax.apply(params, video, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="method must be one of"):
        tldr_jax.apply(params, video, 1, method="fast")
    with pytest.raises(TypeError, match="params must be a tldr_jax.Params"):
        tldr_jax.apply(params.tree, video, 1)
    with pytest.raises(TypeError, match="unknown config override"):
        tldr_jax.init(0, "umt_b16", depht=2)
    with pytest.raises(ValueError, match="img_size 40 is not divisible by patch_size 16"):
        tldr_jax.init(0, "umt_b16", img_size=40)
    with pytest.raises(TypeError, match="video must be float"):
        tldr_jax.apply(params, video.astype(jnp.uint8), 0)
    vivit = tldr_jax.init(0, "vivit_b", **TINY)
    with pytest.raises(ValueError, match="learned position embeddings for 4 frames"):
        tldr_jax.apply(vivit, jnp.zeros((1, 8, 32, 32, 3)), 0)


@pytest.mark.parametrize("method", ["vid_tldr", "tome"])
def test_per_clip_and_chunked_attention_equal_standard(method):
    from tldr_jax import api
    from tldr_jax.options import ApplyOptions, AttentionTuning

    params = tldr_jax.init(8, "vivit_b", **TINY)
    video = jax.random.normal(jax.random.key(8), (3, 4, 32, 32, 3))
    sched = tldr_jax.schedule(params, (3, 2))

    def run(per_clip, tuning):  # apply's own jit, with per_clip chosen here
        opts = ApplyOptions(method=method, source="origin", return_saliency=method == "vid_tldr",
                            attention=tuning)
        return api._jitted(())(params.tree, video, cfg=params.config, sched=sched, per_clip=per_clip,
                               opts=opts)

    unchunked = AttentionTuning(chunk_min_elements=10**18)
    standard = run(False, unchunked)
    per_clip = run(True, unchunked)
    chunked = run(False, AttentionTuning(chunk_min_elements=0, query_chunk=8))
    for other in (per_clip, chunked):
        np.testing.assert_allclose(other["tokens"], standard["tokens"], atol=1e-5)
        np.testing.assert_allclose(other["size"], standard["size"], atol=1e-5)
        np.testing.assert_array_equal(other["source"].owner, standard["source"].owner)


def test_attention_tuning_between_calls_is_honoured():
    """Changing ``attention=`` between two ``apply`` calls on the same weights and video compiles a
    new program (the tuning is part of the jit cache key) that chunks where asked, with the same
    outputs up to rounding; the defaults, spelled or not, share one program; bad fields are named."""
    from tldr_jax import api
    from tldr_jax.options import AttentionTuning

    params = tldr_jax.init(3, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(3), (1, 4, 32, 32, 3))
    forward = api._jitted(())
    plain = tldr_jax.apply(params, video, 4)
    size = forward._cache_size()
    chunked_tuning = AttentionTuning(chunk_min_elements=0, query_chunk=8)
    chunked = tldr_jax.apply(params, video, 4, attention=chunked_tuning)
    assert forward._cache_size() == size + 1
    tldr_jax.apply(params, video, 4, attention=AttentionTuning())  # the defaults: the first program
    tldr_jax.apply(params, video, 4)
    assert forward._cache_size() == size + 1
    assert "stablehlo.while" in api.lower(params, video, 4, attention=chunked_tuning).as_text()
    assert "stablehlo.while" not in api.lower(params, video, 4).as_text()
    for key in ("tokens", "pooled", "size"):
        np.testing.assert_allclose(getattr(chunked, key), getattr(plain, key), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="AttentionTuning.query_chunk must be an int >= 1; got 0"):
        AttentionTuning(query_chunk=0)
    with pytest.raises(TypeError, match="attention must be a tldr_jax.AttentionTuning or None"):
        tldr_jax.apply(params, video, 4, attention={"query_chunk": 8})


def test_lower_is_what_apply_compiles():
    """``tldr_jax.api.lower`` returns the program ``apply`` runs: compiled and called with
    ``(params.tree, video)`` it gives apply's outputs; it checks options like apply."""
    from tldr_jax import api

    params = tldr_jax.init(4, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(4), (1, 4, 32, 32, 3))
    out = api.lower(params, video, 3, pool="weighted").compile()(params.tree, video)
    ref = tldr_jax.apply(params, video, 3, pool="weighted")
    np.testing.assert_array_equal(out["pooled"], ref.pooled)
    with pytest.raises(TypeError, match="lower got unknown option"):
        api.lower(params, video, 3, poool="mean")


def _dot_precisions(params, video, **kwargs):
    import re

    text = str(jax.make_jaxpr(lambda v: tldr_jax.apply(params, v, 2, **kwargs).tokens)(video))
    return set(re.findall(r"precision=\(Precision\.(\w+)", text)) | (
        {"None"} if "precision=None" in text else set()
    )


def test_precision_reaches_every_matrix_product():
    params = tldr_jax.init(0, "videomae_s", **TINY)
    video = jnp.zeros((1, 4, 32, 32, 3))
    assert _dot_precisions(params, video) == {"HIGHEST"}  # default: float32, the official numerics
    # TF32 for the model's products; the merge similarity stays float32 (HIGHEST).
    assert _dot_precisions(params, video, precision="tensorfloat32") == {"HIGH", "HIGHEST"}
    assert "None" in _dot_precisions(params, video, precision=None)  # JAX's own setting decides


def test_precision_error_names_value_and_fix():
    params = tldr_jax.init(0, "videomae_s", **TINY)
    with pytest.raises(ValueError, match=r"precision must be one of .*'fast'.*'float32' for the official"):
        tldr_jax.apply(params, jnp.zeros((1, 4, 32, 32, 3)), 0, precision="fast")

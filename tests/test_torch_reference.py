"""The PyTorch reference (``benchmarks/torch_reference.py``) against the official golden data and
against :func:`tldr_jax.apply` on identical weights.

* Golden: the official vid-TLDR UMT checkpoint ``umt_tiny.pth`` loads into the reference with
  ``strict=True``; run in float64 it reproduces the official code run in float64
  (``golden_model_f64.npz``) to 1e-10 (measured: 7e-14), and in float32 it is as close to that truth
  as the official float32 (the yardstick of ``conftest.F32_FACTOR``).
* Parity: with a random, fully perturbed ``tldr_jax.Params`` mapped onto the reference, both run in
  float64 (JAX through ``jax.enable_x64``) and agree to 1e-9 for several schedules, ToMe-free
  vid-TLDR merging, proportional attention on/off, UMT and VideoMAE layouts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[torch]')")

import tldr_jax  # noqa: E402
from benchmarks.torch_reference import (  # noqa: E402
    build_reference,
    from_params,
    resolve_counts,
    sinusoid_position_table,
    state_dict_from_params,
    to_torch_video,
)
from tldr_jax.configs import get_config  # noqa: E402
from tldr_jax.models import video_pos_table  # noqa: E402
from tldr_jax.schedule import resolve_schedule  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
GOLDEN_SCHEDULES = ("ints", "const4", "fractions", "zero", "capped")
GOLDEN_CONFIG = dict(depth=3, embed_dim=64, num_heads=2, mlp_dim=256, num_frames=4, img_size=48)

UMT = dict(depth=3, embed_dim=64, num_heads=2, mlp_dim=128, num_frames=4, img_size=64)  # 64 tokens
UMT_PROJ = dict(UMT, vision_proj_dim=16)
VIDEOMAE = dict(depth=3, embed_dim=48, num_heads=3, mlp_dim=96, num_frames=8, img_size=64, num_classes=7)

cap_warning = pytest.mark.filterwarnings("ignore::tldr_jax.merge.ScheduleCapWarning")


def perturbed_params(arch: str, seed: int = 0, **overrides) -> tldr_jax.Params:
    """Random params with every leaf (biases, q/v biases, LayerNorm scales) perturbed off its init."""
    params = tldr_jax.init(seed, arch, **overrides)
    rng = np.random.default_rng(seed + 1)
    tree = jax.tree_util.tree_map(
        lambda a: (np.asarray(a) + 0.05 * rng.standard_normal(a.shape)).astype(np.float32), params.tree
    )
    return tldr_jax.Params(tree, params.config)


def random_video(cfg, batch: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.num_frames, cfg.img_size, cfg.img_size, cfg.in_chans)
    return rng.standard_normal(shape).astype(np.float32)


def run_both(params, video, r, *, dtype, prop_attn=True):
    """(tldr_jax output, reference output dict) as numpy, in ``dtype`` ("float32" / "float64")."""
    sched = tldr_jax.schedule(params, r)
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    ref = from_params(params, torch_dtype, prop_attn=prop_attn)
    with torch.no_grad():
        got_ref = ref(to_torch_video(video, torch_dtype), list(sched.r))
    got_ref = {k: None if v is None else v.numpy() for k, v in got_ref.items()}
    with jax.enable_x64(dtype == "float64"):
        out = tldr_jax.apply(
            params, jnp.asarray(video, dtype), r, dtype=jnp.dtype(dtype), prop_attn=prop_attn
        )
        got_jax = {
            "tokens": np.asarray(out.tokens),
            "pooled": np.asarray(out.pooled),
            "size": np.asarray(out.size),
            "logits": None if out.logits is None else np.asarray(out.logits),
            "embedding": None if out.embedding is None else np.asarray(out.embedding),
        }
    assert got_jax["tokens"].dtype == np.dtype(dtype)
    return sched, got_jax, got_ref


# --------------------------------------------------------------------------------------------------
# Golden data of the official implementation.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    """(golden_model_f64.npz, golden_model.npz, the reference loaded with umt_tiny.pth)."""
    files = ("golden_model_f64.npz", "golden_model.npz", "umt_tiny.pth")
    if not all((GOLDEN / f).exists() for f in files):
        pytest.skip(f"golden data ({', '.join(files)}) not found under {GOLDEN}")
    truth = dict(np.load(GOLDEN / "golden_model_f64.npz"))
    official_f32 = dict(np.load(GOLDEN / "golden_model.npz"))
    model = build_reference("umt_b16", **GOLDEN_CONFIG)
    model.load_state_dict(torch.load(GOLDEN / "umt_tiny.pth", weights_only=True), strict=True)
    return truth, official_f32, model


def _run_reference(model, truth, name, dtype):
    schedule = [float(v) for v in truth[f"{name}/schedule"]]
    with torch.no_grad():
        out = model.to(dtype)(torch.tensor(truth["video_bcthw"]).to(dtype), schedule)
    return {k: out[k].numpy() for k in ("tokens", "pooled", "size")}


@pytest.mark.parametrize("name", GOLDEN_SCHEDULES)
def test_reference_reproduces_official_golden_float64(golden, name):
    """In float64 the reference equals the official code in float64 (tokens, pooled, sizes)."""
    truth, _, model = golden
    out = _run_reference(model, truth, name, torch.float64)
    for key in ("tokens", "pooled", "size"):
        assert out[key].dtype == np.float64
        want = truth[f"{name}/{key}"]
        np.testing.assert_allclose(out[key], want[:, 0] if key == "pooled" else want, rtol=0, atol=1e-10,
                                   err_msg=f"{name}/{key}")


def test_reference_float32_within_official_yardstick(golden):
    """In float32 the reference is as close to the float64 truth as the official float32."""
    from conftest import F32_FACTOR, official_f32_yardstick, rms_distance

    truth, official_f32, model = golden
    outputs = {name: _run_reference(model, truth, name, torch.float32) for name in GOLDEN_SCHEDULES}
    assert all(row["tokens"].dtype == np.float32 for row in outputs.values())
    ours = rms_distance(outputs, truth)
    official = official_f32_yardstick(truth, official_f32)
    for key, dist in ours.items():
        assert 0 < dist <= F32_FACTOR * official[key], (key, dist, official[key])


def test_golden_checkpoint_round_trips_through_the_params_mapping(golden):
    """Official state dict -> tldr_jax-shaped tree -> state_dict_from_params gives the same tensors."""
    _, _, model = golden
    sd = model.to(torch.float32).state_dict()
    params = tldr_jax.init(0, "umt_b16", **GOLDEN_CONFIG)
    mapped = state_dict_from_params(params)
    assert set(mapped) == set(sd)
    assert all(mapped[k].shape == sd[k].shape for k in sd)


# --------------------------------------------------------------------------------------------------
# tldr_jax parity on identical weights.
# --------------------------------------------------------------------------------------------------

SCHEDULES = {
    "r0": 0,
    "const4": 4,
    "decaying": (20, 8, 4),
    "fractions": (0.3, 0.2),
    "late": (0, 12, 0),
    "capped": (50, 50),
}


@cap_warning
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_float64_parity_umt(name):
    params = perturbed_params("umt_b16", **UMT_PROJ)
    video = random_video(params.config)
    sched, got_jax, got_ref = run_both(params, video, SCHEDULES[name], dtype="float64")
    assert got_ref["tokens"].shape == (2, sched.tokens[-1], params.config.embed_dim)
    for key in ("tokens", "pooled", "size", "embedding"):
        np.testing.assert_allclose(got_jax[key], got_ref[key], rtol=0, atol=1e-9, err_msg=key)


@cap_warning
@pytest.mark.parametrize("prop_attn", [True, False])
def test_float64_parity_videomae(prop_attn):
    params = perturbed_params("videomae_b", seed=3, **VIDEOMAE)
    video = random_video(params.config, seed=3)
    sched, got_jax, got_ref = run_both(params, video, (20, 10), dtype="float64", prop_attn=prop_attn)
    assert sched.tokens[-1] == 64 - 30
    for key in ("tokens", "pooled", "size", "logits"):
        np.testing.assert_allclose(got_jax[key], got_ref[key], rtol=0, atol=1e-9, err_msg=key)


def test_prop_attn_matters():
    """Guard that the prop_attn switch is live in both implementations (else the test above is void)."""
    params = perturbed_params("videomae_b", seed=3, **VIDEOMAE)
    video = random_video(params.config, seed=3)
    _, on, _ = run_both(params, video, (20, 10), dtype="float64", prop_attn=True)
    _, off, _ = run_both(params, video, (20, 10), dtype="float64", prop_attn=False)
    assert np.abs(on["tokens"] - off["tokens"]).max() > 1e-6


@pytest.mark.parametrize("name", ["r0", "decaying"])
def test_float32_parity_umt(name):
    params = perturbed_params("umt_b16", **UMT_PROJ)
    video = random_video(params.config)
    _, got_jax, got_ref = run_both(params, video, SCHEDULES[name], dtype="float32")
    for key in ("tokens", "pooled", "size", "embedding"):
        np.testing.assert_allclose(got_jax[key], got_ref[key], rtol=0, atol=2e-4, err_msg=key)


# --------------------------------------------------------------------------------------------------
# Pieces.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ckpt_frames", [None, 8])
def test_position_table_matches_tldr_jax(ckpt_frames):
    cfg = get_config("umt_b16", **dict(UMT, ckpt_num_frames=ckpt_frames))
    np.testing.assert_allclose(sinusoid_position_table(cfg).numpy(), video_pos_table(cfg), atol=1e-6)


@pytest.mark.parametrize("r", [0, 5, 0.25, (40, 30, 20), (0.5, 0.5, 0.5), (3, 0.1)])
def test_schedule_resolution_matches_tldr_jax(r):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tldr_jax.ScheduleCapWarning)
        expected = resolve_schedule(r, num_tokens=64, depth=3).r
    assert resolve_counts(r, 3, 64) == expected


def test_weights_are_really_shared():
    """A reference built from params differs from a randomly initialised one (the mapping is live)."""
    params = perturbed_params("umt_b16", **UMT)
    video = to_torch_video(random_video(params.config))
    with torch.no_grad():
        mapped = from_params(params)(video, 4)["tokens"]
        fresh = build_reference("umt_b16", **UMT)(video, 4)["tokens"]
    assert (mapped - fresh).abs().max() > 1e-3


def test_reference_rejects_cls_token_models():
    with pytest.raises(NotImplementedError, match="cls_token"):
        build_reference("vivit_b", depth=1, embed_dim=32, num_heads=2, mlp_dim=64, num_frames=4, img_size=32)

"""checkpoints_convert: golden UMT parity, HF VideoMAE / ViViT parity, original VideoMAE layout,
explicit drops, clear errors that leave nothing behind, and the command line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tldr_jax  # noqa: E402
from checkpoints_convert import (  # noqa: E402
    ConversionError,
    convert,
    convert_state_dict,
    convert_state_dict_detailed,
    detect_format,
    main,
)
from checkpoints_convert.formats import default_num_heads, infer_arch_name  # noqa: E402
from tldr_jax.checkpoint import load  # noqa: E402
from tldr_jax.models import sinusoid_table  # noqa: E402
from tldr_jax.schedule import ScheduleCapWarning  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "golden"
needs_golden = pytest.mark.skipif(
    not (GOLDEN / "golden_model.npz").is_file(),
    reason=f"golden vectors not found at {GOLDEN} (CI keeps shared/ beside the clone)",
)
SCHEDULES = ("ints", "const4", "fractions", "zero", "capped")
GOLDEN_OPTS = dict(num_heads=2, num_frames=4, img_size=48)
SMALL_OPTS = dict(num_heads=2, num_frames=2, img_size=32)  # for the synthetic UMT state dicts below
LABELS = ("walk", "run", "jump", "swim", "climb")


# --------------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------------


def _umt_state(depth: int = 2, width: int = 32, mlp: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random bare UMT encoder state dict (``encoder.*`` + ``pool_norm.*``), tubelet 1, patch 16."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return 0.1 * torch.randn(*shape, generator=g)

    sd = {
        "encoder.patch_embed.proj.weight": r(width, 3, 1, 16, 16),
        "encoder.patch_embed.proj.bias": r(width),
    }
    for i in range(depth):
        b = f"encoder.blocks.{i}."
        sd.update({
            b + "norm1.weight": 1 + r(width), b + "norm1.bias": r(width),
            b + "attn.q_bias": r(width), b + "attn.v_bias": r(width),
            b + "attn.qkv.weight": r(3 * width, width),
            b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
            b + "norm2.weight": 1 + r(width), b + "norm2.bias": r(width),
            b + "mlp.fc1.weight": r(mlp, width), b + "mlp.fc1.bias": r(mlp),
            b + "mlp.fc2.weight": r(width, mlp), b + "mlp.fc2.bias": r(width),
        })  # fmt: skip
    sd.update({
        "encoder.norm.weight": 1 + r(width), "encoder.norm.bias": r(width),
        "pool_norm.weight": 1 + r(width), "pool_norm.bias": r(width),
    })  # fmt: skip
    return sd


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every 1-D parameter (LayerNorm scales/biases, q/k/v and other biases) off its default."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def _hf_kwargs(**overrides) -> dict:
    kw = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        num_frames=4, num_labels=5, id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )  # fmt: skip
    kw.update(overrides)
    return kw


def _tiny_videomae(cls=None, **overrides) -> torch.nn.Module:
    cls = cls or transformers.VideoMAEForVideoClassification
    torch.manual_seed(0)
    overrides.setdefault("layer_norm_eps", 1e-6)
    model = cls(transformers.VideoMAEConfig(**_hf_kwargs(patch_size=16, tubelet_size=2, **overrides))).eval()
    _perturb(model)
    return model


def _tiny_vivit(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    overrides.setdefault("layer_norm_eps", 1e-6)
    config = transformers.VivitConfig(**_hf_kwargs(tubelet_size=[2, 16, 16], **overrides))
    model = transformers.VivitForVideoClassification(config).eval()
    _perturb(model)
    with torch.no_grad():
        model.vivit.embeddings.cls_token.normal_()
    return model


def _pixels(seed: int = 0) -> torch.Tensor:
    """HF layout ``(B, T, C, H, W)``."""
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ours(pixels: torch.Tensor) -> np.ndarray:
    """HF ``(B, T, C, H, W)`` -> tldr_jax ``(B, T, H, W, C)``."""
    return pixels.numpy().transpose(0, 1, 3, 4, 2)


def _nothing_at(out: Path) -> bool:
    """``out`` absent and no hidden temporary siblings left in its directory."""
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _save_pretrained(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    return path


# --------------------------------------------------------------------------------------------------
# Official UMT: golden parity.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, np.ndarray]]:
    """``{"f64": golden_model_f64.npz (the parity reference), "f32": golden_model.npz}``."""
    if not (GOLDEN / "golden_model_f64.npz").is_file():
        pytest.skip(f"golden_model_f64.npz not found at {GOLDEN}")
    data = {}
    for key, file in (("f64", "golden_model_f64.npz"), ("f32", "golden_model.npz")):
        with np.load(GOLDEN / file) as z:
            data[key] = {k: z[k] for k in z.files}
    return data


@pytest.fixture(scope="module", params=["umt_tiny.pth", "umt_tiny_wrapped.pth"])
def golden_converted(request, tmp_path_factory) -> tuple[str, Path]:
    """(checkpoint name, tldr_jax checkpoint directory) of each official golden checkpoint, converted."""
    name = request.param
    out = tmp_path_factory.mktemp("golden") / "ckpt"
    convert(GOLDEN / name, out, verbose=False, **GOLDEN_OPTS)
    return name, out


def _apply_golden(params, video, schedule, jit: bool):
    import jax

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleCapWarning)  # "capped" asks for more than N // 2
        if jit:
            return jax.jit(tldr_jax.apply, static_argnames="r")(params, video, r=schedule)
        return tldr_jax.apply(params, video, schedule)


@needs_golden
def test_umt_golden_checkpoint_config_and_provenance(golden_converted):
    name, out = golden_converted
    cfg = load(out).config
    assert (cfg.family, cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.tubelet_size) == ("umt", 3, 64, 2, 1)
    assert (cfg.norm_eps, cfg.gelu_approximate, cfg.qkv_bias) == (1e-6, False, "qv")
    info = json.loads((out / "config.json").read_text())
    src = info["metadata"]["source"]
    assert src["format"] == "umt"
    assert src["files"][0]["sha256"] == hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest()


@needs_golden
@pytest.mark.parametrize("jit", [False, True])
def test_umt_golden_parity(golden, golden_converted, jit):
    """Converted official checkpoint in float64 == the official code in float64 (1e-10), every schedule."""
    import jax
    from conftest import as_float64, assert_float64_parity, golden_schedule, golden_video

    truth = golden["f64"]
    with jax.enable_x64(True):
        params = as_float64(load(golden_converted[1]))
        video = golden_video(truth, np.float64)
        for s in SCHEDULES:
            res = _apply_golden(params, video, golden_schedule(truth, s), jit)
            assert res.tokens.shape == truth[f"{s}/tokens"].shape, s
            assert_float64_parity(res, truth, s)


@needs_golden
def test_umt_golden_float32_within_official_yardstick(golden, golden_converted):
    """The converted checkpoint in float32 is as close to the float64 truth as the official float32
    (RMS over all schedules within 2x; the reasons for this yardstick are in conftest.F32_FACTOR)."""
    import jax
    import jax.numpy as jnp
    from conftest import F32_FACTOR, golden_schedule, golden_video, official_f32_yardstick, rms_distance

    truth = golden["f64"]
    loaded = load(golden_converted[1])  # fresh (uncommitted) copies share test_api's compiled programs
    params = loaded.replace(tree=jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), loaded.tree))
    video = golden_video(truth)
    outputs = {}
    for s in SCHEDULES:
        res = _apply_golden(params, video, golden_schedule(truth, s), jit=False)
        assert res.tokens.dtype == np.float32 and res.tokens.shape == truth[f"{s}/tokens"].shape, s
        outputs[s] = {"tokens": res.tokens, "pooled": res.pooled, "size": res.size}
    ours = rms_distance(outputs, truth)
    official = official_f32_yardstick(truth, golden["f32"])
    for key, dist in ours.items():
        assert 0 < dist <= F32_FACTOR * official[key], (key, dist, official[key])


@needs_golden
def test_umt_full_checkpoint_keeps_vision_proj_and_lists_drops(capsys):
    bare = torch.load(GOLDEN / "umt_tiny.pth", weights_only=True, map_location="cpu")
    g = torch.Generator().manual_seed(1)
    model = {f"module.vision_encoder.{k}": v for k, v in bare.items()}
    model.update({
        "module.vision_proj.weight": torch.randn(16, 64, generator=g),
        "module.vision_proj.bias": torch.randn(16, generator=g),
        "module.vision_encoder.clip_decoder.0.head.weight": torch.zeros(8, 64),
        "module.clip_teacher.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 3),
        "module.text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(4, 4),
        "module.text_proj.weight": torch.zeros(2, 2),
        "module.itm_head.weight": torch.zeros(2, 2),
        "module.temp": torch.tensor(0.07),
    })  # fmt: skip
    conv = convert_state_dict_detailed({"model": model, "epoch": 3}, "auto", **GOLDEN_OPTS)
    printed = capsys.readouterr().out
    for group in ("clip_teacher", "clip_decoder", "text_encoder", "text_proj", "itm_head", "temp"):
        assert group in printed
    assert conv.format == "umt" and sum(len(v) for v in conv.dropped.values()) == 6
    params = conv.params
    assert params.config.vision_proj_dim == 16
    video = np.random.default_rng(0).normal(size=(1, 4, 48, 48, 3)).astype(np.float32)
    res = tldr_jax.apply(params, video)
    w, b = model["module.vision_proj.weight"].numpy(), model["module.vision_proj.bias"].numpy()
    np.testing.assert_allclose(np.asarray(res.embedding), np.asarray(res.pooled) @ w.T + b, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Hugging Face VideoMAE / ViViT parity.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [dict(qkv_bias=True, layer_norm_eps=1e-3), dict(qkv_bias=False, layer_norm_eps=1e-12)],
    ids=["qv_bias-eps1e-3", "no_bias-eps1e-12"],
)
def test_hf_videomae_logits(tmp_path, overrides):
    model = _tiny_videomae(**overrides)
    params = convert(_save_pretrained(model, tmp_path / "hf"), tmp_path / "ckpt", verbose=False)
    cfg = params.config
    assert cfg.qkv_bias == ("qv" if overrides["qkv_bias"] else "none")
    assert cfg.norm_eps == overrides["layer_norm_eps"] and not cfg.gelu_approximate
    assert (cfg.num_classes, cfg.pool_norm_eps, cfg.final_norm) == (5, 1e-5, False)
    assert params.labels == LABELS and load(tmp_path / "ckpt").labels == LABELS
    pixels = _pixels()
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    np.testing.assert_allclose(
        np.asarray(tldr_jax.apply(params, _ours(pixels), r=0).logits), expected, atol=1e-4
    )
    if overrides["qkv_bias"]:  # merging on (one case is enough: each schedule is a new compile)
        merged = tldr_jax.apply(params, _ours(pixels), r=2)
        assert np.isfinite(np.asarray(merged.logits)).all()
        assert merged.schedule.tokens == (8, 6, 4) and merged.tokens.shape[1] == merged.schedule.tokens[-1]


def test_hf_videomae_legacy_config_key(tmp_path):
    """Configs written before transformers 5 call the q/v bias flag ``qkv_bias``."""
    model = _tiny_videomae(qkv_bias=False)
    path = _save_pretrained(model, tmp_path / "hf")
    cfg = json.loads((path / "config.json").read_text())
    cfg["qkv_bias"] = cfg.pop("qv_bias")
    (path / "config.json").write_text(json.dumps(cfg))
    params = convert(path, tmp_path / "ckpt", verbose=False)
    assert params.config.qkv_bias == "none"
    with torch.no_grad():
        expected = model(pixel_values=_pixels()).logits.numpy()
    np.testing.assert_allclose(
        np.asarray(tldr_jax.apply(params, _ours(_pixels())).logits), expected, atol=1e-4
    )


def test_hf_videomae_bare_model_tokens(tmp_path, capsys):
    model = _tiny_videomae(cls=transformers.VideoMAEModel)
    params = convert(_save_pretrained(model, tmp_path / "hf"), tmp_path / "ckpt")
    assert "no fc_norm" in capsys.readouterr().out  # the synthesised pool_norm is announced
    assert params.config.num_classes == 0 and params.labels is None
    with torch.no_grad():
        expected = model(pixel_values=_pixels()).last_hidden_state.numpy()
    np.testing.assert_allclose(
        np.asarray(tldr_jax.apply(params, _ours(_pixels())).tokens), expected, atol=1e-4
    )


def test_hf_videomae_without_mean_pooling_is_refused(tmp_path):
    path = _save_pretrained(_tiny_videomae(use_mean_pooling=False), tmp_path / "hf")
    with pytest.raises(ConversionError, match="use_mean_pooling=False"):
        convert(path, tmp_path / "ckpt", verbose=False)
    assert _nothing_at(tmp_path / "ckpt")


@pytest.mark.parametrize("act", ["gelu_fast", "gelu"])
def test_hf_vivit_logits(tmp_path, act):
    model = _tiny_vivit(hidden_act=act)
    params = convert(_save_pretrained(model, tmp_path / "hf"), tmp_path / "ckpt", verbose=False)
    cfg = params.config
    assert (cfg.family, cfg.qkv_bias, cfg.cls_token, cfg.pos_embed, cfg.pool) == (
        "vivit", "qkv", True, "learned", "cls",
    )  # fmt: skip
    assert cfg.gelu_approximate == (act == "gelu_fast") and params.labels == LABELS
    pixels = _pixels(1)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    np.testing.assert_allclose(
        np.asarray(tldr_jax.apply(params, _ours(pixels), r=0).logits), expected, atol=1e-4
    )
    if act == "gelu_fast":
        merged = tldr_jax.apply(params, _ours(pixels), r=2)
        assert np.isfinite(np.asarray(merged.logits)).all()
        assert merged.schedule.tokens == (9, 7, 5) and merged.tokens.shape[1] == merged.schedule.tokens[-1]
    # transformers >= 5 renames ViViT modules in memory; both namings give the same tree.
    in_memory = convert_state_dict(model.state_dict(), "auto", hf_config=model.config, verbose=False)
    for a, b in zip(*(tldr_jax.checkpoint.flatten_tree(p.tree).values() for p in (in_memory, params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("layout", ["sharded_safetensors", "pytorch_model_bin"])
def test_hf_directory_layouts(tmp_path, layout):
    model = _tiny_vivit()
    reference = convert(_save_pretrained(model, tmp_path / "hf"), tmp_path / "ref", verbose=False)
    other = tmp_path / layout
    if layout == "sharded_safetensors":
        model.save_pretrained(other, max_shard_size="20KB")
        assert (other / "model.safetensors.index.json").is_file()
    else:
        other.mkdir()
        (other / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
        torch.save(model.state_dict(), other / "pytorch_model.bin")
    params = convert(other, tmp_path / "ckpt", verbose=False)
    for a, b in zip(*(tldr_jax.checkpoint.flatten_tree(p.tree).values() for p in (params, reference))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    files = json.loads((tmp_path / "ckpt" / "config.json").read_text())["metadata"]["source"]["files"]
    assert len(files) >= 2 and all(len(f["sha256"]) == 64 for f in files)


def test_hf_vivit_wrong_frame_count_is_a_shape_error(tmp_path):
    path = _save_pretrained(_tiny_vivit(), tmp_path / "hf")
    with pytest.raises(ConversionError, match=r"(?s)position_embeddings.*pos_embed.*--num-frames"):
        convert(path, tmp_path / "ckpt", num_frames=8, verbose=False)
    assert _nothing_at(tmp_path / "ckpt")


def test_num_classes_zero_drops_the_head_explicitly(tmp_path, capsys):
    model = _tiny_videomae()
    params = convert(_save_pretrained(model, tmp_path / "hf"), tmp_path / "ckpt", num_classes=0)
    assert "classifier head" in capsys.readouterr().out
    assert params.config.num_classes == 0 and "head" not in params.tree and params.labels is None
    with pytest.raises(ConversionError, match="--num-classes 5"):
        convert(tmp_path / "hf", tmp_path / "other", num_classes=7, verbose=False)


# --------------------------------------------------------------------------------------------------
# Original VideoMAE / UMT single-modality layout.
# --------------------------------------------------------------------------------------------------


def _original_videomae_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tiny HF VideoMAE (q/v bias) in the original ``modeling_finetune.py`` layout."""
    sd = model.state_dict()
    a = "videomae.encoder.layer.{i}."
    out = {
        "patch_embed.proj.weight": sd["videomae.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["videomae.embeddings.patch_embeddings.projection.bias"],
        "fc_norm.weight": sd["fc_norm.weight"], "fc_norm.bias": sd["fc_norm.bias"],
        "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"],
    }  # fmt: skip
    per_layer = {
        "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
    }  # fmt: skip
    for i in range(model.config.num_hidden_layers):
        hf = a.format(i=i)
        for ours, theirs in per_layer.items():
            for w in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{w}"] = sd[f"{hf}{theirs}.{w}"]
        qkv = [sd[f"{hf}attention.attention.{n}.weight"] for n in ("query", "key", "value")]
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv, dim=0)
        out[f"blocks.{i}.attn.q_bias"] = sd[f"{hf}attention.attention.query.bias"]
        out[f"blocks.{i}.attn.v_bias"] = sd[f"{hf}attention.attention.value.bias"]
    return out


def test_original_videomae_layout(capsys):
    model = _tiny_videomae()
    state = _original_videomae_state(model)
    state["pos_embed"] = torch.from_numpy(sinusoid_table(8, 32).astype(np.float32))[None]
    assert detect_format({f"module.{k}" for k in state}) == "videomae_pth"
    # num_frames is read off the stored pos_embed (8 tokens at 32 px, tubelet 2 -> 4 frames);
    # HF's fc_norm uses eps 1e-5 where the original code uses 1e-6, hence the override.
    params = convert_state_dict(
        {"module": state}, "auto", num_heads=2, img_size=32, config_overrides={"pool_norm_eps": 1e-5}
    )
    assert "pos_embed verified" in capsys.readouterr().out
    assert params.config.num_frames == 4 and params.config.family == "videomae"
    with torch.no_grad():
        expected = model(pixel_values=_pixels()).logits.numpy()
    np.testing.assert_allclose(
        np.asarray(tldr_jax.apply(params, _ours(_pixels())).logits), expected, atol=1e-4
    )


def test_original_videomae_stored_pos_embed_must_fit_a_frame_count():
    # A stored (not sinusoid) table is loaded as the learned position embedding (tests at the end of
    # this file); one whose 7 tokens are no whole number of 2x2-patch frames is refused.
    state = _original_videomae_state(_tiny_videomae())
    state["pos_embed"] = torch.randn(1, 7, 32)
    with pytest.raises(ConversionError, match=r"for 7 tokens.*2x2 patches.*fits no frame count") as err:
        convert_state_dict(state, "videomae_pth", num_heads=2, img_size=32, verbose=False)
    assert "--ignore" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Architecture inference.
# --------------------------------------------------------------------------------------------------


def test_arch_name_and_head_defaults():
    assert infer_arch_name("umt", 768, 12) == "umt_b16"
    assert infer_arch_name("umt", 1024, 24) == "umt_l16"
    assert infer_arch_name("videomae", 1280, 32) == "videomae_h"
    assert infer_arch_name("vivit", 768, 12) == "vivit_b"
    assert infer_arch_name("umt", 64, 3) == "umt_w64_d3"
    assert [default_num_heads(w) for w in (384, 768, 1024, 1280, 32)] == [6, 12, 16, 16, 1]


def test_safetensors_file_and_progress_bar(tmp_path, capsys):
    from safetensors.torch import save_file

    src = tmp_path / "umt.safetensors"
    save_file(_umt_state(), src)
    params = convert(src, tmp_path / "ckpt", progress=True, verbose=False, **SMALL_OPTS)
    assert "converting" in capsys.readouterr().err  # the tqdm bar (on stderr)
    assert params.config.family == "umt" and load(tmp_path / "ckpt").config == params.config


def test_options_fill_in_what_weights_cannot_say():
    params = convert_state_dict(_umt_state(), "umt", verbose=False, arch="my_umt", **SMALL_OPTS)
    assert params.config.name == "my_umt" and params.config.num_heads == 2
    default = convert_state_dict(_umt_state(), "umt", verbose=False, img_size=32)
    assert default.config.num_frames == 12 and default.config.num_heads == 1  # UMT default frames
    with pytest.raises(ConversionError, match="--num-heads"):
        convert_state_dict(_umt_state(), "umt", verbose=False, num_heads=5, img_size=32)


# --------------------------------------------------------------------------------------------------
# Errors: clear, typed, and nothing left at OUT.
# --------------------------------------------------------------------------------------------------


def _write_pth(path: Path, state: dict) -> Path:
    torch.save(state, path)
    return path


def test_truncated_file(tmp_path):
    good = _write_pth(tmp_path / "good.pth", _umt_state())
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"bad\.pth is truncated or corrupt"):
        convert(bad, tmp_path / "out", **SMALL_OPTS)
    assert _nothing_at(tmp_path / "out")


def test_non_checkpoint_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text\n")
    with pytest.raises(ConversionError, match="not a PyTorch checkpoint"):
        convert(notes, tmp_path / "out")
    assert _nothing_at(tmp_path / "out")


def test_pickled_objects_are_not_loaded(tmp_path):
    import argparse

    src = _write_pth(tmp_path / "full.pth", {"model": _umt_state(), "args": argparse.Namespace(lr=1)})
    with pytest.raises(ConversionError, match=r"argparse\.Namespace.*weights_only=True"):
        convert(src, tmp_path / "out")
    assert _nothing_at(tmp_path / "out")


def test_unknown_architecture(tmp_path):
    src = _write_pth(
        tmp_path / "resnet.pth", {"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(2)}
    )
    with pytest.raises(ConversionError, match=r"unknown architecture.*conv1\.weight.*Supported: umt"):
        convert(src, tmp_path / "out")
    assert _nothing_at(tmp_path / "out")


def test_missing_key(tmp_path):
    state = _umt_state()
    del state["encoder.blocks.1.mlp.fc1.bias"]
    src = _write_pth(tmp_path / "m.pth", {"model": {f"vision_encoder.{k}": v for k, v in state.items()}})
    with pytest.raises(ConversionError) as e:
        convert(src, tmp_path / "out", **SMALL_OPTS)
    assert "Missing source keys (1)" in str(e.value)
    assert "vision_encoder.encoder.blocks.1.mlp.fc1.bias -> blocks_1/mlp/fc1/bias" in str(e.value)
    assert "Fix:" in str(e.value)
    assert _nothing_at(tmp_path / "out")


def test_wrong_shape(tmp_path):
    state = _umt_state()
    state["encoder.blocks.1.mlp.fc1.bias"] = torch.zeros(63)
    src = _write_pth(tmp_path / "s.pth", state)
    with pytest.raises(
        ConversionError, match=r"encoder\.blocks\.1\.mlp\.fc1\.bias \(63,\) -> .*expects \(64,\)"
    ):
        convert(src, tmp_path / "out", **SMALL_OPTS)
    assert _nothing_at(tmp_path / "out")


def test_unexpected_key_needs_an_explicit_ignore(tmp_path, capsys):
    state = _umt_state()
    state["encoder.blocks.0.gamma_1"] = torch.ones(32)
    src = _write_pth(tmp_path / "u.pth", state)
    with pytest.raises(
        ConversionError, match=r"Unexpected source keys \(1\):\n\s+encoder\.blocks\.0\.gamma_1"
    ):
        convert(src, tmp_path / "out", **SMALL_OPTS)
    assert _nothing_at(tmp_path / "out")
    conv = convert_state_dict_detailed(state, "umt", ignore=[r"encoder\.blocks\.\d+\.gamma"], **SMALL_OPTS)
    assert "gamma" in capsys.readouterr().out
    assert list(conv.dropped.values()) == [["encoder.blocks.0.gamma_1"]]


def test_existing_output_is_kept(tmp_path):
    src = _write_pth(tmp_path / "ok.pth", _umt_state())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="--overwrite"):
        convert(src, out, verbose=False, **SMALL_OPTS)
    assert (out / "keep.txt").read_text() == "mine"
    convert(src, out, overwrite=True, verbose=False, **SMALL_OPTS)
    assert load(out).config.depth == 2 and not (out / "keep.txt").exists()


def test_hf_download_failure_is_clear(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConversionError, match="cannot download hf:MCG-NJU/videomae-base.*local path"):
        convert("hf:MCG-NJU/videomae-base", tmp_path / "out")
    assert _nothing_at(tmp_path / "out")


def test_hf_directory_without_weights(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "videomae"}))
    with pytest.raises(ConversionError, match="no weights"):
        convert(tmp_path / "hf", tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


def test_cli_success_prints_one_summary_line(tmp_path, capsys):
    src = _write_pth(tmp_path / "ok.pth", _umt_state())
    argv = [str(src), str(tmp_path / "out"), "--num-heads", "2", "--num-frames", "2", "--img-size", "32"]
    assert main([*argv, "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("converted") and "umt_w32_d2" in lines[0]
    assert load(tmp_path / "out").config.num_frames == 2


def test_cli_error_exit_code_and_message(tmp_path, capsys):
    state = _umt_state()
    del state["pool_norm.bias"]
    src = _write_pth(tmp_path / "bad.pth", state)
    assert main([str(src), str(tmp_path / "out"), "--num-heads", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pool_norm.bias -> pool_norm/bias" in err
    assert _nothing_at(tmp_path / "out")


def test_cli_subprocess_has_no_traceback(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    proc = subprocess.run(
        [sys.executable, "-m", "checkpoints_convert", str(notes), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "not a PyTorch checkpoint" in proc.stderr
    assert _nothing_at(tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# Official single-modality fine-tuning checkpoints that store their position table (tests/data).
# --------------------------------------------------------------------------------------------------

DATA = Path(__file__).resolve().parent / "data"
# case -> (tubelet, frames, img_size); see tests/data/README.md for how the official code made them.
OFFICIAL_FT = {"t1_f4": (1, 4, 24), "t1_f16": (1, 16, 24), "t2_f16": (2, 16, 16)}
# r = 0, fixed tables, no saliency amplification: float32 logits (|logits| <= 2.4) agree to a few ulp
# (max 5.5e-7 measured, ~2 ulp at 2.4; 2e-6 is ~7 ulp) -- only summation order differs. The same
# weights and input cast to float64 on both sides agree to ~1e-15 (measured), asserted at 1e-10.
OFFICIAL_FT_ATOL32 = 2e-6
OFFICIAL_FT_ATOL64 = 1e-10


@pytest.fixture(scope="module")
def official_ft() -> dict[str, np.ndarray]:
    with np.load(DATA / "official_finetune_logits.npz") as data:
        return {k: data[k] for k in data.files}


def _official_ft_video(ref: dict[str, np.ndarray], case: str, frames: int, img: int) -> np.ndarray:
    """The case's input ``(2, T, H, W, 3)`` float32, regenerated from the frozen legacy NumPy stream."""
    seed = int(ref[f"{case}/video_seed"])
    video = np.random.RandomState(seed).standard_normal((2, frames, img, img, 3)).astype(np.float32)
    assert video.astype(np.float64).sum() == pytest.approx(float(ref[f"{case}/video_sum"]), abs=1e-6)
    return video


def _assert_official_logits(params, video: np.ndarray, ref: dict[str, np.ndarray], case: str) -> None:
    import jax
    import jax.numpy as jnp

    got = np.asarray(tldr_jax.apply(params, video).logits)
    np.testing.assert_allclose(got, ref[f"{case}/logits_float32"], rtol=0, atol=OFFICIAL_FT_ATOL32)
    with jax.enable_x64(True):
        out = tldr_jax.apply(params, jnp.asarray(video, jnp.float64), dtype=jnp.float64)
        got64 = np.asarray(out.logits)
    assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, ref[f"{case}/logits_float64"], rtol=0, atol=OFFICIAL_FT_ATOL64)


@pytest.mark.parametrize("case", sorted(OFFICIAL_FT))
def test_official_finetune_stored_pos_embed_is_loaded(tmp_path, capsys, official_ft, case):
    tubelet, frames, img = OFFICIAL_FT[case]
    src = DATA / f"official_finetune_{case}.pth"
    stored = torch.load(src, weights_only=True)["pos_embed"]
    convert(src, tmp_path / "ckpt", num_heads=2, img_size=img)
    log = capsys.readouterr().out
    assert "pos_embed (1, " in log and "stored by the checkpoint (not the fixed sinusoid table" in log
    assert f"the model now runs on exactly {frames} frames of {img}x{img} px" in log
    assert "--ignore" not in log
    assert "stored by the checkpoint" in (tmp_path / "ckpt" / "config.json").read_text()  # provenance
    params = load(tmp_path / "ckpt")
    cfg = params.config
    assert (cfg.family, cfg.pos_embed, cfg.cls_token) == ("videomae", "learned", False)
    assert (cfg.num_frames, cfg.tubelet_size) == (frames, tubelet)
    np.testing.assert_array_equal(np.asarray(params.tree["pos_embed"]), stored.numpy())
    video = _official_ft_video(official_ft, case, frames, img)
    _assert_official_logits(params, video, official_ft, case)
    refused = f"learned position embeddings for {frames} frames.*exactly {frames}"
    with pytest.raises(ValueError, match=refused):
        tldr_jax.apply(params, video[:, : frames - tubelet])


def test_official_finetune_fixed_table_is_still_recomputed(capsys, official_ft):
    # 8 temporal positions of 14x14 patches: the official code keeps the fixed table out of the
    # state dict. With it absent or stored, the table is recomputed and the frame count stays free.
    state = torch.load(DATA / "official_finetune_t2_f16.pth", weights_only=True)
    del state["pos_embed"]
    video = _official_ft_video(official_ft, "t2_f16_fixed", 16, 112)
    params = convert_state_dict(state, num_heads=2, img_size=112, verbose=False)
    assert (params.config.pos_embed, params.config.num_frames) == ("sincos", 16)
    _assert_official_logits(params, video, official_ft, "t2_f16_fixed")
    state["pos_embed"] = torch.from_numpy(sinusoid_table(1568, 32).astype(np.float32))[None]
    again = convert_state_dict(state, num_heads=2, img_size=112)
    log = capsys.readouterr().out
    assert "pos_embed verified as the fixed sinusoid table for 1568 tokens" in log
    assert "stored by the checkpoint" not in log and again.config == params.config
    assert tldr_jax.apply(again, video[:, :8]).logits.shape == (2, 5)  # another frame count runs


def test_official_finetune_stored_pos_embed_options(tmp_path, capsys):
    src = DATA / "official_finetune_t1_f16.pth"
    state = torch.load(src, weights_only=True)
    ok = convert_state_dict(state, num_heads=2, img_size=24, num_frames=16, verbose=False)
    assert (ok.config.pos_embed, ok.config.num_frames) == ("learned", 16)
    with pytest.raises(ConversionError, match=r"--num-frames 8 contradicts .*exactly 16 frames at 24 px"):
        convert_state_dict(state, num_heads=2, img_size=24, num_frames=8, verbose=False)
    with pytest.raises(ConversionError, match=r"--ckpt-num-frames 8 .*omit --ckpt-num-frames"):
        convert_state_dict(state, num_heads=2, img_size=24, ckpt_num_frames=8, verbose=False)
    # 144 tokens at the default 224 px (patch 8: 28x28 = 784 per frame) fit no frame count.
    no_fit = r"144 tokens.*28x28 patches \(224 px, patch 8\).*fits no frame count.*--img-size"
    with pytest.raises(ConversionError, match=no_fit):
        convert_state_dict(state, num_heads=2, verbose=False)
    argv = [str(src), str(tmp_path / "out"), "--num-heads", "2", "--img-size", "24", "--num-frames", "4"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --num-frames 4 contradicts") and "--ignore" not in err
    assert _nothing_at(tmp_path / "out")


def test_one_table_of_converters_by_kind(monkeypatch):
    """The converter of a source is chosen in one place (checkpoints_convert.dispatch), by format or by
    the options only that kind takes; another kind's option is refused before anything is read."""
    from checkpoints_convert import dispatch

    assert dispatch.converter_for("auto", {}) is dispatch.VISION
    assert dispatch.converter_for("umt", {"vocab": None}) is dispatch.VISION
    assert dispatch.converter_for("auto", {"vocab": "vocab.txt"}).kind == "umt_retrieval"
    assert dispatch.converter_for("umt_retrieval", {}).kind == "umt_retrieval"
    assert all(callable(c.function()) for c in (*dispatch.CONVERTERS, dispatch.VISION))
    toy = dispatch.Converter("toy_qa", "checkpoints_convert.dispatch:_toy", formats=("toy_qa",),
                             options=("answers",))
    with monkeypatch.context() as m:  # a new kind is one entry; its options are kept from the others
        m.setattr(dispatch, "_toy", lambda src, out, **kw: (src, out, kw), raising=False)
        m.setattr(dispatch, "CONVERTERS", (*dispatch.CONVERTERS, toy))
        assert dispatch.converter_for("toy_qa", {"vocab": None}) is toy
        got = dispatch.convert_detailed("a", "b", fmt="toy_qa", vocab=None, text_config=None, answers=1)
        assert got == ("a", "b", {"fmt": "toy_qa", "overwrite": False, "answers": 1})
        with pytest.raises(ConversionError, match="vocab does not apply to a toy_qa conversion"):
            dispatch.convert_detailed("a", "b", fmt="toy_qa", vocab="vocab.txt")

"""tldr_jax.checkpoint: save/load round trip, atomic writes, and clear load errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import tldr_jax
from tldr_jax import checkpoint as ckpt
from tldr_jax.checkpoint import CheckpointError, CheckpointNotFoundError
from tldr_jax.configs import get_config

TINY = dict(depth=2, embed_dim=32, num_heads=2, mlp_dim=64, img_size=32, num_frames=4)


@pytest.fixture(scope="module")
def params() -> tldr_jax.Params:
    """A tiny ViViT (cls token, learned pos_embed, qkv bias, head) with labels."""
    p = tldr_jax.init(0, "vivit_b", num_classes=3, **TINY)
    return tldr_jax.Params(tree=p.tree, config=p.config, labels=("a", "b", "c"))


def _leaves_equal(a: dict, b: dict) -> bool:
    fa, fb = ckpt.flatten_tree(a), ckpt.flatten_tree(b)
    return fa.keys() == fb.keys() and all(
        np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype and np.array_equal(fa[k], fb[k]) for k in fa
    )


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_round_trip_is_bitwise(tmp_path, params):
    path = tmp_path / "ckpt"
    written = ckpt.save(params, path, metadata={"note": "hello"})
    assert written == path.absolute()
    loaded = ckpt.load(path)
    assert loaded.config == params.config
    assert loaded.labels == params.labels
    assert _leaves_equal(loaded.tree, params.tree)
    info = json.loads((path / "config.json").read_text())
    assert info["format"] == ckpt.FORMAT and info["format_version"] == ckpt.FORMAT_VERSION
    assert info["tldr_jax_version"] == tldr_jax.__version__
    assert info["metadata"] == {"note": "hello"}
    assert info["config"] == params.config.to_dict()
    assert _entries(tmp_path) == ["ckpt"]  # no temporary siblings left behind


def test_loaded_params_run(tmp_path, params):
    ckpt.save(params, tmp_path / "c")
    loaded = ckpt.load(tmp_path / "c")
    video = np.random.default_rng(0).normal(size=(1, 4, 32, 32, 3)).astype(np.float32)
    a = tldr_jax.apply(params, video, r=1).logits
    b = tldr_jax.apply(loaded, video, r=1).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_refuses_overwrite_and_overwrites_on_request(tmp_path, params):
    path = tmp_path / "ckpt"
    ckpt.save(params, path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ckpt.save(params, path)
    other = tldr_jax.init(1, params.config)
    ckpt.save(other, path, overwrite=True)
    assert _leaves_equal(ckpt.load(path).tree, other.tree)
    assert ckpt.load(path).labels is None
    assert _entries(tmp_path) == ["ckpt"]


def _failing_write_tree(directory: Path, tree: dict) -> None:
    (directory / ckpt.PARAMS_DIR).mkdir()
    (directory / ckpt.PARAMS_DIR / "partial").write_bytes(b"half a checkpoint")
    raise RuntimeError("disk full (simulated)")


def test_failed_save_leaves_nothing(tmp_path, params, monkeypatch):
    monkeypatch.setattr(ckpt, "_write_tree", _failing_write_tree)
    with pytest.raises(RuntimeError, match="simulated"):
        ckpt.save(params, tmp_path / "ckpt")
    assert _entries(tmp_path) == []


def test_failed_overwrite_keeps_the_old_checkpoint(tmp_path, params, monkeypatch):
    path = tmp_path / "ckpt"
    ckpt.save(params, path)
    monkeypatch.setattr(ckpt, "_write_tree", _failing_write_tree)
    with pytest.raises(RuntimeError, match="simulated"):
        ckpt.save(tldr_jax.init(1, params.config), path, overwrite=True)
    assert _entries(tmp_path) == ["ckpt"]
    assert _leaves_equal(ckpt.load(path).tree, params.tree)


def test_unserialisable_metadata_leaves_nothing(tmp_path, params):
    with pytest.raises(TypeError):
        ckpt.save(params, tmp_path / "ckpt", metadata={"bad": object()})
    assert _entries(tmp_path) == []


def test_save_refuses_a_tree_that_does_not_match_its_config(tmp_path, params):
    tree = dict(params.tree)
    del tree["head"]
    bad = tldr_jax.Params(tree=tree, config=params.config)
    with pytest.raises(CheckpointError, match="head/kernel"):
        ckpt.save(bad, tmp_path / "ckpt")
    assert _entries(tmp_path) == []


def test_load_missing_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as e:
        ckpt.load(tmp_path / "nope")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)


def test_load_a_file_suggests_the_converter(tmp_path):
    f = tmp_path / "model.pth"
    f.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="checkpoints_convert"):
        ckpt.load(f)


def test_load_missing_config(tmp_path, params):
    ckpt.save(params, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        ckpt.load(tmp_path / "ckpt")


def test_load_hf_directory_suggests_the_converter(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "videomae"}))
    with pytest.raises(CheckpointError, match="Hugging Face"):
        ckpt.load(tmp_path)


def _edit_config(path: Path, edit) -> None:
    cfg_file = path / "config.json"
    info = json.loads(cfg_file.read_text())
    edit(info)
    cfg_file.write_text(json.dumps(info))


def test_load_newer_format_version(tmp_path, params):
    ckpt.save(params, tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda i: i.update(format_version=ckpt.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="Upgrade tldr_jax"):
        ckpt.load(tmp_path / "ckpt")


def test_load_unknown_config_field(tmp_path, params):
    ckpt.save(params, tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda i: i["config"].update(future_field=1))
    with pytest.raises(CheckpointError, match="future_field"):
        ckpt.load(tmp_path / "ckpt")


def test_load_reports_tree_mismatch(tmp_path, params):
    ckpt.save(params, tmp_path / "ckpt")

    def edit(info: dict) -> None:
        info["config"].update(depth=3, mlp_dim=48)

    _edit_config(tmp_path / "ckpt", edit)
    with pytest.raises(CheckpointError) as e:
        ckpt.load(tmp_path / "ckpt")
    msg = str(e.value)
    assert "Missing" in msg and "blocks_2/mlp/fc1/kernel" in msg
    assert "Shape mismatches" in msg and "blocks_0/mlp/fc1/kernel: (32, 64) vs (32, 48)" in msg


def test_load_reports_unexpected_entries(tmp_path, params):
    ckpt.save(params, tmp_path / "ckpt")
    _edit_config(tmp_path / "ckpt", lambda i: i["config"].update(num_classes=0))
    with pytest.raises(CheckpointError, match=r"Unexpected[^\n]*\n\s+head/"):
        ckpt.load(tmp_path / "ckpt")


def test_load_missing_params_dir(tmp_path, params):
    import shutil

    ckpt.save(params, tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt" / "params")
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load(tmp_path / "ckpt")


def test_expected_shapes_is_abstract():
    shapes = ckpt.expected_shapes(get_config("videomae_h"))  # 632M params: must not allocate
    assert shapes["blocks_31/mlp/fc1/kernel"] == (1280, 5120)
    assert shapes["patch_embed/proj/kernel"] == (2, 16, 16, 3, 1280)


def test_flatten_unflatten_round_trip(params):
    flat = ckpt.flatten_tree(params.tree)
    assert "blocks_1/attn/qkv/bias" in flat
    again = ckpt.unflatten_tree(flat)
    assert jax.tree_util.tree_structure(again) == jax.tree_util.tree_structure(params.tree)


@pytest.mark.parametrize("name", ["umt", "videomae", "vivit"])
def test_checkpoints_written_before_the_redesign_load(name):
    """Checkpoints saved by the code before the module redesign (git b31c86a, ``tests/data/README.md``)
    load into the same parameter tree and give the outputs that code computed."""
    root = Path(__file__).parent / "data" / "checkpoints_b31c86a"
    params = ckpt.load(root / name)
    assert set(ckpt.flatten_tree(params.tree)) == set(ckpt.expected_shapes(params.config))
    with np.load(root / "outputs.npz") as ref:
        out = tldr_jax.apply(params, ref["video"], r=(3, 2))
        for field in ("tokens", "pooled", "size", "logits", "embedding"):
            key = f"{name}_{field}"
            if key in ref.files:
                np.testing.assert_allclose(np.asarray(getattr(out, field)), ref[key], rtol=1e-5, atol=1e-6)
            else:
                assert getattr(out, field) is None
    if name != "umt":
        assert params.labels == ("class_0", "class_1", "class_2")

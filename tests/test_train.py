"""Fine-tuning: a synthetic motion task learnt with merging on, exact resume, bad inputs, the CLI.

Every run shares one tiny architecture and one set of step settings (``FC``), so the train and eval
steps compile once for the whole module (the linear-probe test compiles its own).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import warnings

import jax
import numpy as np
import pytest

import tldr_jax
from tldr_jax import data, train

TINY = dict(depth=2, num_heads=2, embed_dim=32, mlp_dim=64, num_frames=4, img_size=32, patch_size=8)
NUM_CLASSES = 4
FC = dict(
    batch_size=16,
    lr=3e-3,
    warmup_epochs=1.0,
    weight_decay=0.05,
    layer_decay=0.9,
    label_smoothing=0.1,
    train_r=8,
    eval_r=8,
    method="vid_tldr",
    workers=2,
    progress=False,
)


@pytest.fixture(scope="module")
def base_params() -> tldr_jax.Params:
    """A random tiny VideoMAE-layout classifier with a 4-way head (32 tokens; r=8: 32 -> 24 -> 16)."""
    return tldr_jax.init(0, "videomae_s", num_classes=NUM_CLASSES, **TINY)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Train/val class folders of .npy clips (up/down/left/right), with two unreadable train files."""
    root = tmp_path_factory.mktemp("motion")
    videos, labels, classes = data.moving_square(256, num_classes=NUM_CLASSES, seed=0)
    data.save_npy_folder(root / "train", videos, labels, classes)
    videos, labels, classes = data.moving_square(64, num_classes=NUM_CLASSES, seed=1)
    data.save_npy_folder(root / "val", videos, labels, classes)
    (root / "train" / "left" / "corrupt.npy").write_bytes(b"this is not a numpy file")
    (root / "train" / "up" / "broken.mp4").write_bytes(b"\x00\x01 not a video")
    return root


@pytest.fixture(scope="module")
def trained(base_params, folders, tmp_path_factory):
    """One fine-tuning run on the folder task (merging on), with a best-model export."""
    out = tmp_path_factory.mktemp("run")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train.finetune(
            base_params,
            folders / "train",
            folders / "val",
            epochs=8,
            ckpt_dir=out / "state",
            export=out / "best",
            **FC,
        )
    result.seconds = time.perf_counter() - start
    result.warnings = [w for w in caught if issubclass(w.category, data.SkippedClipWarning)]
    return result


# --------------------------------------------------------------------------------------------------
# Learning, export, skipped clips.
# --------------------------------------------------------------------------------------------------


def test_synthetic_motion_task_learns_with_merging(trained):
    assert trained.steps == trained.total_steps == 8 * (258 // 16)
    assert trained.best_top1 >= 0.9, trained.history  # chance is 0.25
    last = trained.history[-1]
    assert last["count"] == 64 and last["top5"] == 1.0  # 4 classes: top-5 is trivially 1
    assert trained.params.labels == ("down", "left", "right", "up")  # the sorted class folder names
    assert trained.clips_per_s > 0
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(trained.params.tree))


def test_unreadable_clips_are_skipped_and_reported(trained):
    names = sorted(k.rsplit("/", 1)[-1] for k in trained.skipped)
    assert names == ["broken.mp4", "corrupt.npy"]
    assert all(reason for reason in trained.skipped.values())
    warned = " ".join(str(w.message) for w in trained.warnings)
    assert "corrupt.npy" in warned and "broken.mp4" in warned


def test_best_model_export_roundtrip(trained):
    try:
        from tldr_jax import checkpoint
    except ImportError:
        pytest.skip("tldr_jax.checkpoint (save/load) is not available in this build yet")
    assert trained.export_path is not None and trained.export_path.exists()
    loaded = checkpoint.load(trained.export_path)
    assert loaded.labels == trained.params.labels
    assert loaded.config == trained.best_params.config
    for a, b in zip(
        jax.tree_util.tree_leaves(loaded.tree), jax.tree_util.tree_leaves(trained.best_params.tree)
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------------
# Exact resume.
# --------------------------------------------------------------------------------------------------


def _arrays(seed: int, num: int):
    return data.moving_square(num, num_classes=NUM_CLASSES, seed=seed)


class _CtrlC(data.ArrayDataset):
    """An in-memory dataset that raises KeyboardInterrupt (once) at its ``after``-th clip load."""

    def __init__(self, videos, labels, classes, after: int):
        super().__init__(videos, labels, classes)
        self.calls, self.after, self.lock = 0, after, threading.Lock()

    def load(self, index: int) -> np.ndarray:
        with self.lock:
            self.calls += 1
            if self.calls == self.after:
                raise KeyboardInterrupt
        return super().load(index)


def test_resume_gives_the_uninterrupted_result(base_params, tmp_path):
    train_set, val_set = _arrays(2, 64), _arrays(3, 32)
    kw = dict(FC, epochs=2, save_every=4)
    full = train.finetune(base_params, train_set, val_set, ckpt_dir=tmp_path / "a", **kw)
    part = train.finetune(base_params, train_set, val_set, ckpt_dir=tmp_path / "b", stop_at=3, **kw)
    assert part.steps == 3 and part.resumed_from is None
    rest = train.finetune(base_params, train_set, val_set, ckpt_dir=tmp_path / "b", **kw)
    assert rest.resumed_from == 3 and rest.steps == full.steps == 8
    for a, b in zip(jax.tree_util.tree_leaves(full.params.tree), jax.tree_util.tree_leaves(rest.params.tree)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7)
    assert rest.history == full.history  # evaluations and per-epoch training statistics
    assert rest.best_top1 == full.best_top1 and rest.best_step == full.best_step
    # Ctrl-C while the batch of step 3 loads: the state of step 3 is saved, and a rerun resumes it.
    with pytest.raises(KeyboardInterrupt):
        train.finetune(
            base_params, _CtrlC(*train_set, after=3 * 16 + 1), val_set, ckpt_dir=tmp_path / "c", **kw
        )
    resumed = train.finetune(base_params, train_set, val_set, ckpt_dir=tmp_path / "c", **kw)
    assert resumed.resumed_from == 3
    for a, b in zip(
        jax.tree_util.tree_leaves(full.params.tree), jax.tree_util.tree_leaves(resumed.params.tree)
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A finished run resumes to "nothing left to do"; different settings are refused.
    again = train.finetune(base_params, train_set, val_set, ckpt_dir=tmp_path / "b", **kw)
    assert again.resumed_from == 8 and again.steps == 8
    with pytest.raises(ValueError, match="different settings.*lr"):
        train.finetune(base_params, train_set, None, ckpt_dir=tmp_path / "b", **{**kw, "lr": 1e-2})


def test_data_order_is_a_function_of_seed_and_epoch():
    a, b = data.epoch_order(50, 3, 1), data.epoch_order(50, 3, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.epoch_order(50, 3, 2))
    assert sorted(a.tolist()) == list(range(50))


# --------------------------------------------------------------------------------------------------
# Optimiser pieces.
# --------------------------------------------------------------------------------------------------


def test_layer_wise_lr_scales_and_weight_decay_mask(base_params):
    tree = base_params.tree
    scales = train.layer_scales(tree, depth=2, decay=0.5)
    assert scales["patch_embed"]["proj"]["kernel"] == 0.5**3
    assert scales["blocks_0"]["mlp"]["fc1"]["kernel"] == 0.5**2
    assert scales["blocks_1"]["attn"]["q_bias"] == 0.5
    assert scales["head"]["kernel"] == scales["pool_norm"]["scale"] == 1.0
    mask = train.decay_mask(tree)
    assert mask["blocks_0"]["attn"]["qkv"]["kernel"] and mask["head"]["kernel"]
    assert not mask["head"]["bias"] and not mask["blocks_0"]["norm1"]["scale"]
    assert train.layer_id("pos_embed", 12) == train.layer_id("cls_token", 12) == 0


def test_lr_schedule_warmup_then_cosine():
    lrs = np.asarray([float(train.lr_at(s, 1.0, 0.1, 4, 20)) for s in range(21)])
    np.testing.assert_allclose(lrs[:5], [0.0, 0.25, 0.5, 0.75, 1.0])
    assert np.all(np.diff(lrs[4:]) <= 1e-7)
    np.testing.assert_allclose(lrs[-1], 0.1, atol=1e-7)
    np.testing.assert_allclose(lrs[12], 0.55, atol=1e-6)  # half-way through the cosine


def test_linear_probe_mixed_precision_trains_only_the_head(base_params):
    videos, labels, classes = _arrays(4, 32)
    kw = dict(FC, epochs=1, linear_probe=True, dtype="bfloat16", layer_decay=1.0)
    result = train.finetune(base_params, (videos, labels, classes), **kw)
    before, after = base_params.tree, result.params.tree
    for key in before:
        same = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree_util.tree_leaves(before[key]), jax.tree_util.tree_leaves(after[key]))
        )
        assert same == (key != "head"), key
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(after))


# --------------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------------


def test_empty_class_folder_is_a_clear_error(tmp_path, base_params):
    videos, labels, classes = _arrays(5, 4)
    data.save_npy_folder(tmp_path, videos, labels, classes)
    (tmp_path / "sideways").mkdir()
    with pytest.raises(data.EmptyClassError, match="sideways"):
        train.finetune(base_params, tmp_path, **FC)
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.FolderDataset(tmp_path / "sideways", num_frames=4, img_size=32)


def test_label_set_mismatch_error_and_new_head(base_params):
    videos, labels, _ = data.moving_square(8, num_classes=2, seed=6)
    two = (videos, labels, ("right", "left"))
    with pytest.raises(train.LabelMismatchError, match=r"head has 4 classes.*dataset has 2.*new_head=True"):
        train.finetune(base_params, two, **FC)
    fresh = train.prepare_head(base_params, ("right", "left"), new_head=True)
    assert fresh.config.num_classes == 2 and fresh.labels == ("right", "left")
    assert fresh.tree["head"]["kernel"].shape == (32, 2)
    np.testing.assert_array_equal(
        fresh.tree["blocks_0"]["mlp"]["fc1"]["kernel"], base_params.tree["blocks_0"]["mlp"]["fc1"]["kernel"]
    )
    # Same names in another order: the head's columns follow the dataset's order.
    named = base_params.replace(labels=("a", "b", "c", "d"))
    perm = train.prepare_head(named, ("d", "c", "b", "a"))
    np.testing.assert_array_equal(perm.tree["head"]["kernel"], named.tree["head"]["kernel"][:, ::-1])
    tree = {k: v for k, v in base_params.tree.items() if k != "head"}
    headless = tldr_jax.Params(tree, base_params.config.replace(num_classes=0))
    with pytest.raises(train.LabelMismatchError, match="no classifier head"):
        train.prepare_head(headless, ("a", "b"))


def test_folder_dataset_reads_videos_and_masks_unreadable_clips(tmp_path):
    from tldr_jax import video

    videos, labels, classes = _arrays(7, 4)
    data.save_npy_folder(tmp_path, videos, labels, classes)
    mp4 = video.make_test_video(tmp_path / classes[1] / "real.mp4", num_frames=8, height=40, width=48)
    bad = tmp_path / classes[0] / "zzz_bad.npy"
    np.save(bad, np.zeros((4, 16, 16), np.float32))  # wrong rank
    ds = data.FolderDataset(tmp_path, num_frames=4, img_size=32)
    assert len(ds) == 6 and ds.load(ds.paths.index(mp4)).shape == (4, 32, 32, 3)
    with pytest.warns(data.SkippedClipWarning, match="zzz_bad.npy"):
        batch = data.load_batch(ds, range(len(ds)), 8)
    row = ds.paths.index(bad)
    assert batch.mask.sum() == 5 and batch.mask[row] == 0 and not batch.video[row].any()
    assert str(bad) in ds.skipped and "(T, H, W, 3)" in ds.skipped[str(bad)]


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


def test_cli_finetune_stops_and_resumes(folders, tmp_path):
    parser = argparse.ArgumentParser(prog="tldr-jax")
    train.add_finetune_subparser(parser.add_subparsers(dest="command"))
    argv = [
        "finetune",
        "videomae_s",
        str(folders / "val"),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--warmup-epochs",
        "1",
        "--weight-decay",
        "0.05",
        "--layer-decay",
        "0.9",
        "--label-smoothing",
        "0.1",
        "--train-r",
        "8",
        "--eval-r",
        "8",
        "--workers",
        "2",
        "--no-progress",
        "--json",
        str(tmp_path / "summary.json"),
        *[f"--override={k}={v}" for k, v in {**TINY, "num_classes": NUM_CLASSES}.items()],
    ]
    args = parser.parse_args([*argv, "--stop-at", "2"])
    assert args.func is train.finetune_main and args.train_r == 8
    assert args.func(args) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == summary["total_steps"] == 4
    assert summary["classes"] == ["down", "left", "right", "up"]


def test_parse_r():
    assert train.parse_r("8") == 8 and train.parse_r("0.25") == 0.25
    assert train.parse_r("8,4,2") == (8, 4, 2) and train.parse_r("msrvtt") == "msrvtt"
    assert train.parse_r("0") == 0

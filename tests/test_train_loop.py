"""tldr_jax.train.loop: fine-tuning with merging on learns a synthetic motion task, exports the best
model, skips unreadable clips, resumes exactly, trains only the head in a linear probe."""

from __future__ import annotations

import threading
import time
import warnings

import jax
import numpy as np
import pytest
from conftest import FT_CLASSES, FT_SETTINGS

from tldr_jax import train
from tldr_jax.train import data


@pytest.fixture(scope="module")
def trained(ft_params, motion_folders, tmp_path_factory):
    """One fine-tuning run on the folder task (merging on), with a best-model export."""
    out = tmp_path_factory.mktemp("run")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train.finetune(
            ft_params,
            motion_folders / "train",
            motion_folders / "val",
            epochs=8,
            ckpt_dir=out / "state",
            export=out / "best",
            **FT_SETTINGS,
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
    return data.moving_square(num, num_classes=FT_CLASSES, seed=seed)


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


def test_resume_gives_the_uninterrupted_result(ft_params, tmp_path):
    train_set, val_set = _arrays(2, 64), _arrays(3, 32)
    kw = dict(FT_SETTINGS, epochs=2, save_every=4)
    full = train.finetune(ft_params, train_set, val_set, ckpt_dir=tmp_path / "a", **kw)
    part = train.finetune(ft_params, train_set, val_set, ckpt_dir=tmp_path / "b", stop_at=3, **kw)
    assert part.steps == 3 and part.resumed_from is None
    rest = train.finetune(ft_params, train_set, val_set, ckpt_dir=tmp_path / "b", **kw)
    assert rest.resumed_from == 3 and rest.steps == full.steps == 8
    for a, b in zip(jax.tree_util.tree_leaves(full.params.tree), jax.tree_util.tree_leaves(rest.params.tree)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7)
    assert rest.history == full.history  # evaluations and per-epoch training statistics
    assert rest.best_top1 == full.best_top1 and rest.best_step == full.best_step
    # Ctrl-C while the batch of step 3 loads: the state of step 3 is saved, and a rerun resumes it.
    with pytest.raises(KeyboardInterrupt):
        train.finetune(
            ft_params, _CtrlC(*train_set, after=3 * 16 + 1), val_set, ckpt_dir=tmp_path / "c", **kw
        )
    resumed = train.finetune(ft_params, train_set, val_set, ckpt_dir=tmp_path / "c", **kw)
    assert resumed.resumed_from == 3
    for a, b in zip(
        jax.tree_util.tree_leaves(full.params.tree), jax.tree_util.tree_leaves(resumed.params.tree)
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A finished run resumes to "nothing left to do"; different settings are refused.
    again = train.finetune(ft_params, train_set, val_set, ckpt_dir=tmp_path / "b", **kw)
    assert again.resumed_from == 8 and again.steps == 8
    with pytest.raises(ValueError, match="different settings.*lr"):
        train.finetune(ft_params, train_set, None, ckpt_dir=tmp_path / "b", **{**kw, "lr": 1e-2})


def test_linear_probe_mixed_precision_trains_only_the_head(ft_params):
    videos, labels, classes = _arrays(4, 32)
    kw = dict(FT_SETTINGS, epochs=1, linear_probe=True, dtype="bfloat16", layer_decay=1.0)
    result = train.finetune(ft_params, (videos, labels, classes), **kw)
    before, after = ft_params.tree, result.params.tree
    for key in before:
        same = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree_util.tree_leaves(before[key]), jax.tree_util.tree_leaves(after[key]))
        )
        assert same == (key != "head"), key
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(after))


def test_empty_class_folder_is_a_clear_error(tmp_path, ft_params):
    videos, labels, classes = _arrays(5, 4)
    data.save_npy_folder(tmp_path, videos, labels, classes)
    (tmp_path / "sideways").mkdir()
    with pytest.raises(data.EmptyClassError, match="sideways"):
        train.finetune(ft_params, tmp_path, **FT_SETTINGS)


def test_label_set_mismatch_is_a_clear_error(ft_params):
    videos, labels, _ = data.moving_square(8, num_classes=2, seed=6)
    two = (videos, labels, ("right", "left"))
    with pytest.raises(train.LabelMismatchError, match=r"head has 4 classes.*dataset has 2.*new_head=True"):
        train.finetune(ft_params, two, **FT_SETTINGS)

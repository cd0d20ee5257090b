"""tldr_jax.train.data: labelled clip datasets, batches with masked unreadable clips, the data order."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FT_CLASSES

from tldr_jax import video
from tldr_jax.configs import get_config
from tldr_jax.train import data

TINY_VIDEOMAE = get_config("videomae_b", num_frames=4, img_size=32)


def _arrays(seed: int, num: int):
    return data.moving_square(num, num_classes=FT_CLASSES, seed=seed)


def test_data_order_is_a_function_of_seed_and_epoch():
    a, b = data.epoch_order(50, 3, 1), data.epoch_order(50, 3, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, data.epoch_order(50, 3, 2))
    assert sorted(a.tolist()) == list(range(50))


def test_folder_dataset_reads_videos_and_masks_unreadable_clips(tmp_path):
    videos, labels, classes = _arrays(7, 4)
    data.save_npy_folder(tmp_path, videos, labels, classes)
    mp4 = video.make_test_video(tmp_path / classes[1] / "real.mp4", num_frames=8, height=40, width=48)
    bad = tmp_path / classes[0] / "zzz_bad.npy"
    np.save(bad, np.zeros((4, 16, 16), np.float32))  # wrong rank
    ds = data.FolderDataset.for_model(tmp_path, TINY_VIDEOMAE)
    assert len(ds) == 6 and ds.load(ds.paths.index(mp4)).shape == (4, 32, 32, 3)
    with pytest.warns(data.SkippedClipWarning, match="zzz_bad.npy"):
        batch = data.load_batch(ds, range(len(ds)), 8)
    row = ds.paths.index(bad)
    assert batch.mask.sum() == 5 and batch.mask[row] == 0 and not batch.video[row].any()
    assert str(bad) in ds.skipped and "(T, H, W, 3)" in ds.skipped[str(bad)]


def test_folder_without_class_folders_is_a_clear_error(tmp_path):
    (tmp_path / "sideways").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.FolderDataset.for_model(tmp_path / "sideways", TINY_VIDEOMAE)

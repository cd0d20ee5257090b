"""tldr_jax.video.decode: reading and writing video files (PyAV) and the clear errors for bad ones."""

from __future__ import annotations

import numpy as np
import pytest

from tldr_jax import video as V

av = pytest.importorskip("av")


def test_read_video_returns_the_sampled_frames(counter_video):
    assert V.count_frames(counter_video) == 30
    frames = V.read_video(counter_video, 6, sampling="middle")
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    want = 8 * V.sample_indices(30, 6, "middle")
    np.testing.assert_allclose(frames.reshape(6, -1).mean(1), want, atol=3)


def test_make_test_video_roundtrip(tmp_path):
    path = V.make_test_video(tmp_path / "moving.mp4", num_frames=10, height=48, width=64)
    frames = V.read_video(path, 10, sampling="first")
    ref = V.synthetic_frames(10, 48, 64)
    assert np.abs(frames.astype(float) - ref).mean() < 6  # lossy codec, same picture


def test_gif_roundtrip(tmp_path):
    path = V.write_video(tmp_path / "x.gif", V.synthetic_frames(5, 32, 32))
    assert V.count_frames(path, exact=True) == 5


def test_missing_file(tmp_path):
    with pytest.raises(V.VideoReadError, match="not found.*nope.mp4"):
        V.load_video(tmp_path / "nope.mp4", 4)


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(V.VideoReadError, match="directory"):
        V.load_video(tmp_path, 4)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(V.VideoReadError, match="empty"):
        V.load_video(empty, 4)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(V.VideoReadError, match="garbage.mp4"):
        V.load_video(bad, 4)


def test_too_short_names_counts_and_fix(counter_video):
    with pytest.raises(V.VideoReadError) as info:
        V.load_video(counter_video, 40)
    msg = str(info.value)
    assert "counter.mp4" in msg and "30 frame" in msg and "40 are needed" in msg and "pad" in msg
    assert V.load_video(counter_video, 40, img_size=16, pad=True).shape == (40, 16, 16, 3)

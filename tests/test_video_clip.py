"""tldr_jax.video.clip: load_clip, the one path from a file to a model input, and load_video."""

from __future__ import annotations

import numpy as np
import pytest

from tldr_jax import video as V

av = pytest.importorskip("av")


def test_load_video_shape_and_values(counter_video):
    out = V.load_video(counter_video, 4, img_size=32, mean=(0, 0, 0), std=(1, 1, 1), sampling="first")
    assert out.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(out.reshape(4, -1).mean(1), 8 * np.arange(4) / 255, atol=3 / 255)


def test_load_clip_for_a_model(counter_video, tmp_path):
    from tldr_jax.configs import get_config

    prep = V.preprocessing_for(get_config("videomae_b", img_size=32, num_frames=4))
    assert V.load_clip(counter_video, prep).shape == (4, 32, 32, 3)
    assert V.load_clip(None, prep).shape == (4, 32, 32, 3)  # the embedded clip
    np.testing.assert_array_equal(
        V.load_clip("default", prep), V.preprocess(V.default_clip_frames(4), 32, **prep.preprocess_kwargs())
    )
    pixels = np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8)
    np.save(tmp_path / "pixels.npy", pixels)  # uint8 .npy: sampled and preprocessed like video frames
    want = V.preprocess(pixels[V.sample_indices(6, 4, prep.sampling)], 32, **prep.preprocess_kwargs())
    np.testing.assert_array_equal(V.load_clip(tmp_path / "pixels.npy", prep), want)

"""tldr_jax.video.synthetic: the procedural clip, the embedded default clip and its codec."""

from __future__ import annotations

import numpy as np

from tldr_jax import video as V


def test_default_clip_asset_is_small_and_exact():
    assert V.DEFAULT_CLIP_PATH.exists(), "run `python -m tldr_jax.video` to regenerate the asset"
    assert V.DEFAULT_CLIP_PATH.stat().st_size < 400_000
    np.testing.assert_array_equal(V.default_clip_frames(32), V.synthetic_frames(32, 224, 224))


def test_default_clip_shapes():
    clip = V.default_clip(12, 112)
    assert clip.shape == (12, 112, 112, 3) and clip.dtype == np.float32
    assert np.isfinite(clip).all() and clip.std() > 0.1
    assert V.default_clip_frames(40).shape == (40, 224, 224, 3)


def test_delta_codec_roundtrip():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(V.decode_frames_delta(V.encode_frames_delta(frames)), frames)

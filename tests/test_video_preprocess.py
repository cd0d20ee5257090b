"""tldr_jax.video.preprocess: resizing, cropping, normalisation and the per-model Preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from tldr_jax import video as V
from tldr_jax.configs import get_config


def test_preprocess_constant_colour_normalisation():
    frames = np.full((2, 40, 60, 3), (255, 128, 0), np.uint8)
    out = V.preprocess(frames, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    want = (np.array([255, 128, 0]) / 255.0 - np.array(V.IMAGENET_MEAN)) / np.array(V.IMAGENET_STD)
    np.testing.assert_allclose(out[0, 5, 5], want, atol=1e-5)


def test_preprocess_centre_crop_keeps_the_middle():
    # 20 x 60 frames: left and right thirds red, middle third green; the centre crop is all green.
    frames = np.zeros((1, 20, 60, 3), np.uint8)
    frames[..., 0] = 255
    frames[:, :, 20:40] = (0, 255, 0)
    out = V.preprocess(frames, 20, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    np.testing.assert_allclose(out[0, :, :, 1], 1.0)
    plain = dict(mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    squashed = V.preprocess(frames, 20, resize="squash", **plain)
    assert squashed[0, :, 0, 0].min() == 1.0 and squashed[0, :, 10, 1].min() == 1.0


def test_resized_shape_and_short_side():
    assert V.resized_shape(240, 320, 224) == (224, 298)
    assert V.resized_shape(320, 240, 224) == (298, 224)
    out = V.preprocess(np.zeros((1, 100, 150, 3), np.uint8), 32, short_side=40)
    assert out.shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="smaller than the crop"):
        V.preprocess(np.zeros((1, 10, 10, 3), np.uint8), 32, short_side=16)


def test_preprocess_bad_shape():
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        V.preprocess(np.zeros((2, 3, 16, 16), np.uint8), 16)


def test_denormalize_inverts_preprocess():
    frames = V.synthetic_frames(2, 32, 32)
    out = V.preprocess(frames, 32)
    np.testing.assert_array_equal(V.denormalize(out), frames)


def test_normalization_constants():
    assert V.NORMALIZATION["umt"] == V.NORMALIZATION["videomae"] == (V.IMAGENET_MEAN, V.IMAGENET_STD)
    x = np.arange(256, dtype=np.float64)
    # HF ViViT: rescale with offset (x / 127.5 - 1), then normalise with mean = std = 0.5.
    hf = (x / 127.5 - 1 - 0.5) / 0.5
    m, s = V.NORMALIZATION["vivit_hf"]
    np.testing.assert_allclose((x / 255 - m[0]) / s[0], hf, atol=1e-12)
    m, s = V.NORMALIZATION["vivit"]
    np.testing.assert_allclose((x / 255 - m[0]) / s[0], x / 127.5 - 1, atol=1e-12)


def test_preprocessing_for_families():
    assert V.preprocessing_for("vivit_b").short_side == 256  # 224 px crops of a 256 px shorter side
    assert V.preprocessing_for("umt_b16").resize == "squash"
    assert V.preprocessing_for("videomae_b").sampling == "uniform"
    with pytest.raises(ValueError, match="unknown model family"):
        V.preprocessing_for(get_config("umt_b16").replace(family="swin"))
    with pytest.raises(ValueError, match="unknown architecture 'swin'"):
        V.preprocessing_for("swin")


def test_preprocessing_for_a_model_and_its_overrides():
    cfg = get_config("videomae_b", img_size=32, num_frames=4)
    prep = V.preprocessing_for(cfg, num_frames=8, sampling="middle", normalization="vivit", pad=True)
    assert prep.shape == (8, 32, 32, 3) and prep.sampling == "middle" and prep.pad
    assert (prep.mean, prep.std) == V.NORMALIZATION["vivit"]
    assert V.preprocessing_for(cfg, mean=(0, 0, 0), std=(1, 1, 1)).std == (1.0, 1.0, 1.0)
    for bad, exc in (({"num_frames": 0}, ValueError), ({"sampling": "random"}, ValueError),
                     ({"normalization": "imagenet"}, ValueError), ({"std": (1, 0, 1)}, ValueError),
                     ({"pad": 1}, TypeError)):
        with pytest.raises(exc):
            V.preprocessing_for(cfg, **bad)

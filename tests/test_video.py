"""Tests for tldr_jax.video: frame sampling, preprocessing, decoding errors, the embedded clip."""

from __future__ import annotations

import numpy as np
import pytest

from tldr_jax import video as V


def umt_middle_reference(num_frames: int, vlen: int) -> list[int]:
    """The UMT ``get_frame_indices(..., sample="middle")`` computation, restated."""
    acc = min(num_frames, vlen)
    intervals = np.linspace(start=0, stop=vlen, num=acc + 1).astype(int)
    ranges = [(intervals[i], intervals[i + 1] - 1) for i in range(acc)]
    idx = [(a + b) // 2 for a, b in ranges]
    if len(idx) < num_frames:
        idx = idx + [idx[-1]] * (num_frames - len(idx))
    return idx


# --------------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [8, 12, 13, 37, 100, 301])
@pytest.mark.parametrize("n", [1, 4, 8, 12])
def test_middle_matches_umt(total, n):
    if total < n:
        pytest.skip("short videos covered by the pad test")
    assert V.sample_indices(total, n, "middle").tolist() == umt_middle_reference(n, total)


def test_middle_example_and_pad():
    assert V.sample_indices(100, 4).tolist() == [12, 37, 62, 87]
    assert V.sample_indices(3, 6, "middle", pad=True).tolist() == umt_middle_reference(6, 3)


def test_uniform_is_centred_with_stride():
    idx = V.sample_indices(300, 16, "uniform", frame_stride=4)
    assert np.all(np.diff(idx) == 4)
    span_mid = (idx[0] + idx[-1] + 4) / 2
    assert abs(span_mid - 150) <= 2
    short = V.sample_indices(20, 16, "uniform", frame_stride=4)  # window shrinks to the whole video
    assert short[0] == 0 and short[-1] == 19 and np.all(np.diff(short) >= 1)


def test_linspace_and_first():
    assert V.sample_indices(10, 4, "linspace").tolist() == [0, 3, 6, 9]
    assert V.sample_indices(10, 4, "first").tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", V.SAMPLING_MODES)
def test_sampling_bounds(mode):
    for total in (5, 16, 64, 999):
        idx = V.sample_indices(total, 5, mode)
        assert idx.shape == (5,) and idx.min() >= 0 and idx.max() < total and np.all(np.diff(idx) >= 0)


def test_sampling_errors():
    with pytest.raises(ValueError, match="3 frames but 8"):
        V.sample_indices(3, 8)
    with pytest.raises(ValueError, match="unknown sampling"):
        V.sample_indices(10, 2, "random")
    with pytest.raises(ValueError, match="positive"):
        V.sample_indices(10, 0)


# --------------------------------------------------------------------------------------------------
# Preprocessing.
# --------------------------------------------------------------------------------------------------


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
    assert V.preprocessing_for("vivit", 224).short_side == 256
    assert V.preprocessing_for("umt").resize == "squash"
    assert V.preprocessing_for("videomae").sampling == "uniform"
    with pytest.raises(ValueError, match="unknown model family"):
        V.preprocessing_for("swin")


# --------------------------------------------------------------------------------------------------
# The embedded clip.
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Decoding (PyAV).
# --------------------------------------------------------------------------------------------------

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory):
    """30 frames whose grey level encodes the frame index (8 * i)."""
    frames = np.repeat((8 * np.arange(30, dtype=np.uint8))[:, None, None, None], 3, axis=-1)
    frames = np.broadcast_to(frames, (30, 48, 64, 3)).copy()
    return V.write_video(tmp_path_factory.mktemp("vid") / "counter.mp4", frames, fps=10)


def test_read_video_returns_the_sampled_frames(counter_video):
    assert V.count_frames(counter_video) == 30
    frames = V.read_video(counter_video, 6, sampling="middle")
    assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
    want = 8 * V.sample_indices(30, 6, "middle")
    np.testing.assert_allclose(frames.reshape(6, -1).mean(1), want, atol=3)


def test_load_video_shape_and_values(counter_video):
    out = V.load_video(counter_video, 4, img_size=32, mean=(0, 0, 0), std=(1, 1, 1), sampling="first")
    assert out.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(out.reshape(4, -1).mean(1), 8 * np.arange(4) / 255, atol=3 / 255)


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


def test_load_video_for_config(counter_video):
    from tldr_jax.configs import get_config

    cfg = get_config("videomae_b", img_size=32, num_frames=4)
    assert V.load_video_for(counter_video, cfg).shape == (4, 32, 32, 3)
    assert V.load_video_for(None, cfg).shape == (4, 32, 32, 3)

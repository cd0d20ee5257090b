"""tldr_jax.video.sampling: which frames are read (UMT middle, VideoMAE uniform, linspace, first)."""

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

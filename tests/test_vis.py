"""Tests for tldr_jax.vis: token maps from the source map and saliency, drawing, and file output."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from tldr_jax import vis
from tldr_jax.configs import get_config
from tldr_jax.merge import TokenOrigin


def fake_output(owner, saliency=None, weight=None, n_out=None):
    owner = np.asarray(owner, np.int32)[None]
    weight = np.ones(owner.shape, np.float32) if weight is None else np.asarray(weight, np.float32)[None]
    sal = None if saliency is None else (np.asarray(saliency, np.float32)[None],)
    n_out = int(owner.max()) + 1 if n_out is None else n_out
    return SimpleNamespace(
        source=TokenOrigin(owner, weight), saliency=sal, tokens=np.zeros((1, n_out, 4)), schedule=None
    )


def test_token_maps_skips_cls_and_reshapes():
    cfg = get_config("vivit_b", img_size=32, num_frames=4, depth=2, num_heads=2, embed_dim=8, mlp_dim=8)
    # 1 CLS + 2 x 2 x 2 patches; patches 0,1 merged into output 1; patch 7 merged with patch 3 (time).
    owner = [0, 1, 1, 2, 3, 4, 5, 6, 3]
    sal = np.linspace(0, 1, 9)
    maps = vis.token_maps(fake_output(owner, sal), cfg)
    assert maps.grid == (2, 2, 2)
    np.testing.assert_array_equal(maps.owner.ravel(), owner[1:])
    np.testing.assert_array_equal(maps.group_size.ravel(), [2, 2, 1, 2, 1, 1, 1, 2])
    np.testing.assert_allclose(maps.saliency.ravel(), sal[1:])
    assert maps.num_groups == 6 and maps.tokens_in == 9


def test_token_maps_dense_source_and_errors():
    cfg = get_config("umt_b16", img_size=32, num_frames=1, depth=2, num_heads=2, embed_dim=8, mlp_dim=8)
    dense = np.zeros((1, 3, 4), np.float32)
    dense[0, 0, 0] = dense[0, 0, 1] = dense[0, 1, 2] = dense[0, 2, 3] = 1
    out = SimpleNamespace(source=dense, saliency=None, tokens=np.zeros((1, 3, 4)), schedule=None)
    maps = vis.token_maps(out, cfg)
    np.testing.assert_array_equal(maps.owner.ravel(), [0, 0, 1, 2])
    assert maps.saliency is None
    with pytest.raises(ValueError, match="source='origin'"):
        vis.token_maps(SimpleNamespace(source=None, saliency=None, tokens=None), cfg)
    late = fake_output([0, 1, 2, 3], saliency=None)
    late.saliency = (np.zeros((1, 3)),)
    with pytest.raises(ValueError, match="input tokens"):
        vis.token_maps(late, cfg)


def test_group_edges():
    owner = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    edge = vis.group_edges(owner)
    assert not edge[0, 0] and edge[0, 1] and edge[0, 2] and edge[1, 0] and edge[2, 0]


def test_group_colors_distinct_and_deterministic():
    c = vis.group_colors(np.arange(50))
    assert c.shape == (50, 3) and c.min() >= 0 and c.max() <= 1
    assert len({tuple(np.round(x, 3)) for x in c}) == 50
    np.testing.assert_array_equal(vis.group_colors(np.arange(50)), c)


def test_saliency_grid_layout_and_content():
    cfg = get_config("umt_b16", img_size=32, num_frames=2, tubelet_size=1, depth=2, num_heads=2,
                     embed_dim=8, mlp_dim=8)
    owner = [0, 0, 1, 2, 0, 3, 4, 4]  # 2 frames of 2 x 2 patches
    frames = np.full((2, 32, 32, 3), 120, np.uint8)
    out = fake_output(owner, saliency=np.linspace(0, 1, 8))
    img = vis.saliency_grid(frames, out, cfg, labels=False, pad=4)
    assert img.shape == (3 * 32 + 4 * 4, 2 * 32 + 3 * 4, 3) and img.dtype == np.uint8
    tile = lambda row, col: img[4 + row * 36 : 4 + row * 36 + 32, 4 + col * 36 : 4 + col * 36 + 32]
    np.testing.assert_array_equal(tile(0, 0), frames[0])
    assert tile(1, 0).std() > 5, "saliency heat map is blank"
    assert tile(2, 0).std() > 5, "group overlay is blank"
    labelled = vis.saliency_grid(frames, out, cfg, labels=True)
    assert labelled.shape == (img.shape[0] + 18, img.shape[1] + 110, 3)


def test_animation_shape():
    cfg = get_config("umt_b16", img_size=32, num_frames=2, tubelet_size=1, depth=2, num_heads=2,
                     embed_dim=8, mlp_dim=8)
    out = fake_output([0, 1, 2, 3, 0, 1, 2, 3], saliency=np.ones(8))
    anim = vis.saliency_animation(np.zeros((2, 32, 32, 3), np.uint8), out, cfg, pad=2)
    assert anim.shape == (2, 36, 3 * 32 + 8, 3)


# --------------------------------------------------------------------------------------------------
# With a real (tiny, random) model.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    import tldr_jax
    from tldr_jax.cli import GENERIC_R, TINY_OVERRIDES
    from tldr_jax.video import default_clip

    params = tldr_jax.init(0, "umt_b16", **TINY_OVERRIDES)
    clip = default_clip(params.config.num_frames, params.config.img_size)
    return params, clip, GENERIC_R


def test_visualize_png_and_gif(tiny, tmp_path):
    from PIL import Image

    params, clip, r = tiny
    path, maps = vis.visualize(params, clip, tmp_path / "grid.png", r)
    img = np.asarray(Image.open(path).convert("RGB"))
    h = params.config.img_size
    assert img.shape == (18 + 3 * h + 16, 110 + 4 * h + 5 * 4, 3)
    assert img.std() > 20
    assert maps.saliency is not None and maps.saliency.shape == (4, 7, 7)
    # The most salient token is 1 up to float32 rounding: XLA may divide through a reciprocal on some
    # CPUs (0.99999994 on an AMD EPYC), so exact equality would be CPU-specific.
    np.testing.assert_allclose(maps.saliency.max(), 1.0, rtol=2 * np.finfo(np.float32).eps)
    assert maps.tokens_out == 111 and maps.num_groups == 111 and maps.group_size.sum() > 196
    gif, _ = vis.visualize(params, clip, tmp_path / "anim.gif", r)
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.size == (3 * h + 16, h + 8)
    with pytest.raises(ValueError, match="cannot write"):
        vis.visualize(params, clip, tmp_path / "x.txt", r)

"""tldr_jax.models: position tables, and blocks that are attention + one merge step + MLP, returning
their intermediates (big_vision's ``(x, out)``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tldr_jax
from tldr_jax.api import build
from tldr_jax.configs import get_config
from tldr_jax.merge import MergePlan, merge_step
from tldr_jax.models import MergeSpec, TokenState, saliencies, video_pos_table

TINY = dict(embed_dim=32, depth=3, num_heads=2, mlp_dim=64, num_frames=4, img_size=32)


def test_interpolated_position_table_matches_frames():
    cfg = get_config("umt_b16", num_frames=8, ckpt_num_frames=4, img_size=32)
    table = video_pos_table(cfg)
    assert table.shape == (1, 32, 768)
    same = video_pos_table(cfg.replace(ckpt_num_frames=8))
    assert not np.allclose(table, same)
    # interpolating to the same length is the identity
    np.testing.assert_allclose(video_pos_table(cfg.replace(num_frames=4)), video_pos_table(cfg.replace(
        num_frames=4, ckpt_num_frames=None)))


def test_block_is_attention_then_merge_step_then_mlp():
    """A merging block equals its pieces called by hand: attention, ``merge_step``, MLP."""
    params = tldr_jax.init(1, "umt_b16", **TINY)
    block = build(params).blocks_0
    x = jax.random.normal(jax.random.key(1), (2, 16, 32))
    size = 1.0 + jax.random.uniform(jax.random.key(2), (2, 16, 1))
    state, out = block(TokenState(x, size), MergeSpec(r=5))
    h, stats = block.attn(block.norm1(x), jnp.log(size[..., 0]), "sharpness")
    merged, new_size, _, aux = merge_step(x + h, 5, sharpness=stats["sharpness"], size=size)
    np.testing.assert_array_equal(state.x, merged + block.mlp(block.norm2(merged)))
    np.testing.assert_array_equal(state.size, new_size)
    np.testing.assert_array_equal(out["saliency"], aux["saliency"])


def test_blocks_return_their_intermediates():
    params = tldr_jax.init(2, "vivit_b", **dict(TINY, img_size=64))  # 32 patches and a protected CLS
    video = jax.random.normal(jax.random.key(3), (2, 4, 64, 64, 3))
    specs = (MergeSpec(4, "vid_tldr", 1), MergeSpec(0, "vid_tldr", 1), MergeSpec(3, "tome", 1))
    out, inter = jax.jit(lambda v: build(params)(v, specs, source="origin"))(video)
    assert inter["embed"].shape == (2, 33, 32)
    first, plain, tome = inter["blocks_0"], inter["blocks_1"], inter["blocks_2"]
    assert set(first) == {"attn", "sharpness", "plan", "saliency"}
    assert first["attn"].shape == (2, 33, 32) and first["sharpness"].shape == (2, 33)
    assert isinstance(first["plan"], MergePlan) and first["plan"].r == 4 and first["plan"].protected == 1
    assert float(first["saliency"].min()) >= 0 and float(first["saliency"].max()) == pytest.approx(1.0)
    assert set(plain) == {"attn"} and plain["attn"].shape == (2, 29, 32)  # no merge: nothing else computed
    assert tome["keys"].shape == (2, 29, 16) and tome["saliency"] is None and tome["plan"].method == "tome"
    assert out["tokens"].shape == (2, 26, 32)
    # apply's saliency output is read from the same intermediates (apply: one compiled program, clip
    # by clip, float32 products; here: eager and batched, so last-ulp differences, amplified ~10x)
    ref = tldr_jax.apply(params, video, (4, 0, 3), method="vid_tldr", return_saliency=True)
    assert len(ref.saliency) == 2 and len(saliencies(inter)) == 1
    np.testing.assert_allclose(ref.saliency[0], first["saliency"], atol=1e-5)


def test_apply_returns_only_its_outputs():
    """Under jit the intermediates nobody reads are not outputs of apply's program: its output buffers
    are the Output arrays (plus the output tuple's pointers), while a program that returns the
    intermediates too has much larger outputs."""
    params = tldr_jax.init(3, "videomae_s", num_classes=3, **TINY)
    video = jnp.zeros((1, 4, 32, 32, 3))
    fn = jax.jit(lambda tree, v: tldr_jax.apply(tldr_jax.Params(tree, params.config), v, 4))
    leaves = jax.tree_util.tree_leaves(fn(params.tree, video))
    arrays = sum(a.size * a.dtype.itemsize for a in leaves)
    size = fn.lower(params.tree, video).compile().memory_analysis().output_size_in_bytes
    assert arrays <= size <= arrays + 8 * len(leaves)
    specs = tuple(MergeSpec(r) for r in tldr_jax.schedule(params, 4).r)
    both = jax.jit(lambda tree, v: build(tldr_jax.Params(tree, params.config))(v, specs))
    assert both.lower(params.tree, video).compile().memory_analysis().output_size_in_bytes > 4 * size

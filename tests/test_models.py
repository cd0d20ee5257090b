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


@pytest.mark.parametrize("arch, method, prop_attn", [
    ("umt_b16", "vid_tldr", True), ("umt_b16", "vid_tldr", False), ("vivit_b", "tome", True),
])
def test_token_buckets_give_the_unpadded_result(arch, method, prop_attn):
    """``AttentionTuning.token_bucket`` (prototype, issue 31): every block runs on its token count padded up
    to the bucket with size-0 tokens at the end, masked out of both softmaxes, the saliency, the matching
    and the pooling. In float64 the outputs, sizes, source map and saliencies equal the unpadded ones (to
    1e-10) in the plain, the chunked and the key-blocked attention; the blocks see bucket-sized arrays."""
    from tldr_jax.options import AttentionTuning

    r = (5, 3, 2)
    kw = dict(method=method, prop_attn=prop_attn, source="origin", return_saliency=True, dtype="float64")
    with jax.enable_x64(True):
        params = tldr_jax.init(0, arch, **TINY)
        video = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3), jnp.float64)
        for base in (AttentionTuning(), AttentionTuning(cpu_block_min_elements=0, cpu_head_rows=8),
                     AttentionTuning(key_block=8)):
            ref = tldr_jax.apply(params, video, r, attention=base, **kw)
            out = tldr_jax.apply(params, video, r, attention=base.replace(token_bucket=8), **kw)
            for name in ("tokens", "pooled", "size", "logits", "embedding"):
                a, b = getattr(ref, name), getattr(out, name)
                assert (a is None) == (b is None), name
                if a is not None:
                    assert a.shape == b.shape, name
                    np.testing.assert_allclose(b, a, rtol=0, atol=1e-10, err_msg=name)
            np.testing.assert_array_equal(out.source.owner, ref.source.owner)
            np.testing.assert_allclose(out.source.weight, ref.source.weight, rtol=0, atol=1e-10)
            assert len(out.saliency) == len(ref.saliency) == (3 if method == "vid_tldr" else 0)
            for a, b in zip(ref.saliency, out.saliency):
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)
        specs = tuple(MergeSpec(n, method, 1 if arch == "vivit_b" else 0, prop_attn) for n in (4, 2, 1))
        _, inter = build(params)(video, specs, attention=AttentionTuning(token_bucket=8))
    assert all(inter[f"blocks_{i}"]["attn"].shape[1] % 8 == 0 for i in range(3))

"""tldr_jax.train.optim: layer-wise learning-rate scales, the weight-decay mask, warm-up + cosine."""

from __future__ import annotations

import numpy as np

from tldr_jax import train


def test_layer_wise_lr_scales_and_weight_decay_mask(ft_params):
    tree = ft_params.tree
    scales = train.layer_scales(tree, depth=2, decay=0.5)
    assert scales["patch_embed"]["proj"]["kernel"] == 0.5**3
    assert scales["blocks_0"]["mlp"]["fc1"]["kernel"] == 0.5**2
    assert scales["blocks_1"]["attn"]["q_bias"] == 0.5
    assert scales["head"]["kernel"] == scales["pool_norm"]["scale"] == 1.0
    mask = train.decay_mask(tree)
    assert mask["blocks_0"]["attn"]["qkv"]["kernel"] and mask["head"]["kernel"]
    assert not mask["head"]["bias"] and not mask["blocks_0"]["norm1"]["scale"]
    assert train.layer_id("pos_embed", 12) == train.layer_id("cls_token", 12) == 0


def test_lr_schedule_warmup_then_cosine():
    lrs = np.asarray([float(train.lr_at(s, 1.0, 0.1, 4, 20)) for s in range(21)])
    np.testing.assert_allclose(lrs[:5], [0.0, 0.25, 0.5, 0.75, 1.0])
    assert np.all(np.diff(lrs[4:]) <= 1e-7)
    np.testing.assert_allclose(lrs[-1], 0.1, atol=1e-7)
    np.testing.assert_allclose(lrs[12], 0.55, atol=1e-6)  # half-way through the cosine

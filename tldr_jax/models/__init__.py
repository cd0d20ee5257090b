"""Flax NNX video encoders (UMT, VideoMAE, ViViT) with token merging threaded through the blocks.

* :mod:`~tldr_jax.models.position`: the fixed sinusoidal position tables;
* :mod:`~tldr_jax.models.layers`: tubelet embedding, attention (with the statistics a merge needs), MLP;
* :mod:`~tldr_jax.models.block`: the block (attention, one merge step, MLP), its :class:`MergeSpec` and
  the :class:`TokenState` that flows between blocks;
* :mod:`~tldr_jax.models.encoder`: the :class:`VideoEncoder` (parameter names = the checkpoint format).
"""

from tldr_jax.models.block import Block, MergeFn, MergeSpec, TokenState
from tldr_jax.models.encoder import VideoEncoder, saliencies
from tldr_jax.models.layers import Attention, Mlp, PatchEmbed
from tldr_jax.models.position import sinusoid_table, video_pos_table

__all__ = [
    "Attention",
    "Block",
    "MergeFn",
    "MergeSpec",
    "Mlp",
    "PatchEmbed",
    "TokenState",
    "VideoEncoder",
    "saliencies",
    "sinusoid_table",
    "video_pos_table",
]

"""Fixed sinusoidal position tables of the video encoders (UMT, VideoMAE), interpolated over time."""

from __future__ import annotations

import einops
import numpy as np

from tldr_jax.configs import ArchConfig

__all__ = ["sinusoid_table", "video_pos_table"]


def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
    """``(num_positions, dim)`` float64 table: ``sin`` on even, ``cos`` on odd channels."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    hid = np.arange(dim)
    angle = pos / np.power(10000, 2 * (hid // 2) / dim)
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return table


def _interp_linear(x: np.ndarray, new_len: int) -> np.ndarray:
    """Linear resize along the last axis (``align_corners=False``, like ``F.interpolate``)."""
    old_len = x.shape[-1]
    scale = old_len / new_len
    src = np.maximum((np.arange(new_len, dtype=np.float32) + 0.5) * scale - 0.5, 0.0).astype(np.float32)
    i0 = np.minimum(np.floor(src).astype(np.int64), old_len - 1)
    i1 = np.minimum(i0 + 1, old_len - 1)
    lam = (src - i0).astype(np.float32)
    return x[..., i0] * (1 - lam) + x[..., i1] * lam


def video_pos_table(cfg: ArchConfig) -> np.ndarray:
    """Fixed ``(1, N, D)`` float32 sinusoid table for the patch tokens of ``cfg``.

    When ``cfg.ckpt_num_frames`` differs from the model's temporal token count, the table is made for
    the checkpoint's frames and linearly interpolated over time (the official UMT behaviour).
    """
    t, h, w = cfg.grid
    d = cfg.embed_dim
    ckpt_t = (cfg.ckpt_num_frames or cfg.num_frames) // cfg.tubelet_size
    if ckpt_t == t:
        return sinusoid_table(t * h * w, d).astype(np.float32)[None]
    table = sinusoid_table(ckpt_t * h * w, d).astype(np.float32)
    table = einops.rearrange(table, "(t h w) c -> h w c t", t=ckpt_t, h=h, w=w)
    table = _interp_linear(table, t)
    return einops.rearrange(table, "h w c t -> 1 (t h w) c").astype(np.float32)

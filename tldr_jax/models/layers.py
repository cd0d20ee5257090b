"""The layers of a block: tubelet embedding, attention with the vid-TLDR/ToMe statistics, MLP."""

from __future__ import annotations

import math
from typing import Literal

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from tldr_jax.configs import ArchConfig
from tldr_jax.numerics import acc_dtype
from tldr_jax.saliency import sharpness_from_mean

Array = jax.Array
Need = Literal[None, "sharpness", "keys"]

__all__ = ["Attention", "Mlp", "PatchEmbed"]


class PatchEmbed(nnx.Module):
    """Tubelet embedding: a Conv3D with stride = kernel = ``(tubelet, patch, patch)``."""

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nnx.Conv(
            cfg.in_chans, cfg.embed_dim, kernel_size=k, strides=k, padding="VALID", rngs=rngs
        )

    def __call__(self, video: Array) -> Array:
        """``(B, T, H, W, C)`` -> ``(B, T' * H' * W', D)`` in (t, h, w) order."""
        return einops.rearrange(self.proj(video), "b t h w d -> b (t h w) d")


class Attention(nnx.Module):
    """Multi-head self-attention with proportional attention and the statistics a merge needs.

    Class attributes (set them on the class to tune memory): ``query_chunk`` query rows per chunk and
    ``chunk_min_elements``, the size of the ``(B, H, N, N)`` probability tensor above which attention
    runs in chunks (default ``2**28`` elements = 1 GiB in float32: UMT-B/16 at 32 frames chunks).
    """

    query_chunk: int = 512
    chunk_min_elements: int = 2**28

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        d = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.scale = cfg.head_dim**-0.5
        self.qkv = nnx.Linear(d, 3 * d, use_bias=cfg.qkv_bias == "qkv", rngs=rngs)
        if cfg.qkv_bias == "qv":
            self.q_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
            self.v_bias = nnx.Param(jnp.zeros((d,), jnp.float32))
        self.proj = nnx.Linear(d, d, rngs=rngs)

    def __call__(
        self, x: Array, log_size: Array | None = None, need: Need = None
    ) -> tuple[Array, dict[str, Array]]:
        """Attend.

        Args:
          x: ``(B, N, D)``.
          log_size: ``(B, N)`` proportional-attention bias ``log(size)`` added to the logits, or None.
          need: ``"sharpness"`` also returns the ``(B, N)`` vid-TLDR sharpness of the softmax taken
            *before* the size bias; ``"keys"`` returns ToMe's metric, the ``(B, N, Dh)`` keys averaged
            over heads.

        Returns:
          ``(out (B, N, D), stats)``: ``stats`` holds ``"sharpness"`` or ``"keys"`` as asked (else empty).

        When ``B * H * N * N`` exceeds ``chunk_min_elements`` the queries are processed in static
        chunks of ``query_chunk`` rows, so no ``(B, H, N, N)`` tensor is ever alive. Each row still
        sums over all its keys in the same order, so the chunked result equals the unchunked one up to
        float rounding (XLA fuses the two differently: ~1e-7 relative).
        """
        qkv = self.qkv(x)
        if hasattr(self, "q_bias"):
            zeros = jnp.zeros_like(self.v_bias[...])
            qkv = qkv + jnp.concatenate([self.q_bias[...], zeros, self.v_bias[...]]).astype(qkv.dtype)
        q, k, v = einops.rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q = q * self.scale
        bias = None if log_size is None else log_size[:, None, None, :].astype(q.dtype)
        out, sharp = _attend(
            q,
            k,
            v,
            bias,
            need_sharpness=need == "sharpness",
            query_chunk=int(self.query_chunk),
            chunk_min_elements=int(self.chunk_min_elements),
        )
        stats = {"sharpness": sharp} if need == "sharpness" else {}
        if need == "keys":
            stats["keys"] = jnp.mean(k, axis=1)
        return self.proj(einops.rearrange(out, "b h n d -> b n (h d)")), stats


def _attend(
    q: Array,
    k: Array,
    v: Array,
    bias: Array | None,
    *,
    need_sharpness: bool,
    query_chunk: int,
    chunk_min_elements: int,
) -> tuple[Array, Array | None]:
    """Softmax attention with an optional key bias and the pre-bias vid-TLDR sharpness.

    Args:
      q, k, v: ``(B, H, N, Dh)``; ``q`` already scaled.
      bias: ``(B or 1, 1, 1, N)`` additive ``log(size)`` bias on the logits, or None.
      need_sharpness: also return the ``(B, N)`` sharpness of the softmax *before* the bias.
      query_chunk, chunk_min_elements: process ``query_chunk`` query rows at a time when
        ``B * H * N * N`` exceeds ``chunk_min_elements``.

    Returns:
      ``(out (B, H, N, Dh), sharpness (B, N) or None)``.
    """
    def rows(q_rows: Array) -> tuple[Array, Array | None]:
        # (B, H, C, Dh) queries -> ((B, H, C, Dh) attention output, (B, C) sharpness or None).
        logits = jnp.einsum("bhnd,bhmd->bhnm", q_rows, k)
        probs = jax.nn.softmax(logits.astype(acc_dtype(logits.dtype)), axis=-1)
        sharp = sharpness_from_mean(jnp.mean(probs, axis=1)) if need_sharpness else None
        if bias is not None:  # proportional attention; the sharpness is taken before the bias
            probs = jax.nn.softmax((logits + bias).astype(acc_dtype(logits.dtype)), axis=-1)
        elif need_sharpness:
            # Same values, computed a second time on purpose: when one softmax feeds both the head
            # mean and the value product, XLA CPU fuses them badly (the fused program is several
            # times slower); the barrier keeps the two softmaxes apart.
            barrier = jax.lax.optimization_barrier(logits)
            probs = jax.nn.softmax(barrier.astype(acc_dtype(logits.dtype)), axis=-1)
        return jnp.einsum("bhnm,bhmd->bhnd", probs.astype(v.dtype), v), sharp

    bsz, heads, n, dh = q.shape
    if bsz * heads * n * n <= chunk_min_elements or query_chunk >= n:
        return rows(q)
    num = math.ceil(n / query_chunk)  # static chunk count; equal chunks, a multiple of 8 rows
    chunk = 8 * math.ceil(math.ceil(n / num) / 8)
    num = math.ceil(n / chunk)
    q_pad = jnp.pad(q, ((0, 0), (0, 0), (0, num * chunk - n), (0, 0)))  # padded rows dropped below
    q_chunks = jnp.moveaxis(q_pad.reshape(bsz, heads, num, chunk, dh), 2, 0)
    out, sharp = jax.lax.map(jax.checkpoint(rows), q_chunks)  # (num, B, H, C, Dh), (num, B, C)
    out = jnp.moveaxis(out, 0, 2).reshape(bsz, heads, num * chunk, dh)[:, :, :n]
    sharp = None if sharp is None else jnp.moveaxis(sharp, 0, 1).reshape(bsz, num * chunk)[:, :n]
    return out, sharp


class Mlp(nnx.Module):
    """Two-layer GELU MLP."""

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(cfg.embed_dim, cfg.mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_dim, cfg.embed_dim, rngs=rngs)
        self.approximate = cfg.gelu_approximate

    def __call__(self, x: Array) -> Array:
        """``(B, N, D)`` -> ``(B, N, D)``."""
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=self.approximate))

"""Flax NNX video encoders (UMT, VideoMAE, ViViT) with token merging threaded through the blocks.

Parameter names are the checkpoint format (``tldr_jax.load`` and the converters rely on them)::

    patch_embed/proj/{kernel (t, p, p, C, D), bias (D,)}
    cls_token (1, 1, D)                      # ViViT
    pos_embed (1, N + 1, D)                  # learned position embeddings (ViViT)
    blocks_{i}/norm1/{scale, bias}
    blocks_{i}/attn/qkv/kernel (D, 3D)       # + qkv/bias (3D,) for qkv_bias="qkv"
    blocks_{i}/attn/{q_bias, v_bias} (D,)    # qkv_bias="qv" (UMT, VideoMAE)
    blocks_{i}/attn/proj/{kernel (D, D), bias}
    blocks_{i}/norm2/{scale, bias}
    blocks_{i}/mlp/fc1/{kernel (D, F), bias}, blocks_{i}/mlp/fc2/{kernel (F, D), bias}
    norm/{scale, bias}                       # final_norm
    pool_norm/{scale, bias}                  # pool="mean" (UMT pool_norm, VideoMAE fc_norm)
    head/{kernel (D, K), bias}               # num_classes > 0
    vision_proj/{kernel (D, P), bias}        # UMT retrieval projection

Block order follows the official vid-TLDR code: attention (with ``log(size)`` proportional bias),
residual, *merge*, MLP, residual.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from tldr_jax.configs import ArchConfig
from tldr_jax.merge import (
    TokenOrigin,
    bipartite_plan,
    identity_origin,
    identity_source,
    merge_source,
    merge_wavg,
)
from tldr_jax.options import Method
from tldr_jax.saliency import acc_dtype, saliency_from_sharpness, sharpness_from_mean

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# Position tables.
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------------


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
    """Multi-head self-attention with proportional attention and vid-TLDR/ToMe side outputs.

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
        self, x: Array, log_size: Array | None = None, need: Literal[None, "sharpness", "keys"] = None
    ) -> tuple[Array, Array | None]:
        """Attend.

        Args:
          x: ``(B, N, D)``.
          log_size: ``(B, N)`` proportional-attention bias ``log(size)`` added to the logits, or None.
          need: ``"sharpness"`` also returns the ``(B, N)`` vid-TLDR sharpness of the softmax taken
            *before* the size bias; ``"keys"`` returns ToMe's metric, the ``(B, N, Dh)`` keys averaged
            over heads.

        Returns:
          ``(out (B, N, D), aux or None)``.

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
        aux = sharp if need == "sharpness" else jnp.mean(k, axis=1) if need == "keys" else None
        out = einops.rearrange(out, "b h n d -> b n (h d)")
        return self.proj(out), aux


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
            # mean and the value product, XLA CPU fuses them badly (VideoMAE-B, 1568 tokens, 2 CPU
            # cores: 209 ms for this function, 79 ms with the softmax recomputed behind a barrier).
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


@dataclasses.dataclass(frozen=True)
class MergeSpec:
    """Static per-block merge settings.

    Attributes:
      r: tokens this block removes (0: no merge).
      method: ``"vid_tldr"`` (metric = hidden states, saliency-weighted) or ``"tome"``.
      protected: leading tokens never merged.
      prop_attn: add ``log(size)`` to the attention logits (once sizes exist).
    """

    r: int = 0
    method: Method = "vid_tldr"
    protected: int = 0
    prop_attn: bool = True


@struct.dataclass
class TokenState:
    """What flows between blocks besides the tokens.

    Attributes:
      size: ``(B, N, 1)`` float32 token sizes, or None before the first merge.
      source: None, a dense ``(B, N, N0)`` map, or a :class:`~tldr_jax.merge.TokenOrigin`.
      saliency: per merging layer, the ``(B, N_l)`` vid-TLDR saliency (when collected).
    """

    size: Array | None = None
    source: Array | TokenOrigin | None = None
    saliency: list[Array] | None = None


class Block(nnx.Module):
    """Pre-norm transformer block with the merge between the attention residual and the MLP."""

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(cfg.embed_dim, epsilon=cfg.norm_eps, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = nnx.LayerNorm(cfg.embed_dim, epsilon=cfg.norm_eps, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: Array, state: TokenState, spec: MergeSpec) -> tuple[Array, TokenState]:
        """``(B, N, D)`` -> ``(B, N - spec.r, D)``, updating sizes, source map and saliency."""
        log_size = None
        if spec.prop_attn and state.size is not None:
            log_size = jnp.log(state.size[..., 0])
        need = None
        if spec.r:
            need = "sharpness" if spec.method == "vid_tldr" else "keys"
        h, aux = self.attn(self.norm1(x), log_size, need)
        x = x + h
        if spec.r:
            if spec.method == "vid_tldr":
                sal = saliency_from_sharpness(jax.lax.stop_gradient(aux))
                plan = bipartite_plan(x, spec.r, protected=spec.protected, saliency=sal)
                if state.saliency is not None:
                    state.saliency.append(sal)
            else:
                plan = bipartite_plan(aux, spec.r, protected=spec.protected)
            x, size = merge_wavg(plan, x, state.size)
            source = None if state.source is None else merge_source(plan, state.source)
            state = TokenState(size, source, state.saliency)
        x = x + self.mlp(self.norm2(x))
        return x, state


class VideoEncoder(nnx.Module):
    """A plain ViT video encoder (UMT / VideoMAE / ViViT layouts) with token merging.

    ``blocks_{i}`` are explicit attribute names so that parameter paths are stable strings.
    """

    def __init__(self, cfg: ArchConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg, rngs=rngs)
        if cfg.cls_token:
            self.cls_token = nnx.Param(jnp.zeros((1, 1, d), jnp.float32))
        if cfg.pos_embed == "learned":
            init = nnx.initializers.truncated_normal(0.02)
            self.pos_embed = nnx.Param(init(rngs.params(), (1, cfg.num_tokens, d), jnp.float32))
        for i in range(cfg.depth):
            setattr(self, f"blocks_{i}", Block(cfg, rngs=rngs))
        if cfg.final_norm:
            self.norm = nnx.LayerNorm(d, epsilon=cfg.norm_eps, rngs=rngs)
        if cfg.pool == "mean":
            self.pool_norm = nnx.LayerNorm(d, epsilon=cfg.pool_norm_eps, rngs=rngs)
        if cfg.num_classes:
            self.head = nnx.Linear(d, cfg.num_classes, rngs=rngs)
        if cfg.vision_proj_dim:
            self.vision_proj = nnx.Linear(d, cfg.vision_proj_dim, rngs=rngs)

    def blocks(self) -> list[Block]:
        """The transformer blocks in order."""
        return [getattr(self, f"blocks_{i}") for i in range(self.cfg.depth)]

    def embed(self, video: Array) -> Array:
        """``(B, T, H, W, C)`` -> ``(B, N, D)`` tokens with position embeddings (and CLS)."""
        x = self.patch_embed(video)
        if self.cfg.cls_token:
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        if self.cfg.pos_embed == "learned":
            pos = self.pos_embed[...]
        else:
            pos = jnp.asarray(video_pos_table(self.cfg))
        return x + pos.astype(x.dtype)

    def pool(self, tokens: Array, size: Array | None, mode: Literal["mean", "weighted"]) -> Array:
        """``(B, N, D)`` -> ``(B, D)``: CLS token, plain mean (official) or size-weighted mean."""
        if self.cfg.pool == "cls":
            return tokens[:, 0]
        if mode == "weighted" and size is not None:
            w = size.astype(acc_dtype(tokens.dtype))
            pooled = jnp.sum(tokens.astype(w.dtype) * w, axis=1) / jnp.sum(w, axis=1)
        else:
            pooled = jnp.mean(tokens.astype(acc_dtype(tokens.dtype)), axis=1)
        return self.pool_norm(pooled.astype(tokens.dtype))

    def __call__(
        self,
        video: Array,
        specs: tuple[MergeSpec, ...],
        *,
        pool: Literal["mean", "weighted"] = "mean",
        source: Literal[None, "dense", "origin"] = None,
        collect_saliency: bool = False,
        remat: bool = False,
    ) -> dict[str, object]:
        """Run the encoder.

        Args:
          video: ``(B, T, H, W, C)`` pixels.
          specs: one static :class:`MergeSpec` per block.
          pool: ``"mean"`` (official, unweighted) or ``"weighted"`` (size-weighted).
          source: track the source map densely (official ``(B, N, N0)``), as an O(N)
            :class:`~tldr_jax.merge.TokenOrigin`, or not at all.
          collect_saliency: keep each merging layer's ``(B, N_l)`` saliency.
          remat: rematerialise each block in the backward pass (``jax.checkpoint``). The merge
            indices are recomputed from the same inputs, so the recomputation is exact.

        Returns:
          dict with ``tokens (B, N', D)``, ``pooled (B, D)``, ``size (B, N', 1)``, ``logits``,
          ``embedding``, ``source`` and ``saliency`` (None where not applicable).
        """
        x = self.embed(video)
        bsz, n0, _ = x.shape
        src = None
        if source == "dense":
            src = identity_source(bsz, n0)
        elif source == "origin":
            src = identity_origin(bsz, n0)
        state = TokenState(None, src, [] if collect_saliency else None)
        for block, spec in zip(self.blocks(), specs):
            if remat:
                x, state = _remat_block(block, x, state, spec)
            else:
                x, state = block(x, state, spec)
        tokens = self.norm(x) if self.cfg.final_norm else x
        size = state.size if state.size is not None else jnp.ones(x.shape[:2] + (1,), acc_dtype(x.dtype))
        pooled = self.pool(tokens, state.size, pool)
        logits = self.head(pooled) if self.cfg.num_classes else None
        embedding = self.vision_proj(pooled) if self.cfg.vision_proj_dim else None
        return {
            "tokens": tokens,
            "pooled": pooled,
            "size": size,
            "logits": logits,
            "embedding": embedding,
            "source": state.source,
            "saliency": tuple(state.saliency) if state.saliency is not None else None,
        }


def _remat_block(block: Block, x: Array, state: TokenState, spec: MergeSpec) -> tuple[Array, TokenState]:
    """Run ``block`` under ``jax.checkpoint`` (activations recomputed in the backward pass)."""
    graphdef, params = nnx.split(block)

    @jax.checkpoint
    def run(params, x, state):
        return nnx.merge(graphdef, params)(x, state, spec)

    return run(params, x, state)

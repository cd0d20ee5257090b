"""The video encoder (UMT / VideoMAE / ViViT layouts): embedding, merging blocks, norm, pooling, heads.

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
    pool_norm/{scale, bias}                  # pool="mean" and pool_norm (UMT pool_norm, VideoMAE fc_norm)
    head/{kernel (D, K), bias}               # num_classes > 0
    vision_proj/{kernel (D, P), bias}        # UMT retrieval projection
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from tldr_jax.configs import ArchConfig
from tldr_jax.merge import identity_origin, identity_source, merge_step
from tldr_jax.models.block import Block, MergeFn, MergeSpec, TokenState, pad_tokens, real_tokens
from tldr_jax.models.layers import DEFAULT_TUNING, PatchEmbed, linear
from tldr_jax.models.position import video_pos_table
from tldr_jax.numerics import acc_dtype, is_low_precision
from tldr_jax.options import AttentionTuning

Array = jax.Array

__all__ = ["VideoEncoder", "saliencies"]


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
        if cfg.pool == "mean" and cfg.pool_norm:
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
        pooled = pooled.astype(tokens.dtype)
        return self.pool_norm(pooled) if self.cfg.pool_norm else pooled

    def __call__(
        self,
        video: Array,
        specs: tuple[MergeSpec, ...],
        *,
        pool: Literal["mean", "weighted"] = "mean",
        source: Literal[None, "dense", "origin"] = None,
        remat: bool = False,
        merge: MergeFn = merge_step,
        attention: AttentionTuning = DEFAULT_TUNING,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run the encoder.

        Args:
          video: ``(B, T, H, W, C)`` pixels.
          specs: one static :class:`MergeSpec` per block.
          pool: ``"mean"`` (official, unweighted) or ``"weighted"`` (size-weighted).
          source: track the source map densely (official ``(B, N, N0)``), as an O(N)
            :class:`~tldr_jax.merge.TokenOrigin`, or not at all.
          remat: rematerialise each block in the backward pass (``jax.checkpoint``). The merge
            indices are recomputed from the same inputs, so the recomputation is exact.
          merge: the merge step of every merging block (default :func:`~tldr_jax.merge.merge_step`).
          attention: how every block's attention is chunked / blocked
            (:class:`~tldr_jax.options.AttentionTuning`, static); the same function whatever it says.

        Returns:
          ``(out, intermediates)``. ``out`` holds ``tokens (B, N', D)``, ``pooled (B, D)``,
          ``size (B, N', 1)``, ``logits``, ``embedding`` and ``source`` (None where not applicable).
          ``intermediates`` holds ``embed`` (the ``(B, N, D)`` embedded tokens) and, per block
          ``blocks_{i}``, the block's intermediates (:mod:`tldr_jax.models.block`); under ``jit`` the
          unused ones are dropped from the program.
        """
        x = self.embed(video)
        bsz, n0, _ = x.shape
        src = {"dense": identity_source, "origin": identity_origin}[source](bsz, n0) if source else None
        state = TokenState(x, None, src)
        if attention.token_bucket:  # padded to buckets; the blocks keep the padding at the end
            state = pad_tokens(state, attention.token_bucket)
        intermediates: dict[str, Any] = {"embed": x}
        for i, (block, spec) in enumerate(zip(self.blocks(), specs)):
            run = _remat(block) if remat else block
            state, intermediates[f"blocks_{i}"] = run(state, spec, merge, attention)
        state = real_tokens(state)
        x = state.x
        tokens = self.norm(x) if self.cfg.final_norm else x
        size = state.size if state.size is not None else jnp.ones(x.shape[:2] + (1,), acc_dtype(x.dtype))
        pooled = self.pool(tokens, state.size, pool)
        out = {
            "tokens": tokens,
            "pooled": pooled,
            "size": size,
            "logits": linear(self.head, pooled) if self.cfg.num_classes else None,
            "embedding": linear(self.vision_proj, pooled) if self.cfg.vision_proj_dim else None,
            "source": state.source,
        }
        low = self.patch_embed.proj.kernel[...].dtype
        if is_low_precision(low):  # float32 residual stream inside; outputs in the compute dtype
            out.update({k: out[k].astype(low) for k in ("tokens", "pooled", "logits", "embedding")
                        if out[k] is not None})
        return out, intermediates


def saliencies(intermediates: dict[str, Any]) -> tuple[Array, ...]:
    """The ``(B, N_l)`` vid-TLDR saliency of every merging block, in order (empty for ToMe)."""
    blocks = sorted((k for k in intermediates if k.startswith("blocks_")), key=lambda k: int(k.split("_")[1]))
    return tuple(intermediates[k]["saliency"] for k in blocks if intermediates[k].get("saliency") is not None)


def _remat(block: Block) -> Any:
    """``block`` under ``jax.checkpoint`` (activations recomputed in the backward pass)."""
    graphdef, params = nnx.split(block)

    def call(
        state: TokenState, spec: MergeSpec, merge: MergeFn, attention: AttentionTuning
    ) -> tuple[TokenState, dict[str, Any]]:
        @jax.checkpoint
        def run(params: Any, state: TokenState) -> tuple[TokenState, dict[str, Any]]:
            return nnx.merge(graphdef, params)(state, spec, merge, attention)

        return run(params, state)

    return call

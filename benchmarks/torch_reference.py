"""A readable PyTorch reference of the UMT / VideoMAE vision encoder with the official vid-TLDR merge.

This is a clean re-statement of the official code (``mlvlab/vid-TLDR``: ``multi_modality/utils/
vid_TLDR.py`` and ``multi_modality/models/backbones/vit/vit.py``), used as

* an independent parity reference for :func:`tldr_jax.apply` (``tests/test_torch_reference.py``),
* the "PyTorch with the same merging" baseline of ``benchmarks/run.py``.

The maths is that of the official code:

* block order: ``x = x + Attn(LN1(x), log size)``; merge; ``x = x + MLP(LN2(x))``;
* saliency from the *pre-bias* softmax of the merging layer: negative row entropy of the
  head-averaged attention, min-max normalised, background (below the mean) zeroed, foreground
  re-stretched to ``[0, 1]``;
* bipartite soft matching on the L2-normalised hidden states (after the attention residual):
  even tokens are sources, odd tokens destinations, the ``r`` best-matched sources merge;
* saliency-scaled scatter-sum merge (``merge_wavg`` with the ``size / size_max`` rescaling);
* proportional attention: ``log(size)`` added to the logits in every layer after the first merge;
* ``r`` per layer: ``int(N * r)`` for fractions ``< 1``, otherwise a count, capped at ``N // 2``.

Deviations, all of which leave non-degenerate results bit-identical to the official code:

* ``0 * log 0`` is taken as 0 and a constant score row gives saliency 1 instead of NaN (the two
  documented fixes of :mod:`tldr_jax.saliency`);
* the source sort is stable (``argsort(stable=True)``), as in :func:`tldr_jax.bipartite_plan`;
* the merge accumulates in ``promote(dtype, float32)`` (float32 as the official code, float64 for a
  float64 model) instead of always float32.

Weights use the official UMT state-dict names (``encoder.blocks.0.attn.qkv.weight``, ``pool_norm.*``,
...), so the official golden checkpoint ``umt_tiny.pth`` loads with ``strict=True``;
:func:`state_dict_from_params` maps a :class:`tldr_jax.Params` tree onto them so that both
implementations run identical weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tldr_jax.configs import ArchConfig, get_config

__all__ = [
    "MergeState",
    "VideoEncoderRef",
    "bipartite_merge",
    "build_reference",
    "from_params",
    "merge_wavg",
    "resolve_counts",
    "saliency",
    "sinusoid_position_table",
    "state_dict_from_params",
    "to_torch_video",
]

RSpec = int | float | Sequence[int | float]


# --------------------------------------------------------------------------------------------------
# Merge maths (pure functions on tensors).
# --------------------------------------------------------------------------------------------------


def saliency(attn: Tensor) -> Tensor:
    """vid-TLDR saliency of every query token.

    Args:
      attn: ``(B, H, N, N)`` softmax attention of the merging layer, *before* the size bias.

    Returns:
      ``(B, N, 1)`` saliency in ``[0, 1]``: 0 for background tokens (min-max normalised sharpness
      below the per-sample mean), the re-stretched score ``(s - mean) / max(s - mean)`` otherwise.
    """
    mean_attn = attn.mean(1)
    plogp = torch.where(mean_attn > 0, mean_attn * torch.log(mean_attn), torch.zeros_like(mean_attn))
    score = plogp.sum(2).unsqueeze(-1)  # negative row entropy: higher is sharper
    score = score - score.amin(1, keepdim=True)
    score = _safe_divide(score, score.amax(1, keepdim=True), fill=0.0)
    mean = score.mean(1, keepdim=True)
    background = score < mean
    score = score - mean
    score = _safe_divide(score, score.amax(1, keepdim=True), fill=1.0)
    return score.masked_fill(background, 0.0)


def _safe_divide(num: Tensor, den: Tensor, fill: float) -> Tensor:
    """``num / den`` where ``den > 0``, ``fill`` elsewhere (same bits as ``num / den`` when defined)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.full_like(num, fill))


def bipartite_merge(metric: Tensor, r: int, sal: Tensor | None):
    """Plan one bipartite soft-matching merge and return the function that applies it.

    Args:
      metric: ``(B, N, C)`` matching features (vid-TLDR: the hidden states).
      r: tokens to remove, ``0 < r <= N // 2``.
      sal: ``(B, N, 1)`` saliency; merged sources are scaled by it. ``None``: plain ToMe merge.

    Returns:
      ``merge(t, mode="sum")`` mapping any ``(B, N, C')`` tensor to ``(B, N - r, C')`` in the order
      ``[unmerged sources (ascending), destinations]``; ``mode`` is ``"sum"`` or ``"amax"``.
    """
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[..., ::2, :], metric[..., 1::2, :]
        scores = (a @ b.transpose(-1, -2) + 1) / 2
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
        unm_idx = edge_idx[..., r:, :].sort(dim=1).values
        src_idx = edge_idx[..., :r, :]
        dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
        src_sal = None if sal is None else sal[..., ::2, :].gather(dim=-2, index=src_idx)

    def merge(t: Tensor, mode: str = "sum") -> Tensor:
        dtype = t.dtype
        t = t.to(torch.promote_types(dtype, torch.float32))
        src, dst = t[..., ::2, :], t[..., 1::2, :]
        bsz, _, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(bsz, unm_idx.shape[1], c))
        moved = src.gather(dim=-2, index=src_idx.expand(bsz, r, c))
        if src_sal is not None:
            moved = moved * src_sal.to(t.dtype)
        dst = dst.scatter_reduce(-2, dst_idx.expand(bsz, r, c), moved, reduce=mode)
        return torch.cat([unm, dst], dim=1).to(dtype)

    return merge


def merge_wavg(merge, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Size-weighted merge of tokens, as the official ``merge_wavg`` (with the ``size_max`` rescale).

    Args:
      merge: from :func:`bipartite_merge`.
      x: ``(B, N, C)`` tokens.
      size: ``(B, N, 1)`` token sizes, or ``None`` (ones).

    Returns:
      ``(x, size)`` with ``N - r`` tokens.
    """
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    size_max = size.amax(dim=-2, keepdim=True)
    x = merge(x * (size / size_max), "sum")
    size = merge(size, "sum")
    return x / (size / size_max), size


def resolve_counts(r: RSpec, depth: int, num_tokens: int) -> tuple[int, ...]:
    """Per-layer tokens to remove, exactly as the official code resolves ``vidTLDR_r``.

    Args:
      r: one value for every layer or one per layer (missing trailing layers: 0); each value is a
        count, or a fraction ``< 1`` of the layer's current tokens.
      depth: number of blocks.
      num_tokens: tokens entering the first block.

    Returns:
      ``depth`` effective counts (``int(N * r)`` for fractions, capped at ``N // 2``).
    """
    entries = [r] * depth if isinstance(r, (int, float)) else list(r)
    if len(entries) > depth:
        raise ValueError(f"{len(entries)} schedule entries for a {depth}-layer model: {entries}.")
    entries += [0] * (depth - len(entries))
    counts, n = [], num_tokens
    for value in entries:
        count = int(n * value) if value < 1 else int(value)
        count = max(min(count, n // 2), 0)
        counts.append(count)
        n -= count
    return tuple(counts)


# --------------------------------------------------------------------------------------------------
# Position table.
# --------------------------------------------------------------------------------------------------


def sinusoid_position_table(cfg: ArchConfig) -> Tensor:
    """``(1, N, D)`` float32 sinusoid table of the official code (``get_sinusoid_encoding_table``).

    When the checkpoint was trained on ``cfg.ckpt_num_frames`` frames, the table for those frames is
    linearly interpolated over time, as the official UMT code does.
    """
    t, h, w = cfg.grid
    ckpt_t = (cfg.ckpt_num_frames or cfg.num_frames) // cfg.tubelet_size

    def table(n: int) -> Tensor:
        pos = np.arange(n, dtype=np.float64)[:, None]
        hid = np.arange(cfg.embed_dim)
        angle = pos / np.power(10000, 2 * (hid // 2) / cfg.embed_dim)
        angle[:, 0::2] = np.sin(angle[:, 0::2])
        angle[:, 1::2] = np.cos(angle[:, 1::2])
        return torch.tensor(angle, dtype=torch.float32)[None]

    if ckpt_t == t:
        return table(t * h * w)
    pos = table(ckpt_t * h * w).reshape(1, ckpt_t, h, w, cfg.embed_dim)
    pos = pos.permute(0, 2, 3, 4, 1).reshape(1, h * w * cfg.embed_dim, ckpt_t)
    pos = F.interpolate(pos, size=t, mode="linear")
    pos = pos.reshape(1, h, w, cfg.embed_dim, t).permute(0, 4, 1, 2, 3)
    return pos.reshape(1, t * h * w, cfg.embed_dim)


# --------------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------------


class MergeState:
    """Per-forward merge state shared by the blocks (the official ``info`` dict).

    Attributes:
      size: ``(B, N, 1)`` token sizes, ``None`` before the first merge.
      prop_attn: add ``log(size)`` to the attention logits.
    """

    def __init__(self, prop_attn: bool = True) -> None:
        self.size: Tensor | None = None
        self.prop_attn = prop_attn


class PatchEmbed(nn.Module):
    """Tubelet Conv3D embedding; ``(B, C, T, H, W)`` -> ``(B, T' * H' * W', D)``."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        k = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k)

    def forward(self, video: Tensor) -> Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with proportional attention; also returns the pre-bias softmax."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.scale = cfg.head_dim**-0.5
        self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias == "qkv")
        if cfg.qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(d))
            self.v_bias = nn.Parameter(torch.zeros(d))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(d, d)

    def forward(self, x: Tensor, size: Tensor | None, need_attn: bool) -> tuple[Tensor, Tensor | None]:
        """``(B, N, D)`` -> ``(B, N, D)`` and, if ``need_attn``, the ``(B, H, N, N)`` pre-bias softmax."""
        bsz, n, d = x.shape
        bias = self.qkv.bias
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(bsz, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        attn_pre = logits.softmax(dim=-1).detach() if need_attn else None
        if size is not None:
            logits = logits + size.log()[:, None, None, :, 0]
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(bsz, n, d)
        return self.proj(out), attn_pre


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.act = nn.GELU(approximate="tanh" if cfg.gelu_approximate else "none")
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block; vid-TLDR merges between the attention residual and the MLP."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: Tensor, state: MergeState, r: int) -> Tensor:
        size = state.size if state.prop_attn else None
        h, attn_pre = self.attn(self.norm1(x), size, need_attn=r > 0)
        x = x + h
        if r > 0:
            merge = bipartite_merge(x, r, saliency(attn_pre))
            x, state.size = merge_wavg(merge, x, state.size)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Patch embedding, fixed sinusoid positions, blocks and the optional final norm."""

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(cfg)
        self.register_buffer("pos_embed", sinusoid_position_table(cfg), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps) if cfg.final_norm else None

    def forward(self, video: Tensor, counts: Sequence[int], state: MergeState) -> Tensor:
        x = self.patch_embed(video)
        x = x + self.pos_embed.to(x.dtype)
        for block, r in zip(self.blocks, counts):
            x = block(x, state, r)
        return self.norm(x) if self.norm is not None else x


class VideoEncoderRef(nn.Module):
    """UMT / VideoMAE vision encoder with vid-TLDR merging (official state-dict layout).

    ``forward(video, r)`` takes a PyTorch-layout ``(B, C, T, H, W)`` video and a schedule (see
    :func:`resolve_counts`) and returns a dict with ``tokens (B, N', D)``, ``pooled (B, D)``
    (``pool_norm`` of the *unweighted* token mean, as the official code), ``size (B, N', 1)``,
    ``logits`` and ``embedding`` (``None`` when the model has no head / projection).
    """

    def __init__(self, cfg: ArchConfig, prop_attn: bool = True) -> None:
        super().__init__()
        if cfg.cls_token or cfg.pos_embed != "sincos" or cfg.pool != "mean":
            raise NotImplementedError(
                f"the reference covers the UMT / VideoMAE layout (no CLS token, sinusoid positions, "
                f"mean pooling); {cfg.name} has cls_token={cfg.cls_token}, pos_embed={cfg.pos_embed!r}."
            )
        self.cfg = cfg
        self.prop_attn = prop_attn
        self.encoder = Encoder(cfg)
        self.pool_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.pool_norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes else None
        self.vision_proj = nn.Linear(cfg.embed_dim, cfg.vision_proj_dim) if cfg.vision_proj_dim else None

    def forward(self, video: Tensor, r: RSpec = 0) -> dict[str, Tensor | None]:
        counts = resolve_counts(r, self.cfg.depth, self.cfg.num_tokens)
        state = MergeState(self.prop_attn)
        tokens = self.encoder(video, counts, state)
        pooled = self.pool_norm(tokens.mean(1))
        size = state.size if state.size is not None else torch.ones_like(tokens[..., :1])
        return {
            "tokens": tokens,
            "pooled": pooled,
            "size": size,
            "logits": self.head(pooled) if self.head is not None else None,
            "embedding": self.vision_proj(pooled) if self.vision_proj is not None else None,
        }


# --------------------------------------------------------------------------------------------------
# Weights from tldr_jax.
# --------------------------------------------------------------------------------------------------


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def _torch_name(path: tuple[str, ...]) -> str:
    """Official state-dict name of a tldr_jax parameter path (``("blocks_0", "attn", "qkv", ...)``)."""
    head, *rest = path
    if head.startswith("blocks_"):
        head = f"encoder.blocks.{int(head.split('_')[1])}"
    elif head in ("patch_embed", "norm"):
        head = f"encoder.{head}"
    leaf = {"kernel": "weight", "scale": "weight"}.get(rest[-1], rest[-1])
    return ".".join([head, *rest[:-1], leaf])


def state_dict_from_params(params: Any, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Official-layout ``state_dict`` holding the weights of a :class:`tldr_jax.Params`.

    Linear kernels ``(in, out)`` are transposed to ``(out, in)``; the Conv3D kernel
    ``(t, p, p, C, D)`` becomes ``(D, C, t, p, p)``; LayerNorm ``scale`` becomes ``weight``.
    """
    state = {}
    for path, value in _flatten(params.tree).items():
        array = np.asarray(value)
        if path[-1] == "kernel":
            array = array.transpose(4, 3, 0, 1, 2) if array.ndim == 5 else array.T
        state[_torch_name(path)] = torch.from_numpy(np.array(array, copy=True)).to(dtype)
    return state


def build_reference(arch: str | ArchConfig, prop_attn: bool = True, **overrides: Any) -> VideoEncoderRef:
    """A reference model for a named architecture (random PyTorch init), e.g. ``build_reference(
    "umt_b16", depth=3, embed_dim=64, num_heads=2, mlp_dim=256, num_frames=4, img_size=48)``."""
    return VideoEncoderRef(get_config(arch, **overrides), prop_attn=prop_attn).eval()


def from_params(params: Any, dtype: torch.dtype = torch.float32, prop_attn: bool = True) -> VideoEncoderRef:
    """The reference model running exactly the weights of a :class:`tldr_jax.Params`, in ``dtype``."""
    model = VideoEncoderRef(params.config, prop_attn=prop_attn)
    model.load_state_dict(state_dict_from_params(params, dtype), strict=True)
    return model.to(dtype).eval()


def to_torch_video(video: Any, dtype: torch.dtype | None = None) -> Tensor:
    """A tldr_jax ``(B, T, H, W, C)`` video as the PyTorch ``(B, C, T, H, W)`` layout."""
    tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(video).transpose(0, 4, 1, 2, 3)))
    return tensor if dtype is None else tensor.to(dtype)

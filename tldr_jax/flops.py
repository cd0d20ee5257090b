"""Analytic FLOPs of the video encoders under a merge schedule, and a FLOPs-budget schedule solver.

Counting convention (that of ``fvcore.nn.FlopCountAnalysis``, which the official vid-TLDR code uses
through ``utils/utils.py::flops`` on the vision encoder, input ``1 x 12 x 3 x 224 x 224``):

* one multiply-accumulate (MAC) is one "FLOP", so every number here is really a MAC count;
* matmuls, linear layers and convolutions count ``prod(output) * contraction``; bias adds are free;
* LayerNorm counts 5 per input element (fvcore's ``norm_flop_counter`` with an affine);
* elementwise ops (softmax, GELU, residual adds, position embeddings, scaling, ``log(size)``), means,
  norms of vectors, sorts, gathers and scatters are not counted.

Per encoder (``D`` width, ``F`` MLP width, ``N`` tokens entering a block, ``N' = N - r`` leaving it):

==================  ============================================  ==================================
term                MACs per clip                                 where
==================  ============================================  ==================================
patch_embed         ``N_patches * D * C * t * p * p``             Conv3D tubelet embedding
norm1               ``5 * N * D``                                 block LayerNorm before attention
qkv                 ``3 * N * D^2``                               qkv projection
attn_scores         ``N^2 * D``                                   ``q @ k^T`` over all heads
attn_values         ``N^2 * D``                                   ``attn @ v``
proj                ``N * D^2``                                   attention output projection
merge               ``ceil(N / 2) * floor(N / 2) * C_m``          bipartite similarity, merging
                                                                  layers only (``C_m = D`` for
                                                                  vid-TLDR's hidden-state metric,
                                                                  ``D / heads`` for ToMe's keys)
norm2               ``5 * N' * D``                                LayerNorm before the MLP
mlp                 ``2 * N' * D * F``                            fc1 + fc2 on the merged tokens
norm                ``5 * N_final * D`` (+ ``5 * D`` pool norm)   final norm, ``pool_norm``
head                ``D * (num_classes + vision_proj_dim)``       classifier / retrieval projection
==================  ============================================  ==================================

The merge similarity runs on all ``N`` tokens of the layer, protected (CLS) tokens included, because
that is the matmul :func:`tldr_jax.merge.bipartite_plan` executes (protected rows are masked after it).

With this model UMT-B/16 (12 x 224^2) comes out at 303.34 GMACs and the vid-TLDR Figure-1 schedules at
the plotted values to 0.02 % (see ``tests/test_flops.py``); the LayerNorm terms (0.23 GMACs) are what
closes the gap to 303.3 that a matmul-only count (303.12) leaves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from tldr_jax.configs import ArchConfig, get_config
from tldr_jax.options import METHODS, Method, check_choice
from tldr_jax.schedule import RSpec, schedule_for

Shape = Literal["geometric", "greedy"]

#: The schedule shapes :func:`solve_schedule` can solve for.
SHAPES: tuple[str, ...] = ("geometric", "greedy")

#: fvcore's LayerNorm cost per input element (``norm_flop_counter``: 5 with an affine, 4 without).
LAYERNORM_MACS_PER_ELEMENT = 5

#: Layers the geometric solver merges in by default (every published UMT schedule uses at most 4).
DEFAULT_GEOMETRIC_LAYERS = 4

LAYER_TERMS: tuple[str, ...] = (
    "norm1", "qkv", "attn_scores", "attn_values", "proj", "merge", "norm2", "mlp",
)
COMPONENTS: tuple[str, ...] = (
    "patch_embed", "norm", "qkv", "attn_scores", "attn_values", "proj", "merge", "mlp", "head",
)

__all__ = ["flops", "gflops", "flops_breakdown", "solve_schedule", "METHODS", "SHAPES"]


# --------------------------------------------------------------------------------------------------
# Configs.
# --------------------------------------------------------------------------------------------------


def _config(arch_or_params: Any, num_frames: int | None = None, img_size: int | None = None) -> ArchConfig:
    """The :class:`ArchConfig` of a name, a config, or anything with a ``.config`` config (params)."""
    if isinstance(arch_or_params, (str, ArchConfig)):
        cfg = get_config(arch_or_params)
    elif isinstance(getattr(arch_or_params, "config", None), ArchConfig):
        cfg = arch_or_params.config
    else:
        raise TypeError(
            "expected an architecture name (e.g. 'umt_b16'), an ArchConfig, or params with a .config "
            f"ArchConfig; got {type(arch_or_params).__name__}."
        )
    over = {k: v for k, v in (("num_frames", num_frames), ("img_size", img_size)) if v is not None}
    return cfg.replace(**over) if over else cfg


def _metric_dim(cfg: ArchConfig, method: str) -> int:
    """Width of the merge-matching metric: hidden states (vid-TLDR) or head-averaged keys (ToMe)."""
    check_choice("method", method, METHODS)
    return cfg.embed_dim if method == "vid_tldr" else cfg.head_dim


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int; got {batch!r}.")
    return batch


# --------------------------------------------------------------------------------------------------
# Counting (exact Python ints, per clip).
# --------------------------------------------------------------------------------------------------


def _layernorm(tokens: int, dim: int) -> int:
    """MACs of a LayerNorm over ``(tokens, dim)``."""
    return LAYERNORM_MACS_PER_ELEMENT * tokens * dim


def _merge_similarity(tokens: int, metric_dim: int) -> int:
    """MACs of the bipartite ``a @ b^T``: ``(ceil(N/2), C) x (C, floor(N/2))``."""
    return ((tokens + 1) // 2) * (tokens // 2) * metric_dim


def _patch_embed(cfg: ArchConfig) -> int:
    """MACs of the tubelet Conv3D: one ``C*t*p*p -> D`` product per patch token."""
    return cfg.num_patches * cfg.embed_dim * cfg.in_chans * cfg.tubelet_size * cfg.patch_size**2


def _layer_terms(cfg: ArchConfig, n_in: int, r: int, metric_dim: int) -> dict[str, int]:
    """MACs of one block taking ``n_in`` tokens and removing ``r`` of them, keyed by :data:`LAYER_TERMS`."""
    d, n_out = cfg.embed_dim, n_in - r
    return {
        "norm1": _layernorm(n_in, d),
        "qkv": 3 * n_in * d * d,
        "attn_scores": n_in * n_in * d,
        "attn_values": n_in * n_in * d,
        "proj": n_in * d * d,
        "merge": _merge_similarity(n_in, metric_dim) if r else 0,
        "norm2": _layernorm(n_out, d),
        "mlp": 2 * n_out * d * cfg.mlp_dim,
    }


def _tail_terms(cfg: ArchConfig, n_final: int) -> dict[str, int]:
    """MACs after the blocks: final norm, pool norm (mean pooling only), classifier and projection."""
    d = cfg.embed_dim
    return {
        "final_norm": _layernorm(n_final, d) if cfg.final_norm else 0,
        "pool_norm": _layernorm(1, d) if cfg.pool == "mean" and cfg.pool_norm else 0,
        "head": d * cfg.num_classes + d * cfg.vision_proj_dim,
    }


def _total(cfg: ArchConfig, counts: tuple[int, ...], metric_dim: int) -> int:
    """Total MACs per clip for already-resolved per-layer ``counts`` (no capping or checking)."""
    n, total = cfg.num_tokens, _patch_embed(cfg)
    for r in counts:
        total += sum(_layer_terms(cfg, n, r, metric_dim).values())
        n -= r
    return total + sum(_tail_terms(cfg, n).values())


# --------------------------------------------------------------------------------------------------
# Public counting API.
# --------------------------------------------------------------------------------------------------


def flops_breakdown(
    arch_or_params: Any,
    *,
    r: RSpec = 0,
    num_frames: int | None = None,
    img_size: int | None = None,
    batch: int = 1,
    method: Method = "vid_tldr",
) -> dict[str, Any]:
    """Per-layer and per-component MACs of the encoder under schedule ``r`` (see the module docstring).

    Args:
      arch_or_params: an architecture name (``"umt_b16"``), an :class:`ArchConfig`, or params (any
        object whose ``.config`` is an ArchConfig).
      r: any ``r`` that :func:`tldr_jax.schedule.resolve_schedule` takes: int, fraction, per-layer
        tuple, preset name (``"msrvtt"``) or a resolved :class:`~tldr_jax.schedule.Schedule`.
      num_frames: override the config's frames per clip.
      img_size: override the config's frame height and width.
      batch: clips per call; every count scales linearly with it.
      method: ``"vid_tldr"`` (metric = hidden states, width ``D``) or ``"tome"`` (head-averaged keys).

    Returns:
      A JSON-friendly dict, all MAC values plain floats for the whole batch:
      ``arch``, ``num_frames``, ``img_size``, ``batch``, ``method``; ``r`` (effective per-layer
      counts, length ``depth``) and ``tokens`` (length ``depth + 1``, as ``Schedule.tokens``);
      ``patch_embed``; ``layers``: one dict per block with ``layer``, ``tokens_in``, ``tokens_out``,
      ``r``, the :data:`LAYER_TERMS` and their ``total``; ``final_norm``, ``pool_norm``, ``head``;
      ``components``: totals keyed by :data:`COMPONENTS` (``norm`` gathers every LayerNorm);
      ``total``: the encoder's MACs (``components`` sum to it).
    """
    cfg = _config(arch_or_params, num_frames, img_size)
    metric_dim = _metric_dim(cfg, method)
    b = _check_batch(batch)
    sched = schedule_for(cfg, r)
    components = dict.fromkeys(COMPONENTS, 0)
    components["patch_embed"] = _patch_embed(cfg)
    layers = []
    for layer, (n_in, count) in enumerate(zip(sched.tokens, sched.r)):
        terms = _layer_terms(cfg, n_in, count, metric_dim)
        for key, value in terms.items():
            components["norm" if key.startswith("norm") else key] += value
        entry: dict[str, Any] = {"layer": layer, "tokens_in": n_in, "tokens_out": n_in - count, "r": count}
        entry.update({k: float(b * v) for k, v in terms.items()})
        entry["total"] = float(b * sum(terms.values()))
        layers.append(entry)
    tail = _tail_terms(cfg, sched.tokens[-1])
    components["norm"] += tail["final_norm"] + tail["pool_norm"]
    components["head"] += tail["head"]
    total = sum(components.values())
    return {
        "arch": cfg.name,
        "num_frames": cfg.num_frames,
        "img_size": cfg.img_size,
        "batch": b,
        "method": method,
        "r": sched.r,
        "tokens": sched.tokens,
        "patch_embed": float(b * components["patch_embed"]),
        "layers": layers,
        **{k: float(b * v) for k, v in tail.items()},
        "components": {k: float(b * v) for k, v in components.items()},
        "total": float(b * total),
    }


def flops(arch_or_params: Any, **kwargs: Any) -> float:
    """Encoder MACs (fvcore "FLOPs") for ``batch`` clips under schedule ``r``; the keyword arguments of
    :func:`flops_breakdown`. Example: ``flops("umt_b16", r="msrvtt") / 1e9 ~= 177.98``."""
    return flops_breakdown(arch_or_params, **kwargs)["total"]


def gflops(arch_or_params: Any, **kwargs: Any) -> float:
    """:func:`flops` in GFLOPs (units of 1e9 MACs), the unit of the vid-TLDR paper's plots; the same
    keyword arguments (``r``, ``num_frames``, ``img_size``, ``batch``, ``method``)."""
    return flops(arch_or_params, **kwargs) / 1e9


# --------------------------------------------------------------------------------------------------
# Schedule solver.
# --------------------------------------------------------------------------------------------------


def _geometric_counts(cfg: ArchConfig, r0: int, layers: int, decay: float) -> tuple[int, ...]:
    """``r_l = min(ceil(r0 * decay**l), cap_l)`` for ``l < layers``, then zeros (length ``depth``).

    Every one of the first ``layers`` layers merges at least one token whenever its cap allows, so the
    set of merging layers does not change with ``r0`` and the MACs are non-increasing in ``r0``.
    """
    n, counts = cfg.num_tokens, []
    for layer in range(cfg.depth):
        want = math.ceil(r0 * decay**layer - 1e-9) if layer < layers else 0
        count = min(want, max((n - cfg.protected) // 2, 0))
        counts.append(count)
        n -= count
    return tuple(counts)


def _greedy_counts(cfg: ArchConfig, full: int, last: int) -> tuple[int, ...]:
    """Layers ``0 .. full-1`` merge their cap ``(N - protected) // 2``, layer ``full`` merges ``last``."""
    n, counts = cfg.num_tokens, []
    for layer in range(cfg.depth):
        cap = max((n - cfg.protected) // 2, 0)
        count = cap if layer < full else (min(last, cap) if layer == full else 0)
        counts.append(count)
        n -= count
    return tuple(counts)


def _smallest_meeting(cost: Callable[[int], int], lo: int, hi: int, budget: float) -> int:
    """Smallest ``x`` in ``[lo, hi]`` with ``cost(x) <= budget``, for ``cost`` non-increasing in ``x``
    and ``cost(hi) <= budget`` (binary search)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _budget_macs(baseline: int, budget_gflops: float | None, reduction: float | None, name: str) -> float:
    """The budget in MACs per clip from exactly one of ``budget_gflops`` / ``reduction``."""
    if (budget_gflops is None) == (reduction is None):
        raise ValueError("give exactly one of budget_gflops (e.g. 178.0) or reduction (e.g. 0.4).")
    base_g = baseline / 1e9
    if reduction is not None:
        if not (isinstance(reduction, (int, float)) and 0 <= reduction < 1):
            raise ValueError(
                f"reduction = {reduction!r} must be a fraction in [0, 1) of the FLOPs to remove "
                "(0.4 = 40 % fewer FLOPs)."
            )
        return (1.0 - reduction) * baseline
    if not (isinstance(budget_gflops, (int, float)) and math.isfinite(budget_gflops) and budget_gflops > 0):
        raise ValueError(f"budget_gflops = {budget_gflops!r} must be a positive number of GFLOPs.")
    if budget_gflops * 1e9 > baseline:
        raise ValueError(
            f"budget_gflops = {budget_gflops} is above the unmerged baseline of {name} ({base_g:.2f} "
            "GFLOPs), so there is nothing to solve: use r=0, or give a budget below the baseline."
        )
    return budget_gflops * 1e9


def solve_schedule(
    arch: Any,
    *,
    budget_gflops: float | None = None,
    reduction: float | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
    max_layers: int | None = None,
    shape: Shape = "geometric",
    decay: float = 0.5,
    method: Method = "vid_tldr",
) -> tuple[int, ...]:
    """A front-loaded per-layer merge schedule whose encoder MACs meet a budget as closely as possible.

    Two front-loaded families, each searched by binary search over one integer (analytic counts only):

    * ``"geometric"`` (default): ``r_l = ceil(r0 * decay**l)`` in the first ``max_layers`` layers
      (default ``min(4, depth)``), each capped at ``(N_l - protected) // 2``; the smallest ``r0`` that
      meets the budget is returned. With ``decay=0.5`` this looks like the published schedules
      (e.g. ``(600, 200, 100)`` for MSRVTT), which merge in 1-4 leading layers with decaying counts.
    * ``"greedy"``: merge as early as possible: layer 0 up to its cap ``N // 2``, then layer 1 up to
      its cap, ..., the last merging layer taking just enough tokens; at most ``max_layers`` (default
      ``depth``) layers merge. This reaches the lowest budgets but merges half the tokens at once.

    Both give non-increasing counts and ``flops(arch, r=schedule) <= budget``; the step between
    neighbouring candidates is a few tokens (well under 1 % of the budget for real models).

    Args:
      arch: architecture name, :class:`ArchConfig` or params (as :func:`flops`).
      budget_gflops: MACs budget per clip in GFLOPs (1e9 MACs, fvcore convention).
      reduction: alternatively, the fraction of the baseline FLOPs to remove, in ``[0, 1)``.
      num_frames: override the config's frames per clip.
      img_size: override the config's frame height and width.
      max_layers: most leading layers allowed to merge (see above).
      shape: ``"geometric"`` or ``"greedy"``.
      decay: per-layer ratio of the geometric shape, in ``(0, 1]`` (1: a constant ``r``).
      method: ``"vid_tldr"`` or ``"tome"`` (changes the cost of the merge similarity).

    Returns:
      Per-layer token counts, length ``depth`` (zeros after the last merging layer); all zeros when
      the budget equals the baseline.

    Raises:
      ValueError: both or neither of ``budget_gflops`` / ``reduction``; a budget above the baseline
        or below the family's minimum; bad ``shape``, ``decay`` or ``max_layers``.
    """
    cfg = _config(arch, num_frames, img_size)
    metric_dim = _metric_dim(cfg, method)
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}; got {shape!r}.")
    if not (isinstance(decay, (int, float)) and 0 < decay <= 1):
        raise ValueError(f"decay = {decay!r} must be in (0, 1] (0.5 halves r every layer).")
    default_layers = min(DEFAULT_GEOMETRIC_LAYERS, cfg.depth) if shape == "geometric" else cfg.depth
    layers = default_layers if max_layers is None else max_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= cfg.depth:
        raise ValueError(f"max_layers = {max_layers!r} must be an int in [1, depth = {cfg.depth}].")
    zeros = (0,) * cfg.depth
    baseline = _total(cfg, zeros, metric_dim)
    budget = _budget_macs(baseline, budget_gflops, reduction, cfg.name)
    if budget >= baseline:
        return zeros
    cap0 = max((cfg.num_tokens - cfg.protected) // 2, 0)
    if shape == "geometric":
        counts_of = lambda r0: _geometric_counts(cfg, r0, layers, decay)
        candidates = [(counts_of, cap0)] if cap0 else []
    else:
        candidates = []
        for full in range(layers):
            cap = _greedy_counts(cfg, full, cap0)[full]
            if cap == 0:
                break
            candidates.append(((lambda last, full=full: _greedy_counts(cfg, full, last)), cap))
    for counts_of, hi in candidates:
        if _total(cfg, counts_of(hi), metric_dim) <= budget:
            cost = lambda x, counts_of=counts_of: _total(cfg, counts_of(x), metric_dim)
            best = _smallest_meeting(cost, 1, hi, budget)
            return counts_of(best)
    lowest = min((_total(cfg, c(h), metric_dim) for c, h in candidates), default=baseline) / 1e9
    asked = f"budget_gflops = {budget / 1e9:.2f}" if reduction is None else f"reduction = {reduction}"
    raise ValueError(
        f"{asked} is unreachable for {cfg.name} ({cfg.num_tokens} tokens, baseline {baseline / 1e9:.2f} "
        f"GFLOPs): the lowest a {shape!r} schedule over max_layers = {layers} reaches is {lowest:.2f} "
        "GFLOPs. Raise the budget, allow more layers (max_layers), use a larger decay, or shape='greedy'."
    )

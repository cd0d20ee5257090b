"""The front door: ``init``, ``apply``, ``schedule`` and the ``Params`` / ``Output`` pytrees."""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from tldr_jax.configs import ArchConfig, get_config
from tldr_jax.merge import TokenOrigin
from tldr_jax.models import MergeSpec, VideoEncoder
from tldr_jax.schedule import RSpec, Schedule, resolve_schedule

Array = jax.Array
METHODS = ("vid_tldr", "tome")
POOLS = ("mean", "weighted")
SOURCES = (None, "dense", "origin")
#: Matrix-product precisions ``apply`` takes (``jax.default_matmul_precision`` names). ``"float32"``
#: (the default) is what the official PyTorch code computes; ``"tensorfloat32"`` / ``"bfloat16"``
#: trade accuracy for speed on GPUs / TPUs (CPUs compute float32 whatever is asked); ``None`` leaves
#: JAX's own setting (``jax_default_matmul_precision``, else the platform default) in charge.
PRECISIONS = (None, "float32", "tensorfloat32", "bfloat16", "highest", "high", "default")


@struct.dataclass
class Params:
    """Model weights plus the architecture they belong to.

    Attributes:
      tree: nested dict of arrays, keyed by the parameter names in :mod:`tldr_jax.models`.
      config: the :class:`~tldr_jax.configs.ArchConfig` (static pytree metadata, so ``apply`` needs
        nothing else and ``jax.jit`` specialises on it).
      labels: class names of a classifier head, or None.
    """

    tree: dict[str, Any]
    config: ArchConfig = struct.field(pytree_node=False)
    labels: tuple[str, ...] | None = struct.field(pytree_node=False, default=None)

    def num_params(self) -> int:
        """Total number of parameters."""
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.tree)))


@struct.dataclass
class Output:
    """What :func:`apply` returns.

    Attributes:
      tokens: ``(B, N', D)`` output tokens (after the final norm where the model has one).
      pooled: ``(B, D)`` pooled video feature (UMT ``pool_norm(mean)``, VideoMAE ``fc_norm(mean)``,
        ViViT CLS token).
      size: ``(B, N', 1)`` float32 token sizes (ones when nothing merged).
      logits: ``(B, K)`` classifier logits, or None.
      embedding: ``(B, P)`` UMT ``vision_proj`` retrieval embedding, or None.
      source: the source map when requested: dense ``(B, N', N0)`` or a ``TokenOrigin``.
      saliency: per merging layer, the ``(B, N_l)`` vid-TLDR saliency, when requested.
      schedule: the resolved :class:`~tldr_jax.schedule.Schedule` (static).
    """

    tokens: Array
    pooled: Array
    size: Array
    logits: Array | None = None
    embedding: Array | None = None
    source: Array | TokenOrigin | None = None
    saliency: tuple[Array, ...] | None = None
    schedule: Schedule | None = struct.field(pytree_node=False, default=None)


@functools.lru_cache(maxsize=64)
def _graphdef(cfg: ArchConfig) -> nnx.GraphDef:
    """The (cached) NNX graph definition of an architecture, built abstractly (no FLOPs, no memory)."""
    abstract = nnx.eval_shape(lambda: VideoEncoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    return graphdef


def build(params: Params) -> VideoEncoder:
    """The NNX module holding ``params`` (works eagerly and under tracing)."""
    return nnx.merge(_graphdef(params.config), params.tree)


def init(rng: int | Array, arch: str | ArchConfig, **overrides: Any) -> Params:
    """Randomly initialised parameters for a named architecture.

    Args:
      rng: an int seed or a ``jax.random`` key.
      arch: a name from :data:`tldr_jax.configs.ARCHS` (``"umt_b16"``, ``"videomae_b"``, ``"vivit_b"``,
        ...) or an :class:`ArchConfig`.
      **overrides: config fields to change, e.g. ``depth=2, num_heads=2, num_frames=4, img_size=32``.

    Returns:
      :class:`Params`.
    """
    cfg = get_config(arch, **overrides)
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    return Params(tree=_init_tree(cfg, rng), config=cfg)


@functools.partial(jax.jit, static_argnums=0)
def _init_tree(cfg: ArchConfig, rng: Array) -> dict[str, Any]:
    """Compiled initialisation (one XLA program instead of hundreds of eager ops)."""
    model = VideoEncoder(cfg, rngs=nnx.Rngs(params=rng))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _config_for(params: Params) -> ArchConfig:
    if not isinstance(params, Params):
        raise TypeError(
            f"params must be a tldr_jax.Params (from tldr_jax.init, tldr_jax.load or the converter); "
            f"got {type(params).__name__}."
        )
    return params.config


def check_video(cfg: ArchConfig, video: Any) -> ArchConfig:
    """Validate a ``(B, T, H, W, 3)`` video against a config; return the config for its frame count."""
    shape = getattr(video, "shape", None)
    if shape is None or len(shape) != 5:
        raise ValueError(
            f"video must be a (B, T, H, W, {cfg.in_chans}) array; got shape {shape}. "
            "Add a batch axis with video[None]; PyTorch (B, C, T, H, W) input needs "
            "video.transpose(0, 2, 3, 4, 1)."
        )
    if not jnp.issubdtype(video.dtype, jnp.floating):
        raise TypeError(f"video must be float (normalised pixels); got dtype {video.dtype}.")
    _, t, h, w, c = shape
    if c != cfg.in_chans:
        raise ValueError(
            f"video has {c} channels in its last axis; the model expects {cfg.in_chans}. "
            "Use channels-last (B, T, H, W, C) layout."
        )
    if h != cfg.img_size or w != cfg.img_size:
        raise ValueError(
            f"video frames are {h}x{w}; the model was built for {cfg.img_size}x{cfg.img_size} "
            f"(patch {cfg.patch_size}). Resize/crop with tldr_jax.preprocess or init/convert with "
            f"img_size={h}."
        )
    if t % cfg.tubelet_size:
        raise ValueError(
            f"video has {t} frames, not divisible by the tubelet size {cfg.tubelet_size}; "
            f"sample a multiple of {cfg.tubelet_size} frames."
        )
    if t != cfg.num_frames:
        if cfg.pos_embed == "learned":
            raise ValueError(
                f"video has {t} frames but this {cfg.name} model has learned position embeddings for "
                f"{cfg.num_frames} frames; sample exactly {cfg.num_frames} frames."
            )
        cfg = cfg.replace(num_frames=t)
    return cfg


def schedule(
    arch_or_params: str | ArchConfig | Params,
    r: RSpec = 0,
    *,
    num_frames: int | None = None,
    img_size: int | None = None,
) -> Schedule:
    """The effective per-layer merge counts and token counts ``apply`` will use.

    Example: ``tldr_jax.schedule("umt_b16", "msrvtt").tokens[:4] == (2352, 1752, 1552, 1452)``.
    """
    if isinstance(arch_or_params, Params):
        cfg = arch_or_params.config
    else:
        cfg = get_config(arch_or_params)
    over = {k: v for k, v in (("num_frames", num_frames), ("img_size", img_size)) if v is not None}
    if over:
        cfg = cfg.replace(**over)
    return resolve_schedule(
        r, num_tokens=cfg.num_tokens, depth=cfg.depth, protected=cfg.protected, arch=cfg.preset_arch
    )


FORWARD_STATIC = (
    "cfg", "sched", "method", "pool", "source", "return_saliency", "prop_attn", "dtype", "remat", "per_clip",
    "precision",
)


@functools.partial(jax.jit, static_argnames=FORWARD_STATIC)
def _forward(
    tree: dict[str, Any],
    video: Array,
    *,
    cfg: ArchConfig,
    sched: Schedule,
    method: str,
    pool: str,
    source: str | None,
    return_saliency: bool,
    prop_attn: bool,
    dtype: Any = None,
    remat: bool = False,
    per_clip: bool = False,
    precision: str | None = "float32",
) -> dict[str, Any]:
    # The precision is resolved when each dot is traced, so the context covers the whole body.
    with jax.default_matmul_precision(precision) if precision is not None else contextlib.nullcontext():
        if dtype is not None:
            tree = jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)
            video = video.astype(dtype)
        model = nnx.merge(_graphdef(cfg), tree)
        specs = tuple(MergeSpec(r, method, sched.protected, prop_attn) for r in sched.r)

        def run(clips: Array) -> dict[str, Any]:
            return model(clips, specs, pool=pool, source=source, collect_saliency=return_saliency,
                         remat=remat)

        if not per_clip:
            return run(video)
        # One clip at a time (same program for every clip): on CPU a batched forward is memory-bound.
        return jax.lax.map(lambda clip: jax.tree_util.tree_map(lambda a: a[0], run(clip[None])), video)


def apply(
    params: Params,
    video: Array,
    r: RSpec = 0,
    *,
    method: Literal["vid_tldr", "tome"] = "vid_tldr",
    pool: Literal["mean", "weighted"] = "mean",
    source: Literal[None, "dense", "origin"] = None,
    return_saliency: bool = False,
    prop_attn: bool = True,
    dtype: Any = None,
    remat: bool = False,
    precision: str | None = "float32",
) -> Output:
    """Run a video encoder with token merging.

    Works eagerly (compiled once per schedule and cached) and under ``jax.jit`` with ``r`` (and the
    other keyword options) static: ``jax.jit(tldr_jax.apply, static_argnames=("r", "method"))``.

    Args:
      params: from :func:`init`, :func:`tldr_jax.load` or the converter.
      video: ``(B, T, H, W, 3)`` float pixels, normalised as the model expects.
      r: int (every layer), per-layer tuple, fraction < 1, or preset name such as ``"msrvtt"``.
      method: ``"vid_tldr"`` (official: metric = hidden states, saliency-weighted merge) or
        ``"tome"`` (metric = head-averaged keys, plain size-weighted merge).
      pool: ``"mean"`` (official unweighted mean of the merged tokens) or ``"weighted"``
        (size-weighted mean).
      source: also return the source map: ``"dense"`` (official ``(B, N', N0)``) or ``"origin"``
        (O(N) :class:`~tldr_jax.merge.TokenOrigin`).
      return_saliency: also return each merging layer's saliency.
      prop_attn: proportional attention (``log(size)`` bias); on in the official code.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters are stored in float32 and cast inside
        the compiled function. Softmax, saliency and merge arithmetic stay in float32.
      remat: rematerialise each block in the backward pass (saves memory when fine-tuning).
      precision: float32 matrix products: ``"float32"`` (default; the official code's arithmetic, which
        the golden parity needs), ``"tensorfloat32"`` (faster on NVIDIA GPUs, ~1e-3 relative error)
        or another name of :data:`PRECISIONS`; ``None`` leaves JAX's setting in charge.

    Returns:
      :class:`Output`.
    """
    cfg = check_video(_config_for(params), video)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}; got {pool!r}.")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}; got {source!r}.")
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {PRECISIONS}; got {precision!r}. Use 'float32' for the official "
            "numerics or 'tensorfloat32' for speed on GPUs."
        )
    sched = resolve_schedule(
        r, num_tokens=cfg.num_tokens, depth=cfg.depth, protected=cfg.protected, arch=cfg.preset_arch
    )
    out = _forward(
        params.tree,
        video,
        cfg=cfg,
        sched=sched,
        method=method,
        pool=pool,
        source=source,
        return_saliency=return_saliency,
        prop_attn=prop_attn,
        dtype=None if dtype is None else jnp.dtype(dtype),
        remat=remat,
        per_clip=_per_clip_default(video),
        precision=precision,
    )
    return Output(**out, schedule=sched)


def _per_clip_default(video: Array) -> bool:
    """Run clip by clip for batches on a single CPU device.

    Batched attention and MLP activations of full-size video models do not fit the CPU caches
    (VideoMAE-B, 8 clips on 2 CPU cores: 19.0 s batched, 11.6 s clip by clip); on
    accelerators, or with the batch sharded over several devices, the batched program is kept.
    """
    return video.shape[0] > 1 and jax.default_backend() == "cpu" and jax.device_count() == 1

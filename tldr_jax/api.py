"""The front door: ``init``, ``apply``, ``schedule`` and the ``Params`` / ``Output`` pytrees."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from tldr_jax.configs import ArchConfig, get_config
from tldr_jax.merge import TokenOrigin
from tldr_jax.models import MergeSpec, VideoEncoder, saliencies
from tldr_jax.numerics import is_low_precision, matmul_precision
from tldr_jax.options import (
    COMPUTE_DTYPES,
    METHODS,
    POOLS,
    PRECISIONS,
    SOURCES,
    ApplyOptions,
    AttentionTuning,
    Method,
    Pool,
    SourceForm,
    check_dtype,
)
from tldr_jax.schedule import RSpec, Schedule, schedule_for
from tldr_jax.trees import cast_floating
from tldr_jax.xla_options import explain_unknown_options, forward_options, jit_for, traced

Array = jax.Array
# The option lists live in tldr_jax.options; these names stay importable from here.
__all__ = [
    "METHODS", "POOLS", "PRECISIONS", "SOURCES", "Output", "Params", "apply", "build", "cast",
    "config_for_video", "init", "lower", "params_config", "schedule", "validate_video",
]


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
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = jax.random.key(int(rng) % 2**32)
    elif not _is_key(rng):
        raise TypeError(
            f"rng must be an int seed or a jax.random.key(...); got {rng!r} ({type(rng).__name__})."
        )
    return Params(tree=_init_tree(cfg, rng), config=cfg)


def _is_key(rng: Any) -> bool:
    """A typed ``jax.random.key`` or a legacy ``(2,)`` uint32 ``PRNGKey``."""
    if not isinstance(rng, (jax.Array, np.ndarray)):
        return False
    return jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) or (rng.dtype == np.uint32 and rng.shape == (2,))


@functools.partial(jax.jit, static_argnums=0)
def _init_tree(cfg: ArchConfig, rng: Array) -> dict[str, Any]:
    """Compiled initialisation (one XLA program instead of hundreds of eager ops)."""
    model = VideoEncoder(cfg, rngs=nnx.Rngs(params=rng))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def params_config(params: Any) -> ArchConfig:
    """``params.config``, with a clear ``TypeError`` when ``params`` is not a :class:`Params`."""
    if not isinstance(params, Params):
        raise TypeError(
            f"params must be a tldr_jax.Params (from tldr_jax.init, tldr_jax.load or the converter); "
            f"got {type(params).__name__}."
        )
    return params.config


def validate_video(cfg: ArchConfig, video: Any) -> None:
    """Check a ``(B, T, H, W, C)`` video against a config.

    The one check of model inputs (``apply``, ``sharded_apply``, ``run_directory``, the command line):
    layout, a non-empty batch and frame axis, float dtype, the model's channels and frame size, a frame
    count the model can take, and (for concrete arrays, not under ``jit``) finite values. Raises
    ``ValueError`` / ``TypeError`` naming the bad property and the fix.
    """
    shape = getattr(video, "shape", None)
    if shape is None or len(shape) != 5:
        raise ValueError(
            f"video must be a (B, T, H, W, {cfg.in_chans}) array; got "
            f"{'a ' + type(video).__name__ if shape is None else f'shape {tuple(shape)}'}. "
            "Add a batch axis with video[None]; PyTorch (B, C, T, H, W) input needs "
            "video.transpose(0, 2, 3, 4, 1)."
        )
    b, t, h, w, c = (int(d) for d in shape)
    if not jnp.issubdtype(video.dtype, jnp.floating):
        raise TypeError(
            f"video must be float (normalised pixels); got dtype {video.dtype}. Turn uint8 frames into "
            "model input with tldr_jax.preprocess(frames, img_size, mean, std) or tldr_jax.load_video."
        )
    if c != cfg.in_chans:
        raise ValueError(
            f"video has {c} channels in its last axis; the model expects {cfg.in_chans}. "
            "Use channels-last (B, T, H, W, C) layout."
        )
    if b == 0 or t == 0:
        raise ValueError(
            f"video of shape {tuple(shape)} is empty (batch {b}, frames {t}); give at least one clip of "
            f"{cfg.num_frames} frames."
        )
    if h != cfg.img_size or w != cfg.img_size:
        s = cfg.img_size
        fix = f"Resize/crop the frames to {s}x{s} (tldr_jax.preprocess(frames, img_size={s}))"
        if h == w and h > 0 and h % cfg.patch_size == 0 and cfg.pos_embed == "sincos":
            fix += f", or build the model for {h}x{h} frames (init(..., img_size={h}) or --img-size {h})"
        raise ValueError(
            f"video frames are {h}x{w}; the model was built for {s}x{s} (patch {cfg.patch_size}). {fix}."
        )
    if t % cfg.tubelet_size:
        raise ValueError(
            f"video has {t} frames, not divisible by the tubelet size {cfg.tubelet_size}; "
            f"sample a multiple of {cfg.tubelet_size} frames."
        )
    if t != cfg.num_frames and cfg.pos_embed == "learned":
        raise ValueError(
            f"video has {t} frames but this {cfg.name} model has learned position embeddings for "
            f"{cfg.num_frames} frames; sample exactly {cfg.num_frames} frames."
        )
    _check_finite(video)


def config_for_video(cfg: ArchConfig, video: Any) -> ArchConfig:
    """The config for a ``(B, T, H, W, C)`` video's frame count ``T`` (a sinusoid table is recomputed for
    other frame counts); check the video first with :func:`validate_video`."""
    frames = int(video.shape[1])
    return cfg if frames == cfg.num_frames else cfg.replace(num_frames=frames)


def _check_finite(video: Any) -> None:
    """Refuse NaN / infinite pixels of a concrete array (they would make every output NaN)."""
    if isinstance(video, np.ndarray):
        finite = np.isfinite(video).all()
    elif isinstance(video, jax.Array):
        finite = jnp.isfinite(video).all()
    else:
        return  # a shape-only struct
    if isinstance(finite, jax.core.Tracer):
        return  # under jit / grad the values are not known (the unused check is dropped from the program)
    if not bool(finite):
        raise ValueError(
            "video holds NaN or infinite values, which would make every output NaN; check the decoding "
            "and normalisation (std must not be 0) of the input."
        )


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
    return schedule_for(cfg, r)


FORWARD_STATIC = ("cfg", "sched", "per_clip", "opts")


def _forward(
    tree: dict[str, Any],
    video: Array,
    *,
    cfg: ArchConfig,
    sched: Schedule,
    per_clip: bool,
    opts: ApplyOptions,
) -> dict[str, Any]:
    """The forward of :func:`apply` (jitted by :func:`_jitted`; every static setting is in its key)."""
    with matmul_precision(opts.precision):  # resolved as each layer is traced: covers the whole body
        if opts.dtype is not None:
            tree = _cast_tree(tree, opts.dtype)
            video = video.astype(opts.dtype)
        model = nnx.merge(_graphdef(cfg), tree)
        specs = tuple(MergeSpec(r, opts.method, sched.protected, opts.prop_attn) for r in sched.r)
        attention = opts.attention_tuning()

        def run(clips: Array) -> dict[str, Any]:
            out, intermediates = model(
                clips, specs, pool=opts.pool, source=opts.source, remat=opts.remat, attention=attention
            )
            return {**out, "saliency": saliencies(intermediates) if opts.return_saliency else None}

        if not per_clip:
            return run(video)
        # One clip at a time (same program for every clip): on CPU a batched forward is memory-bound.
        return jax.lax.map(lambda clip: jax.tree_util.tree_map(lambda a: a[0], run(clip[None])), video)


def _jitted(options: tuple[tuple[str, Any], ...] = ()) -> Any:
    """:func:`_forward` under ``jax.jit`` with the XLA compiler ``options`` (one jit, and cache, per set)."""
    return jit_for(_forward, options, static_argnames=FORWARD_STATIC)


def _cast_tree(tree: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Parameters for compute ``dtype``: low precision casts only the matmul / conv kernels (biases,
    norms and position tables stay float32, as under PyTorch autocast); other dtypes cast every leaf."""
    if not is_low_precision(dtype):
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)

    def cast(path: tuple[Any, ...], leaf: Array) -> Array:
        return leaf.astype(dtype) if getattr(path[-1], "key", None) == "kernel" else leaf

    return jax.tree_util.tree_map_with_path(cast, tree)


def cast(params: Any, dtype: Any) -> Any:
    """``params`` for compute ``dtype``, cast once, with the rule ``apply(dtype=...)`` applies per call.

    bfloat16 / float16 cast only the matmul and conv kernels (biases, norms and position tables stay
    float32, as under PyTorch autocast); float32 / float64 cast every leaf. ``apply`` on the result
    runs in that precision with or without ``dtype=`` and gives the same values as
    ``apply(params, video, dtype=dtype)``, without casting the weights inside every call (for UMT-B
    in bfloat16 a noticeable share of the call; docs/guides/scale_precision.md).

    A multi-modal model (a ``RetrievalModel`` or ``QAModel``: a pytree with a ``vision`` :class:`Params`
    field) is cast whole to float32 / float64 (every floating leaf, as its ``astype``); bfloat16 /
    float16 cast its vision tower's kernels by the rule above and leave the text side in float32.

    Raises:
      TypeError: ``params`` is neither :class:`Params` nor a multi-modal model.
      ValueError: ``dtype`` is not one of :data:`~tldr_jax.options.COMPUTE_DTYPES`.
    """
    vision = getattr(params, "vision", None)
    multimodal = isinstance(vision, Params) and hasattr(params, "replace")
    if not isinstance(params, Params) and not multimodal:
        got = type(params).__name__
        raise TypeError(
            f"cast takes tldr_jax Params or a RetrievalModel / QAModel (from init, load or the converter); "
            f"got {got}."
        )
    dt = check_dtype(dtype)
    if dt is None:
        raise ValueError(f"cast needs a dtype, one of {', '.join(COMPUTE_DTYPES)}; got None.")
    if multimodal:
        if is_low_precision(dt):
            return params.replace(vision=cast(vision, dt))
        return cast_floating(params, dt)
    return params.replace(tree=jax.jit(_cast_tree, static_argnums=1)(params.tree, dt))


def apply(
    params: Params,
    video: Array,
    r: RSpec = 0,
    *,
    method: Method = "vid_tldr",
    pool: Pool = "mean",
    source: SourceForm = None,
    return_saliency: bool = False,
    prop_attn: bool = True,
    dtype: Any = None,
    remat: bool = False,
    precision: str | None = "float32",
    fast_compile: bool = False,
    attention: AttentionTuning | None = None,
    gpu_tuning: str = "heuristic",
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
      dtype: compute dtype, one of :data:`~tldr_jax.options.COMPUTE_DTYPES` (e.g. ``jnp.bfloat16``);
        parameters are stored in float32 and cast inside the compiled function. In bfloat16 / float16
        every matrix product (patch embedding, qkv, ``QK^T``, ``PV``, proj, MLP, heads) takes
        low-precision operands and accumulates in float32; the residual stream, LayerNorms, softmax,
        saliency, merge arithmetic and sizes stay float32 (as under PyTorch autocast), and the outputs
        are returned in ``dtype``. Integer and bool dtypes are refused.
      remat: rematerialise each block in the backward pass (saves memory when fine-tuning).
      precision: float32 matrix products: ``"float32"`` (default; the official code's arithmetic, which
        the golden parity needs), ``"tensorfloat32"`` (faster on NVIDIA GPUs, ~1e-3 relative error)
        or another name of :data:`PRECISIONS`; ``None`` leaves JAX's setting in charge.
      fast_compile: compile faster and run slower, for schedules run once or a few times (CPU): the
        attention is not cache-blocked (no query chunks unless the memory guard needs them) and XLA
        compiles with its older CPU kernel emitter (:data:`~tldr_jax.xla_options.FAST_COMPILE_XLA_CPU`;
        the trade is measured in docs/guides/scale_precision.md). The same function up to float rounding.
        Elsewhere only the blocking rule changes (it is CPU only).
      attention: how attention is chunked and blocked, an
        :class:`~tldr_jax.options.AttentionTuning` (None: its defaults); part of the compiled
        program's cache key. The same function up to float rounding.
      gpu_tuning: XLA's GEMM and autotuning settings for programs compiled on a GPU, one of
        :data:`~tldr_jax.options.GPU_TUNINGS` (:mod:`tldr_jax.xla_options`); nothing changes on
        CPU / TPU. Under an outer ``jax.jit`` the outer compile's XLA options apply instead of
        ``fast_compile``'s and ``gpu_tuning``'s.

    Returns:
      :class:`Output`.

    Raises:
      ValueError, TypeError: a bad option, video (shape, dtype, size, frame count, NaN) or ``r``,
        before any computation; the message names the bad value and the fix.
    """
    opts = ApplyOptions(
        method=method, pool=pool, source=source, return_saliency=return_saliency, prop_attn=prop_attn,
        dtype=dtype, remat=remat, precision=precision, fast_compile=fast_compile, attention=attention,
        gpu_tuning=gpu_tuning,
    )
    forward, static, options = _program(params, video, r, opts)
    with explain_unknown_options(options):
        out = forward(params.tree, video, **static)
    return Output(**out, schedule=static["sched"])


def lower(params: Params, video: Array, r: RSpec = 0, **options: Any) -> jax.stages.Lowered:
    """The program ``apply(params, video, r, **options)`` runs, traced and lowered, not compiled.

    For benchmarks and tools that measure compilation or memory: ``lower(...).compile()`` is what the
    first ``apply`` call compiles (same jit, XLA options and cache key; ``.memory_analysis()``,
    ``.cost_analysis()``, ``.as_text()``), and calling the compiled program with
    ``(params.tree, video)`` returns the fields of :class:`Output` as a dict (without ``schedule``).
    ``params.tree`` and ``video`` may be ``jax.ShapeDtypeStruct`` s (nothing is allocated).

    Args:
      params, video, r: as :func:`apply`.
      **options: the keyword options of :func:`apply` (:data:`~tldr_jax.options.APPLY_OPTIONS`).

    Returns:
      ``jax.stages.Lowered``.

    Raises:
      ValueError, TypeError: as :func:`apply`, before any tracing.
    """
    opts = ApplyOptions.from_kwargs(options, where="lower")
    forward, static, _ = _program(params, video, r, opts)
    return forward.lower(params.tree, video, **static)


def _program(
    params: Params, video: Array, r: RSpec, opts: ApplyOptions
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Check the inputs and choose the jitted forward of a call: ``(jit, static arguments, XLA options)``."""
    cfg = params_config(params)
    validate_video(cfg, video)
    cfg = config_for_video(cfg, video)
    static = {"cfg": cfg, "sched": schedule_for(cfg, r), "per_clip": _per_clip_default(video), "opts": opts}
    if traced(params.tree, video):
        return _jitted(()), static, {}  # XLA options only on a top-level jit
    options = forward_options(opts.fast_compile, opts.gpu_tuning)
    return _jitted(tuple(sorted(options.items()))), static, options


def _per_clip_default(video: Array) -> bool:
    """Run clip by clip for batches on a single CPU device.

    Batched attention and MLP activations of full-size video models do not fit the CPU caches, which
    makes a batched forward slower per clip than clip-by-clip runs of the same program; on
    accelerators, or with the batch sharded over several devices, the batched program is kept.
    """
    return video.shape[0] > 1 and jax.default_backend() == "cpu" and jax.device_count() == 1

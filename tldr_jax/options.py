"""The one list of :func:`tldr_jax.apply` options: methods, pools, source forms, precisions, dtypes.

Every entry point that runs the model takes its option names and allowed values from here and checks
them with :class:`ApplyOptions` before doing any work: :func:`tldr_jax.apply`,
:func:`tldr_jax.sharded_apply`, :func:`tldr_jax.run_directory`, the ``tldr-jax`` command line and
:func:`tldr_jax.flops` (``method``). ``tests/test_bad_inputs.py`` fails when an entry point's options
drift from :data:`APPLY_OPTIONS`.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np

Method = Literal["vid_tldr", "tome"]
Pool = Literal["mean", "weighted"]
SourceForm = Literal[None, "dense", "origin"]

#: ``"vid_tldr"`` (official: metric = hidden states, saliency-weighted merge) or ``"tome"``.
METHODS: tuple[str, ...] = ("vid_tldr", "tome")
#: ``"mean"`` (official unweighted mean of the merged tokens) or ``"weighted"`` (size-weighted).
POOLS: tuple[str, ...] = ("mean", "weighted")
#: No source map, the official dense ``(B, N', N0)`` map, or the O(N) ``TokenOrigin``.
SOURCES: tuple[str | None, ...] = (None, "dense", "origin")
#: Matrix-product precisions (``jax.default_matmul_precision`` names). ``"float32"`` (the default) is
#: what the official PyTorch code computes; ``"tensorfloat32"`` / ``"bfloat16"`` trade accuracy for
#: speed on GPUs / TPUs (CPUs compute float32 whatever is asked); ``None`` leaves JAX's own setting
#: (``jax_default_matmul_precision``, else the platform default) in charge.
PRECISIONS: tuple[str | None, ...] = (
    None, "float32", "tensorfloat32", "bfloat16", "highest", "high", "default",
)
#: XLA settings of programs compiled for a GPU (``gpu_tuning=``; :mod:`tldr_jax.xla_options`):
#: ``"heuristic"`` (default: cuBLAS GEMMs with its heuristic algorithm choice, no autotuning, fast
#: compiles), ``"tuned"`` (cuBLAS GEMMs autotuned, cached by the compile cache) or ``"xla"`` (XLA's
#: defaults). Nothing changes on CPU / TPU.
GPU_TUNINGS: tuple[str, ...] = ("heuristic", "tuned", "xla")
#: Compute dtypes (``dtype=``): floating types only; integer or bool compute would round every
#: activation. float64 needs ``jax.config.update("jax_enable_x64", True)``.
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")

__all__ = [
    "APPLY_OPTIONS",
    "COMPUTE_DTYPES",
    "GPU_TUNINGS",
    "METHODS",
    "POOLS",
    "PRECISIONS",
    "SOURCES",
    "ApplyOptions",
    "AttentionTuning",
    "check_choice",
    "check_dtype",
    "check_int",
]


def check_choice(name: str, value: Any, allowed: tuple[Any, ...], fix: str = "") -> Any:
    """``value`` when it is one of ``allowed``; else a ``ValueError`` naming both (and ``fix``)."""
    try:
        ok = value in allowed
    except (TypeError, ValueError):  # unhashable values, arrays
        ok = False
    if not ok:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}.{f' {fix}' if fix else ''}")
    return value


def check_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum`` (ints and integral NumPy scalars; not bools or floats)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}; got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}.")
    return int(value)


def check_dtype(dtype: Any) -> jnp.dtype | None:
    """A compute dtype of :data:`COMPUTE_DTYPES` as a dtype object, or None (the parameters' float32)."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.name not in COMPUTE_DTYPES:
        shown = getattr(dt, "name", None) or repr(dtype)
        raise ValueError(
            f"dtype must be a floating compute dtype ({', '.join(COMPUTE_DTYPES)}) or None; got {shown}. "
            "Integer and bool dtypes would round every activation: use dtype='bfloat16' for speed."
        )
    return dt


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__}).")
    return bool(value)


@dataclasses.dataclass(frozen=True)
class AttentionTuning:
    """How attention is blocked and which kernel it calls: memory and speed, never the function.

    A frozen, hashable value: :func:`tldr_jax.apply` takes it as ``attention=`` (None: these defaults),
    passes it down to every :class:`~tldr_jax.models.Attention` and makes it part of its jit cache key,
    so changing it between two calls compiles a new program. Every setting gives the unchunked result
    up to float rounding. The defaults are the variants measured fastest on CPU
    (docs/guides/scale_precision.md, "Attention on CPU").

    Attributes:
      query_chunk: query rows per chunk of the memory guard.
      chunk_min_elements: the memory guard: when the ``(B, H, N, N)`` probability tensor of a layer
        would hold more elements, its queries run in chunks of ``query_chunk`` rows, so that tensor is
        never alive (the default, ``2**28`` elements, is 1 GiB in float32).
      cpu_blocking: on CPU, also run large layers in query chunks as cache blocking (the next four
        settings). ``apply(fast_compile=True)`` turns it off (fewer kernels to compile).
      cpu_block_min_elements: on CPU, layers whose ``(B, H, N, N)`` tensor exceeds this many elements
        run in chunks (the default, ``2**22``, is UMT-B above about 590 tokens).
      cpu_head_rows: rows per CPU chunk, attended one head at a time (a ``lax.scan`` over the heads
        inside each chunk); None: all heads at once, with the next two row counts.
      cpu_block_rows_sharpness: rows per CPU chunk (all heads at once) in layers that compute the
        vid-TLDR sharpness.
      cpu_block_rows: rows per CPU chunk (all heads at once) in the other layers.
      normalise_after_values: in CPU chunks, layers that need no sharpness normalise after the value
        product (:func:`~tldr_jax.models.layers.softmax_values`).
      key_block: None (default: off), or :func:`~tldr_jax.models.layers.attend_blocked` with that many
        keys per block where ``N`` exceeds it (online softmax, no ``(B, H, N, N)`` tensor).
      fused: where layers that need no statistic call :func:`jax.nn.dot_product_attention` (XLA may
        pick cuDNN's fused kernel): None (default) on GPUs in bfloat16 / float16 only, True always,
        False never.
      token_bucket: None (default: off), or a prototype (issue 31): every block runs on its token count
        padded up to a multiple of this with size-0 tokens at the end, masked out of the attention
        (both softmaxes), the saliency, the matching and the pooling, so that layers share GEMM shapes.

    Raises:
      TypeError, ValueError: a field of the wrong type or out of range; the message names the field.
    """

    query_chunk: int = 512
    chunk_min_elements: int = 2**28
    cpu_blocking: bool = True
    cpu_block_min_elements: int = 2**22
    cpu_head_rows: int | None = 512
    cpu_block_rows_sharpness: int = 512
    cpu_block_rows: int = 128
    normalise_after_values: bool = True
    key_block: int | None = None
    fused: bool | None = None
    token_bucket: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        for field, minimum in (("query_chunk", 1), ("chunk_min_elements", 0), ("cpu_block_min_elements", 0),
                               ("cpu_block_rows_sharpness", 1), ("cpu_block_rows", 1)):
            value = check_int(f"{name}.{field}", getattr(self, field), minimum=minimum)
            object.__setattr__(self, field, value)
        for field in ("cpu_head_rows", "key_block", "token_bucket"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, check_int(f"{name}.{field}", getattr(self, field), minimum=1))
        for field in ("cpu_blocking", "normalise_after_values"):
            object.__setattr__(self, field, _check_flag(f"{name}.{field}", getattr(self, field)))
        if self.fused is not None:
            object.__setattr__(self, "fused", _check_flag(f"{name}.fused (or None)", self.fused))

    def replace(self, **changes: Any) -> AttentionTuning:
        """A copy with ``changes`` applied (checked again)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ApplyOptions:
    """The keyword options of :func:`tldr_jax.apply`, checked; defaults are the official behaviour.

    Attributes:
      method: one of :data:`METHODS`.
      pool: one of :data:`POOLS`.
      source: one of :data:`SOURCES`.
      return_saliency: also return each merging layer's saliency.
      prop_attn: proportional attention (``log(size)`` bias; on in the official code).
      dtype: a compute dtype of :data:`COMPUTE_DTYPES` (stored as a dtype object) or None.
      remat: rematerialise each block in the backward pass.
      precision: one of :data:`PRECISIONS`.
      fast_compile: compile faster, run slower (CPU): no cache blocking of attention and XLA's older
        CPU kernel emitter; see :func:`tldr_jax.apply`.
      attention: an :class:`AttentionTuning`, or None for its defaults; :meth:`attention_tuning` is
        the one rule that combines it with ``fast_compile``.
      gpu_tuning: one of :data:`GPU_TUNINGS`: the XLA compiler options of programs compiled for a GPU
        (:func:`tldr_jax.xla_options.compiler_options`).
    """

    method: Method = "vid_tldr"
    pool: Pool = "mean"
    source: SourceForm = None
    return_saliency: bool = False
    prop_attn: bool = True
    dtype: Any = None
    remat: bool = False
    precision: str | None = "float32"
    fast_compile: bool = False
    attention: AttentionTuning | None = None
    gpu_tuning: str = "heuristic"

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS, "'vid_tldr' is the official vid-TLDR merge.")
        check_choice("pool", self.pool, POOLS)
        check_choice("source", self.source, SOURCES)
        check_choice(
            "precision", self.precision, PRECISIONS,
            "Use 'float32' for the official numerics or 'tensorfloat32' for speed on GPUs.",
        )
        check_choice("gpu_tuning", self.gpu_tuning, GPU_TUNINGS, "'heuristic' compiles fast and runs cuBLAS.")
        for flag in ("return_saliency", "prop_attn", "remat", "fast_compile"):
            object.__setattr__(self, flag, _check_flag(flag, getattr(self, flag)))
        object.__setattr__(self, "dtype", check_dtype(self.dtype))
        if self.attention is not None and not isinstance(self.attention, AttentionTuning):
            raise TypeError(
                f"attention must be a tldr_jax.AttentionTuning or None; got {self.attention!r} "
                f"({type(self.attention).__name__}). Build one with AttentionTuning(query_chunk=256, ...)."
            )
        if self.attention == AttentionTuning():
            object.__setattr__(self, "attention", None)  # one spelling of the defaults

    def attention_tuning(self) -> AttentionTuning:
        """The attention tuning a forward runs with: ``attention`` (or the defaults), without the CPU
        cache blocking under ``fast_compile``."""
        tuning = self.attention if self.attention is not None else AttentionTuning()
        return tuning.replace(cpu_blocking=False) if self.fast_compile else tuning

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], *, where: str = "apply") -> ApplyOptions:
        """Check option names (``TypeError`` listing the valid ones) and values (``ValueError``)."""
        unknown = sorted(set(kwargs) - set(APPLY_OPTIONS))
        if unknown:
            raise TypeError(
                f"{where} got unknown option(s) {', '.join(unknown)}; valid: {', '.join(APPLY_OPTIONS)}."
            )
        return cls(**kwargs)

    def kwargs(self) -> dict[str, Any]:
        """All options as keyword arguments of :func:`tldr_jax.apply`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def non_default(self) -> dict[str, Any]:
        """The options that differ from the defaults (what identifies a run's settings)."""
        default = ApplyOptions()
        return {k: v for k, v in self.kwargs().items() if v != getattr(default, k)}


#: Names of the keyword options every model entry point accepts (those of :func:`tldr_jax.apply`).
APPLY_OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ApplyOptions))

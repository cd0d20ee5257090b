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
#: Compute dtypes (``dtype=``): floating types only; integer or bool compute would round every
#: activation. float64 needs ``jax.config.update("jax_enable_x64", True)``.
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")

__all__ = [
    "APPLY_OPTIONS",
    "COMPUTE_DTYPES",
    "METHODS",
    "POOLS",
    "PRECISIONS",
    "SOURCES",
    "ApplyOptions",
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

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS, "'vid_tldr' is the official vid-TLDR merge.")
        check_choice("pool", self.pool, POOLS)
        check_choice("source", self.source, SOURCES)
        check_choice(
            "precision", self.precision, PRECISIONS,
            "Use 'float32' for the official numerics or 'tensorfloat32' for speed on GPUs.",
        )
        for flag in ("return_saliency", "prop_attn", "remat", "fast_compile"):
            object.__setattr__(self, flag, _check_flag(flag, getattr(self, flag)))
        object.__setattr__(self, "dtype", check_dtype(self.dtype))

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

"""The per-program XLA compiler options of a forward: one rule for every backend.

:func:`tldr_jax.apply` (and every entry point that compiles a forward through it: ``sharded_apply``,
``run_directory``, the retrieval encoders, the index) compiles each program with the options
:func:`compiler_options` chooses from the backend and two :class:`~tldr_jax.options.ApplyOptions`:

* ``fast_compile`` on CPU: :data:`FAST_COMPILE_XLA_CPU`, XLA's older CPU kernel emitter (compiles many
  differently shaped layers faster, runs them a little slower; docs/guides/scale_precision.md).
* ``gpu_tuning`` on GPU: :data:`GPU_TUNING_XLA`. ``"heuristic"`` (default) turns off XLA's Triton GEMM
  fusion and its autotuning: every dot becomes a cuBLASLt call with cuBLAS's heuristic algorithm choice,
  as PyTorch eager runs them, and compiles fast. ``"tuned"`` also leaves Triton GEMMs out but autotunes
  the cuBLASLt algorithms (results kept by the persistent compile cache) and skips the fusion autotuner,
  whose results no cache keeps. ``"xla"`` leaves XLA's defaults.

On TPU nothing is set. A key the user set in ``XLA_FLAGS`` is never overridden: per-program options
would silently win over the flag, so they are dropped for it. Per-program options are used rather than
``XLA_FLAGS`` because a library cannot set the flags reliably (XLA reads them once, and an unknown name
aborts the process), while an unknown per-program key raises an error that :func:`unknown_option`
turns into one line naming the key and the fix.

Every program with these options is built by :func:`jit_for` (one ``jax.jit`` per function, option set
and jit arguments): ``apply``'s forward, ``sharded_apply``, and through the :func:`tuned_jit` decorator
the text side (retrieval text features and fusion, multiple choice, the QA question encoder and answer
decoder), whose functions take a ``gpu_tuning`` keyword (default ``"heuristic"``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from tldr_jax.options import GPU_TUNINGS

__all__ = [
    "FAST_COMPILE_XLA_CPU", "GPU_TUNINGS", "GPU_TUNING_XLA", "compiler_options", "explain_unknown_options",
    "forward_options", "jit_for", "traced", "tuned_jit", "unknown_option", "user_xla_flags",
]

F = TypeVar("F", bound=Callable[..., Any])

#: XLA options of ``apply(..., fast_compile=True)`` on CPU: the older CPU kernel emitter.
FAST_COMPILE_XLA_CPU: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}

#: XLA options of each ``gpu_tuning`` on a GPU backend (see the module docstring).
GPU_TUNING_XLA: dict[str, dict[str, Any]] = {
    "heuristic": {"xla_gpu_enable_triton_gemm": False, "xla_gpu_autotune_level": 0},
    "tuned": {"xla_gpu_enable_triton_gemm": False, "xla_gpu_experimental_enable_fusion_autotuner": False},
    "xla": {},
}

_FLAG = re.compile(r"--?(xla_[A-Za-z0-9_]+)")
_UNKNOWN = re.compile(r"No such compile option: '?([A-Za-z0-9_]+)'?")


def user_xla_flags(flags: str | None = None) -> frozenset[str]:
    """The option names set in ``flags`` (default: the ``XLA_FLAGS`` environment variable), e.g.
    ``"--xla_gpu_autotune_level=2 --xla_dump_to=/tmp"`` -> ``{"xla_gpu_autotune_level", "xla_dump_to"}``."""
    text = os.environ.get("XLA_FLAGS", "") if flags is None else flags
    return frozenset(m.group(1) for m in _FLAG.finditer(text))


def compiler_options(
    backend: str,
    *,
    fast_compile: bool = False,
    gpu_tuning: str = "heuristic",
    autotune_dir: str | os.PathLike | None = None,
    xla_flags: str | None = None,
) -> dict[str, Any]:
    """The per-program XLA options of a forward compiled for ``backend``.

    Args:
      backend: ``jax.default_backend()`` of the compile: ``"cpu"``, ``"gpu"`` (also ``"cuda"`` /
        ``"rocm"``) or ``"tpu"``.
      fast_compile: ``apply``'s ``fast_compile`` (CPU: :data:`FAST_COMPILE_XLA_CPU`).
      gpu_tuning: one of :data:`GPU_TUNINGS` (GPU: :data:`GPU_TUNING_XLA`).
      autotune_dir: this process's own GPU autotuning folder
        (:func:`tldr_jax.compile_cache.autotune_dir`), or None.
      xla_flags: the ``XLA_FLAGS`` text to respect (default: the environment's); its keys are dropped.

    Returns:
      A new dict, possibly empty (XLA's defaults).

    Raises:
      ValueError: ``gpu_tuning`` is not one of :data:`GPU_TUNINGS`.
    """
    if gpu_tuning not in GPU_TUNING_XLA:
        shown = ", ".join(map(repr, GPU_TUNINGS))
        raise ValueError(f"gpu_tuning must be one of {shown}; got {gpu_tuning!r}.")
    chosen: dict[str, Any] = {}
    if backend == "cpu" and fast_compile:
        chosen.update(FAST_COMPILE_XLA_CPU)
    if backend in ("gpu", "cuda", "rocm"):
        chosen.update(GPU_TUNING_XLA[gpu_tuning])
        if autotune_dir is not None:
            chosen["xla_gpu_per_fusion_autotune_cache_dir"] = str(autotune_dir)
    user = user_xla_flags(xla_flags)
    return {key: value for key, value in chosen.items() if key not in user}


def unknown_option(err: BaseException, options: Mapping[str, Any]) -> str | None:
    """One line explaining ``err`` when it is XLA refusing one of ``options`` as unknown, else None."""
    match = _UNKNOWN.search(str(err))
    if match is None or match.group(1) not in options:
        return None
    import jaxlib

    key = match.group(1)
    if key in FAST_COMPILE_XLA_CPU:
        fix = "run without fast_compile=True"
    elif key == "xla_gpu_per_fusion_autotune_cache_dir":
        fix = "call enable_compile_cache without worker="
    else:
        fix = "use gpu_tuning='xla' (XLA's defaults)"
    return (
        f"this XLA (jaxlib {getattr(jaxlib, '__version__', '?')}) has no compiler option {key!r}, which "
        f"tldr_jax sets for this program ({key}={options[key]!r}); {fix}, or use a jaxlib that knows it."
    )


def forward_options(fast_compile: bool = False, gpu_tuning: str = "heuristic") -> dict[str, Any]:
    """:func:`compiler_options` for a forward compiled now in this process: JAX's default backend, this
    process's autotuning folder (:func:`tldr_jax.compile_cache.autotune_dir`) and its ``XLA_FLAGS``."""
    import jax

    from tldr_jax.compile_cache import autotune_dir

    return compiler_options(
        jax.default_backend(), fast_compile=fast_compile, gpu_tuning=gpu_tuning, autotune_dir=autotune_dir()
    )


@contextlib.contextmanager
def explain_unknown_options(options: Mapping[str, Any]) -> Iterator[None]:
    """Compile inside: XLA refusing one of ``options`` as unknown becomes a ``RuntimeError`` of one line
    (:func:`unknown_option`); every other error passes unchanged."""
    try:
        yield
    except Exception as err:
        line = unknown_option(err, options) if options else None
        if line is None:
            raise
        raise RuntimeError(line) from None


def traced(*trees: Any) -> bool:
    """Whether any leaf of ``trees`` is a tracer (a call inside ``jax.jit``, ``grad``, ``vmap``, ...).
    XLA options belong to a top-level jit only: a traced call gets none (the outer compile's apply)."""
    import jax

    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def jit_for(fn: Callable[..., Any], options: tuple[tuple[str, Any], ...] = (), **jit_kwargs: Any) -> Any:
    """``jax.jit(fn, compiler_options=dict(options), **jit_kwargs)``, built once per ``(fn, options,
    jit_kwargs)`` (so each option set keeps its own compiled programs). ``options`` is a sorted tuple
    of items (:func:`forward_options`); ``jit_kwargs`` values must be hashable (tuples, shardings)."""
    return _jit_cache(fn, tuple(options), tuple(sorted(jit_kwargs.items())))


@functools.cache
def _jit_cache(fn: Callable[..., Any], options: tuple, jit_kwargs: tuple) -> Any:
    import jax

    return jax.jit(fn, compiler_options=dict(options) or None, **dict(jit_kwargs))


def tuned_jit(
    *, static_argnames: tuple[str, ...] = (), static_argnums: tuple[int, ...] = ()
) -> Callable[[F], F]:
    """Decorator: ``fn`` under ``jax.jit`` with the XLA options of a forward compiled now
    (:func:`forward_options`), chosen at each call from the added ``gpu_tuning`` keyword (default
    ``"heuristic"``; on CPU / TPU nothing changes). Called under an outer trace, ``fn`` runs under a jit
    without options; an unknown option becomes one line (:func:`explain_unknown_options`). Like a jit,
    the result has ``_cache_size()``: the programs compiled so far, over every option set."""
    jit_kwargs = {"static_argnames": tuple(static_argnames), "static_argnums": tuple(static_argnums)}

    def decorate(fn: F) -> F:
        used: set[tuple[tuple[str, Any], ...]] = set()

        @functools.wraps(fn)
        def call(*args: Any, gpu_tuning: str = "heuristic", **kwargs: Any) -> Any:
            options = {} if traced(args, kwargs) else forward_options(gpu_tuning=gpu_tuning)
            key = tuple(sorted(options.items()))
            used.add(key)
            with explain_unknown_options(options):
                return jit_for(fn, key, **jit_kwargs)(*args, **kwargs)

        call._cache_size = lambda: sum(jit_for(fn, key, **jit_kwargs)._cache_size() for key in used)
        return call  # type: ignore[return-value]

    return decorate

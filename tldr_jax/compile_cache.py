"""JAX's persistent compilation cache: compiled programs written to disk and reused by later processes.

Every merge schedule is its own XLA program (each merged layer has its own shapes), and compiling one
takes seconds on CPU (UMT-B with ``r`` in all twelve layers: several seconds; on GPUs with autotuning,
minutes for a handful of schedules). With the cache on, the first process pays that once; a later
process with the same program, jax/jaxlib version, backend and XLA flags loads the executable instead.

``tldr_jax.enable_compile_cache()`` turns it on from Python; the ``tldr-jax`` command line (unless
``--no-compile-cache``), :func:`tldr_jax.run_directory` (``compile_cache=True``) and the benchmarks turn it
on by default. The environment variable :data:`ENV` (``TLDR_JAX_COMPILE_CACHE``) decides for all of them:
``0`` / ``off`` / ``false`` disables it, a path chooses the folder, unset or ``1`` uses
:func:`default_cache_dir`, one folder per jaxlib version (JAX keys its programs by version, but XLA's
GPU autotuning results kept beside them are not keyed: a new jaxlib starts a fresh folder, and old
ones can be deleted). A folder you name is used as it is.

Several processes may share one folder (JAX writes each entry atomically). GPU autotuning results,
which XLA writes to ``<folder>/xla_gpu_per_fusion_autotune_cache_dir`` under JAX's default, go to one
folder per worker when ``enable_compile_cache(worker=NAME)`` names the process (e.g. each Ray actor):
``<folder>/autotune/NAME``, given to XLA per program by :func:`tldr_jax.xla_options.compiler_options`
(the folder is then part of each program's cache key: a worker reuses its own programs across runs).

The cache is trusted code: do not point it at a folder other users can write to.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import jax

__all__ = [
    "ENV", "autotune_dir", "cache_events", "cache_from_env", "default_cache_dir", "enable_compile_cache",
]

#: Environment variable: ``0``/``off``/``false``/``no`` disables the cache, a path sets its folder.
ENV = "TLDR_JAX_COMPILE_CACHE"
_OFF = ("0", "off", "false", "no")
_ON = ("", "1", "on", "true", "yes")
_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_counts = {"hits": 0, "misses": 0}
#: This process's worker name and own GPU autotuning folder (``enable_compile_cache(worker=...)``).
_WORKER: str | None = None
_AUTOTUNE: Path | None = None


def _count(event: str, **kwargs: object) -> None:
    if event in _EVENTS:
        _counts[_EVENTS[event]] += 1


jax.monitoring.register_event_listener(_count)


def cache_events() -> dict[str, int]:
    """Persistent-cache ``{"hits": ..., "misses": ...}`` of this process so far (JAX's monitoring events:
    a hit is a program loaded from the cache instead of compiled)."""
    return dict(_counts)


def default_cache_dir() -> Path:
    """``<user cache dir>/tldr_jax/xla/jaxlib-<version>``: ``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux,
    ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows; one folder per jaxlib version."""
    import jaxlib

    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tldr_jax" / "xla" / f"jaxlib-{jaxlib.__version__}"


def autotune_dir() -> Path | None:
    """This process's own GPU autotuning folder (set by ``enable_compile_cache(worker=...)``), or None
    (XLA's results then go where JAX puts them, inside the cache folder)."""
    return _AUTOTUNE


def cache_from_env() -> Path | None:
    """The folder :data:`ENV` asks for: None when it disables the cache, else the path it names or
    :func:`default_cache_dir`."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() in _ON:
        return default_cache_dir()
    return Path(value).expanduser()


def enable_compile_cache(path: str | os.PathLike | None = None, *, worker: str | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache for this process.

    Args:
      path: the cache folder (created if missing). ``None``: the folder :data:`ENV` names, else
        :func:`default_cache_dir`; with ``TLDR_JAX_COMPILE_CACHE=0`` nothing is changed. An explicit
        ``path`` is used whatever the environment says.
      worker: a name of this process among several sharing the folder (letters, digits, ``._-``;
        stable across runs, e.g. the accelerator index, so that a worker finds its results again): its
        GPU autotuning results go to ``<folder>/autotune/<worker>`` (:func:`autotune_dir`). None keeps
        the name given earlier in this process (none at first), so that later calls without it, e.g.
        ``run_directory``'s, leave the worker's folder in place.

    Returns:
      The folder in use, or None when the environment disabled the cache.

    Every program is cached, however small or quick to compile (JAX's defaults skip programs that
    compile in under a second). Call it before the first compile; calling it again with another
    folder switches folders.

    Raises:
      OSError: the folder cannot be created; the message names it and the fix.
    """
    if worker is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", str(worker)):
        raise ValueError(f"worker must be a plain name (letters, digits, '._-'); got {worker!r}.")
    folder = cache_from_env() if path is None else Path(path).expanduser()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"cannot create the compilation cache folder {str(folder)!r} ({err.strerror or err}); pass "
            f"another path, set {ENV}=PATH, or set {ENV}=0 to run without the cache."
        ) from err
    folder = folder.resolve()
    from jax.experimental.compilation_cache import compilation_cache

    current = jax.config.jax_compilation_cache_dir
    if current and Path(current).resolve() != folder:
        compilation_cache.reset_cache()  # already initialised elsewhere: re-initialise at the new folder
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    global _AUTOTUNE, _WORKER
    _WORKER = _WORKER if worker is None else str(worker)
    _AUTOTUNE = None if _WORKER is None else folder / "autotune" / _WORKER
    # JAX would point XLA at <folder>/xla_gpu_per_fusion_autotune_cache_dir; a worker's programs carry
    # their own folder instead (tldr_jax.xla_options), so JAX is told to set none.
    jax.config.update("jax_persistent_cache_enable_xla_caches",
                      "none" if _WORKER is not None else "xla_gpu_per_fusion_autotune_cache_dir")
    return folder

"""Encoding a collection on Ray: ``ray.data`` batch inference with one actor per accelerator.

``build_index(..., engine="ray")`` (CLI ``tldr-jax index ... --engine ray``) calls :func:`encode`: the
files become a ``ray.data`` dataset of ``(path, result name)`` rows; ``map_batches`` sends batches to a
pool of :class:`Encoder` actors, each holding the model (loaded once per actor) and encoding its batch with
:func:`tldr_jax.batch.run_directory` into the shared, content-keyed ``cache/`` of the index. Every result
lands atomically under its content hash, and a file whose result exists is skipped, so when a worker is
killed Ray restarts the actor and retries the batch, which encodes only the files the dead worker had
not finished: none twice. The driver then merges the per-file results into one index exactly as a
single-process build does (:func:`tldr_jax.search.build.build_index`).

Where it runs: ``ray.init()`` is called when Ray is not running yet (``RAY_ADDRESS`` joins a cluster;
the index directory must then be on storage every node sees). With GPUs (or TPUs) in the cluster, one
actor per accelerator; on CPUs, ``actors`` actors (default 1) sharing the CPUs. A local instance started
here keeps its session files in a temporary folder, removed when the process exits (:func:`start`);
without ``progress`` (CLI ``-q``) Ray's own log lines and worker reports are kept off the terminal.

Install: ``pip install -e ".[ray]"`` (``ray[data]``).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from tldr_jax.batch import run_directory
from tldr_jax.retrieval.checkpoint import load_retrieval_model
from tldr_jax.video import Preprocessing

#: Test hook: when set to a file path that does not exist yet, the first actor to finish a file creates
#: it and exits at once (a killed worker), so that Ray's restart-and-retry path is exercised.
FAIL_ONCE_ENV = "TLDR_JAX_RAY_FAIL_ONCE"

__all__ = ["Encoder", "RaySummary", "encode", "quiet", "start"]


@dataclasses.dataclass
class RaySummary:
    """What the Ray stage did (the fields of :class:`tldr_jax.batch.RunSummary` the index reads).

    Attributes:
      processed: file names encoded. skipped: file names already in the cache. failed: name -> error.
      actors: actors used. accelerators: accelerators per actor (GPU or TPU; 0 on CPUs).
    """

    processed: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    actors: int = 1
    accelerators: int = 0


class Encoder:
    """A Ray Data actor: loads the retrieval model once, then encodes batches of files into the cache.

    Args:
      model_dir: the retrieval model directory. cache: the index's ``cache/``. r, batch_size, keep_tokens,
        options: as :func:`tldr_jax.search.build_index`. preprocessing: how files become clips (the
        build's :func:`~tldr_jax.retrieval.features.clip_preprocessing`). fail_once: the test hook's path.
    """

    def __init__(
        self, model_dir: str, cache: str, r: Any, preprocessing: Preprocessing, batch_size: int,
        keep_tokens: bool, options: dict[str, Any], fail_once: str | None = None,
    ):
        self.model = load_retrieval_model(model_dir)
        self.cache = Path(cache)
        self.kwargs = dict(
            r=r, preprocessing=preprocessing, batch_size=batch_size, save_tokens=keep_tokens, workers=1,
            progress=False, **options,
        )
        self.fail_once = fail_once

    def _done(self, name: str, path: Path) -> None:
        if not self.fail_once:
            return
        try:  # O_EXCL: exactly one actor, once, even when two finish a file at the same moment
            fd = os.open(self.fail_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"killed after {name}\n".encode())
        os.close(fd)
        os._exit(1)  # a killed worker: no clean-up, no exception to catch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"path", "name"}`` rows in, ``{"path", "status", "error"}`` out (``status``: computed, reused
        or failed)."""
        paths = [str(p) for p in batch["path"]]
        names = dict(zip(paths, (str(n) for n in batch["name"])))
        summary = run_directory(
            self.model.vision, self.cache, self.cache, inputs=paths, output_name=lambda p: names[str(p)],
            on_file_done=self._done, **self.kwargs,
        )
        status, error = [], []
        for p in paths:
            base = Path(p).name
            if base in summary.failed:
                status.append("failed")
                error.append(summary.failed[base])
            else:
                status.append("computed" if base in summary.processed else "reused")
                error.append("")
        return {"path": np.asarray(paths), "status": np.asarray(status), "error": np.asarray(error)}


#: JAX's warning when a process forks; Ray starts its processes with fork + exec, which is safe.
FORK_WARNING = r"os\.fork\(\) was called"
#: Loggers of Ray set to ERROR in quiet runs.
RAY_LOGGERS: tuple[str, ...] = ("ray", "ray.data", "ray.serve", "ray.train")


def start(progress: bool) -> None:
    """Start a local Ray instance unless Ray runs already (``RAY_ADDRESS`` joins a cluster instead). Its
    session folder lies in a new temporary folder, removed at exit after ``ray.shutdown()``; without
    ``progress`` only errors are logged."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
    if not progress:
        kwargs["logging_level"] = logging.ERROR
    if not os.environ.get("RAY_ADDRESS"):
        # short: Ray's socket paths inside it must stay under the 107-character limit of AF_UNIX
        tmp = tempfile.mkdtemp(prefix="tldr-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        kwargs["_temp_dir"] = tmp

        def _clean() -> None:
            with contextlib.suppress(Exception):
                ray.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)

        atexit.register(_clean)
    ray.init(**kwargs)


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 to ``os.devnull`` for the block (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


@contextlib.contextmanager
def quiet(on: bool) -> Iterator[None]:
    """Within the block, with ``on``: Ray's loggers at ERROR, Ray Data's progress bars and execution
    reports off, the worker reports Ray prints on the driver (e.g. a worker that died and was restarted,
    which the build recovers from) dropped, and this process's standard error (where Ray's C++ core
    logs) sent to ``os.devnull``; errors still come as exceptions. Everything is restored afterwards."""
    if not on:
        yield
        return
    import ray._private.worker as ray_worker
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved_ctx = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start",
                                               "enable_auto_log_stats", "verbose_stats_logs")}
    loggers = {name: logging.getLogger(name).level for name in RAY_LOGGERS}
    printer = getattr(ray_worker, "print_to_stdstream", None)
    try:
        for k in saved_ctx:
            setattr(ctx, k, False)
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        if printer is not None:  # the driver's copy of worker errors (Ray's own thread calls it by name)
            ray_worker.print_to_stdstream = lambda data, **kw: None
        with _stderr_to_devnull():
            yield
    finally:
        for k, v in saved_ctx.items():
            setattr(ctx, k, v)
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)
        if printer is not None:
            ray_worker.print_to_stdstream = printer


def _accelerators() -> tuple[str | None, int]:
    """The accelerator resource of the cluster (``"GPU"`` / ``"TPU"``) and its count, or (None, 0)."""
    import ray  # optional (the [ray] extra): only a Ray build gets here

    res = ray.cluster_resources()
    for kind in ("GPU", "TPU"):
        if res.get(kind, 0) >= 1:
            return kind, int(res[kind])
    return None, 0


def encode(
    model_dir: str, files: Sequence[Path], cache: Path, names: dict[str, str], *, r: Any,
    preprocessing: Preprocessing, batch_size: int, keep_tokens: bool, progress: bool, options: dict[str, Any],
    actors: int | None = None,
) -> RaySummary:
    """Encode ``files`` on Ray into ``cache`` (``names[path]`` = the content-keyed result file).

    Args:
      model_dir: the retrieval model directory (each actor loads it). files: the inputs.
      cache: the index's ``cache/`` (shared storage on a cluster). names: result file of each path.
      r, batch_size, keep_tokens, options: as :func:`~tldr_jax.search.build_index`.
      preprocessing: how files become clips. progress: a progress bar on stderr (each actor reads its
        batch in one thread).
      actors: actors on CPUs (default 1); with accelerators, one actor per accelerator.

    Returns:
      :class:`RaySummary`.
    """
    try:  # optional (the [ray] extra): imported only when a Ray build is asked for
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(
            f"engine='ray' needs Ray Data ({err}); install it with pip install -e \".[ray]\" "
            "(or pip install 'ray[data]')."
        ) from None

    with warnings.catch_warnings(), quiet(not progress):
        warnings.filterwarnings("ignore", message=FORK_WARNING, category=RuntimeWarning)
        start(progress)
        return _run(ray, files, cache, names, actors, batch_size, progress, dict(
            model_dir=str(model_dir), cache=str(cache), r=r, preprocessing=preprocessing,
            batch_size=batch_size, keep_tokens=keep_tokens, options=dict(options),
            fail_once=os.environ.get(FAIL_ONCE_ENV),
        ))


def _run(
    ray: Any, files: Sequence[Path], cache: Path, names: dict[str, str], actors: int | None,
    batch_size: int, progress: bool, encoder_kwargs: dict[str, Any],
) -> RaySummary:
    """The ``ray.data`` pipeline of :func:`encode` (Ray started), gathered into a :class:`RaySummary`."""
    kind, count = _accelerators()
    summary = RaySummary()
    resources: dict[str, Any] = {}
    if kind is not None:
        summary.actors, summary.accelerators = count, 1
        if kind == "GPU":
            resources["num_gpus"] = 1
        else:
            resources["resources"] = {kind: 1}
    else:
        summary.actors = int(actors or 1)
        cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)) // summary.actors)
        resources["num_cpus"] = cpus
    rows = [{"path": str(f), "name": names[str(f)]} for f in files]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
    out = ds.map_batches(
        Encoder,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=summary.actors),
        fn_constructor_kwargs=encoder_kwargs,
        **resources,
    )
    Path(cache).mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(rows), unit="clip", disable=not progress, desc="ray") as bar:
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            for path, status, error in zip(batch["path"], batch["status"], batch["error"]):
                name = Path(str(path)).name
                if status == "failed":
                    summary.failed[name] = str(error)
                elif status == "computed":
                    summary.processed.append(name)
                else:
                    summary.skipped.append(name)
                bar.update(1)
    return summary

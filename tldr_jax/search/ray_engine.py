"""Encoding a collection on Ray: ``ray.data`` batch inference with one actor per accelerator.

``build_index(..., engine="ray")`` (CLI ``tldr-jax index ... --engine ray``) calls :func:`encode`: the
files (or, for an index of windows, the windows of each video: a row carries the window's frames and
seconds) become a ``ray.data`` dataset of ``(path, window, result name)`` rows; ``map_batches`` sends
batches to a pool of :class:`Encoder` actors, each holding the model (loaded once per actor) and
encoding its batch with :func:`tldr_jax.batch.run_directory` into the shared, content-keyed ``cache/``
of the index. Every result lands atomically under its content hash, and a file whose result exists is
skipped, so when a worker is killed Ray restarts the actor and retries the batch, which encodes only the
files the dead worker had not finished: none twice. The driver then merges the per-file results into one
index exactly as a single-process build does (:func:`tldr_jax.search.build.build_index`).

Where it runs: ``ray.init()`` is called when Ray is not running yet (``RAY_ADDRESS`` joins a cluster;
the index directory must then be on storage every node sees). With GPUs (or TPUs) in the cluster, one
actor per accelerator; on CPUs, ``actors`` actors (default 1) sharing the CPUs. A local instance started
here keeps its session files in a temporary folder, removed when the process exits (:func:`start`);
each actor turns on JAX's compilation cache with a GPU autotuning folder of its own
(:func:`worker_name`: ``gpu0``, ``gpu1``, ... by the accelerator it holds, else ``cpu``);
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

from tldr_jax.batch import Source, run_directory
from tldr_jax.retrieval.checkpoint import load_retrieval_model
from tldr_jax.video import Preprocessing, Segment, Window

#: Test hook: when set to a file path that does not exist yet, the first actor to finish a file creates
#: it and exits at once (a killed worker), so that Ray's restart-and-retry path is exercised.
FAIL_ONCE_ENV = "TLDR_JAX_RAY_FAIL_ONCE"

__all__ = ["Encoder", "RaySummary", "encode", "quiet", "start", "worker_name"]


@dataclasses.dataclass
class RaySummary:
    """What the Ray stage did (the fields of :class:`tldr_jax.batch.RunSummary` the index reads).

    Attributes:
      processed: names encoded (``clip.mp4``, or ``clip.mp4#t=20,30`` for a window). skipped: names
        already in the cache. failed: name -> error.
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
        _enable_worker_cache()
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
        """Rows of :func:`_rows` in, ``{"path", "status", "error"}`` out (``path``: the source's name,
        ``clip.mp4#t=20,30`` for a window; ``status``: computed, reused or failed)."""
        names = {_source(batch, i): str(batch["name"][i]) for i in range(len(batch["name"]))}
        summary = run_directory(
            self.model.vision, self.cache, self.cache, inputs=list(names), output_name=names.__getitem__,
            on_file_done=self._done, **self.kwargs,
        )
        status, error = [], []
        for source in names:
            base = source.name
            if base in summary.failed:
                status.append("failed")
                error.append(summary.failed[base])
            else:
                status.append("computed" if base in summary.processed else "reused")
                error.append("")
        labels = [source.name for source in names]
        return {"path": np.asarray(labels), "status": np.asarray(status), "error": np.asarray(error)}


def _rows(names: dict[Source, str]) -> list[dict[str, Any]]:
    """One dataset row per source: its file, result name and window (``first`` -1 for a whole file)."""
    rows = []
    for source, name in names.items():
        w = source.window if isinstance(source, Segment) else None
        path = source.path if isinstance(source, Segment) else source
        rows.append({
            "path": str(path), "name": name, "first": -1 if w is None else w.first,
            "stop": -1 if w is None else w.stop, "start": 0.0 if w is None else w.start,
            "end": 0.0 if w is None else w.end,
        })
    return rows


def _source(batch: dict[str, np.ndarray], i: int) -> Source:
    """Row ``i`` of a batch of :func:`_rows` as the file or the :class:`~tldr_jax.video.Segment` it names."""
    path = Path(str(batch["path"][i]))
    if int(batch["first"][i]) < 0:
        return path
    window = Window(float(batch["start"][i]), float(batch["end"][i]), int(batch["first"][i]),
                    int(batch["stop"][i]))
    return Segment(path, window)


def worker_name(gpu_ids: Sequence[Any] = (), accelerator_ids: dict[str, Sequence[Any]] | None = None) -> str:
    """A stable name for an actor's own compile-cache folders: ``gpu<id>`` by the first GPU it holds
    (``ray.get_gpu_ids()``), ``<kind><id>`` by another accelerator (e.g. ``tpu0``, from the runtime
    context's accelerator ids), else ``cpu`` (CPU actors share the machine's programs; XLA's GPU
    autotuning, the reason for per-worker folders, does not run there)."""
    if len(gpu_ids):
        return f"gpu{_plain(gpu_ids[0])}"
    for kind, ids in sorted((accelerator_ids or {}).items()):
        if len(ids):
            return f"{kind.lower()}{_plain(ids[0])}"
    return "cpu"


def _plain(value: Any) -> str:
    """An accelerator id as a name (letters, digits, ``._-``; others become ``-``)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in str(value)) or "0"


def _enable_worker_cache() -> None:
    """Inside an actor: JAX's compilation cache with this actor's own autotuning folder (issue 31)."""
    import ray

    from tldr_jax.compile_cache import enable_compile_cache

    try:
        accelerators = ray.get_runtime_context().get_accelerator_ids()
    except Exception:  # noqa: BLE001 - older Ray: GPUs only
        accelerators = {}
    enable_compile_cache(worker=worker_name(ray.get_gpu_ids(), accelerators))


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
    model_dir: str, cache: Path, names: dict[Source, str], *, r: Any,
    preprocessing: Preprocessing, batch_size: int, keep_tokens: bool, progress: bool, options: dict[str, Any],
    actors: int | None = None,
) -> RaySummary:
    """Encode the sources ``names`` lists on Ray into ``cache`` (``names[source]`` = its content-keyed
    result file; a source is a file or a :class:`~tldr_jax.video.Segment`, a window of one).

    Args:
      model_dir: the retrieval model directory (each actor loads it).
      cache: the index's ``cache/`` (shared storage on a cluster). names: result file of each source.
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
        return _run(ray, cache, names, actors, batch_size, progress, dict(
            model_dir=str(model_dir), cache=str(cache), r=r, preprocessing=preprocessing,
            batch_size=batch_size, keep_tokens=keep_tokens, options=dict(options),
            fail_once=os.environ.get(FAIL_ONCE_ENV),
        ))


def _run(
    ray: Any, cache: Path, names: dict[Source, str], actors: int | None,
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
    rows = _rows(names)
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
            for label, status, error in zip(batch["path"], batch["status"], batch["error"]):
                name = str(label)
                if status == "failed":
                    summary.failed[name] = str(error)
                elif status == "computed":
                    summary.processed.append(name)
                else:
                    summary.skipped.append(name)
                bar.update(1)
    return summary

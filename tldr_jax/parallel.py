"""Data-parallel inference: the batch is split over a 1-D ``'data'`` device mesh, the weights replicated.

Single host::

    mesh = tldr_jax.parallel.make_mesh()          # all local devices on one 'data' axis
    out = tldr_jax.parallel.sharded_apply(params, video, r="msrvtt", mesh=mesh)

``sharded_apply`` pads a batch that does not divide the device count (repeating the last clip), runs
one jitted :func:`tldr_jax.apply` with the video sharded over ``'data'`` and the parameters replicated,
and drops the padded rows again. Every clip is computed independently, so the results equal those of
the unsharded :func:`tldr_jax.apply` up to float rounding.

Multi-host (one process per host, e.g. a TPU pod slice or several GPU nodes): call
``jax.distributed.initialize()`` (coordinator address, process count and id; automatic on Cloud TPU and
under SLURM/Open MPI) before anything else touches JAX, build the mesh over ``jax.devices()`` (all
processes' devices) and call ``sharded_apply`` on *every* process with that process's own clips. Each
process gets back the results of its own clips. The call is collective: all processes must make it
the same number of times, with the same options; their batch sizes may differ (they are padded to a
common size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tldr_jax.api import Output, Params, apply, config_for_video, params_config, validate_video
from tldr_jax.options import APPLY_OPTIONS, ApplyOptions
from tldr_jax.schedule import check_schedule
from tldr_jax.xla_options import explain_unknown_options, forward_options, jit_for

Array = jax.Array
DATA_AXIS = "data"
__all__ = [
    "APPLY_OPTIONS", "DATA_AXIS", "batch_sharding", "local_device_count", "make_mesh", "pad_batch",
    "padded_size", "replicate", "replicated_sharding", "shard_batch", "sharded_apply", "spans_processes",
    "trim",
]


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process, grouped by process).

    Grouping by process keeps each process's devices contiguous along the axis, so a process's
    clips form one contiguous block of the global batch (what ``make_array_from_process_local_data``
    assumes).
    """
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("make_mesh needs at least one device.")
    devs.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devs, dtype=object), (axis_name,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh's first axis; all other axes whole."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def spans_processes(mesh: Mesh) -> bool:
    """Whether ``mesh`` holds devices of more than one process (multi-host mode)."""
    return len({d.process_index for d in mesh.devices.flat}) > 1


def local_device_count(mesh: Mesh) -> int:
    """Devices of ``mesh`` that belong to this process (the mesh size on a single host)."""
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def replicate(params: Params, mesh: Mesh) -> Params:
    """``params`` with every array copied to all devices of ``mesh`` (a no-op when already there).

    Multi-host: every process must pass the same weights (e.g. loaded from the same checkpoint).
    """
    sharding = replicated_sharding(mesh)
    if not spans_processes(mesh):
        return jax.device_put(params, sharding)
    tree = jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a)), params.tree
    )
    return params.replace(tree=tree)


def padded_size(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= max(n, 1)``."""
    return -(-max(n, 1) // multiple) * multiple


def pad_batch(video: Array | np.ndarray, size: int) -> Array | np.ndarray:
    """Pad ``(B, ...)`` to ``(size, ...)`` by repeating the last clip (realistic values, no NaNs).

    NumPy input stays on the host (NumPy out); a ``jax.Array`` is padded with ``jax.numpy``.
    """
    n = video.shape[0]
    if n == 0:
        raise ValueError("cannot pad an empty batch: there is no clip to repeat.")
    if size < n:
        raise ValueError(f"pad_batch: target size {size} is smaller than the batch ({n}).")
    if size == n:
        return video
    xp = np if isinstance(video, np.ndarray) else jnp
    fill = xp.repeat(video[-1:], size - n, axis=0)
    return xp.concatenate([video, fill], axis=0)


def shard_batch(video: Array | np.ndarray, mesh: Mesh) -> Array:
    """Place a ``(B, ...)`` batch on ``mesh``, split along the batch axis.

    Single host: ``B`` must be a multiple of the device count. Multi-host: ``video`` is this
    process's part of the global batch (a multiple of its local device count, the same size on every
    process); the result is the global ``(B * processes in the mesh, ...)`` array.
    """
    local = local_device_count(mesh)
    if video.shape[0] % local:
        raise ValueError(
            f"batch of {video.shape[0]} clips does not split over {local} devices; pad it with "
            f"pad_batch(video, padded_size(n, {local})) or use sharded_apply, which pads and trims."
        )
    sharding = batch_sharding(mesh)
    if not spans_processes(mesh):
        return jax.device_put(video, sharding)
    processes = len({d.process_index for d in mesh.devices.flat})
    global_shape = (video.shape[0] * processes,) + tuple(video.shape[1:])
    return jax.make_array_from_process_local_data(sharding, np.asarray(video), global_shape)


def _agreed_local_size(n: int, mesh: Mesh) -> int:
    """Per-process padded batch size, the same on all processes (a collective when multi-host)."""
    local = local_device_count(mesh)
    if spans_processes(mesh):
        from jax.experimental import multihost_utils

        n = int(np.max(multihost_utils.process_allgather(np.asarray(n, np.int32))))
    return padded_size(n, local)


def _apply_positional(params: Params, video: Array, r: Any, options: tuple[tuple[str, Any], ...]) -> Output:
    """:func:`tldr_jax.apply` with all static options positional (``jax.jit`` in_shardings need that)."""
    return apply(params, video, r, **dict(options))


def _sharded_apply_fn(mesh: Mesh, xla: tuple[tuple[str, Any], ...] = ()) -> Any:
    """``tldr_jax.apply`` jitted with params replicated and video/outputs batch-sharded on ``mesh``,
    compiled with the XLA options ``xla`` (:func:`tldr_jax.xla_options.forward_options`)."""
    return jit_for(
        _apply_positional,
        xla,
        static_argnums=(2, 3),
        in_shardings=(replicated_sharding(mesh), batch_sharding(mesh)),
        out_shardings=batch_sharding(mesh),
    )


def _hashable(r: Any) -> Any:
    """Static ``r``: lists become tuples so that ``jax.jit`` can hash them."""
    return tuple(r) if isinstance(r, list) else r


def _to_local(out: Output, mesh: Mesh) -> Output:
    """This process's rows of a batch-sharded global ``Output`` (multi-host)."""
    from jax.experimental import multihost_utils

    spec = PartitionSpec(mesh.axis_names[0])
    return jax.tree_util.tree_map(
        lambda a: multihost_utils.global_array_to_host_local_array(a, mesh, spec), out
    )


def trim(out: Output, n: int) -> Output:
    """The first ``n`` rows of every batch-leading array of ``out`` (drops padding)."""
    return jax.tree_util.tree_map(lambda a: a[:n], out)


def sharded_apply(
    params: Params,
    video: Array | np.ndarray,
    r: Any = 0,
    *,
    mesh: Mesh | None = None,
    **apply_kwargs: Any,
) -> Output:
    """:func:`tldr_jax.apply` data-parallel over ``mesh``.

    Args:
      params: weights (replicated onto the mesh here; pass :func:`replicate`'s result to skip the copy).
      video: ``(B, T, H, W, 3)`` clips of this process; ``B`` need not divide the device count.
      r: merge schedule, as for :func:`tldr_jax.apply` (static).
      mesh: a 1-D mesh (default :func:`make_mesh`: all devices).
      **apply_kwargs: the keyword options of :func:`tldr_jax.apply`
        (:data:`~tldr_jax.options.APPLY_OPTIONS`: ``method``, ``pool``, ``source``, ``return_saliency``,
        ``prop_attn``, ``dtype``, ``remat``, ``precision``, ``fast_compile``, ``attention``,
        ``gpu_tuning``; all static). The program compiles with the XLA options ``apply`` would use.

    Returns:
      :class:`~tldr_jax.Output` for the ``B`` clips. When ``B`` is a multiple of the device count the
      arrays stay sharded over the mesh's devices (single host); otherwise the padded rows are
      sliced off. Multi-host: the rows of this process's clips.
    """
    opts = ApplyOptions.from_kwargs(apply_kwargs, where="sharded_apply")
    if getattr(video, "ndim", None) != 5:
        raise ValueError(f"video must be (B, T, H, W, 3); got shape {getattr(video, 'shape', None)}.")
    cfg = params_config(params)
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (tldr_jax.make_mesh()); got {type(mesh).__name__}")
    validate_video(cfg, video)
    check_schedule(config_for_video(cfg, video), _hashable(r))
    mesh = make_mesh() if mesh is None else mesh
    n = int(video.shape[0])
    video = pad_batch(video, _agreed_local_size(n, mesh))
    xla = forward_options(opts.fast_compile, opts.gpu_tuning)  # what apply's own jit would get
    fn = _sharded_apply_fn(mesh, tuple(sorted(xla.items())))
    options = tuple(sorted(opts.non_default().items()))
    with explain_unknown_options(xla):
        out = fn(replicate(params, mesh), shard_batch(video, mesh), _hashable(r), options)
    if spans_processes(mesh):
        out = _to_local(out, mesh)
    return out if video.shape[0] == n else trim(out, n)

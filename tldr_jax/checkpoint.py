"""Save and load :class:`~tldr_jax.api.Params` as a self-describing checkpoint directory.

Layout of a checkpoint directory ``PATH``::

    PATH/config.json    # format marker and version, tldr_jax version, ArchConfig dict, labels, metadata
    PATH/params/        # an orbax (StandardCheckpointer) checkpoint of ``params.tree``

``config.json`` looks like::

    {"format": "tldr_jax.checkpoint", "format_version": 1, "tldr_jax_version": "0.1.0",
     "created": "2025-01-01T00:00:00+00:00", "config": {...ArchConfig.to_dict()...},
     "labels": ["abseiling", ...] | null, "metadata": {...},
     "checksums": {"algorithm": "crc32", "arrays": {"blocks_0/attn/qkv/kernel": "1a2b3c4d", ...}}}

``metadata`` is any JSON-serialisable dict given to :func:`save`; the converter
(``python -m checkpoints_convert``) stores ``metadata["source"]``: the source format, file names,
their sha256 and the conversion options.

:func:`save` is atomic: everything is written into a hidden temporary sibling directory that is
renamed to ``PATH`` only once complete, so after any failure nothing is left at ``PATH`` (and an
existing checkpoint being overwritten is kept intact). :func:`load` checks the stored tree against
the tree :func:`tldr_jax.init` would build for the stored config (computed abstractly with
``jax.eval_shape``, nothing is allocated) and reports missing, unexpected and mis-shaped entries;
after reading the arrays it compares them with the recorded checksums, so a damaged data file is
reported as corrupt instead of giving wrong weights (checkpoints written before the checksums were
added load without this check).

This module reads and writes vision encoders only; :func:`tldr_jax.load` (:mod:`tldr_jax.loading`)
opens a checkpoint of any kind. The flat tree views, tree comparison and checksums it uses live in
:mod:`tldr_jax.trees` (their names are importable from here too).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import re
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.api import Params, init
from tldr_jax.configs import ArchConfig
from tldr_jax.files import atomic_directory
from tldr_jax.trees import TreeDiff, compare_trees, flatten_tree, tree_checksums, unflatten_tree
from tldr_jax.version import __version__

#: The ``"format"`` field of a checkpoint's ``config.json``.
FORMAT = "tldr_jax.checkpoint"
#: The newest layout version this code writes and reads (a newer one is refused with an upgrade hint).
FORMAT_VERSION = 1
#: The JSON file with the architecture, labels, version and checksums.
CONFIG_FILE = "config.json"
#: The Orbax folder with the parameter arrays.
PARAMS_DIR = "params"
#: How ``config.json`` records each array's checksum (``load`` verifies them; older checkpoints have none).
CHECKSUM = "crc32"
#: The kind of a vision-encoder checkpoint: ``config.json`` records no ``"kind"`` (other models record
#: theirs, e.g. ``"umt_retrieval"``; :func:`tldr_jax.load` dispatches on it).
VISION_KIND = "vision"

__all__ = [
    "CHECKSUM",
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "PARAMS_DIR",
    "VISION_KIND",
    "CheckpointError",
    "CheckpointNotFoundError",
    "TreeDiff",
    "compare_trees",
    "expected_shapes",
    "flatten_tree",
    "load",
    "read_config",
    "read_info",
    "read_kind",
    "save",
    "tree_checksums",
    "unflatten_tree",
]


class CheckpointError(ValueError):
    """A tldr_jax checkpoint directory is missing pieces, too new, or does not match its config."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint directory at the given path."""


# --------------------------------------------------------------------------------------------------
# The tree a config expects (flat views, comparison and checksums: tldr_jax.trees).
# --------------------------------------------------------------------------------------------------


def expected_shapes(config: ArchConfig) -> dict[str, tuple[int, ...]]:
    """Flat ``{path: shape}`` of the parameters :func:`tldr_jax.init` builds for ``config``.

    Computed with ``jax.eval_shape``: no parameters are allocated, so this is cheap for any size.
    """
    return dict(_expected_shapes(config))


@functools.lru_cache(maxsize=32)
def _expected_shapes(config: ArchConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    abstract = jax.eval_shape(lambda: init(0, config).tree)
    return tuple((path, tuple(leaf.shape)) for path, leaf in flatten_tree(abstract).items())


def _check_params(params: Params) -> None:
    if not isinstance(params, Params):
        raise TypeError(f"save() needs a tldr_jax.Params; got {type(params).__name__}.")
    found = {p: tuple(np.shape(x)) for p, x in flatten_tree(params.tree).items()}
    diff = compare_trees(found, expected_shapes(params.config))
    if not diff.ok:
        raise CheckpointError(
            f"params.tree does not match its config {params.config.name!r}; refusing to save a "
            f"checkpoint that could not be loaded.\n{diff.report()}"
        )


# --------------------------------------------------------------------------------------------------
# Save.
# --------------------------------------------------------------------------------------------------


def _version() -> str:
    return __version__


def _config_payload(params: Params, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tldr_jax_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": params.config.to_dict(),
        "labels": list(params.labels) if params.labels is not None else None,
        "metadata": dict(metadata or {}),
        "checksums": {
            "algorithm": CHECKSUM,
            "header": _header_checksum(params.config.to_dict(), params.labels),
            "arrays": tree_checksums(params.tree),
        },
    }


def _header_checksum(config: Mapping[str, Any], labels: Any) -> str:
    """crc32 of the config and labels (a damaged ``config.json`` could otherwise load a wrong model)."""
    labels = list(labels) if isinstance(labels, (list, tuple)) else labels
    text = json.dumps({"config": config, "labels": labels}, sort_keys=True)
    return f"{zlib.crc32(text.encode()):08x}"


def _write_config(directory: Path, payload: Mapping[str, Any]) -> None:
    """Write ``config.json`` (raises TypeError for metadata that is not JSON-serialisable)."""
    text = json.dumps(payload, indent=2, sort_keys=False)
    (directory / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")


def write_tree(directory: Path, tree: Mapping[str, Any]) -> None:
    """Write ``tree`` (nested dict of arrays) as an orbax checkpoint in ``directory``."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(Path(directory).absolute(), dict(tree))
        ckptr.wait_until_finished()


def _write_tree(directory: Path, tree: Mapping[str, Any]) -> None:
    """Write the weights into ``directory / PARAMS_DIR``."""
    write_tree(directory / PARAMS_DIR, tree)


def save(
    params: Params,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``params`` to the checkpoint directory ``path`` atomically.

    Args:
      params: a :class:`~tldr_jax.api.Params` whose tree matches its config.
      path: the checkpoint directory to create (parents are created).
      metadata: JSON-serialisable dict stored in ``config.json`` under ``"metadata"``.
      overwrite: replace an existing ``path`` (the old one stays intact if writing fails).

    Returns:
      The absolute checkpoint path.

    Raises:
      FileExistsError: ``path`` exists and ``overwrite`` is False.
      CheckpointError: the tree does not match the config.
      TypeError: ``metadata`` is not JSON-serialisable.
    """
    path = Path(path).expanduser().absolute()
    with atomic_directory(path, overwrite=overwrite) as tmp:  # FileExistsError before anything else
        _check_params(params)
        _write_config(tmp, _config_payload(params, metadata))
        _write_tree(tmp, params.tree)
    return path


# --------------------------------------------------------------------------------------------------
# Load.
# --------------------------------------------------------------------------------------------------


def read_info(path: str | Path) -> dict[str, Any]:
    """The parsed, validated ``config.json`` of a checkpoint (no arrays are read).

    Raises:
      CheckpointNotFoundError: no directory at ``path``.
      CheckpointError: not a tldr_jax checkpoint, or written by a newer format version.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointNotFoundError(
            f"no checkpoint at {path}: the directory does not exist. Create one with tldr_jax.save(...) "
            "or `python -m checkpoints_convert SRC OUT`."
        )
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file, not a tldr_jax checkpoint directory. PyTorch / Hugging Face weights must "
            f"be converted first: `python -m checkpoints_convert {path} OUT_DIR`."
        )
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise CheckpointError(
            f"{path} has no {CONFIG_FILE}: not a tldr_jax checkpoint (or a save that did not finish). "
            "Re-create it with tldr_jax.save(...) or `python -m checkpoints_convert`."
        )
    try:
        info = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); the checkpoint is corrupt.") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        hint = ""
        if isinstance(info, dict) and "model_type" in info:
            hint = (
                f" It looks like a Hugging Face model directory: convert it with "
                f"`python -m checkpoints_convert {path} OUT_DIR`."
            )
        raise CheckpointError(f"{cfg_file} is not a tldr_jax checkpoint config.{hint}")
    version = info.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{cfg_file} has an invalid format_version {version!r}.")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by tldr_jax {info.get('tldr_jax_version', '?')} in checkpoint format "
            f"version {version}; this tldr_jax ({_version()}) reads versions <= {FORMAT_VERSION}. "
            "Upgrade tldr_jax to load it."
        )
    return info


def read_kind(path: str | Path) -> str:
    """The kind of model a checkpoint directory holds: its ``config.json``'s ``"kind"``, or
    :data:`VISION_KIND` when none is recorded (no arrays are read).

    Raises:
      CheckpointNotFoundError, CheckpointError: as :func:`read_info`, or a ``"kind"`` that is not a string.
    """
    kind = read_info(path).get("kind", VISION_KIND)
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(
            f"{Path(path) / CONFIG_FILE} has an invalid kind {kind!r}; the checkpoint is corrupt. {_REDO}"
        )
    return kind


def _config_from_info(path: Path, info: Mapping[str, Any]) -> ArchConfig:
    data = info.get("config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path / CONFIG_FILE} has no 'config' dict (corrupt checkpoint). {_REDO}")

    try:
        return ArchConfig.from_dict(data)
    except Exception as e:  # TypeError, ValueError, or ZeroDivisionError for a zero size
        raise CheckpointError(
            f"{path / CONFIG_FILE} holds an invalid architecture config: {e} If the checkpoint comes "
            "from a newer tldr_jax, upgrade tldr_jax."
        ) from e


def stored_shapes(params_dir: Path, redo: str | None = None) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Flat ``{path: (shape, dtype)}`` of the orbax checkpoint in ``params_dir``, without reading arrays.

    Raises:
      CheckpointError: the metadata is missing or unreadable (one line, ending with ``redo``: the fix).
    """
    import orbax.checkpoint as ocp

    problem = None
    try:
        with _quiet_absl(), ocp.StandardCheckpointer() as ckptr:
            item = ckptr.metadata(params_dir.absolute()).item_metadata
        if item is None or getattr(item, "tree", None) is None:
            problem = "a metadata file such as _METADATA or manifest.ocdbt is missing"
        else:
            return {p: (tuple(m.shape), m.dtype) for p, m in flatten_tree(item.tree).items()}
    except Exception as e:  # orbax raises assorted errors for damaged directories
        problem = _first_line(e)
    raise CheckpointError(
        f"cannot read the orbax checkpoint in {params_dir} ({problem}): the checkpoint is incomplete or "
        f"corrupt. {redo or _REDO}"
    )


def restore_tree(
    params_dir: Path, stored: Mapping[str, tuple[tuple[int, ...], Any]], redo: str | None = None
) -> dict[str, Any]:
    """Read the arrays of the orbax checkpoint in ``params_dir`` (``stored``: from :func:`stored_shapes`).

    Returns:
      The nested tree, as uncommitted arrays on the default device (so a jitted function compiled for
      freshly initialised weights is reused, not compiled again for a device-pinned copy).

    Raises:
      CheckpointError: a data file cannot be read (one line, ending with ``redo``: the fix).
    """
    import orbax.checkpoint as ocp

    _drop_orbax_aftermath()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = unflatten_tree(
        {p: jax.ShapeDtypeStruct(s, d, sharding=sharding) for p, (s, d) in stored.items()}
    )
    problem = None
    try:
        with _quiet_absl(), ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(Path(params_dir).absolute(), target)
    except Exception as e:  # TensorStore reports a damaged data file with a multi-kB spec dump
        problem = _first_line(e)
    if problem is not None:
        raise CheckpointError(
            f"cannot read the weights in {params_dir} ({problem}): the checkpoint is corrupt or truncated. "
            f"{redo or _REDO}"
        )
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), dict(tree))


_REDO = "Convert it again (python -m checkpoints_convert SRC OUT --overwrite) or re-save it (tldr_jax.save)."

#: Reports that orbax's in-flight reads make after a failed restore, to an event loop already closed.
_ORBAX_AFTERMATH = ("Event loop is closed", "Encountered error while reading array")


def _drop_orbax_aftermath() -> None:
    """Install (once) a ``sys.unraisablehook`` that drops :data:`_ORBAX_AFTERMATH` reports.

    When one array of a damaged checkpoint fails, orbax closes its event loop while the reads of the
    other arrays are still in flight; each then reports "Event loop is closed" (dozens of tracebacks)
    after :func:`load` has already raised its one-line error. Every other report passes through.
    """
    current = sys.unraisablehook
    if getattr(current, "_tldr_jax_filter", False):
        return

    def hook(unraisable: Any) -> None:
        if str(unraisable.exc_value).startswith(_ORBAX_AFTERMATH):
            return
        current(unraisable)

    hook._tldr_jax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_absl() -> Any:
    """Silence absl warnings (orbax logs "Failed to get item metadata" before we raise our own error)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(err: BaseException, limit: int = 160) -> str:
    """A short description of an orbax / TensorStore error (which can run to thousands of characters)."""
    text = str(err)
    array = re.findall(r"'path': '([^'/][^']*?)/?'", text)
    if array:
        return f"array {array[-1].replace('.', '/')} cannot be read"
    line = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _verify_header(path: Path, info: Mapping[str, Any]) -> None:
    """Compare the config and labels with their recorded checksum (after the structural checks, whose
    messages say more about a config edited into another architecture)."""
    sums = info.get("checksums")
    if isinstance(sums, dict) and sums.get("algorithm") == CHECKSUM and "header" in sums:
        if sums["header"] != _header_checksum(info.get("config"), info.get("labels")):
            raise CheckpointError(
                f"the config or labels in {path / CONFIG_FILE} do not match the checksum recorded when the "
                f"checkpoint was written: the file is corrupt. {_REDO} (Edited it on purpose? Then delete "
                "its checksums.header entry.)"
            )


def _verify_checksums(path: Path, info: Mapping[str, Any], tree: Mapping[str, Any]) -> None:
    """Compare the restored arrays with the checksums in ``config.json`` (checkpoints without any pass)."""
    recorded = info.get("checksums")
    if not isinstance(recorded, dict) or recorded.get("algorithm") != CHECKSUM:
        return
    wanted = recorded.get("arrays") or {}
    found = tree_checksums(tree)
    bad = [p for p, c in found.items() if p in wanted and wanted[p] != c]
    if bad:
        raise CheckpointError(
            f"the weights in {path / PARAMS_DIR} do not match the checksums recorded when the checkpoint was "
            f"written ({len(bad)} of {len(found)} arrays differ, e.g. {bad[0]}): the checkpoint is corrupt. "
            f"{_REDO}"
        )


def _labels_from_info(path: Path, info: Mapping[str, Any]) -> tuple[str, ...] | None:
    labels = info.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list):
        raise CheckpointError(f"{path / CONFIG_FILE}: 'labels' is not a list; the checkpoint is corrupt.")
    return tuple(str(x) for x in labels)


def read_config(path: str | Path) -> tuple[ArchConfig, tuple[str, ...] | None]:
    """The architecture config and labels of a checkpoint, without reading any weights."""
    path = Path(path).expanduser()
    info = read_info(path)
    return _config_from_info(path, info), _labels_from_info(path, info)


def load(path: str | Path) -> Params:
    """Load a vision-encoder checkpoint written by :func:`save` (or the converter).

    This loader reads vision encoders only; :func:`tldr_jax.load` (:mod:`tldr_jax.loading`) opens any
    kind of checkpoint directory (a retrieval model too) and calls this one for a vision encoder.

    Returns:
      :class:`~tldr_jax.api.Params` with the stored tree (arrays on the default device, stored
      dtype), config and labels.

    Raises:
      CheckpointNotFoundError: no directory at ``path``.
      CheckpointError: missing ``config.json`` or ``params/``, a newer format, an invalid config, a
        tree that does not match the config (missing / unexpected / mis-shaped entries are listed), or
        a checkpoint of another kind (e.g. a retrieval model: load it with ``tldr_jax.load``).
    """
    path = Path(path).expanduser()
    info = read_info(path)
    kind = info.get("kind", VISION_KIND)
    if kind != VISION_KIND:
        raise CheckpointError(
            f"{path} holds a {kind!r} model, not a vision encoder: load it with tldr_jax.load({str(path)!r}) "
            "(tldr_jax.checkpoint.load reads vision encoders only)."
        )
    config = _config_from_info(path, info)
    labels = _labels_from_info(path, info)
    params_dir = path / PARAMS_DIR
    if not params_dir.is_dir():
        raise CheckpointError(
            f"{path} has no {PARAMS_DIR}/ directory with the weights; the checkpoint is incomplete. "
            "Re-create it."
        )
    _drop_orbax_aftermath()
    stored = stored_shapes(params_dir)
    diff = compare_trees({p: s for p, (s, _) in stored.items()}, expected_shapes(config))
    if not diff.ok:
        raise CheckpointError(
            f"the weights in {params_dir} do not match the config {config.name!r} in "
            f"{path / CONFIG_FILE}:\n{diff.report()}"
        )
    _verify_header(path, info)
    tree = restore_tree(params_dir, stored, redo=_REDO)
    _verify_checksums(path, info, tree)
    return Params(tree=dict(tree), config=config, labels=labels)

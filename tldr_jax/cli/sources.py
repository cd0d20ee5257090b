"""Where ``--model`` points: a tldr_jax checkpoint, a source checkpoint (converted once, cached by
content), ``hf:ORG/NAME``, or an architecture name (random weights); resolved before any heavy work."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tldr_jax.cli.common import PROG, TINY_OVERRIDES, CliError

__all__ = ["ModelSource", "ModelSpec", "conversion_cache_path", "load_model", "resolve_model"]


@dataclasses.dataclass
class ModelSpec:
    """A loaded model and how it was obtained."""

    params: Any
    description: str
    random_weights: bool


@dataclasses.dataclass
class ModelSource:
    """Where ``--model`` points, resolved without loading weights.

    Attributes:
      config: the architecture config (so ``--r`` and ``--frames`` are checked before any heavy work).
      description: what is shown on the ``model`` line.
      random_weights: True for an architecture name (random initialisation).
      load: loads (or initialises) the weights: ``load() -> Params``.
    """

    config: Any
    description: str
    random_weights: bool
    load: Callable[[], Any]


def _cache_dir() -> Path:
    root = os.environ.get("TLDR_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tldr_jax")
    return Path(root) / "converted"


def _is_checkpoint_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not (path.is_dir() and cfg.is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == "tldr_jax.checkpoint"
    except (OSError, ValueError, AttributeError):
        return False


def _safe_name(text: str, limit: int = 64) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._")[:limit] or "model"


def _source_files(path: Path) -> list[Path]:
    """The files whose bytes identify a conversion source (a file, or every file of a directory)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def _content_digest(path: Path) -> str:
    """sha256 of a source's relative file names and bytes, reusing the last digest while every file
    keeps its size and modification time (a small index in the cache directory)."""
    files = _source_files(path)
    signature = [[str(f.relative_to(path)) if f != path else "", f.stat().st_size, f.stat().st_mtime_ns]
                 for f in files]
    index_file = _cache_dir() / "index.json"
    try:
        index = json.loads(index_file.read_text())
        if not isinstance(index, dict):
            index = {}
    except (OSError, ValueError):
        index = {}
    key = str(path.resolve())
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("signature") == signature and entry.get("digest"):
        return entry["digest"]
    h = hashlib.sha256()
    for f, (rel, size, _) in zip(files, signature):
        h.update(f"{rel}\0{size}\0".encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()
    index[key] = {"signature": signature, "digest": digest}
    try:
        index_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_file.with_name(f".index.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, index_file)
    except OSError:
        pass  # the index only saves re-hashing
    return digest


def conversion_cache_path(model: str) -> Path:
    """The cache folder of a converted ``--model`` source: keyed by the source's content (a local
    file or directory: name + sha256 of its bytes, so a file changed in place is converted again and
    different files never share a folder) or by the exact id (``hf:ORG/NAME``)."""
    if model.startswith("hf:"):
        hub = model[3:]
        tag = hashlib.sha256(hub.encode()).hexdigest()[:16]
        return _cache_dir() / f"hf-{_safe_name(hub.replace('/', '--'))}-{tag}"
    path = Path(model).expanduser()
    return _cache_dir() / f"{_safe_name(path.name)}-{_content_digest(path)[:24]}"


def _convert(src: str, out: Path, quiet: bool) -> Any:
    try:
        import checkpoints_convert
    except ImportError as err:
        raise CliError(
            f"{src!r} is not a tldr_jax checkpoint and the converter (checkpoints_convert) is not "
            "importable; install tldr_jax with it, then convert with "
            f"`{PROG} convert {src} OUT`."
        ) from err
    if not quiet:
        print(f"converting {src} -> {out} (once; cached) ...", file=sys.stderr, flush=True)
    return checkpoints_convert.convert(src, str(out), progress=not quiet, verbose=not quiet)


def _arch_key(name: str) -> str:
    return name.lower().replace("-", "_")


def resolve_model(
    model: str | None, *, arch: str | None = None, tiny: bool = False, seed: int = 0, quiet: bool = False
) -> ModelSource:
    """Resolve ``--model`` without loading weights (a source checkpoint is converted here, once).

    ``model`` is a tldr_jax checkpoint directory, a source checkpoint file or Hugging Face model
    directory (converted once into ``$TLDR_JAX_CACHE``/``~/.cache/tldr_jax/converted``, keyed by
    content), ``hf:ORG/NAME``, an architecture name, or None (random weights of ``arch``, default
    ``umt_b16``; ``tiny``: :data:`TINY_OVERRIDES`). Raises :class:`CliError` naming the problem.
    """
    from tldr_jax import checkpoint
    from tldr_jax.api import Params, init
    from tldr_jax.configs import ARCHS, get_config

    known = ", ".join(sorted(ARCHS))
    if model is None or _arch_key(model) in ARCHS:
        if model is not None and arch is not None:
            raise CliError(f"--model {model!r} already names an architecture; drop --arch {arch!r}.")
        name = _arch_key(arch or "umt_b16") if model is None else _arch_key(model)
        if name not in ARCHS:
            raise CliError(f"unknown --arch {arch!r}; known: {known}.")
        cfg = get_config(name, **(TINY_OVERRIDES if tiny else {}))
        why = "--model names an architecture" if model is not None else "no --model given"
        desc = (
            f"{name}{' (tiny)' if tiny else ''} -- RANDOM WEIGHTS ({why}; outputs are meaningless: give "
            "--model a checkpoint for real ones)"
        )
        return ModelSource(cfg, desc, True, lambda: init(seed, cfg))
    if tiny:
        raise CliError("--tiny only applies to random weights; drop it or drop --model.")
    if arch is not None:
        raise CliError(f"--arch only applies to random weights; --model {model!r} has its own. Drop --arch.")
    path = Path(model).expanduser()
    if _is_checkpoint_dir(path):
        cfg, _ = checkpoint.read_config(path)
        return ModelSource(cfg, str(path), False, lambda: checkpoint.load(path))
    hub_like = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", model[3:] if model.startswith("hf:") else model)
    if model.startswith("hf:"):
        if not hub_like:
            raise CliError(f"--model {model!r}: a Hugging Face model is given as hf:ORG/NAME.")
    elif not path.exists():
        hint = f" For a Hugging Face hub model write --model hf:{model}." if hub_like else ""
        raise CliError(
            f"--model {model!r}: no such file or directory.{hint} --model takes a tldr_jax checkpoint "
            f"directory, a PyTorch checkpoint or Hugging Face model directory, hf:ORG/NAME or one of {known}."
        )
    out = conversion_cache_path(model if model.startswith("hf:") else str(path))
    if not _is_checkpoint_dir(out):
        params = _convert(model if model.startswith("hf:") else str(path), out, quiet)
        if isinstance(params, Params):
            return ModelSource(params.config, f"{model} (converted to {out})", False, lambda: params)
    cfg, _ = checkpoint.read_config(out)
    return ModelSource(cfg, f"{model} (converted: {out})", False, lambda: checkpoint.load(out))


def load_model(
    model: str | None, *, arch: str | None = None, tiny: bool = False, seed: int = 0, quiet: bool = False
) -> ModelSpec:
    """:func:`resolve_model`, then load the weights."""
    source = resolve_model(model, arch=arch, tiny=tiny, seed=seed, quiet=quiet)
    return ModelSpec(source.load(), source.description, source.random_weights)

"""Where ``--model`` points, for every command that takes one: a tldr_jax checkpoint directory of any
kind, a source checkpoint (converted once, cached by content), ``hf:ORG/NAME``, or an architecture name
(random weights); resolved before any heavy work.

A command asks for the kind of model it runs (:func:`resolve_model`'s ``kind``): ``run``, ``vis`` and
``finetune`` take a vision encoder (from a vision checkpoint, or the vision tower of a retrieval model);
``retrieve``, ``index`` and ``search`` take a retrieval model directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tldr_jax.cli.base import PROG, CliError

__all__ = [
    "KIND_NAMES", "TINY_OVERRIDES", "ModelSource", "ModelSpec", "conversion_cache_path", "load_model",
    "resolve_model",
]

#: The small random model of ``--tiny`` (fast on CPU; used by the tests and the offline notebooks).
TINY_OVERRIDES: dict[str, Any] = dict(
    depth=4, embed_dim=64, num_heads=2, mlp_dim=128, img_size=112, num_frames=4
)

#: checkpoint kind -> (what messages call it, the converter flags that make one from an official file).
KIND_NAMES: dict[str, tuple[str, str]] = {
    "vision": ("vision encoder", ""),
    "umt_retrieval": ("retrieval model", " --vocab vocab.txt [--text-config config_bert.json]"),
    "umt_qa": ("QA model", " --format umt_qa --vocab vocab.txt [--text-config config_bert.json]"),
}


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
      load: loads (or initialises) the model of the kind asked for: ``load() -> Params`` for a vision
        encoder, a ``RetrievalModel`` for a retrieval model.
      path: the checkpoint directory (for a converted source: its cache folder); None for random weights.
      kind: the kind of model ``load`` returns.
    """

    config: Any
    description: str
    random_weights: bool
    load: Callable[[], Any]
    path: Path | None = None
    kind: str = "vision"


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


def _kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, (f"{kind!r} model", ""))[0]


def _not_of_kind(model: str, kind: str, flag: str, found: str | None = None) -> CliError:
    """The one-line refusal of a ``--model`` that is not a directory of the kind the command runs."""
    name, convert_flags = KIND_NAMES.get(kind, (f"{kind!r} model", ""))
    what = f"a {_kind_name(found)} directory" if found else "another kind of checkpoint, or not a checkpoint"
    return CliError(
        f"{flag} {model!r} is not a {name} directory ({what}); give one, or convert the official "
        f"checkpoint first: `{PROG} convert SRC OUT{convert_flags}`."
    )


def _from_directory(path: Path, kind: str, flag: str, model: str) -> ModelSource:
    """A tldr_jax checkpoint directory, as the ``kind`` of model a command runs (the vision encoder of a
    multi-modal model for ``kind="vision"``); reads ``config.json`` only."""
    from tldr_jax import checkpoint, loading

    found = loading.kind_of(path)
    if kind == checkpoint.VISION_KIND:
        encoder = loading.vision_path(path)
        cfg, _ = checkpoint.read_config(encoder)
        desc = str(path) if found == kind else f"{path} (the vision encoder of a {_kind_name(found)})"
        return ModelSource(cfg, desc, False, lambda: checkpoint.load(encoder), path=path, kind=kind)
    if found != kind:
        raise _not_of_kind(model, kind, flag, found)
    cfg, _ = checkpoint.read_config(path)
    return ModelSource(cfg, str(path), False, lambda: loading.load(path, kind=kind), path=path, kind=kind)


def _random(
    model: str | None, arch: str | None, tiny: bool, seed: int, overrides: Mapping[str, Any]
) -> ModelSource:
    """Random weights of an architecture (``--model NAME``, or ``--arch`` / umt_b16 without ``--model``)."""
    from tldr_jax.api import init
    from tldr_jax.configs import ARCHS, get_config

    if model is not None and arch is not None:
        raise CliError(f"--model {model!r} already names an architecture; drop --arch {arch!r}.")
    name = _arch_key(arch or "umt_b16") if model is None else _arch_key(model)
    if name not in ARCHS:
        raise CliError(f"unknown --arch {arch!r}; known: {', '.join(sorted(ARCHS))}.")
    cfg = get_config(name, **{**(TINY_OVERRIDES if tiny else {}), **overrides})
    why = "--model names an architecture" if model is not None else "no --model given"
    desc = (
        f"{name}{' (tiny)' if tiny else ''} -- RANDOM WEIGHTS ({why}; outputs are meaningless: give "
        "--model a checkpoint for real ones)"
    )
    return ModelSource(cfg, desc, True, lambda: init(seed, cfg))


def resolve_model(
    model: str | None,
    *,
    arch: str | None = None,
    tiny: bool = False,
    seed: int = 0,
    quiet: bool = False,
    kind: str = "vision",
    overrides: Mapping[str, Any] | None = None,
    flag: str = "--model",
) -> ModelSource:
    """Resolve ``--model`` without loading weights (a source checkpoint is converted here, once).

    Args:
      model: a tldr_jax checkpoint directory (any kind), a source checkpoint file or Hugging Face model
        directory (converted once into ``$TLDR_JAX_CACHE``/``~/.cache/tldr_jax/converted``, keyed by
        content), ``hf:ORG/NAME``, an architecture name, or None (random weights of ``arch``, default
        ``umt_b16``).
      arch: random weights only: the architecture.
      tiny: random weights only: apply :data:`TINY_OVERRIDES`.
      seed: random weights only: the seed.
      overrides: random weights only: other config fields (``tldr-jax finetune --override``).
      quiet: no conversion progress.
      kind: the kind of model the command runs: ``"vision"`` (the vision encoder of any checkpoint) or
        a multi-modal kind such as ``"umt_retrieval"`` (a directory of that kind only).
      flag: how messages name the option.

    Raises:
      CliError: one line naming the problem and the fix (a missing path, a directory of another kind,
        options that do not apply). CheckpointError: an unreadable checkpoint directory.
    """
    from tldr_jax.api import Params
    from tldr_jax.configs import ARCHS

    overrides = dict(overrides or {})
    if model is None or _arch_key(model) in ARCHS:
        if kind != "vision":
            raise _not_of_kind(str(model) if model else "(none)", kind, flag)
        return _random(model, arch, tiny, seed, overrides)
    if tiny:
        raise CliError(f"--tiny only applies to random weights; drop it or drop {flag}.")
    if arch is not None:
        raise CliError(f"--arch only applies to random weights; {flag} {model!r} has its own. Drop --arch.")
    if overrides:
        raise CliError("--override only applies to a random init from an architecture name.")
    path = Path(model).expanduser()
    if _is_checkpoint_dir(path):
        return _from_directory(path, kind, flag, model)
    hub_like = re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", model[3:] if model.startswith("hf:") else model)
    if model.startswith("hf:"):
        if not hub_like:
            raise CliError(f"{flag} {model!r}: a Hugging Face model is given as hf:ORG/NAME.")
    elif not path.exists():
        hint = f" For a Hugging Face hub model write {flag} hf:{model}." if hub_like else ""
        raise CliError(
            f"{flag} {model!r}: no such file or directory.{hint} {flag} takes a tldr_jax checkpoint "
            "directory, a PyTorch checkpoint or Hugging Face model directory, hf:ORG/NAME or one of "
            f"{', '.join(sorted(ARCHS))}."
        )
    if kind != "vision":  # converting needs flags of that kind (e.g. --vocab): done once, by the user
        raise _not_of_kind(model, kind, flag)
    out = conversion_cache_path(model if model.startswith("hf:") else str(path))
    if not _is_checkpoint_dir(out):
        params = _convert(model if model.startswith("hf:") else str(path), out, quiet)
        if isinstance(params, Params):
            desc = f"{model} (converted to {out})"
            return ModelSource(params.config, desc, False, lambda: params, path=out)
    source = _from_directory(out, kind, flag, model)
    return dataclasses.replace(source, description=f"{model} (converted: {out})")


def load_model(model: str | None, **options: Any) -> ModelSpec:
    """:func:`resolve_model` (same options), then load the model."""
    source = resolve_model(model, **options)
    return ModelSpec(source.load(), source.description, source.random_weights)

"""Reading source checkpoints safely: ``.pth`` / ``.bin`` (``torch.load(weights_only=True)``),
``.safetensors``, Hugging Face model directories and ``hf:ORG/NAME`` snapshots.

No reader ever unpickles arbitrary Python objects: PyTorch files go through ``weights_only=True``
(tensors, dicts, lists and plain scalars only) and everything else through safetensors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from checkpoints_convert.errors import ConversionError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclasses.dataclass
class Source:
    """A loaded source checkpoint.

    Attributes:
      state: what the file holds: a (possibly wrapped) mapping of tensors.
      hf_config: the Hugging Face ``config.json`` dict for model directories, else None.
      files: the files read (for sha256 provenance).
      label: how to name the source in messages (the path or ``hf:ORG/NAME``).
    """

    state: Any
    hf_config: dict[str, Any] | None
    files: list[Path]
    label: str


def to_numpy(value: Any, key: str) -> np.ndarray:
    """A torch tensor or array -> numpy (floating point becomes float32, the tldr_jax param dtype)."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    if hasattr(value, "__array__") and hasattr(value, "shape"):  # jax arrays
        return to_numpy(np.asarray(value), key)
    raise ConversionError(
        f"entry {key!r} is a {type(value).__name__}, not a tensor: this is not a state dict of weights."
    )


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) > 8 and head[8:9] == b"{"


def load_safetensors(path: Path) -> dict[str, Any]:
    """All tensors of a ``.safetensors`` file (as torch tensors, so bfloat16 works)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError has no public import path across versions
        raise ConversionError(
            f"cannot read {path}: {e}. The file is truncated or corrupt; download it again."
        ) from e


def load_torch(path: Path) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with clear errors."""
    import pickle

    import torch

    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise ConversionError(f"{path} is empty (0 bytes); download or save it again.")
    if _looks_like_safetensors(head):
        return load_safetensors(path)
    is_zip, is_pickle = head.startswith(ZIP_MAGIC), head[0] == PICKLE_PROTO
    if not (is_zip or is_pickle):
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint (no zip or pickle header) nor a safetensors file. "
            "Pass a .pth/.bin/.safetensors file or a Hugging Face model directory."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ConversionError(f"{path} is corrupt or not a PyTorch checkpoint: {e}") from e
        loaded = _load_with_config_classes(path)
        if loaded is None:
            raise ConversionError(_unsafe_message(path)) from e
        return loaded
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        kind = "zip archive" if is_zip else "pickle stream"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(
            f"{path} is truncated or corrupt (cannot read the {kind}: {first}). "
            "Download or copy the file again and check its size / checksum."
        ) from e


#: Training-config classes that official UMT / vid-TLDR fine-tuned checkpoints pickle beside the weights
#: (``{"model": ..., "optimizer": ..., "config": EasyDict, ...}``, e.g. ``ret_msrvtt_b16_25m.pth``). They
#: are plain ``dict`` subclasses: the reader builds each as a dict (nothing is imported or executed) and
#: refuses every other class.
CONFIG_CLASSES: tuple[str, ...] = ("utils.easydict.EasyDict", "easydict.EasyDict")


def _load_with_config_classes(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with only :data:`CONFIG_CLASSES` allowed, each built as a dict.

    Returns None when the file pickles anything else (or cannot be listed): the caller refuses it.
    The weights-only unpickler creates the allowed name as a ``collections.OrderedDict`` (its items set
    with ``SETITEMS``, the attribute copy ``EasyDict`` keeps in ``__dict__`` set on that OrderedDict);
    the top-level ``config`` entry is then turned into plain dicts.
    """
    import collections
    import pickle

    import torch

    try:
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files cannot be listed: refuse them
        return None
    if not names or not names <= set(CONFIG_CLASSES):
        return None
    allowed = [(collections.OrderedDict, name) for name in CONFIG_CLASSES]
    try:  # (global, "module.Name") allow-list entries need torch >= 2.6
        with torch.serialization.safe_globals(allowed):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (AttributeError, TypeError, ValueError, pickle.UnpicklingError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("config"), Mapping):
        obj["config"] = _plain(obj["config"])
    return obj


def _plain(value: Any) -> Any:
    """Mappings -> dicts and lists/tuples -> lists, recursively (a config read by the allow-list)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unsafe_message(path: Path) -> str:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # listing is best effort
        names = []
    listed = f" ({', '.join(names)})" if names else ""
    return (
        f"{path} contains pickled Python objects besides tensors{listed}, which are not loaded for "
        "safety (torch.load weights_only=True). If you trust the file, re-save only its weights: "
        "`ckpt = torch.load(path, weights_only=False); torch.save(ckpt['model'], 'weights.pth')`, "
        "and convert weights.pth."
    )


def read_file(path: Path) -> Source:
    """A single checkpoint file (``.pth``, ``.pt``, ``.bin``, ``.safetensors``)."""
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        state = load_torch(path)
    return Source(state=state, hf_config=None, files=[path], label=str(path))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"cannot read {path}: {e}. The file is corrupt.") from e


def _hf_weight_files(directory: Path) -> list[Path]:
    for name in HF_WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        index = _read_json(path)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise ConversionError(f"{path} lists no weight shards; the download is incomplete.")
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise ConversionError(f"{directory} lacks the weight shards {missing} listed in {path.name}.")
        return [path, *(directory / s for s in shards)]
    raise ConversionError(
        f"{directory} has a config.json but no weights: expected one of {', '.join(HF_WEIGHT_FILES)}."
    )


def read_hf_dir(directory: Path, label: str | None = None) -> Source:
    """A Hugging Face model directory: ``config.json`` + safetensors or ``pytorch_model.bin``."""
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise ConversionError(
            f"{directory} is a directory without config.json: not a Hugging Face model directory. "
            "Pass the model directory (config.json + model.safetensors) or a checkpoint file."
        )
    hf_config = _read_json(cfg_path)
    if not isinstance(hf_config, dict):
        raise ConversionError(f"{cfg_path} is not a JSON object.")
    if hf_config.get("format") == "tldr_jax.checkpoint":
        raise ConversionError(
            f"{directory} is already a tldr_jax checkpoint; load it with tldr_jax.load(...)."
        )
    files = _hf_weight_files(directory)
    state: dict[str, Any] = {}
    for path in files:
        if path.name.endswith(".index.json"):
            continue
        part = load_safetensors(path) if path.suffix == ".safetensors" else load_torch(path)
        if not isinstance(part, Mapping):
            raise ConversionError(f"{path} does not hold a state dict (got {type(part).__name__}).")
        state.update(part)
    return Source(state=state, hf_config=hf_config, files=[cfg_path, *files], label=label or str(directory))


def download_hf(repo_id: str) -> Path:
    """``huggingface_hub.snapshot_download`` of a model repo (config and weights only)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ConversionError("hf:ORG/NAME sources need `pip install huggingface_hub`.") from e
    try:
        path = snapshot_download(
            repo_id,
            allow_patterns=[
                "config.json",
                "*.safetensors",
                "*.safetensors.index.json",
                "pytorch_model*.bin*",
            ],
        )
    except Exception as e:  # network, auth and missing-repo errors all end here
        raise ConversionError(
            f"cannot download hf:{repo_id} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "The network may be unavailable: download the model directory elsewhere "
            f"(`huggingface-cli download {repo_id}`) and pass its local path."
        ) from e
    return Path(path)


def read_source(src: str | Path) -> Source:
    """Load a checkpoint file, a Hugging Face model directory or ``hf:ORG/NAME``."""
    text = str(src)
    if text.startswith("hf:"):
        repo_id = text[3:].strip("/")
        if repo_id.count("/") != 1:
            raise ConversionError(f"{text!r} is not of the form hf:ORG/NAME.")
        return read_hf_dir(download_hf(repo_id), label=text)
    path = Path(src).expanduser()
    if not path.exists():
        raise ConversionError(f"source {path} does not exist; check the path.")
    if path.is_dir():
        return read_hf_dir(path)
    return read_file(path)

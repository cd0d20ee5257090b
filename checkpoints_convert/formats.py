"""Source formats: the format table, detection and key normalisation.

=================  ===================================================================================
``umt``            official UMT / vid-TLDR vision encoder: ``encoder.*`` + ``pool_norm.*`` (bare
                   ``PretrainVisionTransformer``) or a full UMT checkpoint (``vision_encoder.``
                   prefix, top-level ``vision_proj``, CLIP teacher / text tower dropped).
``videomae_pth``   original VideoMAE / UMT single-modality fine-tuned model: ``patch_embed``,
                   ``blocks.{i}``, ``fc_norm``, ``head`` and an optional ``pos_embed``: the fixed
                   sinusoid table (recomputed) or a stored table (loaded; frame count then fixed).
``hf_videomae``    Hugging Face ``VideoMAEForVideoClassification`` / ``VideoMAEModel``.
``hf_vivit``       Hugging Face ``VivitForVideoClassification`` / ``VivitModel``.
=================  ===================================================================================

Architecture inference (:class:`Options`, :func:`infer_config`, ...) lives in
:mod:`checkpoints_convert.architecture`; its names are re-exported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from checkpoints_convert import rules
from checkpoints_convert.architecture import (  # re-exported: formats.Options, formats.infer_config, ...
    FAMILY_BASE,
    GELU_APPROXIMATE,
    HF_DEFAULTS,
    Options,
    default_num_heads,
    hf_labels,
    infer_arch_name,
    infer_config,
)
from checkpoints_convert.errors import ConversionError

__all__ = [
    "DDP_PREFIX", "FAMILY_BASE", "FORMATS", "Format", "GELU_APPROXIMATE", "HF_DEFAULTS", "HF_MODEL_TYPES",
    "Options", "WRAPPER_KEYS", "default_num_heads", "detect_format", "hf_labels", "infer_arch_name",
    "infer_config", "normalise_keys", "strip_ddp", "unwrap_state_dict",
]

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state", "model_state_dict", "net")
DDP_PREFIX = "module."


@dataclasses.dataclass(frozen=True)
class Format:
    """A supported source layout.

    Attributes:
      name: format id (``--format``).
      description: one line for messages.
      family: the ``ArchConfig.family`` it produces.
      table: the rename table.
      prefixes: key prefixes stripped (once, in order) before matching the table.
      head_keys: the classifier's source keys (dropped when ``num_classes=0`` is forced).
    """

    name: str
    description: str
    family: str
    table: rules.Table
    prefixes: tuple[str, ...] = ()
    head_keys: tuple[str, ...] = ()


#: Every source layout the converter reads, by name (what ``detect_format`` returns and ``--format`` takes).
FORMATS: dict[str, Format] = {
    "umt": Format("umt", "official UMT / vid-TLDR vision encoder", "umt", rules.UMT, ("vision_encoder.",)),
    "videomae_pth": Format(
        "videomae_pth",
        "original VideoMAE / UMT single-modality fine-tuned model",
        "videomae",
        rules.VIDEOMAE_PTH,
        (),
        ("head.weight", "head.bias"),
    ),
    "hf_videomae": Format(
        "hf_videomae",
        "Hugging Face VideoMAE",
        "videomae",
        rules.HF_VIDEOMAE,
        ("videomae.",),
        ("classifier.weight", "classifier.bias"),
    ),
    "hf_vivit": Format(
        "hf_vivit",
        "Hugging Face ViViT",
        "vivit",
        rules.HF_VIVIT,
        ("vivit.",),
        ("classifier.weight", "classifier.bias"),
    ),
}
HF_MODEL_TYPES = {"videomae": "hf_videomae", "vivit": "hf_vivit"}


# --------------------------------------------------------------------------------------------------
# Unwrapping, normalising and detecting.
# --------------------------------------------------------------------------------------------------


def _is_tensor_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def unwrap_state_dict(obj: Any, origin: str) -> Mapping[str, Any]:
    """Peel ``{"model": ...}`` / ``{"module": ...}`` / ``{"state_dict": ...}`` wrappers.

    Raises:
      ConversionError: ``obj`` is not a mapping of tensors (after unwrapping).
    """
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise ConversionError(
                f"{origin} does not hold a state dict (a mapping of tensor names to tensors); it holds a "
                f"{type(obj).__name__}. Save the model's state_dict() and convert that."
            )
        if obj and all(_is_tensor_like(v) for v in obj.values()):
            return obj
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = obj[inner]
    keys = list(obj)[:8] if isinstance(obj, Mapping) else []
    bad = [k for k in keys if not _is_tensor_like(obj[k])]
    raise ConversionError(
        f"{origin} is not a state dict of weights: top-level keys {keys} "
        f"({', '.join(map(repr, bad))} not tensors) and no wrapper key among {WRAPPER_KEYS}. "
        "Pass the model's state_dict() (or a checkpoint wrapping it under 'model'/'module')."
    )


def strip_ddp(keys: Iterable[str]) -> dict[str, str]:
    """``{key without leading "module." prefixes: original key}``."""
    out: dict[str, str] = {}
    for key in keys:
        short = key
        while short.startswith(DDP_PREFIX):
            short = short[len(DDP_PREFIX) :]
        out[short] = key
    return out


def normalise_keys(fmt: Format, keys: Iterable[str], origin: str) -> dict[str, str]:
    """``{normalised key: original key}``: ``module.`` and the format's prefixes stripped."""
    out: dict[str, str] = {}
    for short, original in strip_ddp(keys).items():
        for prefix in fmt.prefixes:
            if short.startswith(prefix):
                short = short[len(prefix) :]
                break
        if short in out:
            raise ConversionError(
                f"{origin} holds both {out[short]!r} and {original!r}, which name the same weight; "
                "keep only one of them."
            )
        out[short] = original
    return out


def detect_format(keys: Iterable[str], hf_config: Mapping[str, Any] | None = None) -> str:
    """Guess the source format from the (DDP-stripped) key names and an optional HF config.

    Raises:
      ConversionError: unknown architecture.
    """
    keys = list(strip_ddp(keys))
    if hf_config is not None:
        model_type = hf_config.get("model_type")
        if model_type in HF_MODEL_TYPES:
            return HF_MODEL_TYPES[model_type]
        raise ConversionError(
            f"unsupported Hugging Face model_type {model_type!r}; supported: "
            f"{', '.join(sorted(HF_MODEL_TYPES))}."
        )

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has("encoder.patch_embed.", "encoder.blocks.", "vision_encoder.encoder."):
        return "umt"
    if has("patch_embed.proj.", "blocks.0."):
        return "videomae_pth"
    if has("videomae.", "vivit.", "embeddings.patch_embeddings."):
        raise ConversionError(
            "these look like Hugging Face weights, which need their config.json: pass the model "
            "directory (config.json + model.safetensors), or hf_config=... to convert_state_dict."
        )
    sample = ", ".join(keys[:6]) or "(no keys)"
    raise ConversionError(
        f"unknown architecture: no known key layout among {sample}{', ...' if len(keys) > 6 else ''}. "
        f"Supported: {', '.join(f'{f.name} ({f.description})' for f in FORMATS.values())}."
    )

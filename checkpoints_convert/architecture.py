"""Architecture inference: the :class:`~tldr_jax.configs.ArchConfig` that a checkpoint's weights describe.

Width, depth, MLP size, patch and tubelet size, q/k/v biases, the classifier and ``vision_proj`` are read
from the weights (one field reader per source layout, and ``config.json`` for Hugging Face models); what
the weights cannot say comes from the user's :class:`Options`, else from the closest named
architecture. :mod:`checkpoints_convert.formats` (the format table and detection) re-exports these names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from checkpoints_convert.errors import ConversionError
from tldr_jax.configs import ARCHS, ArchConfig

__all__ = [
    "FAMILY_BASE", "GELU_APPROXIMATE", "HF_DEFAULTS", "Options", "default_num_heads", "hf_labels",
    "infer_arch_name", "infer_config",
]


class Format(Protocol):
    """What inference reads of a source format (:class:`checkpoints_convert.formats.Format`, one layer up)."""

    name: str
    description: str
    family: str


@dataclasses.dataclass(frozen=True)
class Options:
    """User options that complete or override what the weights say.

    Attributes:
      arch: force the config name (presets are looked up under it).
      num_heads: attention heads (not recoverable from weights; default width // 64, 16 for 1280).
      num_frames, img_size: input size the model runs on.
      num_classes: expected classifier size; 0 drops the head explicitly.
      ckpt_num_frames: frames the sinusoid table was made for (UMT temporal interpolation).
      config_overrides: any other ``ArchConfig`` fields to set.
    """

    arch: str | None = None
    num_heads: int | None = None
    num_frames: int | None = None
    img_size: int | None = None
    num_classes: int | None = None
    ckpt_num_frames: int | None = None
    config_overrides: tuple[tuple[str, Any], ...] = ()


FAMILY_BASE = {"umt": ARCHS["umt_b16"], "videomae": ARCHS["videomae_b"], "vivit": ARCHS["vivit_b"]}


def default_num_heads(width: int) -> int:
    """Heads for a width when the checkpoint cannot say: head_dim 64 (16 heads for ViT-H's 1280)."""
    return 16 if width == 1280 else max(1, width // 64)


def infer_arch_name(family: str, width: int, depth: int) -> str:
    """The named :data:`~tldr_jax.configs.ARCHS` entry of this family, width and depth, else a
    descriptive name such as ``"umt_w64_d3"``."""
    for name, cfg in ARCHS.items():
        if cfg.family == family and cfg.embed_dim == width and cfg.depth == depth:
            return name
    return f"{family}_w{width}_d{depth}"


def _shape(state: Mapping[str, np.ndarray], key: str, origin: str, what: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(
            f"cannot infer the architecture of {origin}: key {key!r} ({what}) is missing. The checkpoint "
            "is incomplete or not of this format (force one with --format)."
        )
    return tuple(np.shape(state[key]))


def _depth(state: Mapping[str, np.ndarray], prefix: str) -> int:
    indices = set()
    for key in state:
        if key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    return max(indices) + 1 if indices else 0


def _patch_fields(shape: tuple[int, ...], key: str, origin: str) -> dict[str, int]:
    if len(shape) != 5 or shape[3] != shape[4]:
        raise ConversionError(
            f"{origin}: {key} has shape {shape}; expected a Conv3d weight (D, C, t, p, p) with square "
            "patches."
        )
    d, c, t, p, _ = shape
    return {"embed_dim": d, "in_chans": c, "tubelet_size": t, "patch_size": p}


def _qkv_bias_kind(state: Mapping[str, Any], block: str) -> str:
    if f"{block}.attn.q_bias" in state or f"{block}.attn.v_bias" in state:
        return "qv"
    return "qkv" if f"{block}.attn.qkv.bias" in state else "none"


def _umt_fields(state: Mapping[str, np.ndarray], origin: str) -> dict[str, Any]:
    key = "encoder.patch_embed.proj.weight"
    fields = _patch_fields(_shape(state, key, origin, "patch embedding"), key, origin)
    fc1 = _shape(state, "encoder.blocks.0.mlp.fc1.weight", origin, "first MLP layer")
    fields.update(
        depth=_depth(state, "encoder.blocks."),
        mlp_dim=fc1[0],
        qkv_bias=_qkv_bias_kind(state, "encoder.blocks.0"),
        norm_eps=1e-6,
        final_norm=True,
        pool="mean",
        pool_norm_eps=1e-6,
        pool_norm="pool_norm.weight" in state,  # UMT_QA builds its encoder without pool_norm
        num_classes=0,
    )
    if "vision_proj.weight" in state:
        fields["vision_proj_dim"] = int(np.shape(state["vision_proj.weight"])[0])
    return fields


def _videomae_pth_fields(state: Mapping[str, np.ndarray], origin: str) -> dict[str, Any]:
    key = "patch_embed.proj.weight"
    fields = _patch_fields(_shape(state, key, origin, "patch embedding"), key, origin)
    fc1 = _shape(state, "blocks.0.mlp.fc1.weight", origin, "first MLP layer")
    if "fc_norm.weight" not in state and "norm.weight" in state:
        raise ConversionError(
            f"{origin} has a final 'norm' and no 'fc_norm': a use_mean_pooling=False model, which "
            "tldr_jax does not support (it pools with fc_norm(mean of tokens))."
        )
    fields.update(
        depth=_depth(state, "blocks."),
        mlp_dim=fc1[0],
        qkv_bias=_qkv_bias_kind(state, "blocks.0"),
        norm_eps=1e-6,  # modeling_finetune builds every norm with partial(nn.LayerNorm, eps=1e-6)
        final_norm=False,
        pool="mean",
        pool_norm_eps=1e-6,
        num_classes=int(np.shape(state["head.weight"])[0]) if "head.weight" in state else 0,
    )
    return fields


# Class defaults of the HF configs: save_pretrained may omit values equal to them.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "videomae": {
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "num_frames": 16,
        "tubelet_size": 2,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "qkv_bias": True,
        "use_mean_pooling": True,
    },
    "vivit": {
        "image_size": 224,
        "num_frames": 32,
        "tubelet_size": [2, 16, 16],
        "num_channels": 3,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu_fast",
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
    },
}
GELU_APPROXIMATE = {"gelu": False, "gelu_fast": True, "gelu_new": True, "gelu_pytorch_tanh": True}


def _hf_get(hf: Mapping[str, Any], model_type: str, key: str) -> Any:
    return hf[key] if key in hf else HF_DEFAULTS[model_type][key]


def _square(value: Any, name: str, origin: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConversionError(f"{origin}: non-square {name} {list(value)} is not supported.")
        value = value[0]
    return int(value)


def _hf_common(hf: Mapping[str, Any], model_type: str, origin: str) -> dict[str, Any]:
    act = _hf_get(hf, model_type, "hidden_act")
    if act not in GELU_APPROXIMATE:
        raise ConversionError(
            f"{origin}: hidden_act {act!r} is not supported; tldr_jax supports "
            f"{', '.join(sorted(GELU_APPROXIMATE))}."
        )
    return {
        "img_size": _square(_hf_get(hf, model_type, "image_size"), "image_size", origin),
        "num_frames": int(_hf_get(hf, model_type, "num_frames")),
        "in_chans": int(_hf_get(hf, model_type, "num_channels")),
        "embed_dim": int(_hf_get(hf, model_type, "hidden_size")),
        "depth": int(_hf_get(hf, model_type, "num_hidden_layers")),
        "num_heads": int(_hf_get(hf, model_type, "num_attention_heads")),
        "mlp_dim": int(_hf_get(hf, model_type, "intermediate_size")),
        "norm_eps": float(_hf_get(hf, model_type, "layer_norm_eps")),
        "gelu_approximate": GELU_APPROXIMATE[act],
    }


def _hf_videomae_fields(hf: Mapping[str, Any], state: Mapping[str, Any], origin: str) -> dict[str, Any]:
    if not _hf_get(hf, "videomae", "use_mean_pooling"):
        raise ConversionError(
            f"{origin}: use_mean_pooling=False VideoMAE models (final layernorm + first token) are not "
            "supported; tldr_jax pools with fc_norm(mean of tokens)."
        )
    qv = hf["qv_bias"] if "qv_bias" in hf else _hf_get(hf, "videomae", "qkv_bias")  # renamed in v5
    fields = _hf_common(hf, "videomae", origin)
    fields.update(
        patch_size=_square(_hf_get(hf, "videomae", "patch_size"), "patch_size", origin),
        tubelet_size=int(_hf_get(hf, "videomae", "tubelet_size")),
        qkv_bias="qv" if qv else "none",
        final_norm=False,
        pool="mean",
        pool_norm_eps=1e-5,  # VideoMAEForVideoClassification.fc_norm = nn.LayerNorm(hidden) (eps 1e-5)
        num_classes=int(np.shape(state["classifier.weight"])[0]) if "classifier.weight" in state else 0,
    )
    return fields


def _hf_vivit_fields(hf: Mapping[str, Any], state: Mapping[str, Any], origin: str) -> dict[str, Any]:
    tubelet = _hf_get(hf, "vivit", "tubelet_size")
    if not (isinstance(tubelet, (list, tuple)) and len(tubelet) == 3 and tubelet[1] == tubelet[2]):
        raise ConversionError(f"{origin}: tubelet_size {tubelet!r} must be [t, p, p].")
    fields = _hf_common(hf, "vivit", origin)
    fields.update(
        patch_size=int(tubelet[1]),
        tubelet_size=int(tubelet[0]),
        qkv_bias="qkv" if _hf_get(hf, "vivit", "qkv_bias") else "none",
        cls_token=True,
        pos_embed="learned",
        final_norm=True,
        pool="cls",
        num_classes=int(np.shape(state["classifier.weight"])[0]) if "classifier.weight" in state else 0,
    )
    return fields


def hf_labels(hf: Mapping[str, Any] | None, num_classes: int) -> tuple[str, ...] | None:
    """``id2label`` as a tuple ordered by class id, when it covers exactly ``num_classes`` ids."""
    if not hf or not num_classes:
        return None
    id2label = hf.get("id2label") or {}
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError):
        return None
    if sorted(by_id) != list(range(num_classes)):
        return None
    return tuple(by_id[i] for i in range(num_classes))


def _apply_options(family: str, fields: dict[str, Any], opts: Options, from_hf: bool) -> ArchConfig:
    width, depth = fields["embed_dim"], fields["depth"]
    name = opts.arch or infer_arch_name(family, width, depth)
    named = ARCHS.get(name)
    base = named if named is not None and named.embed_dim == width else FAMILY_BASE[family]
    if not from_hf:
        fields.setdefault("num_frames", base.num_frames)
        fields.setdefault("img_size", base.img_size)
        heads = base.num_heads if base.embed_dim == width else default_num_heads(width)
        fields.setdefault("num_heads", heads)
    given = {
        "num_heads": opts.num_heads,
        "num_frames": opts.num_frames,
        "img_size": opts.img_size,
        "ckpt_num_frames": opts.ckpt_num_frames,
    }
    fields.update({k: v for k, v in given.items() if v is not None})
    fields.update(dict(opts.config_overrides))
    try:
        cfg = ArchConfig(name=name, family=family, **fields)
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise ConversionError(
            f"invalid architecture for these weights: {e} (set --num-heads / --num-frames / --img-size)."
        ) from e
    return cfg


def infer_config(
    fmt: Format,
    state: Mapping[str, np.ndarray],
    hf_config: Mapping[str, Any] | None,
    opts: Options,
    origin: str,
    *,
    stored_pos_embed: bool = False,
) -> tuple[ArchConfig, tuple[str, ...] | None]:
    """The :class:`ArchConfig` (and labels) for normalised ``state`` in format ``fmt``.

    Width, depth, MLP size, patch/tubelet size, q/k/v biases, classifier size and ``vision_proj``
    come from the weights (and ``config.json`` for HF); heads, frames and image size from the HF
    config, else ``opts``, else the closest named architecture.

    ``stored_pos_embed``: the ``videomae_pth`` ``pos_embed (1, N, D)`` is not the fixed sinusoid
    table; it becomes the learned position embedding and ``N`` fixes the frame count.
    """
    if fmt.name == "umt":
        fields = _umt_fields(state, origin)
    elif fmt.name == "videomae_pth":
        fields = _videomae_pth_fields(state, origin)
    else:
        if hf_config is None:
            raise ConversionError(
                f"{fmt.description} weights need their config.json: pass the model directory, or "
                "hf_config=... to convert_state_dict."
            )
        make = _hf_videomae_fields if fmt.name == "hf_videomae" else _hf_vivit_fields
        fields = make(hf_config, state, origin)
    if fmt.name == "videomae_pth" and stored_pos_embed:
        fields.update(_stored_pos_fields(state, fields, opts, origin))
    elif fmt.name == "videomae_pth" and opts.num_frames is None:
        fields.update(_frames_from_pos_embed(state, fields, opts))
    fields = _apply_num_classes(fields, opts, origin)
    cfg = _apply_options(fmt.family, fields, opts, from_hf=fmt.name.startswith("hf_"))
    labels = hf_labels(hf_config, cfg.num_classes)
    return cfg, labels


def _frames_from_pos_embed(
    state: Mapping[str, np.ndarray], fields: Mapping[str, Any], opts: Options
) -> dict[str, int]:
    """``{"num_frames": T}`` when a stored ``pos_embed (1, N, D)`` pins the frame count, else ``{}``."""
    shape = np.shape(state["pos_embed"]) if "pos_embed" in state else ()
    if len(shape) != 3:
        return {}
    img = opts.img_size or FAMILY_BASE["videomae"].img_size
    per_frame = (img // fields["patch_size"]) ** 2
    if not per_frame or shape[1] % per_frame:
        return {}
    return {"num_frames": shape[1] // per_frame * fields["tubelet_size"]}


def _stored_pos_fields(
    state: Mapping[str, np.ndarray], fields: Mapping[str, Any], opts: Options, origin: str
) -> dict[str, Any]:
    """``{"pos_embed": "learned", "num_frames": T}`` for a stored (not sinusoid) ``pos_embed (1, N, D)``.

    The official fine-tuning code interpolates the sinusoid table made for 8 frames at 224 px (14x14
    patches of 16) to any other token count and stores it as a learnable parameter: ``N`` then pins
    the frame count (at the image size given, default 224).

    Raises:
      ConversionError: ``N`` is no whole number of frames, or ``--num-frames`` / ``--ckpt-num-frames``
        contradict the table.
    """
    n = int(np.shape(state["pos_embed"])[1])
    patch, tubelet = fields["patch_size"], fields["tubelet_size"]
    img = opts.img_size or FAMILY_BASE["videomae"].img_size
    side = img // patch
    if not side or n % (side * side):
        raise ConversionError(
            f"{origin}: pos_embed stores a position table for {n} tokens, which is no whole number of "
            f"frames of {side}x{side} patches ({img} px, patch {patch}): it fits no frame count at this "
            f"image size. Pass the --img-size the model was fine-tuned at (a frame holds "
            f"(img_size / {patch})^2 tokens)."
        )
    positions = n // (side * side)
    frames = positions * tubelet
    covers = f"{positions} temporal positions x {side}x{side} patches (tubelet {tubelet})"
    if opts.num_frames is not None and opts.num_frames != frames:
        raise ConversionError(
            f"--num-frames {opts.num_frames} contradicts {origin}: its stored pos_embed ({n} tokens = "
            f"{covers}) fixes the model to exactly {frames} frames at {img} px. Omit --num-frames (or pass "
            f"{frames}); if the image size is what differs, pass --img-size instead."
        )
    if opts.ckpt_num_frames is not None:
        raise ConversionError(
            f"--ckpt-num-frames {opts.ckpt_num_frames} re-times the fixed sinusoid table, but {origin} "
            f"stores its own position table ({covers}, {frames} frames); omit --ckpt-num-frames."
        )
    return {"pos_embed": "learned", "num_frames": frames}


def _apply_num_classes(fields: dict[str, Any], opts: Options, origin: str) -> dict[str, Any]:
    found = fields.get("num_classes", 0)
    want = opts.num_classes
    if want is None or want == found:
        return fields
    if want == 0:
        return {**fields, "num_classes": 0}
    if found == 0:
        raise ConversionError(
            f"--num-classes {want} was given but {origin} has no classifier head; omit --num-classes."
        )
    raise ConversionError(
        f"{origin} has a {found}-way classifier but --num-classes {want} was given; pass "
        f"--num-classes {found}, or 0 to drop the head."
    )

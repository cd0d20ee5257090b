"""Architecture configs: one frozen, hashable dataclass per model, and the named real-size variants."""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, Literal

Family = Literal["umt", "videomae", "vivit"]


def unknown_fields(cls: Any, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(unknown, known)``: the sorted ``names`` that are not fields of the dataclass ``cls``, and
    its sorted field names (for messages that list the valid ones)."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    return sorted(set(names) - set(known)), known


class DictConfig:
    """``to_dict`` / ``from_dict``: the JSON round trip of a frozen config dataclass with ``validate()``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (what checkpoints store in ``config.json``)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`, validated; unknown keys raise a ``ValueError`` naming them."""
        unknown, known = unknown_fields(cls, data)
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field(s) {unknown} (known: {', '.join(known)}); is it from a newer "
                "tldr_jax?"
            )
        cfg = cls(**dict(data))
        cfg.validate()  # type: ignore[attr-defined]
        return cfg


@dataclasses.dataclass(frozen=True)
class ArchConfig(DictConfig):
    """Everything needed to build an encoder; hashable, so it is static under ``jax.jit``.

    Attributes:
      name: architecture name (``"umt_b16"``, ``"videomae_b"``, ...); presets are keyed by it.
      family: ``"umt"`` (vid-TLDR's official backbone), ``"videomae"`` or ``"vivit"``.
      img_size, patch_size: spatial input size and patch size (square).
      num_frames: frames the model runs on; ``tubelet_size`` frames form one temporal token.
      ckpt_num_frames: frames the sinusoidal position table was made for; when it differs from
        ``num_frames`` the table is linearly interpolated over time, as the official UMT code does.
      embed_dim, depth, num_heads, mlp_dim: transformer sizes.
      qkv_bias: ``"qv"`` (UMT/VideoMAE: learned q and v biases, k bias zero), ``"qkv"`` or ``"none"``.
      norm_eps: LayerNorm epsilon of the blocks and the final norm.
      gelu_approximate: tanh GELU (ViViT's ``gelu_fast``) instead of the exact erf GELU.
      cls_token: prepend a learned CLS token (ViViT); it is protected from merging.
      pos_embed: ``"sincos"`` (fixed table, recomputed) or ``"learned"``.
      final_norm: apply ``norm`` to the output tokens.
      pool: ``"mean"`` (UMT: ``pool_norm(mean)``; VideoMAE: ``fc_norm(mean)``) or ``"cls"`` (ViViT).
      pool_norm_eps: epsilon of ``pool_norm`` / ``fc_norm`` (VideoMAE's ``fc_norm`` uses 1e-5).
      pool_norm: LayerNorm the mean-pooled vector (``pool_norm`` / ``fc_norm``); UMT's QA model has none,
        so its ``pooled`` is the plain mean.
      num_classes: classifier outputs (0: no head).
      vision_proj_dim: UMT retrieval projection width (0: none).
      in_chans: input channels.
    """

    name: str
    family: Family
    img_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    ckpt_num_frames: int | None = None
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    qkv_bias: Literal["qv", "qkv", "none"] = "qv"
    norm_eps: float = 1e-6
    gelu_approximate: bool = False
    cls_token: bool = False
    pos_embed: Literal["sincos", "learned"] = "sincos"
    final_norm: bool = True
    pool: Literal["mean", "cls"] = "mean"
    pool_norm_eps: float = 1e-6
    pool_norm: bool = True
    num_classes: int = 0
    vision_proj_dim: int = 0
    in_chans: int = 3

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')``."""
        hw = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, hw, hw

    @property
    def num_patches(self) -> int:
        """Patch tokens (CLS excluded)."""
        t, h, w = self.grid
        return t * h * w

    @property
    def num_tokens(self) -> int:
        """Tokens entering the first block (CLS included)."""
        return self.num_patches + int(self.cls_token)

    @property
    def protected(self) -> int:
        """Leading tokens never merged."""
        return int(self.cls_token)

    @property
    def head_dim(self) -> int:
        """Per-head width."""
        return self.embed_dim // self.num_heads

    @property
    def preset_arch(self) -> str:
        """Name presets are looked up under (the named variant this config derives from)."""
        return self.name

    def replace(self, **overrides: Any) -> ArchConfig:
        """A copy with fields replaced; unknown fields raise with the list of valid ones."""
        unknown, fields = unknown_fields(self, overrides)
        if unknown:
            raise TypeError(f"unknown config override(s) {unknown}; valid fields: {', '.join(fields)}.")
        cfg = dataclasses.replace(self, **overrides)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise a clear error for non-positive or inconsistent sizes."""
        sizes = ("img_size", "patch_size", "num_frames", "tubelet_size", "embed_dim", "depth", "num_heads",
                 "mlp_dim", "in_chans")
        for name, minimum in [(n, 1) for n in sizes] + [("num_classes", 0), ("vision_proj_dim", 0)]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}.")
        if self.ckpt_num_frames is not None and (
            isinstance(self.ckpt_num_frames, bool) or not isinstance(self.ckpt_num_frames, numbers.Integral)
            or self.ckpt_num_frames < 1
        ):
            raise ValueError(f"ckpt_num_frames must be None or an int >= 1; got {self.ckpt_num_frames!r}.")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}; "
                "choose num_heads dividing the width."
            )
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}; "
                f"use a multiple of {self.patch_size}."
            )
        if self.num_frames % self.tubelet_size:
            raise ValueError(
                f"num_frames {self.num_frames} is not divisible by tubelet_size {self.tubelet_size}; "
                f"use a multiple of {self.tubelet_size}."
            )
        if self.pool not in ("mean", "cls") or (self.pool == "cls" and not self.cls_token):
            raise ValueError(f"pool={self.pool!r} needs pool 'mean', or 'cls' with cls_token=True.")



def _umt(name: str, dim: int, depth: int, heads: int) -> ArchConfig:
    return ArchConfig(
        name=name, family="umt", num_frames=12, tubelet_size=1, embed_dim=dim, depth=depth,
        num_heads=heads, mlp_dim=4 * dim, qkv_bias="qv", norm_eps=1e-6, pool="mean", pool_norm_eps=1e-6,
    )


def _videomae(name: str, dim: int, depth: int, heads: int) -> ArchConfig:
    return ArchConfig(
        name=name, family="videomae", num_frames=16, tubelet_size=2, embed_dim=dim, depth=depth,
        num_heads=heads, mlp_dim=4 * dim, qkv_bias="qv", norm_eps=1e-6, final_norm=False, pool="mean",
        pool_norm_eps=1e-5, num_classes=400,
    )


#: The built-in architectures by name (``tldr_jax.init(rng, name)``): UMT, VideoMAE and ViViT encoders.
ARCHS: dict[str, ArchConfig] = {
    "umt_b16": _umt("umt_b16", 768, 12, 12),
    "umt_l16": _umt("umt_l16", 1024, 24, 16),
    "videomae_s": _videomae("videomae_s", 384, 12, 6),
    "videomae_b": _videomae("videomae_b", 768, 12, 12),
    "videomae_l": _videomae("videomae_l", 1024, 24, 16),
    "videomae_h": _videomae("videomae_h", 1280, 32, 16),
    "vivit_b": ArchConfig(
        name="vivit_b", family="vivit", num_frames=32, tubelet_size=2, embed_dim=768, depth=12,
        num_heads=12, mlp_dim=3072, qkv_bias="qkv", norm_eps=1e-6, gelu_approximate=True, cls_token=True,
        pos_embed="learned", final_norm=True, pool="cls", num_classes=400,
    ),
}


def get_config(arch: str | ArchConfig, **overrides: Any) -> ArchConfig:
    """A named architecture config with optional overrides (``depth=2, num_frames=4, ...``)."""
    if isinstance(arch, ArchConfig):
        return arch.replace(**overrides) if overrides else arch
    key = str(arch).lower().replace("-", "_").replace("/", "")
    if key not in ARCHS:
        close = difflib.get_close_matches(key, ARCHS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}.{hint}")
    cfg = ARCHS[key]
    return cfg.replace(**overrides) if overrides else cfg

"""Fine-tuning settings: :class:`FinetuneConfig` (the one list of hyper-parameters, from which the
``tldr-jax finetune`` flags are generated) and :class:`StepSpec`, the static part of a compiled step."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tldr_jax.configs import ArchConfig, unknown_fields
from tldr_jax.options import COMPUTE_DTYPES, METHODS, POOLS, check_dtype
from tldr_jax.schedule import RSpec

__all__ = ["FinetuneConfig", "StepSpec", "freeze_r"]


def freeze_r(r: RSpec) -> RSpec:
    """Make an ``r`` spec hashable (lists become tuples)."""
    if isinstance(r, (list, np.ndarray)):
        return tuple(np.asarray(r).tolist())
    return r


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (defaults: VideoMAE fine-tuning, scaled for small sets).

    Attributes:
      epochs: passes over the training set.
      batch_size: clips per step (the last partial batch of an epoch is dropped).
      lr: peak learning rate (VideoMAE: 1e-3 * batch / 256).
      min_lr: learning rate at the end of the cosine decay.
      warmup_epochs: linear warm-up length from 0 to lr (may be fractional).
      weight_decay: AdamW decoupled weight decay (not applied to 1-D parameters, pos_embed, cls_token).
      layer_decay: layer-wise learning-rate decay (1.0: off).
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      eps: Adam's epsilon.
      label_smoothing: label smoothing of the cross-entropy.
      clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
      train_r: merge schedule during training (any r tldr_jax.apply accepts: 8, 0.1, 8,4,2, a preset).
      eval_r: merge schedule during evaluation (None: same as train_r).
      method: merge method, vid_tldr or tome.
      pool: mean or weighted pooling of the merged tokens.
      dtype: compute dtype (bfloat16 for mixed precision; parameters and optimiser state stay float32).
      remat: rematerialise each block in the backward pass (less memory, more compute).
      linear_probe: train the head only (the encoder is frozen and gets no optimiser state).
      new_head: replace the classifier head with a freshly initialised one sized for the dataset.
      head_init_std: std of the new head's truncated-normal kernel (bias 0).
      seed: seeds the data order (with the epoch) and a new head.
      eval_every: evaluate every this many epochs (and after the last one).
      save_every: save the train state every this many steps (None: at the end of every epoch).
      max_to_keep: train-state checkpoints kept on disk.
      workers: threads decoding clips.
      progress: show a progress bar (loss, clips/s) and evaluation lines.
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    label_smoothing: float = 0.1
    clip_grad_norm: float | None = None
    train_r: RSpec = 0
    eval_r: RSpec = None
    method: str = dataclasses.field(default="vid_tldr", metadata={"choices": METHODS})
    pool: str = dataclasses.field(default="mean", metadata={"choices": POOLS})
    dtype: str | None = dataclasses.field(default=None, metadata={"choices": COMPUTE_DTYPES})
    remat: bool = False
    linear_probe: bool = False
    new_head: bool = False
    head_init_std: float = 0.02
    seed: int = 0
    eval_every: int = 1
    save_every: int | None = None
    max_to_keep: int = 2
    workers: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_r", freeze_r(self.train_r))
        object.__setattr__(self, "eval_r", freeze_r(self.eval_r))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", check_dtype(self.dtype).name)
        self.validate()

    def validate(self) -> None:
        """Raise a clear error for out-of-range settings."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1; got {self.epochs}."),
            (self.batch_size >= 1, f"batch_size must be >= 1; got {self.batch_size}."),
            (self.lr > 0 and self.min_lr >= 0, f"need lr > 0 and min_lr >= 0; got {self.lr}, {self.min_lr}."),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0; got {self.warmup_epochs}."),
            (0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1]; got {self.layer_decay}."),
            (
                0 <= self.label_smoothing < 1,
                f"label_smoothing must be in [0, 1); got {self.label_smoothing}.",
            ),
            (self.method in METHODS, f"method must be one of {METHODS}; got {self.method!r}."),
            (self.pool in POOLS, f"pool must be one of {POOLS}; got {self.pool!r}."),
            (self.eval_every >= 1, f"eval_every must be >= 1; got {self.eval_every}."),
            (
                self.save_every is None or self.save_every >= 1,
                f"save_every must be >= 1; got {self.save_every}.",
            ),
            (self.workers >= 1, f"workers must be >= 1; got {self.workers}."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def replace(self, **overrides: Any) -> FinetuneConfig:
        """A copy with fields replaced; unknown fields raise with the list of valid ones."""
        unknown, fields = unknown_fields(self, overrides)
        if unknown:
            raise TypeError(f"unknown fine-tuning option(s) {unknown}; valid: {', '.join(fields)}.")
        return dataclasses.replace(self, **overrides)

    @property
    def resolved_eval_r(self) -> RSpec:
        """The evaluation schedule (``eval_r``, defaulting to ``train_r``)."""
        return self.train_r if self.eval_r is None else self.eval_r

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it resumes (JSON-friendly)."""
        keys = (
            "epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "layer_decay", "b1",
            "b2", "eps", "label_smoothing", "clip_grad_norm", "method", "pool", "dtype", "linear_probe",
            "seed",
        )
        out = {k: getattr(self, k) for k in keys}
        out["train_r"] = repr(self.train_r)
        return out


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a train/eval step (hashable: one compilation per spec)."""

    arch: ArchConfig
    r: RSpec
    method: str
    pool: str
    dtype: str | None
    remat: bool
    label_smoothing: float
    linear_probe: bool
    weight_decay: float
    layer_decay: float
    b1: float
    b2: float
    eps: float
    clip_grad_norm: float | None

    @classmethod
    def from_config(cls, arch: ArchConfig, fc: FinetuneConfig, r: RSpec) -> StepSpec:
        """The spec of ``fc`` for ``arch`` with merge schedule ``r``."""
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("arch", "r")]
        return cls(arch=arch, r=r, **{n: getattr(fc, n) for n in names})

    def for_eval(self) -> StepSpec:
        """The spec with the training-only fields at fixed values (evaluation compiles once per model)."""
        return dataclasses.replace(
            self,
            remat=False,
            label_smoothing=0.0,
            linear_probe=False,
            weight_decay=0.0,
            layer_decay=1.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            clip_grad_norm=None,
        )

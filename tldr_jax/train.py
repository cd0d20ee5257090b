"""Fine-tuning with token merging active: VideoMAE-style AdamW, resumable, with a best-model export.

The recipe follows VideoMAE fine-tuning: AdamW (no weight decay on biases, norms, position
embeddings and the CLS token), linear warm-up then cosine decay of the learning rate, layer-wise
learning-rate decay (``patch_embed`` / ``pos_embed`` / ``cls_token`` are layer 0, ``blocks_i`` layer
``i + 1``, everything after the blocks layer ``depth + 1``; the scale of layer ``l`` is
``layer_decay ** (depth + 1 - l)``) and label smoothing. Merging runs during training with its own
schedule (``train_r``) and during evaluation with ``eval_r``. The matching indices and the vid-TLDR
saliency carry no gradient (they are ``stop_gradient``-ed); gradients flow through the merged values
and the token sizes.

Everything that changes during training lives in one :class:`TrainState` (parameters, optimiser
state, step), saved by an orbax ``CheckpointManager`` together with a JSON record (epoch, position in
the epoch, seed, best top-1, evaluation history, skipped clips). The data order is a function of
``(seed, epoch)`` and the learning rate a function of the step, so a resumed run repeats exactly what
an uninterrupted run does. The best parameters by evaluation top-1 are exported with
:func:`tldr_jax.checkpoint.save` (the format :func:`tldr_jax.load` reads).

Python API::

    result = tldr_jax.train.finetune(params, "data/train", "data/val", ckpt_dir="runs/a/state",
                                     export="runs/a/best", epochs=10, train_r=8, new_head=True)

Command line: ``tldr-jax finetune MODEL TRAIN_DIR --out DIR`` (:func:`add_finetune_subparser`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from tldr_jax.api import Params, apply
from tldr_jax.configs import ArchConfig, get_config
from tldr_jax.data import (
    ClipDataset,
    as_dataset,
    batch_slices,
    epoch_order,
    load_batch,
    split,
)
from tldr_jax.options import METHODS, POOLS
from tldr_jax.schedule import RSpec
from tldr_jax.schedule import parse_r as parse_r_text

Array = jax.Array
DTYPES = (None, "float32", "bfloat16", "float16")
EMBED_KEYS = ("patch_embed", "pos_embed", "cls_token")
NO_DECAY_KEYS = ("pos_embed", "cls_token")
HEAD_KEY = "head"

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "LabelMismatchError",
    "TrainState",
    "add_finetune_subparser",
    "decay_mask",
    "evaluate",
    "finetune",
    "finetune_main",
    "layer_id",
    "layer_scales",
    "lr_at",
    "make_optimizer",
    "prepare_head",
]


class LabelMismatchError(ValueError):
    """The model's classifier head does not fit the dataset's label set."""


# --------------------------------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------------------------------


def _freeze_r(r: RSpec) -> RSpec:
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
      lr: peak learning rate (VideoMAE: ``1e-3 * batch / 256``).
      min_lr: learning rate at the end of the cosine decay.
      warmup_epochs: linear warm-up length from 0 to ``lr`` (may be fractional).
      weight_decay: AdamW decoupled weight decay (not applied to 1-D parameters, ``pos_embed``,
        ``cls_token``).
      layer_decay: layer-wise learning-rate decay (1.0: off).
      b1, b2, eps: Adam moments.
      label_smoothing: label smoothing of the cross-entropy.
      clip_grad_norm: clip the global gradient norm to this value (None: no clipping).
      train_r: merge schedule during training (any ``r`` :func:`tldr_jax.apply` accepts).
      eval_r: merge schedule during evaluation (None: same as ``train_r``).
      method: ``"vid_tldr"`` or ``"tome"``.
      pool: ``"mean"`` or ``"weighted"`` pooling of the merged tokens.
      dtype: compute dtype (``"bfloat16"`` for mixed precision; parameters and optimiser stay f32).
      remat: rematerialise each block in the backward pass (less memory, more compute).
      linear_probe: train the head only (the encoder is frozen and gets no optimiser state).
      new_head: replace the classifier head with a freshly initialised one sized for the dataset.
      head_init_std: std of the new head's truncated-normal kernel (bias 0).
      seed: seeds the data order (with the epoch) and a new head.
      eval_every: evaluate every this many epochs (and after the last one).
      save_every: save the train state every this many steps (None: at the end of every epoch).
      max_to_keep: train-state checkpoints kept on disk.
      workers: threads decoding clips.
      progress: show a tqdm progress bar (loss, clips/s) and evaluation lines.
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
    method: str = "vid_tldr"
    pool: str = "mean"
    dtype: str | None = None
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
        object.__setattr__(self, "train_r", _freeze_r(self.train_r))
        object.__setattr__(self, "eval_r", _freeze_r(self.eval_r))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
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
            (self.dtype in DTYPES, f"dtype must be one of {DTYPES}; got {self.dtype!r}."),
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
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"unknown fine-tuning option(s) {unknown}; valid: {', '.join(sorted(fields))}.")
        return dataclasses.replace(self, **overrides)

    @property
    def resolved_eval_r(self) -> RSpec:
        """The evaluation schedule (``eval_r``, defaulting to ``train_r``)."""
        return self.train_r if self.eval_r is None else self.eval_r

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it resumes (JSON-friendly)."""
        keys = (
            "epochs",
            "batch_size",
            "lr",
            "min_lr",
            "warmup_epochs",
            "weight_decay",
            "layer_decay",
            "b1",
            "b2",
            "eps",
            "label_smoothing",
            "clip_grad_norm",
            "method",
            "pool",
            "dtype",
            "linear_probe",
            "seed",
        )
        out = {k: getattr(self, k) for k in keys}
        out["train_r"] = repr(self.train_r)
        return out


# --------------------------------------------------------------------------------------------------
# Optimiser: AdamW, weight-decay mask, layer-wise learning-rate decay, warm-up + cosine.
# --------------------------------------------------------------------------------------------------


def _top_key(path: tuple[Any, ...]) -> str:
    first = path[0]
    return str(getattr(first, "key", getattr(first, "name", first)))


def layer_id(top_key: str, depth: int) -> int:
    """VideoMAE layer index of a top-level parameter.

    ``patch_embed`` / ``pos_embed`` / ``cls_token``: 0; ``blocks_i``: ``i + 1``; the rest: ``depth + 1``.
    """
    if top_key in EMBED_KEYS:
        return 0
    if top_key.startswith("blocks_"):
        return int(top_key.split("_", 1)[1]) + 1
    return depth + 1


def layer_scales(tree: Any, depth: int, decay: float) -> Any:
    """Per-parameter learning-rate scale ``decay ** (depth + 1 - layer_id)`` (same structure as ``tree``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: float(decay ** (depth + 1 - layer_id(_top_key(path), depth))), tree
    )


def decay_mask(tree: Any) -> Any:
    """True where AdamW weight decay applies: matrices and kernels, not biases/norms/pos_embed/cls_token."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: bool(jnp.ndim(x) >= 2 and _top_key(path) not in NO_DECAY_KEYS), tree
    )


def param_labels(tree: Any, linear_probe: bool) -> Any:
    """``"train"`` / ``"frozen"`` per parameter (linear probe: only the head trains)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if not linear_probe or _top_key(path) == HEAD_KEY else "frozen", tree
    )


def scale_by_layer(depth: int, decay: float) -> optax.GradientTransformation:
    """Multiply each update by its layer-wise learning-rate scale (see :func:`layer_scales`)."""

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        scales = layer_scales(updates, depth, decay)
        return jax.tree_util.tree_map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)


def lr_at(
    step: Array | int, peak: Array | float, min_lr: Array | float, warmup: Array | int, total: Array | int
):
    """Learning rate at ``step``: linear warm-up from 0 over ``warmup`` steps, then cosine to ``min_lr``.

    Matches VideoMAE's ``cosine_scheduler`` (step 0 of a warm-up has learning rate 0). All arguments
    may be traced, so one compiled train step serves any schedule length.
    """
    step = jnp.asarray(step, jnp.float32)
    warmup = jnp.asarray(warmup, jnp.float32)
    total = jnp.asarray(total, jnp.float32)
    warm = peak * step / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cosine = min_lr + 0.5 * (peak - min_lr) * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, warm, cosine)


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


@functools.lru_cache(maxsize=32)
def make_optimizer(spec: StepSpec) -> optax.GradientTransformation:
    """AdamW with the weight-decay mask and layer-wise scales, *without* the learning rate.

    The train step multiplies the result by ``-lr_at(step)``; linear probing freezes everything but
    the head (``optax.set_to_zero``, no optimiser state for the encoder).
    """
    parts = []
    if spec.clip_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(spec.clip_grad_norm))
    parts += [
        optax.scale_by_adam(b1=spec.b1, b2=spec.b2, eps=spec.eps),
        optax.add_decayed_weights(spec.weight_decay, mask=decay_mask),
    ]
    if spec.layer_decay != 1.0:
        parts.append(scale_by_layer(spec.arch.depth, spec.layer_decay))
    tx = optax.chain(*parts)
    if spec.linear_probe:
        tx = optax.multi_transform(
            {"train": tx, "frozen": optax.set_to_zero()}, lambda p: param_labels(p, True)
        )
    return tx


# --------------------------------------------------------------------------------------------------
# Train state and compiled steps.
# --------------------------------------------------------------------------------------------------


@struct.dataclass
class TrainState:
    """Everything a step changes: ``step`` (int32 scalar), ``tree`` (parameters), ``opt_state``."""

    step: Array
    tree: dict[str, Any]
    opt_state: Any

    @classmethod
    def create(cls, tree: dict[str, Any], spec: StepSpec) -> TrainState:
        """A fresh state holding a private float32 copy of ``tree`` (safe to donate)."""
        tree = jax.tree_util.tree_map(lambda x: jnp.array(x, jnp.float32, copy=True), tree)
        return cls(jnp.zeros((), jnp.int32), tree, make_optimizer(spec).init(tree))


def _loss_terms(tree: dict[str, Any], batch: dict[str, Array], spec: StepSpec, smoothing: float):
    """Masked mean cross-entropy and the logits of a batch."""
    out = apply(
        Params(tree, spec.arch),
        batch["video"],
        spec.r,
        method=spec.method,
        pool=spec.pool,
        dtype=None if spec.dtype is None else jnp.dtype(spec.dtype),
        remat=spec.remat,
    )
    logits = out.logits.astype(jnp.float32)
    targets = jax.nn.one_hot(batch["label"], logits.shape[-1])
    if smoothing:
        targets = optax.smooth_labels(targets, smoothing)
    ce = optax.softmax_cross_entropy(logits, targets)
    mask = batch["mask"]
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0), logits


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnames=("state",))
def train_step(
    state: TrainState, batch: dict[str, Array], schedule: Array, *, spec: StepSpec
) -> tuple[TrainState, dict[str, Array]]:
    """One optimisation step (compiled once per ``spec``; ``state`` is donated).

    Args:
      state: the current :class:`TrainState`.
      batch: ``video (B, T, H, W, 3)``, ``label (B,)``, ``mask (B,)``.
      schedule: ``[peak lr, min lr, warm-up steps, total steps]`` (float32; traced).
      spec: the static :class:`StepSpec`.

    Returns:
      ``(new state, metrics)`` with ``loss``, ``correct``, ``count``, ``lr`` and ``grad_norm``.
    """
    labels = param_labels(state.tree, spec.linear_probe)

    def loss_fn(tree):
        tree = jax.tree_util.tree_map(
            lambda x, lab: jax.lax.stop_gradient(x) if lab == "frozen" else x, tree, labels
        )
        return _loss_terms(tree, batch, spec, spec.label_smoothing)

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.tree)
    updates, opt_state = make_optimizer(spec).update(grads, state.opt_state, state.tree)
    lr = lr_at(state.step, schedule[0], schedule[1], schedule[2], schedule[3])
    tree = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.tree, updates)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"])
    metrics = {
        "loss": loss,
        "correct": correct,
        "count": jnp.sum(batch["mask"]),
        "lr": lr,
        "grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads))),
    }
    return TrainState(state.step + 1, tree, opt_state), metrics


@functools.partial(jax.jit, static_argnames=("spec",))
def eval_step(tree: dict[str, Any], batch: dict[str, Array], *, spec: StepSpec) -> dict[str, Array]:
    """Summed cross-entropy (no smoothing), top-1 and top-5 hits and count of one batch."""
    loss, logits = _loss_terms(tree, batch, spec, 0.0)
    mask = batch["mask"]
    count = jnp.sum(mask)
    k = min(5, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    hit = top == batch["label"][:, None]
    return {
        "loss": loss * jnp.maximum(count, 1.0),
        "top1": jnp.sum(hit[:, 0] * mask),
        "top5": jnp.sum(jnp.any(hit, axis=-1) * mask),
        "count": count,
    }


def _device_batch(batch: Any) -> dict[str, Array]:
    return {"video": batch.video, "label": batch.label, "mask": batch.mask}


def _evaluate_tree(
    tree: dict[str, Any], dataset: ClipDataset, spec: StepSpec, batch_size: int, pool: ThreadPoolExecutor
) -> dict[str, float]:
    sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    order = np.arange(len(dataset))
    for sl in batch_slices(len(dataset), batch_size, drop_last=False):
        batch = load_batch(dataset, order[sl], batch_size, pool)
        out = jax.device_get(eval_step(tree, _device_batch(batch), spec=spec))
        for key in sums:
            sums[key] += float(out[key])
    n = max(sums["count"], 1.0)
    return {
        "top1": sums["top1"] / n,
        "top5": sums["top5"] / n,
        "loss": sums["loss"] / n,
        "count": int(sums["count"]),
    }


def evaluate(
    params: Params,
    data: Any,
    r: RSpec = 0,
    *,
    method: str = "vid_tldr",
    pool: str = "mean",
    dtype: str | None = None,
    batch_size: int = 8,
    workers: int = 4,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy of a classifier on a labelled dataset.

    Args:
      params: a classifier (``params.config.num_classes`` must equal the dataset's class count).
      data: a dataset, ``(videos, labels)`` or a labelled-video folder.
      r, method, pool, dtype: as in :func:`tldr_jax.apply`.
      batch_size, workers: evaluation batch size and decoding threads.

    Returns:
      ``{"top1", "top5", "loss", "count"}`` (unreadable clips are skipped and reported in
      ``dataset.skipped``; ``count`` is the number of clips evaluated).
    """
    dataset = as_dataset(data, params)
    params = prepare_head(params, dataset.classes, new_head=False)
    fc = FinetuneConfig(method=method, pool=pool, dtype=dtype, progress=False)
    spec = StepSpec.from_config(params.config, fc, _freeze_r(r)).for_eval()
    with ThreadPoolExecutor(workers) as threads:
        return _evaluate_tree(params.tree, dataset, spec, batch_size, threads)


# --------------------------------------------------------------------------------------------------
# Label sets and heads.
# --------------------------------------------------------------------------------------------------


def new_head_tree(embed_dim: int, num_classes: int, seed: int, std: float) -> dict[str, Array]:
    """A fresh ``head`` (truncated-normal kernel ``(D, K)``, zero bias)."""
    init = jax.nn.initializers.truncated_normal(std)
    kernel = init(jax.random.key(seed), (embed_dim, num_classes), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}


def prepare_head(
    params: Params, classes: Sequence[str], *, new_head: bool = False, seed: int = 0, init_std: float = 0.02
) -> Params:
    """Make ``params``' classifier head fit the dataset's ``classes``.

    * Same class names (or an unnamed head of the right size): unchanged, labels set to ``classes``.
    * Same names in another order: the head's columns are permuted to the dataset's order.
    * Otherwise, with ``new_head=True``: a freshly initialised ``len(classes)``-way head.

    Raises:
      LabelMismatchError: the head does not fit and ``new_head`` is False (the message names both
        label sets and the fix).
    """
    classes = tuple(str(c) for c in classes)
    cfg = params.config
    have = cfg.num_classes
    if new_head:
        tree = dict(params.tree)
        tree[HEAD_KEY] = new_head_tree(cfg.embed_dim, len(classes), seed, init_std)
        return Params(tree, cfg.replace(num_classes=len(classes)), classes)
    if have == len(classes) and (params.labels is None or tuple(params.labels) == classes):
        return params.replace(labels=classes)
    if have == len(classes) and params.labels is not None and set(params.labels) == set(classes):
        perm = np.asarray([list(params.labels).index(c) for c in classes])
        head = params.tree[HEAD_KEY]
        tree = dict(params.tree)
        tree[HEAD_KEY] = {"kernel": head["kernel"][:, perm], "bias": head["bias"][perm]}
        return Params(tree, cfg, classes)
    if not have:
        model = f"the model ({cfg.name}) has no classifier head"
    else:
        named = f" ({', '.join(list(params.labels)[:3])}, ...)" if params.labels else ""
        model = f"the model's head has {have} classes{named}"
    raise LabelMismatchError(
        f"{model} but the dataset has {len(classes)} classes ({', '.join(classes[:5])}"
        f"{', ...' if len(classes) > 5 else ''}). Pass new_head=True (CLI: --new-head) to replace the "
        f"head with a freshly initialised {len(classes)}-way one."
    )


def _check_clip_shape(dataset: ClipDataset, cfg: ArchConfig, what: str) -> None:
    want = (cfg.num_frames, cfg.img_size, cfg.img_size, cfg.in_chans)
    if tuple(dataset.clip_shape) != want:
        raise ValueError(
            f"{what} clips are {tuple(dataset.clip_shape)} (T, H, W, C) but the model needs {want}; "
            "resample/resize the clips (FolderDataset does it for video files) or build the model for them."
        )


# --------------------------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------------------------


class _StateCheckpoints:
    """orbax ``CheckpointManager`` of the train state (arrays) plus a JSON record (synchronous saves)."""

    def __init__(self, directory: str | Path, max_to_keep: int):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(
            Path(directory).resolve(), options=options, item_names=("state", "record")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, record: dict[str, Any]) -> None:
        args = self.ocp.args.Composite(
            state=self.ocp.args.StandardSave(_state_dict(state)), record=self.ocp.args.JsonSave(record)
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict[str, Any]]:
        target = jax.tree_util.tree_map(self.ocp.utils.to_shape_dtype_struct, _state_dict(like))
        args = self.ocp.args.Composite(
            state=self.ocp.args.StandardRestore(target), record=self.ocp.args.JsonRestore()
        )
        out = self.manager.restore(step, args=args)
        # orbax returns arrays committed to a device; fresh ones are uncommitted, and jit would compile
        # the train step again for the difference. Rebuild them the way a fresh state is built.
        state = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)), out["state"])
        return TrainState(state["step"], state["tree"], state["opt_state"]), out["record"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _state_dict(state: TrainState) -> dict[str, Any]:
    return {"step": state.step, "tree": state.tree, "opt_state": state.opt_state}


def _export(params: Params, path: str | Path, metadata: dict[str, Any]) -> Path | None:
    """Write ``params`` with :func:`tldr_jax.checkpoint.save` (replacing an earlier export)."""
    try:
        from tldr_jax import checkpoint
    except ImportError as err:  # pragma: no cover - depends on the build
        warnings.warn(f"cannot export the model ({err}); keeping it in memory only.", stacklevel=3)
        return None
    return Path(checkpoint.save(params, path, metadata={"finetune": metadata}, overwrite=True))


# --------------------------------------------------------------------------------------------------
# The fine-tuning loop.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
      params: the final :class:`Params` (``labels`` = the dataset's classes).
      best_params: the best parameters by evaluation top-1 of this process (host copy), or None
        without validation data.
      best_top1, best_step: the best evaluation top-1 over the whole run and the step it was reached.
      history: one dict per evaluation (``epoch``, ``step``, ``top1``, ``top5``, ``loss``, ``count``,
        ``train_loss``, ``train_acc``).
      steps: steps taken in total; ``total_steps``: steps of the whole run.
      resumed_from: the step this call resumed from, or None.
      skipped: unreadable clips (name -> reason) met by this process.
      export_path: where the best (or, without validation data, the final) model was exported.
      clips_per_s: training throughput of this call (first, compiling step excluded).
    """

    params: Params
    best_params: Params | None
    best_top1: float
    best_step: int
    history: list[dict[str, Any]]
    steps: int
    total_steps: int
    resumed_from: int | None
    skipped: dict[str, str]
    export_path: Path | None
    clips_per_s: float


def _resolve_data(
    params: Params, train: Any, val: Any, val_fraction: float | None, seed: int, folder_kwargs: dict[str, Any]
) -> tuple[ClipDataset, ClipDataset | None]:
    """The training and validation datasets (a stratified split of ``train`` when asked)."""
    train_ds = as_dataset(train, params, **folder_kwargs)
    val_ds = as_dataset(val, params, **folder_kwargs) if val is not None else None
    if val_ds is None and val_fraction:
        train_ds, val_ds = split(train_ds, val_fraction, seed)
    if val_ds is not None and tuple(val_ds.classes) != tuple(train_ds.classes):
        raise LabelMismatchError(
            f"validation classes {list(val_ds.classes)} differ from training classes "
            f"{list(train_ds.classes)}; both folders need the same class sub-folders."
        )
    if len(train_ds) == 0:
        raise ValueError("the training set is empty.")
    return train_ds, val_ds


def _check_resume(record: dict[str, Any], fingerprint: dict[str, Any], ckpt_dir: Any) -> None:
    """Refuse to resume a run made with other settings (it would not repeat that run)."""
    saved = record.get("fingerprint", {})
    diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"the checkpoint in {str(ckpt_dir)!r} is from a run with different settings ({details}); "
            "resuming would not repeat that run. Use the same settings, or a new ckpt_dir to start afresh."
        )


def _skipped(*datasets: ClipDataset | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for ds in datasets:
        if ds is not None:
            out.update(ds.skipped)
    return out


def _fresh_record() -> dict[str, Any]:
    """The JSON part of the train state (everything but arrays)."""
    return {
        "best_top1": -1.0,
        "best_step": -1,
        "history": [],
        "export": None,
        "epoch_stats": {"loss_sum": 0.0, "steps": 0, "correct": 0.0, "count": 0.0},
    }


def _accumulate(stats: dict[str, float], metrics: dict[str, Any]) -> None:
    stats["loss_sum"] += float(metrics["loss"])
    stats["steps"] += 1
    stats["correct"] += float(metrics["correct"])
    stats["count"] += float(metrics["count"])


def _epoch_summary(stats: dict[str, float]) -> dict[str, float]:
    return {
        "train_loss": stats["loss_sum"] / max(stats["steps"], 1),
        "train_acc": stats["correct"] / max(stats["count"], 1.0),
    }


def _format_eval(entry: dict[str, Any]) -> str:
    return (
        f"epoch {entry['epoch']}: val top-1 {entry['top1']:.4f} top-5 {entry['top5']:.4f} "
        f"loss {entry['loss']:.4f} (train loss {entry['train_loss']:.4f}, acc {entry['train_acc']:.4f})"
    )


def _is_live(state: TrainState) -> bool:
    """False when ``state``'s buffers were donated to a step that did not finish."""
    return not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree_util.tree_leaves(state))


def finetune(
    params: Params,
    train: Any,
    val: Any = None,
    *,
    config: FinetuneConfig | None = None,
    ckpt_dir: str | Path | None = None,
    export: str | Path | None = None,
    val_fraction: float | None = None,
    stop_at: int | None = None,
    folder_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune a video classifier with token merging active.

    Args:
      params: the starting model (:func:`tldr_jax.load`, :func:`tldr_jax.init` or the converter).
      train: a labelled-video folder, a ``(videos, labels[, classes])`` tuple or a dataset
        (:mod:`tldr_jax.data`).
      val: the same kinds, or None.
      config: a :class:`FinetuneConfig`; ``**overrides`` replace its fields (``epochs=5, train_r=8``).
      ckpt_dir: orbax train-state directory. A run with a checkpoint there resumes from its latest
        step and repeats exactly what an uninterrupted run does (same settings required).
      export: where the best model by validation top-1 is written with
        :func:`tldr_jax.checkpoint.save` (without validation data: the final model).
      val_fraction: without ``val``, hold out this (stratified) fraction of ``train``.
      stop_at: stop once the global step reaches this (after saving the train state); resume later.
      folder_kwargs: extra :class:`~tldr_jax.data.FolderDataset` arguments (``sampling``, ...).
      log: where evaluation lines go (default: ``tqdm.write`` when ``progress``, else nowhere).

    Returns:
      :class:`FinetuneResult`.

    Raises:
      LabelMismatchError: the head does not fit the label set and ``new_head`` is False.
      ~tldr_jax.data.EmptyClassError: a class folder has no clips.
    """
    from tqdm.auto import tqdm

    fc = (config or FinetuneConfig()).replace(**overrides)
    train_ds, val_ds = _resolve_data(params, train, val, val_fraction, fc.seed, folder_kwargs or {})
    params = prepare_head(
        params, train_ds.classes, new_head=fc.new_head, seed=fc.seed, init_std=fc.head_init_std
    )
    cfg, classes = params.config, tuple(train_ds.classes)
    _check_clip_shape(train_ds, cfg, "training")
    if val_ds is not None:
        _check_clip_shape(val_ds, cfg, "validation")

    steps_per_epoch = len(batch_slices(len(train_ds), fc.batch_size, drop_last=True))
    total = fc.epochs * steps_per_epoch
    warmup = int(round(fc.warmup_epochs * steps_per_epoch))
    schedule = jnp.asarray([fc.lr, fc.min_lr, warmup, total], jnp.float32)
    spec = StepSpec.from_config(cfg, fc, fc.train_r)
    eval_spec = StepSpec.from_config(cfg, fc, fc.resolved_eval_r).for_eval()
    save_every = fc.save_every or steps_per_epoch
    fingerprint = fc.fingerprint() | {"classes": list(classes), "train_size": len(train_ds)}

    state = TrainState.create(params.tree, spec)
    record = _fresh_record()
    ckpts = _StateCheckpoints(ckpt_dir, fc.max_to_keep) if ckpt_dir is not None else None
    resumed_from = None
    if ckpts is not None and ckpts.latest_step() is not None:
        resumed_from = int(ckpts.latest_step())
        state, saved = ckpts.restore(resumed_from, state)
        _check_resume(saved, fingerprint, ckpt_dir)
        record.update({k: saved.get(k, v) for k, v in _fresh_record().items()})
    step = int(state.step)

    say = log or (tqdm.write if fc.progress else (lambda _msg: None))
    bar = tqdm(total=total, initial=step, desc="finetune", unit="step", disable=not fc.progress)
    best_params: Params | None = None
    clips, t0 = 0.0, None
    saved_at = resumed_from
    consistent = True  # ``state`` and ``record`` describe the same step (safe to save on interrupt)

    def batch_for(at: int) -> Any:
        epoch, pos = divmod(at, steps_per_epoch)
        sl = batch_slices(len(train_ds), fc.batch_size, drop_last=True)[pos]
        return load_batch(train_ds, epoch_order(len(train_ds), fc.seed, epoch)[sl], fc.batch_size, threads)

    def save(at: int) -> None:
        epoch, pos = divmod(at, steps_per_epoch)
        extra = {"step": at, "epoch": epoch, "position": pos, "seed": fc.seed, "total_steps": total}
        ckpts.save(
            at, state, record | extra | {"fingerprint": fingerprint, "skipped": _skipped(train_ds, val_ds)}
        )

    with ThreadPoolExecutor(fc.workers) as threads, ThreadPoolExecutor(1) as prefetcher:
        pending = prefetcher.submit(batch_for, step) if step < total else None
        try:
            while step < total and (stop_at is None or step < stop_at):
                batch = pending.result()
                pending = prefetcher.submit(batch_for, step + 1) if step + 1 < total else None
                consistent = False
                state, metrics = train_step(state, _device_batch(batch), schedule, spec=spec)
                metrics = jax.device_get(metrics)
                step += 1
                _accumulate(record["epoch_stats"], metrics)
                if t0 is None:  # throughput excludes the first (compiling) step
                    t0 = time.perf_counter()
                else:
                    clips += float(metrics["count"])
                rate = clips / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.4f}",
                    lr=f"{metrics['lr']:.2e}",
                    clips_s=f"{rate:.1f}",
                    refresh=False,
                )
                bar.update(1)
                epoch, pos = divmod(step, steps_per_epoch)
                if pos == 0:
                    summary = _epoch_summary(record["epoch_stats"])
                    record["epoch_stats"] = _fresh_record()["epoch_stats"]
                    if val_ds is not None and (epoch % fc.eval_every == 0 or step == total):
                        ev = _evaluate_tree(state.tree, val_ds, eval_spec, fc.batch_size, threads)
                        entry = {"epoch": epoch, "step": step, **ev, **summary}
                        record["history"].append(entry)
                        say(_format_eval(entry))
                        if ev["top1"] > record["best_top1"]:
                            record["best_top1"], record["best_step"] = ev["top1"], step
                            best_params = Params(jax.device_get(state.tree), cfg, classes)
                            if export is not None:
                                exported = _export(best_params, export, entry)
                                record["export"] = str(exported) if exported else None
                if ckpts is not None and (step % save_every == 0 or step == total or step == stop_at):
                    save(step)
                    saved_at = step
                consistent = True
        except KeyboardInterrupt:
            if ckpts is not None:
                if consistent and _is_live(state) and saved_at != step:
                    save(step)
                    saved_at = step
                where = f"step {saved_at}" if saved_at is not None else "the start (nothing saved yet)"
                say(f"interrupted: rerunning resumes from {where} in {ckpt_dir}.")
            raise
        finally:
            bar.close()
            if pending is not None:
                pending.cancel()
            if ckpts is not None:
                ckpts.close()

    final = Params(state.tree, cfg, classes)
    if val_ds is None and export is not None and step == total:
        exported = _export(final, export, {"step": step, "epoch": fc.epochs})
        record["export"] = str(exported) if exported else None
    skipped = _skipped(train_ds, val_ds)
    if skipped:
        say(
            f"skipped {len(skipped)} unreadable clip(s): "
            + "; ".join(f"{k} ({v})" for k, v in skipped.items())
        )
    return FinetuneResult(
        params=final,
        best_params=best_params,
        best_top1=float(record["best_top1"]),
        best_step=int(record["best_step"]),
        history=list(record["history"]),
        steps=step,
        total_steps=total,
        resumed_from=resumed_from,
        skipped=skipped,
        export_path=Path(record["export"]) if record["export"] else None,
        clips_per_s=clips / max(time.perf_counter() - t0, 1e-9) if t0 is not None else 0.0,
    )


# --------------------------------------------------------------------------------------------------
# Command line: ``tldr-jax finetune``.
# --------------------------------------------------------------------------------------------------


def parse_r(text: str) -> RSpec:
    """``argparse`` type for merge schedules (see :func:`tldr_jax.schedule.parse_r`)."""
    try:
        return parse_r_text(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--override needs key=value; got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_finetune_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``finetune`` on an ``argparse`` sub-parsers object (calls :func:`finetune_main`)."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a video classifier on a labelled-video folder, with token merging active",
        description=(
            "Fine-tune MODEL (a tldr_jax checkpoint, or an architecture name for a random init) on "
            "TRAIN (one sub-folder per class with video files or .npy clips). The train state is saved "
            "in OUT/state (rerun the same command to resume) and the best model by validation top-1 is "
            "exported to OUT/best."
        ),
    )
    d = FinetuneConfig()
    p.add_argument("model", help="checkpoint folder (tldr_jax.load) or architecture name (random init)")
    p.add_argument("train", help="labelled-video folder: TRAIN/<class>/<clip>")
    p.add_argument(
        "--out", required=True, help="run folder (train state in OUT/state, best model in OUT/best)"
    )
    p.add_argument("--val", default=None, help="validation folder with the same class sub-folders")
    p.add_argument(
        "--val-fraction", type=float, default=None, help="without --val: held-out fraction of TRAIN"
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--layer-decay", type=float, default=d.layer_decay, help="layer-wise lr decay (1: off)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--clip-grad-norm", type=float, default=None)
    p.add_argument(
        "--train-r", type=parse_r, default=d.train_r, help="merge schedule in training: 8, 0.1, 8,4,2, preset"
    )
    p.add_argument(
        "--eval-r", type=parse_r, default=None, help="merge schedule in evaluation (default: --train-r)"
    )
    p.add_argument("--method", choices=METHODS, default=d.method)
    p.add_argument("--pool", choices=POOLS, default=d.pool)
    p.add_argument(
        "--dtype", choices=[x for x in DTYPES if x], default=None, help="compute dtype (mixed precision)"
    )
    p.add_argument("--remat", action="store_true", help="rematerialise blocks in the backward pass")
    p.add_argument("--linear-probe", action="store_true", help="train the head only")
    p.add_argument("--new-head", action="store_true", help="replace the head with one sized for the dataset")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="clip-decoding threads")
    p.add_argument("--save-every", type=int, default=None, help="save the train state every N steps")
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop (state saved) at this step; rerun to resume"
    )
    p.add_argument("--sampling", default=None, help="frame sampling override for video files")
    p.add_argument(
        "--override",
        type=_parse_override,
        action="append",
        default=[],
        help="architecture override for a random init, e.g. --override depth=2 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", default=None, help="also write the result summary to this JSON file")
    p.set_defaults(func=finetune_main)
    return p


def _load_model(spec: str, overrides: list[tuple[str, Any]]) -> Params:
    if Path(spec).exists():
        from tldr_jax import checkpoint

        if overrides:
            raise ValueError("--override only applies to a random init from an architecture name.")
        return checkpoint.load(spec)
    from tldr_jax.api import init

    cfg = get_config(spec, **dict(overrides))
    return init(0, cfg)


def finetune_main(args: argparse.Namespace) -> int:
    """Run ``tldr-jax finetune`` from parsed arguments; returns the exit status.

    The settings and the data folders are checked before the model is loaded or anything is written.
    """
    out = Path(args.out)
    fc = FinetuneConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        layer_decay=args.layer_decay,
        label_smoothing=args.label_smoothing,
        clip_grad_norm=args.clip_grad_norm,
        train_r=args.train_r,
        eval_r=args.eval_r,
        method=args.method,
        pool=args.pool,
        dtype=args.dtype,
        remat=args.remat,
        linear_probe=args.linear_probe,
        new_head=args.new_head,
        seed=args.seed,
        workers=args.workers,
        save_every=args.save_every,
        progress=not args.no_progress,
    )
    for flag, folder in (("TRAIN", args.train), ("--val", args.val)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder!r}: no such directory (one sub-folder per class).")
    params = _load_model(args.model, args.override)
    folder_kwargs = {"sampling": args.sampling} if args.sampling else {}
    result = finetune(
        params,
        args.train,
        args.val,
        config=fc,
        ckpt_dir=out / "state",
        export=out / "best",
        val_fraction=args.val_fraction,
        stop_at=args.stop_at,
        folder_kwargs=folder_kwargs,
        log=print,
    )
    summary = {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "resumed_from": result.resumed_from,
        "best_top1": result.best_top1,
        "best_step": result.best_step,
        "history": result.history,
        "skipped": result.skipped,
        "export": str(result.export_path) if result.export_path else None,
        "clips_per_s": result.clips_per_s,
        "classes": list(result.params.labels or ()),
    }
    if result.steps < result.total_steps:
        print(f"stopped at step {result.steps}/{result.total_steps}; rerun the same command to resume.")
    else:
        print(
            f"done: {result.steps} steps, best val top-1 {result.best_top1:.4f} at step {result.best_step}"
            f"; model exported to {summary['export']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0

"""The compiled train and evaluation steps, and the :class:`TrainState` they update.

Merging runs inside the step with the spec's schedule; the matching indices and the vid-TLDR saliency
carry no gradient (the official code computes them without one), gradients flow through the merged
values and the token sizes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tldr_jax.api import Params, apply
from tldr_jax.train.config import StepSpec
from tldr_jax.train.data import Batch
from tldr_jax.train.optim import frozen, lr_at, make_optimizer

Array = jax.Array

__all__ = ["TrainState", "device_batch", "eval_step", "train_step"]


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


def device_batch(batch: Batch) -> dict[str, Array]:
    """A :class:`~tldr_jax.train.data.Batch` as the dict the steps take."""
    return {"video": batch.video, "label": batch.label, "mask": batch.mask}


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
      spec: the static :class:`~tldr_jax.train.config.StepSpec`.

    Returns:
      ``(new state, metrics)`` with ``loss``, ``correct``, ``count``, ``lr`` and ``grad_norm``.
    """
    def loss_fn(tree):
        return _loss_terms(frozen(tree, spec.linear_probe), batch, spec, spec.label_smoothing)

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.tree)
    updates, opt_state = make_optimizer(spec).update(grads, state.opt_state, state.tree)
    lr = lr_at(state.step, *schedule)
    tree = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.tree, updates)
    return TrainState(state.step + 1, tree, opt_state), _metrics(loss, logits, batch, grads, lr)


def _metrics(loss: Array, logits: Array, batch: dict[str, Array], grads: Any, lr: Array) -> dict[str, Array]:
    """What a train step reports: loss, correct predictions, clip count, learning rate, gradient norm."""
    return {
        "loss": loss,
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"]),
        "count": jnp.sum(batch["mask"]),
        "lr": lr,
        "grad_norm": jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads))),
    }


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

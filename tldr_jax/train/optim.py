"""The optimiser: AdamW with a weight-decay mask, layer-wise learning-rate decay, warm-up + cosine.

The recipe follows VideoMAE fine-tuning: no weight decay on biases, norms, position embeddings and the
CLS token; layer-wise learning-rate decay (``patch_embed`` / ``pos_embed`` / ``cls_token`` are layer 0,
``blocks_i`` layer ``i + 1``, everything after the blocks layer ``depth + 1``; the scale of layer ``l``
is ``layer_decay ** (depth + 1 - l)``); a linear warm-up then cosine decay of the learning rate.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from tldr_jax.train.config import StepSpec

Array = jax.Array
EMBED_KEYS = ("patch_embed", "pos_embed", "cls_token")
NO_DECAY_KEYS = ("pos_embed", "cls_token")
HEAD_KEY = "head"

__all__ = [
    "decay_mask",
    "frozen",
    "layer_id",
    "layer_scales",
    "lr_at",
    "make_optimizer",
    "param_labels",
    "scale_by_layer",
]


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


def frozen(tree: Any, linear_probe: bool) -> Any:
    """``tree`` with ``stop_gradient`` on the parameters a linear probe does not train (unchanged
    otherwise)."""
    if not linear_probe:
        return tree
    labels = param_labels(tree, True)
    return jax.tree_util.tree_map(
        lambda x, lab: jax.lax.stop_gradient(x) if lab == "frozen" else x, tree, labels
    )

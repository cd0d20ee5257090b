"""The classifier head against a dataset's label set: keep, permute its columns, or replace it."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.api import Params
from tldr_jax.train.optim import HEAD_KEY

Array = jax.Array

__all__ = ["LabelMismatchError", "new_head_tree", "prepare_head"]


class LabelMismatchError(ValueError):
    """The model's classifier head does not fit the dataset's label set."""


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

"""tldr_jax.train.heads: the classifier head against a dataset's label set (keep, permute, replace)."""

from __future__ import annotations

import numpy as np
import pytest

import tldr_jax
from tldr_jax import train


def test_new_head_and_permuted_head(ft_params):
    fresh = train.prepare_head(ft_params, ("right", "left"), new_head=True)
    assert fresh.config.num_classes == 2 and fresh.labels == ("right", "left")
    assert fresh.tree["head"]["kernel"].shape == (32, 2)
    np.testing.assert_array_equal(
        fresh.tree["blocks_0"]["mlp"]["fc1"]["kernel"], ft_params.tree["blocks_0"]["mlp"]["fc1"]["kernel"]
    )
    # Same names in another order: the head's columns follow the dataset's order.
    named = ft_params.replace(labels=("a", "b", "c", "d"))
    perm = train.prepare_head(named, ("d", "c", "b", "a"))
    np.testing.assert_array_equal(perm.tree["head"]["kernel"], named.tree["head"]["kernel"][:, ::-1])
    tree = {k: v for k, v in ft_params.tree.items() if k != "head"}
    headless = tldr_jax.Params(tree, ft_params.config.replace(num_classes=0))
    with pytest.raises(train.LabelMismatchError, match="no classifier head"):
        train.prepare_head(headless, ("a", "b"))

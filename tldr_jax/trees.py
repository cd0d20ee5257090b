"""Parameter trees as flat ``{"a/b/c": leaf}`` maps: flattening, comparison against an expected set of
shapes, and per-array checksums (what checkpoints record and verify). Plain dicts and NumPy only."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TreeDiff", "compare_trees", "flatten_tree", "tree_checksums", "unflatten_tree"]


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> flat ``{"blocks_0/attn/qkv/kernel": leaf}`` (insertion order kept)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, prefix=f"{path}/"))
        else:
            flat[path] = value
    return flat


def unflatten_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_tree`."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@dataclasses.dataclass(frozen=True)
class TreeDiff:
    """Differences between a parameter tree and the tree a config expects.

    Attributes:
      missing: paths the config expects that the tree lacks.
      unexpected: paths in the tree that the config does not have.
      mismatched: ``(path, found shape, expected shape)`` for entries of the wrong shape.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    @property
    def ok(self) -> bool:
        """True when the trees agree."""
        return not (self.missing or self.unexpected or self.mismatched)

    def report(self, limit: int = 20) -> str:
        """Multi-line, big_vision-style report (at most ``limit`` entries per section)."""
        lines: list[str] = []

        def section(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {item}" for item in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")

        section("Missing (expected by the config, not in the tree)", list(self.missing))
        section("Unexpected (in the tree, not in the config)", list(self.unexpected))
        section(
            "Shape mismatches (found vs expected)",
            [f"{p}: {tuple(f)} vs {tuple(e)}" for p, f, e in self.mismatched],
        )
        return "\n".join(lines)


def compare_trees(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> TreeDiff:
    """Compare two flat ``{path: shape}`` maps."""
    missing = tuple(p for p in expected if p not in found)
    unexpected = tuple(p for p in found if p not in expected)
    mismatched = tuple(
        (p, tuple(found[p]), tuple(expected[p]))
        for p in expected
        if p in found and tuple(found[p]) != tuple(expected[p])
    )
    return TreeDiff(missing, unexpected, mismatched)


def tree_checksums(tree: Mapping[str, Any]) -> dict[str, str]:
    """Flat ``{path: crc32 hex}`` of every array's bytes (what :func:`save` records, :func:`load` checks)."""
    return {
        p: f"{zlib.crc32(np.ascontiguousarray(np.asarray(x)).tobytes()):08x}"
        for p, x in flatten_tree(tree).items()
    }


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating leaf cast to ``dtype`` (integer and bool leaves unchanged).

    The rule behind ``RetrievalModel.astype`` / ``QAModel.astype`` and :func:`tldr_jax.cast` for float32 /
    float64 (use ``float64`` inside ``jax.enable_x64(True)``).
    """

    def cast(a: Any) -> Any:
        return jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a

    return jax.tree_util.tree_map(cast, tree)

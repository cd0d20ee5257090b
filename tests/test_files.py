"""tldr_jax.files: a path holds the complete new file or what it held before."""

from __future__ import annotations

import pytest

from tldr_jax.files import atomic_output, write_text_atomic


def test_atomic_output_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "result.json"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".json" and tmp.name.startswith(".")
        tmp.write_text("new")
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["result.json"]

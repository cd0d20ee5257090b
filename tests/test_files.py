"""tldr_jax.files: a path holds the complete new file or what it held before."""

from __future__ import annotations

import pytest

from tldr_jax.files import atomic_output, cached_bytes, write_text_atomic


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


def test_cached_bytes_computes_once_and_serves_read_only_folders(tmp_path):
    calls = []

    def make() -> bytes:
        calls.append(1)
        return b"png-%d" % len(calls)

    path = tmp_path / "views" / "a.png"
    assert cached_bytes(path, make) == b"png-1" and path.read_bytes() == b"png-1"
    assert cached_bytes(path, make) == b"png-1" and len(calls) == 1  # read back, not recomputed
    assert cached_bytes(path, make, cache=False) == b"png-2" and path.read_bytes() == b"png-1"
    blocked = tmp_path / "file"  # a folder that cannot be created: served all the same, nothing written
    blocked.write_text("")
    assert cached_bytes(blocked / "sub" / "b.png", make) == b"png-3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "views"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]

"""The index on disk (:mod:`tldr_jax.search.index`): what it stores, and indexes written before still load.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import search_fixtures
from search_fixtures import N_CLIPS, QUERIES, R_SPEC, TEXT

from tldr_jax.search import build_index, load_index, search
from tldr_jax.search.index import CACHE_DIR, IDENTITY_KEYS

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
model = pytest.fixture(scope="module")(search_fixtures.model)
clips = pytest.fixture(scope="module")(search_fixtures.clips)
index = pytest.fixture(scope="module")(search_fixtures.index)
official = pytest.fixture(scope="module")(search_fixtures.official)


def test_index_stores_unit_features_and_metadata(index, official, clips):
    vid, _, _ = official
    assert len(index) == N_CLIPS and index.vectors.shape == (N_CLIPS, TEXT.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(index.vectors, vid.feat, atol=1e-6)
    np.testing.assert_allclose(index.tokens, vid.tokens, atol=1e-5)
    assert index.tokens.shape == (N_CLIPS, 4, 64)
    names = [e.video for e in index.entries]
    assert "sub/clip5.npy" in names and len(set(e.sha256 for e in index.entries)) == N_CLIPS
    s = index.settings
    assert s["r"] == list(R_SPEC) and s["tokens"] == [16, 10, 6, 4] and s["vid_tldr"] and s["num_frames"] == 4
    b = index.sizes()
    assert b["tokens"] == N_CLIPS * 4 * 64 * 4 and b["tokens_unmerged"] == N_CLIPS * 16 * 64 * 4


def test_an_index_without_trimming_keeps_the_identity_it_had_before_trimming_existed(
    model_dir, clips, index, tmp_path
):
    """Indexes written before ``trim_seconds`` existed record neither it in ``settings`` nor it in the
    cache's run settings: the same index and cache keys as today's untrimmed builds, so they still load,
    search and re-index without recomputing anything."""
    assert "trim_seconds" in IDENTITY_KEYS and "trim_seconds" not in index.settings
    run = json.loads((index.path / CACHE_DIR / "run.json").read_text())
    assert "trim_seconds" not in run["clip"]
    copy = tmp_path / "index"
    shutil.copytree(index.path, copy)
    again = build_index(model_dir, clips, copy, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)
    assert not again.build.computed and len(again.build.reused) == N_CLIPS
    reopened = load_index(copy)
    assert [h.row for h in search(reopened, QUERIES[0], k=3, max_length=16)] == [
        h.row for h in search(index, QUERIES[0], k=3, max_length=16)
    ]


"""Building an index (:mod:`tldr_jax.search.build`): the one clip path shared with the evaluation,
incremental re-indexing, shards, and bad input (one clear error, nothing half-written).
"""

from __future__ import annotations

import numpy as np
import pytest
import search_fixtures
from search_fixtures import N_CLIPS, QUERIES, R_SPEC, VISION, tiny_model, write_clips

from tldr_jax import retrieval as R
from tldr_jax.search import build_index, encode_shard, load_index, search
from tldr_jax.video import make_test_video

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
model = pytest.fixture(scope="module")(search_fixtures.model)
clips = pytest.fixture(scope="module")(search_fixtures.clips)
index = pytest.fixture(scope="module")(search_fixtures.index)


def test_approximate_index_finds_the_same_videos(model_dir, clips, index, tmp_path):
    approx = build_index(model_dir, clips, tmp_path / "hnsw", r=R_SPEC, batch_size=4, approximate=True,
                           progress=False)
    assert approx.approximate and approx.sizes()["hnsw"] > 0
    for query in QUERIES:
        exact = search(index, query, k=3, max_length=16)
        hits = search(approx, query, k=3, max_length=16)
        assert [h.row for h in hits] == [h.row for h in exact]


def test_reindexing_encodes_only_added_and_changed_files(model_dir, tmp_path):
    folder = tmp_path / "videos"
    paths = write_clips(folder, n=4)
    first = build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)
    assert len(first.build.computed) == 4 and not first.build.reused
    before = {e.video: np.array(first.vectors[i]) for i, e in enumerate(first.entries)}
    rng = np.random.default_rng(7)
    np.save(paths[1], rng.standard_normal((4, 32, 32, 3)).astype(np.float32))  # changed
    np.save(folder / "new.npy", rng.standard_normal((4, 32, 32, 3)).astype(np.float32))  # added
    paths[2].unlink()  # removed
    first.close()  # an open index keeps its generation on disk (tests/test_search_concurrency.py)
    second = build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)
    assert sorted(second.build.computed) == ["clip1.npy", "new.npy"]
    assert sorted(second.build.reused) == ["clip0.npy", "clip3.npy"]
    names = [e.video for e in second.entries]
    assert sorted(names) == ["clip0.npy", "clip1.npy", "new.npy", "sub/clip3.npy"]
    for i, e in enumerate(second.entries):
        if e.video in ("clip0.npy", "sub/clip3.npy"):
            np.testing.assert_array_equal(second.vectors[i], before[e.video])
        if e.video == "clip1.npy":
            assert not np.allclose(second.vectors[i], before[e.video])
    cached = sorted(p.name for p in (tmp_path / "idx" / "cache").glob("*.npz"))
    assert cached == sorted(e.result_name for e in second.entries)  # removed / stale results pruned
    assert len(list((tmp_path / "idx").glob("data-*"))) == 1


def test_shards_encoded_apart_make_the_same_index(model_dir, clips, index, tmp_path):
    """The multi-host route: each process encodes its share into the shared cache, then one build."""
    out = tmp_path / "idx"
    shares = [encode_shard(model_dir, clips, out, (i, 2), r=R_SPEC, batch_size=4, keep_tokens=True,
                             progress=False) for i in range(2)]
    assert sorted(shares[0].computed + shares[1].computed) == sorted(e.path.split("/")[-1]
                                                                    for e in index.entries)
    assert not (out / "index.json").exists()
    merged = build_index(model_dir, clips, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)
    assert not merged.build.computed and len(merged.build.reused) == N_CLIPS
    np.testing.assert_array_equal(merged.vectors, index.vectors)
    with pytest.raises(ValueError, match="shard must be"):
        encode_shard(model_dir, clips, out, (2, 2), r=R_SPEC)


def test_a_real_video_file_is_indexed(model_dir, tmp_path):
    from tldr_jax.video import make_test_video

    folder = tmp_path / "videos"
    folder.mkdir()
    make_test_video(folder / "a.mp4", num_frames=8, height=48, width=64)
    write_clips(folder, n=2)
    idx = build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)
    assert sorted(e.video for e in idx.entries) == ["a.mp4", "clip0.npy", "sub/clip1.npy"]
    assert {e.frames for e in idx.entries} == {4}


def test_unreadable_video_is_named_and_no_index_is_written(model_dir, tmp_path):
    folder = tmp_path / "videos"
    write_clips(folder, n=2)
    (folder / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(2048))
    out = tmp_path / "idx"
    with pytest.raises(ValueError, match="broken.mp4.*skip_unreadable"):
        build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, progress=False)
    assert not (out / "index.json").exists() and not list(out.glob("data-*"))
    with pytest.raises(FileNotFoundError, match="interrupted build"):
        load_index(out)
    idx = build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, skip_unreadable=True, progress=False)
    assert sorted(e.video for e in idx.entries) == ["clip0.npy", "sub/clip1.npy"]
    assert list(idx.build.failed) == ["broken.mp4"] and sorted(idx.build.reused) == ["clip0.npy", "clip1.npy"]


def test_index_of_another_model_or_schedule_is_refused(model_dir, clips, index, tmp_path):
    other = tmp_path / "other_model"
    R.save(tiny_model(seed=1), other)
    with pytest.raises(ValueError, match="another model or settings.*model:"):
        build_index(other, clips, index.path, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)
    with pytest.raises(ValueError, match="another model or settings.*r: \\[6, 4, 2\\] in the index"):
        build_index(model_dir, clips, index.path, r=(5, 4, 2), batch_size=4, keep_tokens=True,
                      progress=False)
    with pytest.raises(ValueError, match="another model or settings"):
        load_index(index.path, model=other)
    assert load_index(index.path).info == index.info  # the index is untouched


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("empty folder", ValueError, "no video or .npy files"),
        ("missing folder", FileNotFoundError, "does not exist"),
        ("vision-only model", ValueError, "not a retrieval model"),
        ("missing model", FileNotFoundError, "does not exist"),
        ("bad r", ValueError, "r"),
        ("bad engine", ValueError, "engine must be one of"),
        ("not an index", FileExistsError, "not a video index"),
    ],
)
def test_bad_build_arguments_write_nothing(model_dir, clips, tmp_path, case, error, match):
    import tldr_jax

    videos, model, out, kw = clips, model_dir, tmp_path / "idx", {}
    if case == "empty folder":
        videos = tmp_path / "empty"
        videos.mkdir()
    elif case == "missing folder":
        videos = tmp_path / "nowhere"
    elif case == "vision-only model":
        model = tmp_path / "vision"
        tldr_jax.save(tldr_jax.init(0, "umt_b16", **VISION), model)
    elif case == "missing model":
        model = tmp_path / "no_model"
    elif case == "bad r":
        kw["r"] = (1, 1, 1, 1)  # more entries than the model's 3 layers
    elif case == "bad engine":
        kw["engine"] = "spark"
    elif case == "not an index":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    kw.setdefault("r", R_SPEC)
    with pytest.raises(error, match=match):
        build_index(model, videos, out, progress=False, **kw)
    if case == "not an index":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not out.exists()


def test_evaluate_and_build_index_read_and_encode_files_alike_with_trimming(model_dir, model, tmp_path):
    """One clip path: the evaluation's video features and the index's stored vectors are the same for the
    same files and options, trimming included (DiDeMo's first-seconds reading)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for i, frames in enumerate((24, 32, 40)):  # 3 to 5 s at 8 fps; trimmed to the first 8 frames
        make_test_video(folder / f"v{i}.mp4", num_frames=frames, height=48, width=64, fps=8)
    files = sorted(folder.glob("*.mp4"))
    idx = build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, keep_tokens=True,
                      trim_seconds=1.0, progress=False)
    assert idx.settings["trim_seconds"] == 1.0
    vid = R.encode_videos(model, files, R_SPEC, batch_size=2, trim_seconds=1.0, progress=False)
    np.testing.assert_allclose(idx.vectors, vid.feat, atol=1e-6)
    np.testing.assert_allclose(idx.tokens, vid.tokens, atol=1e-5)
    whole = R.encode_videos(model, files, R_SPEC, batch_size=2, progress=False)
    assert not np.allclose(whole.feat, vid.feat, atol=1e-3)  # trimming changed what was read
    text = R.encode_texts(model, QUERIES, max_length=16)
    res = R.evaluate(model, files, QUERIES, txt2vid=[0, 1, 2], k=2, r=R_SPEC, max_length=16, batch_size=2,
                     trim_seconds=1.0)
    np.testing.assert_allclose(res.i2t_emb, idx.vectors @ np.asarray(text.feat).T, atol=1e-6)
    with pytest.raises(ValueError, match="trim_seconds: 1.0 in the index, null now"):
        build_index(model_dir, folder, idx.path, r=R_SPEC, batch_size=2, keep_tokens=True, progress=False)
    with pytest.raises(ValueError, match="trim_seconds must be a positive number"):
        build_index(model_dir, folder, tmp_path / "bad", r=R_SPEC, trim_seconds=0, progress=False)



def test_a_symlinked_subfolder_is_followed_and_a_loop_is_not(model_dir, tmp_path):
    folder = tmp_path / "videos"
    write_clips(folder, n=2)
    elsewhere = tmp_path / "elsewhere"
    write_clips(elsewhere, n=1, seed=5)
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    (folder / "loop").symlink_to(".", target_is_directory=True)
    (folder / "sub" / "up").symlink_to("..", target_is_directory=True)
    idx = build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)
    assert [e.video for e in idx.entries] == ["clip0.npy", "linked/sub/clip0.npy", "sub/clip1.npy"]
    assert idx.video_path(1) == folder / "linked" / "sub" / "clip0.npy"
    idx.close()


def test_the_build_summary_counts_in_words():
    from tldr_jax.search.build import BuildReport

    one = BuildReport(computed=["a"], seconds=2.0, encode_seconds=0.5)
    assert one.summary(1) == ("1 video (1 encoded, 0 reused, 0 skipped) in 2.0 s; 2.00 videos/s encoding "
                              "(engine local)")
    reused = BuildReport(reused=["a", "b"], seconds=0.3)
    assert reused.summary(2) == (
        "2 videos (0 encoded, 2 reused, 0 skipped) in 0.3 s; nothing to encode: all 2 reused (engine local)"
    )
    skipped = BuildReport(reused=["a"], failed={"b": "broken"}, seconds=0.3).summary(1)
    assert "videos/s" not in skipped and skipped.endswith("nothing to encode (engine local)")


def test_a_read_only_index_is_one_line_for_a_build_and_searchable(model_dir, clips, tmp_path, monkeypatch):
    """Writing needs the writer lock, the first file a build creates: a read-only index (or file system)
    fails there with one line; reading opens nothing for writing. (Simulated: the tests run as root,
    whom permissions do not stop.)"""
    import errno
    import os

    from tldr_jax.search import locks

    out = tmp_path / "idx"
    build_index(model_dir, clips, out, r=R_SPEC, batch_size=4, progress=False).close()
    real_open = os.open

    def read_only(path, flags, *args, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(locks.os, "open", read_only)
    with pytest.raises(PermissionError, match="cannot be written \\(Read-only file system\\); index into a "
                                              "writable path") as err:
        build_index(model_dir, clips, out, r=R_SPEC, batch_size=4, progress=False)
    assert "[Errno" not in str(err.value) and "\n" not in str(err.value)
    with load_index(out) as idx:
        assert len(search(idx, QUERIES[0], k=2, max_length=16)) == 2

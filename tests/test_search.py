"""Video search (issue 18): ``build_index`` / ``search`` and ``tldr-jax index`` / ``tldr-jax search``.

Results are checked against the official evaluation's functions (``encode_videos``, ``encode_texts``, the
ITC matrix, ``rerank``: parity-tested against the official code in ``test_retrieval.py``) on a tiny random
retrieval model: the same scores and the same order.
"""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from tldr_jax import retrieval as R
from tldr_jax.cli.main import main as cli_main
from tldr_jax.retrieval.evaluation import topk_rows

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(20)]
TEXT = R.TextConfig(vocab_size=len(WORDS), hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                    max_position_embeddings=16, fusion_layer=1, encoder_width=64, embed_dim=16)
VISION = dict(depth=3, embed_dim=64, num_heads=2, mlp_dim=128, img_size=32, num_frames=4)
R_SPEC = (6, 4, 2)  # 16 -> 10 -> 6 -> 4 tokens
QUERIES = ["w1 w2 w3", "w7", "w4 w4 w9 w12 w0"]
N_CLIPS = 6


def tiny_model(seed: int = 0) -> R.RetrievalModel:
    return R.init(seed, "umt_b16", text_config=TEXT, vocab=WORDS, **VISION)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "model"
    R.save(tiny_model(), path)
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    import tldr_jax

    return tldr_jax.load(model_dir)


def write_clips(folder, n=N_CLIPS, seed=0):
    """``n`` normalised float clips as ``.npy`` files, the last one in a sub-folder."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / ("sub" if i == n - 1 else "") / f"clip{i}.npy"
        np.save(p, rng.standard_normal((4, 32, 32, 3)).astype(np.float32))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clips(folder)
    return folder


@pytest.fixture(scope="module")
def index(model_dir, clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    return R.build_index(model_dir, clips, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)


@pytest.fixture(scope="module")
def official(model, index):
    """The official evaluation's steps on the same files: ITC matrix ``(n_videos, n_texts)`` and ITM."""
    files = [e.path for e in index.entries]
    vid = R.encode_videos(model, files, R_SPEC, batch_size=4, progress=False)
    text = R.encode_texts(model, [R.pre_text(q) for q in QUERIES], max_length=16)
    sim = np.asarray(jnp.asarray(vid.feat) @ jnp.asarray(text.feat).T)
    return vid, text, sim


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


@pytest.mark.parametrize("q", range(len(QUERIES)))
def test_itc_ranking_equals_the_official_one(index, official, q):
    _, _, sim = official
    hits = R.search(index, QUERIES[q], k=N_CLIPS, max_length=16)
    order = topk_rows(sim.T, N_CLIPS)[q]
    assert [h.row for h in hits] == list(order)
    np.testing.assert_allclose([h.score for h in hits], sim[order, q], atol=1e-6)
    assert all(h.itm is None and h.score == h.itc for h in hits)


@pytest.mark.parametrize("rerank", [3, N_CLIPS])
def test_itm_reranking_equals_the_official_one(index, official, model, rerank):
    vid, text, sim = official
    _, t2i, _ = R.rerank(model, sim, text, vid.tokens, k=rerank)
    for q, query in enumerate(QUERIES):
        hits = R.search(index, query, k=rerank, rerank=rerank, max_length=16)
        scored = t2i[q] != R.UNSCORED
        assert scored.sum() == rerank
        order = np.argsort(-t2i[q], kind="stable")[:rerank]
        assert [h.row for h in hits] == list(order)
        np.testing.assert_allclose([h.itm for h in hits], t2i[q, order], atol=1e-5)
        np.testing.assert_allclose([h.itc for h in hits], sim[order, q], atol=1e-6)


def test_approximate_index_finds_the_same_videos(model_dir, clips, index, tmp_path):
    approx = R.build_index(model_dir, clips, tmp_path / "hnsw", r=R_SPEC, batch_size=4, approximate=True,
                           progress=False)
    assert approx.approximate and approx.sizes()["hnsw"] > 0
    for query in QUERIES:
        exact = R.search(index, query, k=3, max_length=16)
        hits = R.search(approx, query, k=3, max_length=16)
        assert [h.row for h in hits] == [h.row for h in exact]


def test_reindexing_encodes_only_added_and_changed_files(model_dir, tmp_path):
    folder = tmp_path / "videos"
    paths = write_clips(folder, n=4)
    first = R.build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)
    assert len(first.build.computed) == 4 and not first.build.reused
    before = {e.video: np.array(first.vectors[i]) for i, e in enumerate(first.entries)}
    rng = np.random.default_rng(7)
    np.save(paths[1], rng.standard_normal((4, 32, 32, 3)).astype(np.float32))  # changed
    np.save(folder / "new.npy", rng.standard_normal((4, 32, 32, 3)).astype(np.float32))  # added
    paths[2].unlink()  # removed
    second = R.build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)
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
    shares = [R.encode_shard(model_dir, clips, out, (i, 2), r=R_SPEC, batch_size=4, keep_tokens=True,
                             progress=False) for i in range(2)]
    assert sorted(shares[0].computed + shares[1].computed) == sorted(e.path.split("/")[-1]
                                                                    for e in index.entries)
    assert not (out / "index.json").exists()
    merged = R.build_index(model_dir, clips, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)
    assert not merged.build.computed and len(merged.build.reused) == N_CLIPS
    np.testing.assert_array_equal(merged.vectors, index.vectors)
    with pytest.raises(ValueError, match="shard must be"):
        R.encode_shard(model_dir, clips, out, (2, 2), r=R_SPEC)


def test_a_real_video_file_is_indexed(model_dir, tmp_path):
    from tldr_jax.video import make_test_video

    folder = tmp_path / "videos"
    folder.mkdir()
    make_test_video(folder / "a.mp4", num_frames=8, height=48, width=64)
    write_clips(folder, n=2)
    idx = R.build_index(model_dir, folder, tmp_path / "idx", r=R_SPEC, batch_size=2, progress=False)
    assert sorted(e.video for e in idx.entries) == ["a.mp4", "clip0.npy", "sub/clip1.npy"]
    assert {e.frames for e in idx.entries} == {4}


# --------------------------------------------------------------------------------------------------
# Bad input: one clear error, nothing half-written.
# --------------------------------------------------------------------------------------------------


def test_unreadable_video_is_named_and_no_index_is_written(model_dir, tmp_path):
    folder = tmp_path / "videos"
    write_clips(folder, n=2)
    (folder / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(2048))
    out = tmp_path / "idx"
    with pytest.raises(ValueError, match="broken.mp4.*skip_unreadable"):
        R.build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, progress=False)
    assert not (out / "index.json").exists() and not list(out.glob("data-*"))
    with pytest.raises(FileNotFoundError, match="interrupted build"):
        R.load_index(out)
    idx = R.build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, skip_unreadable=True, progress=False)
    assert sorted(e.video for e in idx.entries) == ["clip0.npy", "sub/clip1.npy"]
    assert list(idx.build.failed) == ["broken.mp4"] and sorted(idx.build.reused) == ["clip0.npy", "clip1.npy"]


def test_index_of_another_model_or_schedule_is_refused(model_dir, clips, index, tmp_path):
    other = tmp_path / "other_model"
    R.save(tiny_model(seed=1), other)
    with pytest.raises(ValueError, match="another model or settings.*model:"):
        R.build_index(other, clips, index.path, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)
    with pytest.raises(ValueError, match="another model or settings.*r: \\[6, 4, 2\\] in the index"):
        R.build_index(model_dir, clips, index.path, r=(5, 4, 2), batch_size=4, keep_tokens=True,
                      progress=False)
    with pytest.raises(ValueError, match="another model or settings"):
        R.load_index(index.path, model=other)
    assert R.load_index(index.path).info == index.info  # the index is untouched


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
        R.build_index(model, videos, out, progress=False, **kw)
    if case == "not an index":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    else:
        assert not out.exists()


def test_bad_search_arguments(index, model_dir, clips, tmp_path):
    with pytest.raises(ValueError, match="k must be a positive int"):
        R.search(index, "w1", k=0)
    with pytest.raises(ValueError, match="rerank must be a positive int"):
        R.search(index, "w1", rerank=0)
    with pytest.raises(ValueError, match="exceeds rerank"):
        R.search(index, "w1", k=5, rerank=2)
    with pytest.raises(ValueError, match="non-empty text"):
        R.search(index, "  ")
    with pytest.raises(FileNotFoundError, match="no index at"):
        R.search(tmp_path / "missing", "w1")
    plain = R.build_index(model_dir, clips, tmp_path / "plain", r=R_SPEC, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="holds no video tokens.*keep_tokens=True"):
        R.search(plain, "w1", k=2, rerank=3)


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_index(model_dir, clips, tmp_path_factory):
    """An index without tokens (copied by the CLI cases that might change it)."""
    path = tmp_path_factory.mktemp("plain") / "index"
    R.build_index(model_dir, clips, path, r=R_SPEC, batch_size=4, progress=False)
    return path


def test_cli_index_then_search(model_dir, clips, index, tmp_path, capsys):
    out = tmp_path / "cli_idx"
    argv = ["index", str(clips), "--model", str(model_dir), "--out", str(out), "--r", "6,4,2",
            "--batch-size", "4", "--keep-tokens", "-q"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{N_CLIPS} videos ({N_CLIPS} encoded, 0 reused" in printed and "16 -> 4 tokens" in printed
    assert "tokens 6.0 KiB (24.0 KiB without merging)" in printed
    assert cli_main(argv[:-1]) == 0  # without -q: run_directory's progress bar on stderr
    again = capsys.readouterr()
    assert f"(0 encoded, {N_CLIPS} reused" in again.out and f"{N_CLIPS}/{N_CLIPS}" in again.err

    assert cli_main(["search", str(out), QUERIES[0], "--k", "3", "--rerank", "4", "--max-length", "16",
                     "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    expected = R.search(index, QUERIES[0], k=3, rerank=4, max_length=16)
    assert [h["video"] for h in hits] == [h.video for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.itm for h in expected], atol=1e-6)
    assert cli_main(["search", str(out), QUERIES[1], "--k", "2", "--max-length", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query") and len(lines) == 3 and "itc" in lines[1]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["search", "{missing}", "w1"], "no index at"),
        (["search", "{plain}", "w1", "--rerank", "3", "--k", "2"], "holds no video tokens"),
        (["search", "{plain}", "w1", "--k", "0"], "expected a positive integer"),
        (["search", "{plain}", "w1", "--k", "5", "--rerank", "2"], "exceeds --rerank"),
        (["index", "{empty}", "--model", "{model}", "--out", "{new}"], "no video or .npy files"),
        (["index", "{clips}", "--model", "{clips}", "--out", "{new}"], "not a retrieval model"),
        (["index", "{clips}", "--model", "{model}", "--out", "{plain}", "--r", "5,4,2"], "another model"),
        (["index", "{broken}", "--model", "{model}", "--out", "{new}", "--r", "6,4,2", "-q"], "--skip-bad"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(model_dir, clips, plain_index, tmp_path, capsys, argv, match):
    plain = tmp_path / "plain"
    shutil.copytree(plain_index, plain)
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.mp4").write_bytes(b"not a video" * 100)
    fill = {"broken": tmp_path / "broken",
            "missing": tmp_path / "missing", "plain": plain, "empty": tmp_path / "empty", "model": model_dir,
            "clips": clips, "new": tmp_path / "new"}
    code = cli_main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "new" / "index.json").exists()

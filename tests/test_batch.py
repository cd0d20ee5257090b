"""``tldr_jax.batch.run_directory``: per-file results, skipped corrupt inputs, resuming after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

import tldr_jax
from tldr_jax import batch
from tldr_jax.video import load_clip, preprocessing_for

TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, num_frames=4, img_size=32)
R = 3


@pytest.fixture(scope="module")
def params():
    return tldr_jax.init(0, "umt_b16", **TINY)


def _write_clips(root: Path, num: int = 5) -> list[str]:
    """``num`` .npy clips (uint8 pixels of another size and frame count, and normalised floats)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(num):
        if i % 2:
            clip = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
        else:
            clip = rng.integers(0, 256, size=(7, 40, 36, 3), dtype=np.uint8)
        name = f"clip{i}.npy"
        np.save(root / name, clip)
        names.append(name)
    return names


def _results(out_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    found = {}
    for p in sorted(out_dir.glob("*.npz")):
        with np.load(p) as data:
            found[p.name] = {k: data[k] for k in data.files if k != "meta"}
    return found


def test_results_match_apply_and_corrupt_file_is_skipped(params, tmp_path):
    in_dir = tmp_path / "in"
    names = _write_clips(in_dir)
    try:  # one real video file when PyAV (the decoder of tldr_jax.video) is installed
        from tldr_jax.video import make_test_video

        make_test_video(in_dir / "real.mp4", num_frames=8, height=48, width=64)
        names.append("real.mp4")
    except ImportError:
        pass
    (in_dir / "broken.mp4").write_bytes(np.random.default_rng(1).bytes(2048))
    (in_dir / "notes.txt").write_text("not a video")
    out_dir = tmp_path / "out"

    summary = batch.run_directory(
        params, in_dir, out_dir, r=R, batch_size=2, save_tokens=True, progress=False, workers=1
    )

    assert sorted(summary.processed) == names and not summary.skipped
    assert list(summary.failed) == ["broken.mp4"]
    errors = batch.read_jsonl(out_dir / batch.ERRORS)
    assert [e["name"] for e in errors] == ["broken.mp4"] and errors[0]["error"]
    manifest = batch.read_jsonl(out_dir / batch.MANIFEST)
    assert sorted(m["name"] for m in manifest) == names
    assert not list(out_dir.glob(".*.tmp*"))  # no temporary file left behind
    assert json.loads((out_dir / batch.RUN_FILE).read_text())["r"] == R

    prep = preprocessing_for(params)
    video = np.stack([load_clip(in_dir / n, prep) for n in names])
    ref = tldr_jax.apply(params, jax.numpy.asarray(video), R)
    got = _results(out_dir)
    # Batches of 2 here, one of 6 in the reference: rounding differs slightly (amplified by the saliency).
    for i, name in enumerate(names):
        res = got[f"{name}.npz"]
        np.testing.assert_allclose(res["pooled"], ref.pooled[i], atol=1e-4)
        np.testing.assert_allclose(res["tokens"], ref.tokens[i], atol=1e-4)
        assert res["size"].shape == ref.size[i].shape
        meta = batch.read_meta(out_dir / f"{name}.npz")
        assert meta["name"] == name and meta["tokens"][-1] == ref.tokens.shape[1]


def test_bfloat16_run_casts_once_and_matches_apply(params, tmp_path, monkeypatch):
    """dtype=bfloat16: the kernels are cast once for the run; results equal apply(dtype=...) per batch,
    and the run settings still fingerprint the float32 weights (a rerun resumes)."""
    casts = []
    monkeypatch.setattr(batch, "cast", lambda p, dt: casts.append(dt) or tldr_jax.cast(p, dt))
    in_dir = tmp_path / "in"
    names = _write_clips(in_dir, num=3)
    out_dir = tmp_path / "out"
    bf16 = jax.numpy.bfloat16
    summary = batch.run_directory(params, in_dir, out_dir, r=R, batch_size=2, dtype=bf16, progress=False)
    assert sorted(summary.processed) == names and casts == [bf16]  # two batches, one cast
    prep = preprocessing_for(params)
    video = np.stack([load_clip(in_dir / n, prep) for n in names])
    ref = tldr_jax.apply(params, jax.numpy.asarray(video), R, dtype=bf16)
    got = _results(out_dir)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(got[f"{name}.npz"]["pooled"], np.asarray(ref.pooled[i], np.float32))
    again = batch.run_directory(params, in_dir, out_dir, r=R, batch_size=2, dtype=bf16, progress=False)
    assert sorted(again.skipped) == names and not again.processed and casts == [bf16]


def test_interrupted_run_resumes_without_recomputing(params, tmp_path):
    in_dir = tmp_path / "in"
    names = _write_clips(in_dir)
    full = batch.run_directory(params, in_dir, tmp_path / "full", r=R, batch_size=2, progress=False)
    assert sorted(full.processed) == names

    out_dir = tmp_path / "out"
    calls: list[str] = []

    def crash_after_three(name: str, path: Path) -> None:
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        batch.run_directory(
            params, in_dir, out_dir, r=R, batch_size=2, progress=False, on_file_done=crash_after_three
        )
    done = sorted(p.name for p in out_dir.glob("*.npz"))
    assert done == [f"{n}.npz" for n in names[:3]]
    # Tear the manifest's last line, as a crash during the write would.
    manifest = out_dir / batch.MANIFEST
    manifest.write_text(manifest.read_text()[:-10])
    mtimes = {n: (out_dir / n).stat().st_mtime_ns for n in done}

    calls.clear()
    resumed = batch.run_directory(
        params, in_dir, out_dir, r=R, batch_size=2, progress=False, on_file_done=lambda n, p: calls.append(n)
    )
    assert sorted(resumed.skipped) == names[:3]
    assert sorted(resumed.processed) == sorted(calls) == names[3:]
    assert {n: (out_dir / n).stat().st_mtime_ns for n in done} == mtimes
    assert sorted({m["name"] for m in batch.read_jsonl(manifest)}) == names

    a, b = _results(tmp_path / "full"), _results(out_dir)
    assert a.keys() == b.keys()
    for name in a:
        for key in a[name]:
            np.testing.assert_allclose(a[name][key], b[name][key], atol=1e-6, err_msg=f"{name}/{key}")

    with pytest.raises(ValueError, match="other settings"):
        batch.run_directory(params, in_dir, out_dir, r=R + 1, batch_size=2, progress=False)


def test_complete_and_atomic_writes(tmp_path):
    path = batch.save_npz_atomic(tmp_path / "x.npz", {"pooled": np.ones(3), "meta": np.asarray('{"a": 1}')})
    assert batch.is_complete(path) and batch.read_meta(path) == {"a": 1}
    assert not batch.is_complete(path, run_key="other")
    path.write_bytes(path.read_bytes()[:20])  # truncated
    assert not batch.is_complete(path)
    assert not batch.is_complete(tmp_path / "missing.npz")

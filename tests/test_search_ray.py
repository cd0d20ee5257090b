"""``build_index(..., engine="ray")`` on a local Ray instance: a killed worker's files are redone, none
twice, and the index equals the single-process one. Skipped when Ray Data is not installed
(``pip install -e ".[ray]"``)."""

from __future__ import annotations

import collections

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # a local Ray cluster, a killed worker and a retry

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install -e '.[ray]')")

from search_fixtures import R_SPEC, tiny_model, write_clips  # noqa: E402

from tldr_jax import retrieval as R  # noqa: E402
from tldr_jax.batch import MANIFEST, read_jsonl  # noqa: E402
from tldr_jax.search import build_index, search  # noqa: E402
from tldr_jax.search.ray_engine import FAIL_ONCE_ENV  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_index_equals_single_process_and_survives_a_killed_worker(local_ray, tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    R.save(tiny_model(), model_dir)
    folder = tmp_path / "videos"
    write_clips(folder, n=4)
    marker = tmp_path / "killed.txt"
    monkeypatch.setenv(FAIL_ONCE_ENV, str(marker))
    on_ray = build_index(model_dir, folder, tmp_path / "ray_idx", r=R_SPEC, batch_size=2, keep_tokens=True,
                           engine="ray", actors=2, progress=False)
    assert marker.exists(), "the injected worker failure did not happen"
    monkeypatch.delenv(FAIL_ONCE_ENV)
    local = build_index(model_dir, folder, tmp_path / "local_idx", r=R_SPEC, batch_size=2, keep_tokens=True,
                          progress=False)

    # Every file encoded exactly once: one result written per file, the killed worker's finished file
    # reused (not redone) by the retried batch.
    log = read_jsonl(tmp_path / "ray_idx" / "cache" / MANIFEST)
    written = collections.Counter(rec["output"] for rec in log)
    assert sorted(written) == sorted(e.result_name for e in on_ray.entries)
    assert set(written.values()) == {1}
    assert sorted(on_ray.build.computed + on_ray.build.reused) == sorted(e.path.split("/")[-1]
                                                                         for e in on_ray.entries)
    assert len(on_ray.build.computed) == 3 and len(on_ray.build.reused) == 1  # the dead worker's file
    assert on_ray.build.engine == "ray"

    assert [e.video for e in on_ray.entries] == [e.video for e in local.entries]
    assert on_ray.settings == local.settings
    np.testing.assert_allclose(on_ray.vectors, local.vectors, atol=1e-6)
    np.testing.assert_allclose(on_ray.tokens, local.tokens, atol=1e-5)
    for query in ("w1 w2", "w7 w3"):
        a = search(on_ray, query, k=4, rerank=4, max_length=16)
        b = search(local, query, k=4, rerank=4, max_length=16)
        assert [h.video for h in a] == [h.video for h in b]


def test_cli_ray_build_with_q_is_quiet_and_leaves_no_session_folder(tmp_path):
    """``tldr-jax index --engine ray -q`` in its own process (its own Ray instance), with a worker killed
    on the way: stdout holds the three summary lines, stderr nothing, and Ray's session folder (a
    temporary folder of its own) is gone when the process has exited."""
    import glob
    import os
    import subprocess
    import sys
    import tempfile

    model_dir = tmp_path / "model"
    R.save(tiny_model(), model_dir)
    folder = tmp_path / "videos"
    write_clips(folder, n=3)
    pattern = os.path.join(tempfile.gettempdir(), "tldr-ray-*")
    before = set(glob.glob(pattern))
    env = {**os.environ, FAIL_ONCE_ENV: str(tmp_path / "killed.txt")}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(
        [sys.executable, "-m", "tldr_jax.cli", "index", str(folder), "--model", str(model_dir), "--out",
         str(tmp_path / "idx"), "--r", "6,4,2", "--batch-size", "1", "--engine", "ray", "-q"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "killed.txt").exists()
    lines = run.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["index", "model", "disk"], run.stdout
    assert "3 videos (3 encoded" in lines[0] or "3 videos (2 encoded, 1 reused" in lines[0], lines[0]
    assert run.stderr.strip() == "", run.stderr
    assert set(glob.glob(pattern)) == before


def test_ray_encodes_windows_as_the_single_process_build(local_ray, tmp_path):
    """An index of windows (moments) on Ray: the rows carry the windows, each actor reads its windows with
    the same clip path, and the index equals the single-process one."""
    from tldr_jax.video import write_video

    model_dir = tmp_path / "model"
    R.save(tiny_model(), model_dir)
    folder = tmp_path / "videos"
    folder.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, size=(12, 32, 32, 3), dtype=np.uint8)  # 6 s at 2 fps
    write_video(folder / "v.mp4", frames, fps=2)
    kw = dict(r=R_SPEC, batch_size=2, window=2, stride=1, progress=False)
    on_ray = build_index(model_dir, folder, tmp_path / "ray_idx", engine="ray", actors=1, **kw)
    local = build_index(model_dir, folder, tmp_path / "local_idx", **kw)
    assert [(e.start, e.end, e.frame_range) for e in on_ray.entries] == [
        (float(s), float(s + 2), (2 * s, 2 * s + 4)) for s in range(5)
    ]
    assert [e.to_json() for e in on_ray.entries] == [e.to_json() for e in local.entries]
    assert sorted(on_ray.build.computed) == sorted(f"v.mp4#t={s},{s + 2}" for s in range(5))
    np.testing.assert_allclose(on_ray.vectors, local.vectors, atol=1e-6)

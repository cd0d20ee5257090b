"""An index under concurrent use (:mod:`tldr_jax.search.locks`): readers never fail because of a
writer, a reader keeps the generation it opened, one writer at a time, and a build that changes nothing
writes nothing.

The writer re-indexes in a loop, adding and removing one clip (so every build writes a new generation,
encoding at most that clip), while readers search in a loop: threads opening the index by path or
with a model object, a long-lived reader that reloads when the index changes (a server), a reader
process and the CLI. Every search must succeed and return the ranking of one complete index.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import search_fixtures
from search_fixtures import R_SPEC, write_clips

from tldr_jax.search import build_index, load_index, search
from tldr_jax.search import index as index_mod
from tldr_jax.search.locks import WRITER_LOCK, IndexBusyError, writer_lock

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
model = pytest.fixture(scope="module")(search_fixtures.model)

QUERY = "w1 w2 w3"
K = 6  # every video: the two collections (5 or 6 clips) give different rankings
REBUILDS = 20


def _key(hits) -> tuple:
    return tuple((h.video, round(h.score, 5)) for h in hits)


def _build(model_dir, folder, out, **kw):
    return build_index(model_dir, folder, out, r=R_SPEC, batch_size=2, progress=False, workers=0, **kw)


def _toggle(folder: Path, extra: np.ndarray) -> None:
    """Add the extra clip, or remove it when it is there."""
    f = folder / "extra.npy"
    if f.exists():
        f.unlink()
    else:
        np.save(f, extra)


@pytest.fixture(scope="module")
def collection(model_dir, tmp_path_factory):
    """A clip folder, its index, and the two rankings the index can give (without / with the extra clip)."""
    folder = tmp_path_factory.mktemp("videos")
    write_clips(folder, n=5)
    extra = np.random.default_rng(11).standard_normal((4, 32, 32, 3)).astype(np.float32)
    out = tmp_path_factory.mktemp("conc") / "index"
    expected = set()
    for i in range(2):
        if i:
            _toggle(folder, extra)
        with _build(model_dir, folder, out) as idx:
            expected.add(_key(search(idx, QUERY, k=K, max_length=16)))
    assert len(expected) == 2  # the extra clip changes the ranking: a result names its generation
    return folder, out, extra, expected


def _writer(model_dir, folder, out, extra, rebuilds, stop=None):
    done = 0
    while done < rebuilds and not (stop is not None and stop.is_set()):
        _toggle(folder, extra)
        with _build(model_dir, folder, out) as idx:
            assert idx.build.written
        done += 1
    return done


def test_readers_never_fail_while_a_writer_reindexes(model_dir, model, collection):
    folder, out, extra, expected = collection
    stop = threading.Event()
    results: list[tuple] = []
    errors: list[str] = []

    def guarded(step):
        def loop():
            while not stop.is_set():
                try:
                    results.append(step())
                except Exception as err:  # noqa: BLE001 - every failure is the test's finding
                    errors.append(f"{type(err).__name__}: {err}")
        return loop

    def by_path():
        with load_index(out) as idx:
            return _key(search(idx, QUERY, k=K, max_length=16))

    def by_model():
        return _key(search(out, QUERY, k=K, max_length=16, model=model))

    server = {"index": load_index(out, model)}
    generations = {server["index"].generation}

    def long_lived():
        idx = server["index"]
        if idx.changed():
            server["index"] = idx.reload()
            idx.close()
            generations.add(server["index"].generation)
        return _key(search(server["index"], QUERY, k=K, max_length=16))

    threads = [threading.Thread(target=guarded(f)) for f in (by_path, by_model, long_lived)]
    for t in threads:
        t.start()
    try:
        done = _writer(model_dir, folder, out, extra, REBUILDS)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert done == REBUILDS
    assert not errors, errors[:3]
    assert len(results) >= 3 and set(results) <= expected
    assert len(generations) > 1  # the long-lived reader moved to newer generations
    server["index"].close()
    # Nothing reads the old generations any more: the next build leaves only its own.
    _writer(model_dir, folder, out, extra, 1)
    assert len(list(out.glob("data-*"))) == 1 and not list(out.glob(".data-*"))


def _reader_process(out: str, model_dir: str, stop_file: str, queue) -> None:
    """A reader in another process: load + search until ``stop_file`` exists."""
    results, errors = [], []
    while not os.path.exists(stop_file):
        try:
            with load_index(out, model_dir) as idx:
                results.append(_key(search(idx, QUERY, k=K, max_length=16)))
        except Exception as err:  # noqa: BLE001
            errors.append(f"{type(err).__name__}: {err}")
    queue.put((results, errors))


@pytest.mark.slow  # ~40 s on two cores: three CLI processes and a spawned reader start JAX
def test_cli_and_process_readers_never_fail_while_a_writer_reindexes(model_dir, collection, tmp_path):
    folder, out, extra, expected = collection
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    stop_file = tmp_path / "stop"
    proc = ctx.Process(target=_reader_process, args=(str(out), str(model_dir), str(stop_file), queue))
    proc.start()
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(model_dir, folder, out, extra, 4 * REBUILDS, stop))
    writer.start()
    cli = []
    try:
        for _ in range(3):
            cli.append(subprocess.run(
                [sys.executable, "-m", "tldr_jax.cli", "search", str(out), QUERY, "--k", str(K),
                 "--max-length", "16", "--json"], capture_output=True, text=True, timeout=300,
            ))
    finally:
        stop.set()
        writer.join(timeout=300)
        stop_file.touch()
        results, errors = queue.get(timeout=300)
        proc.join(timeout=60)
    for run in cli:
        assert run.returncode == 0, run.stderr
        hits = json.loads(run.stdout)
        assert tuple((h["video"], round(h["score"], 5)) for h in hits) in expected
    assert not errors, errors[:3]
    assert set(results) <= expected


def test_an_open_index_keeps_its_generation_and_a_build_that_changes_nothing_writes_nothing(
    model_dir, collection
):
    folder, out, extra, _ = collection
    with load_index(out) as first:
        before = _key(search(first, QUERY, k=K, max_length=16))
        stamp = index_mod.index_stamp(out)
        same = _build(model_dir, folder, out)
        assert not same.build.written and same.generation == first.generation
        assert index_mod.index_stamp(out) == stamp and not first.changed()  # index.json not rewritten
        same.close()
        _toggle(folder, extra)
        newer = _build(model_dir, folder, out)
        assert newer.build.written and newer.generation != first.generation
        assert first.changed() and (out / first.generation).is_dir()  # still read here: kept
        assert _key(search(first, QUERY, k=K, max_length=16)) == before
        reloaded = first.reload()
        assert reloaded.generation == newer.generation and not reloaded.changed()
        newer.close()
        reloaded.close()
    _toggle(folder, extra)
    _build(model_dir, folder, out).close()
    assert not (out / first.generation).exists()  # closed: removed by the next build


def test_a_generation_replaced_before_it_is_opened_is_skipped_for_the_new_one(
    model_dir, collection, monkeypatch
):
    """The reader's race: ``index.json`` read, then two builds replace and remove that generation
    before the reader locks it: the reader re-reads ``index.json`` and opens the new generation."""
    folder, out, extra, expected = collection
    real = index_mod.read_info
    calls = []

    def racing(path):
        info = real(path)
        if not calls:
            monkeypatch.setattr(index_mod, "read_info", real)
            for _ in range(2):
                _toggle(folder, extra)
                _build(model_dir, folder, out).close()
        calls.append(info["data"])
        return info

    monkeypatch.setattr(index_mod, "read_info", racing)
    with load_index(out) as idx:
        assert calls and idx.generation != calls[0] and not (out / calls[0]).exists()
        assert _key(search(idx, QUERY, k=K, max_length=16)) in expected


def test_a_second_writer_fails_naming_the_first_and_a_crashed_writer_blocks_nothing(model_dir, tmp_path):
    """Two builds of one index from two processes: the second fails at once with one line naming the
    first one's pid; when the first is killed (-9) the lock goes with it and the next build works."""
    folder = tmp_path / "videos"
    write_clips(folder, n=2)
    out = tmp_path / "index"
    started = tmp_path / "started"
    script = (
        "import sys, time, pathlib\n"
        "import tldr_jax.search.build as b\n"
        "real = b._encode\n"
        "def slow(job, s):\n"
        f"    pathlib.Path({str(started)!r}).touch()\n"
        "    time.sleep(600)\n"
        "b._encode = slow\n"
        f"b.build_index({str(model_dir)!r}, {str(folder)!r}, {str(out)!r}, r={R_SPEC!r}, progress=False)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not started.exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.2)
        second = subprocess.run(
            [sys.executable, "-m", "tldr_jax.cli", "index", str(folder), "--model", str(model_dir), "--out",
             str(out), "--r", "6,4,2", "-q"], capture_output=True, text=True, timeout=300,
        )
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1, second.stderr
        assert f"being written by pid {first.pid}" in lines[0] and "one writer at a time" in lines[0]
        assert not (out / "index.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    idx = _build(model_dir, folder, out)
    assert len(idx) == 2 and (out / WRITER_LOCK).read_text() == ""
    idx.close()


def test_shards_share_the_lock_and_a_build_waits_for_none_of_them(model_dir, tmp_path):
    folder = tmp_path / "videos"
    write_clips(folder, n=2)
    out = tmp_path / "index"
    with writer_lock(out, shared=True):  # a shard encoding on another host
        with pytest.raises(IndexBusyError, match="being written by another process"):
            _build(model_dir, folder, out)
        from tldr_jax.search import encode_shard

        rep = encode_shard(model_dir, folder, out, (0, 2), r=R_SPEC, batch_size=2, progress=False)
        assert len(rep.computed) == 1
    with writer_lock(out, what="test"):
        with pytest.raises(IndexBusyError, match=f"pid {os.getpid()}.*test since"):
            _build(model_dir, folder, out)
    idx = _build(model_dir, folder, out)
    assert len(idx.build.reused) == 1 and len(idx.build.computed) == 1
    idx.close()

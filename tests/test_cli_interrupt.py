"""Ctrl-C (SIGINT) and ``kill`` (SIGTERM) during ``tldr-jax index``, ``retrieve`` and ``run``: one line, exit
status 130 / 143 every time (never a crash on the way out), and a state the same command resumes from.

Each case starts the real console command in a subprocess and sends the signal once it shows progress,
at a few different delays (during compilation, during encoding). The repeated cases are ``slow``; one
SIGINT on ``index`` runs in the default suite.
"""

from __future__ import annotations

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

from tldr_jax import retrieval as R

#: Clips in the collection: enough that encoding outlasts the signal's delays.
N_CLIPS = 40
#: Seconds a command may take to show progress, and to leave once signalled.
START_S, LEAVE_S = 120.0, 60.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    R.save(search_fixtures.tiny_model(), root / "model")
    rng = np.random.default_rng(0)
    (root / "clips").mkdir()
    for i in range(N_CLIPS):
        np.save(root / "clips" / f"clip{i:02d}.npy", rng.standard_normal((4, 32, 32, 3)).astype(np.float32))
    return root


class _Reader:
    """Collects a pipe's text in a thread (the child never blocks on a full pipe)."""

    def __init__(self, stream):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for chunk in iter(lambda: stream.read(1), ""):
            self.text += chunk

    def join(self):
        self._thread.join(timeout=10)


def interrupt(argv: list[str], marker: str, sig: int, delay: float) -> tuple[int, str, str]:
    """Run ``python -m tldr_jax.cli ARGV``, send ``sig`` ``delay`` seconds after ``marker`` shows on
    stdout or stderr; return the exit status, stdout and stderr."""
    env = {**os.environ, "TLDR_JAX_COMPILE_CACHE": "0", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tldr_jax.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    out, err = _Reader(proc.stdout), _Reader(proc.stderr)
    deadline = time.monotonic() + START_S
    while marker not in out.text + err.text:
        assert proc.poll() is None, f"exited {proc.returncode} before {marker!r}: {err.text[-2000:]}"
        assert time.monotonic() < deadline, f"no {marker!r} after {START_S} s: {err.text[-2000:]}"
        time.sleep(0.02)
    time.sleep(delay)
    assert proc.poll() is None, f"finished before the signal (delay {delay} s too long): {out.text}"
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=LEAVE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running {LEAVE_S} s after {signal.Signals(sig).name}")
    out.join()
    err.join()
    return code, out.text, err.text


def assert_one_line(code: int, err: str, command: str, sig: int) -> None:
    name = signal.Signals(sig).name
    assert code == 128 + sig, (code, err[-3000:])
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip()]
    assert lines[-1].startswith(f"tldr-jax {command}: interrupted ({name})"), err[-3000:]
    assert sum("interrupted" in x for x in lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-3000:]


def no_partial_output(out: Path) -> None:
    """No temporary file left, and no index.json (the interrupted build never completed)."""
    left = [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".index")]
    assert not left, left
    assert not (out / "index.json").exists()


def index_argv(setup: Path, out: Path) -> list[str]:
    return ["index", str(setup / "clips"), "--model", str(setup / "model"), "--out", str(out),
            "--r", "6,4,2", "--batch-size", "2"]


def resume(setup: Path, out: Path) -> None:
    """The same command, uninterrupted, completes the index and reuses every cached video."""
    cached = len(list((out / "cache").glob("*.npz"))) if (out / "cache").exists() else 0
    done = subprocess.run([sys.executable, "-m", "tldr_jax.cli", *index_argv(setup, out), "-q"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TLDR_JAX_COMPILE_CACHE": "0"})
    assert done.returncode == 0, done.stderr
    assert f"{N_CLIPS} videos ({N_CLIPS - cached} encoded, {cached} reused" in done.stdout, done.stdout


def test_sigint_during_index_once(setup, tmp_path):
    out = tmp_path / "index"
    code, _, err = interrupt(index_argv(setup, out), "/40", signal.SIGINT, 0.3)
    assert_one_line(code, err, "index", signal.SIGINT)
    assert "the same command resumes" in err
    no_partial_output(out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,delays",
    # Each signal during compilation and during encoding (a later run resumes, so it has less left to encode).
    [(signal.SIGINT, (0.0, 0.5, 1.2)), (signal.SIGTERM, (0.2, 0.4))],
    ids=["SIGINT", "SIGTERM"],
)
def test_index_interrupted_repeatedly_then_resumed(setup, tmp_path, sig, delays):
    out = tmp_path / "index"
    for delay in delays:  # each run resumes what the one before it cached, and is interrupted again
        code, _, err = interrupt(index_argv(setup, out), "/40", sig, delay)
        assert_one_line(code, err, "index", sig)
        no_partial_output(out)
    resume(setup, out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_and_retrieve_interrupted(setup, tmp_path, sig):
    js = tmp_path / "run.json"
    code, _, err = interrupt(["run", "--tiny", "--repeat", "50", "--json", str(js)], "compiling", sig, 0.5)
    assert_one_line(code, err, "run", sig)
    assert not js.exists() and not list(tmp_path.iterdir())
    js = tmp_path / "retrieve.json"
    argv = ["retrieve", "--model", str(setup / "model"), "--videos", str(setup / "clips"), "--query", "w1 w2",
            "--r", "6,4,2", "--batch-size", "2", "--max-length", "16", "--json", str(js)]
    code, _, err = interrupt(argv, "model ", sig, 0.3)
    assert_one_line(code, err, "retrieve", sig)
    assert not list(tmp_path.iterdir())

"""The persistent compilation cache (:mod:`tldr_jax.compile_cache`): a second process loads what the first
compiled; the environment variable and the CLI flag turn it off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tldr_jax import compile_cache

ROOT = Path(__file__).resolve().parents[1]

# One tiny merging model compiled and run; prints the cache folder and the process's cache events.
CHILD = """
import json, jax
import tldr_jax
from tldr_jax.compile_cache import cache_events
folder = tldr_jax.enable_compile_cache()
params = tldr_jax.init(0, "umt_b16", depth=2, embed_dim=32, num_heads=2, mlp_dim=64, num_frames=4,
                       img_size=32)
video = jax.random.normal(jax.random.key(1), (1, 4, 32, 32, 3))
out = tldr_jax.apply(params, video, 3)
jax.block_until_ready(out.tokens)
print(json.dumps({"folder": None if folder is None else str(folder), **cache_events(),
                  "tokens": out.tokens.shape[1]}))
"""


def _child(env_value: str) -> dict:
    env = {**os.environ, compile_cache.ENV: env_value,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # over 30 s on two busy cores (compiles in child processes)
def test_second_process_loads_from_the_cache(tmp_path):
    folder = tmp_path / "xla"
    first = _child(str(folder))
    assert first["folder"] == str(folder.resolve())
    assert first["hits"] == 0 and first["misses"] > 0, first
    entries = sorted(p.name for p in folder.iterdir())
    assert any(name.startswith("jit__forward") for name in entries), entries
    second = _child(str(folder))
    assert second["hits"] > 0, second  # the model's program came from disk, not from XLA
    assert second["tokens"] == first["tokens"]
    assert sorted(p.name for p in folder.iterdir()) == entries  # nothing new had to be written


def test_env_zero_turns_it_off(tmp_path):
    out = _child("0")
    assert out["folder"] is None and out["hits"] == 0 and out["misses"] == 0, out


def test_folder_from_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.cache_from_env() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "here"))
    assert compile_cache.cache_from_env() == tmp_path / "here"
    monkeypatch.delenv(compile_cache.ENV)
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        import jaxlib

        version = f"jaxlib-{jaxlib.__version__}"  # one default folder per jaxlib version
        assert compile_cache.cache_from_env() == tmp_path / "cache" / "tldr_jax" / "xla" / version


def test_uncreatable_folder_names_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="TLDR_JAX_COMPILE_CACHE=0"):
        compile_cache.enable_compile_cache(blocker / "xla")


def test_cli_flag_turns_it_off(monkeypatch):
    import importlib

    cli = importlib.import_module("tldr_jax.cli.main")

    called = []
    monkeypatch.setattr(compile_cache, "enable_compile_cache", lambda *a: called.append(a))
    monkeypatch.setenv(compile_cache.ENV, "1")  # restored after the test
    args = cli.build_parser().parse_args(["--no-compile-cache", "run"])
    assert args.no_compile_cache
    cli._compile_cache(off=True)
    assert os.environ[compile_cache.ENV] == "0" and not called
    cli._compile_cache(off=False)
    assert called == [()]

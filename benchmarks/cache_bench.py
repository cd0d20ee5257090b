"""What the persistent compilation cache saves: a first and a second process compiling the same schedule.

``python -m benchmarks.cache_bench [--arch umt_b16] [--r msrvtt] [--dtype float32]`` starts two fresh
processes on one empty cache folder (a temporary one, not the user's). Each does what the first call of
``tldr_jax.apply`` does, timed step by step: tracing + lowering to StableHLO (never cached), compiling
(XLA in the first process; a load from the cache in the second) and the best of two runs. Prints one
JSON line: both processes and the ratios second / first of the compile step (the target: < 10 %) and
of the whole first-call overhead (tracing + compile).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.worker import add_worker_args, run_worker, serve

__all__ = ["main", "measure"]


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One process's compile of ``apply`` on random weights (run in a fresh worker process)."""
    import jax
    import jax.numpy as jnp

    import tldr_jax
    from tldr_jax import api
    from tldr_jax.compile_cache import cache_events

    folder = tldr_jax.enable_compile_cache(job["cache"])
    params = tldr_jax.init(0, job["arch"])
    cfg = params.config
    video = jax.random.normal(jax.random.key(0), (1, cfg.num_frames, cfg.img_size, cfg.img_size, 3))
    dtype = None if job["dtype"] == "float32" else jnp.dtype(job["dtype"])
    before = cache_events()
    tic = time.perf_counter()
    lowered = api.lower(params, video, job["r"], dtype=dtype)  # what apply's first call does first
    lower_s = time.perf_counter() - tic
    tic = time.perf_counter()
    compiled = lowered.compile()  # XLA, or a load from the persistent cache
    compile_s = time.perf_counter() - tic
    after = cache_events()
    steady = []
    for _ in range(2):
        tic = time.perf_counter()
        jax.block_until_ready(compiled(params.tree, video))
        steady.append(time.perf_counter() - tic)
    return {"cache": str(folder), "lower_s": lower_s, "compile_s": compile_s, "steady_s": min(steady),
            "cache_hits": after["hits"] - before["hits"], "cache_misses": after["misses"] - before["misses"]}


def _rspec(text: str) -> int | float | str:
    """``--r``: an int (every layer), a fraction, or a preset name."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Two processes, one cache folder; returns ``{"first": ..., "second": ..., "ratio": ...}``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="umt_b16")
    parser.add_argument("--r", default="msrvtt", type=_rspec, help="a preset name, an int or a fraction")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    add_worker_args(parser)
    args = parser.parse_args(argv)
    if serve(args, measure):
        return {}
    with tempfile.TemporaryDirectory() as cache:
        job = {"arch": args.arch, "r": args.r, "dtype": args.dtype, "cache": cache}
        first = run_worker("benchmarks.cache_bench", job)
        second = run_worker("benchmarks.cache_bench", job)
    result = {"job": {k: v for k, v in job.items() if k != "cache"}, "first": first, "second": second,
              "compile_ratio": second["compile_s"] / first["compile_s"],
              "overhead_ratio": (second["lower_s"] + second["compile_s"])
              / (first["lower_s"] + first["compile_s"])}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

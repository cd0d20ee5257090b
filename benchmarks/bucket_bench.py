"""What padding token counts to buckets costs on this machine (``AttentionTuning.token_bucket``, issue 31).

``python -m benchmarks.bucket_bench [--arch umt_b16] [--r msrvtt] [--frames 8] [--buckets 0 64 128]``
compiles and times :func:`tldr_jax.apply` on random weights once per bucket (0: no padding) and prints one
JSON line: per bucket the distinct token counts the blocks run on (each one a set of GEMM shapes), the
padded token-layers (the extra rows the GEMMs compute), the compile seconds and the median forward time.
Padding is meant for GPUs and TPUs, where each distinct GEMM shape is its own kernel choice (and
autotuning); on CPU this measures what the extra rows cost.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.machine import cpu_model
from benchmarks.timing import blocking, median_time

__all__ = ["main", "measure"]


def _padded(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket if bucket else n


def measure(arch: str, r: Any, frames: int, bucket: int, repeats: int) -> dict[str, Any]:
    """Compile and time one bucket (0: unpadded) on random weights."""
    import jax

    import tldr_jax
    from tldr_jax.api import lower
    from tldr_jax.options import AttentionTuning

    params = tldr_jax.init(0, arch, num_frames=frames)
    cfg = params.config
    video = jax.random.normal(jax.random.key(0), (1, frames, cfg.img_size, cfg.img_size, 3))
    tuning = AttentionTuning(token_bucket=bucket or None)
    start = time.perf_counter()
    compiled = lower(params, video, r, attention=tuning).compile()
    compile_s = time.perf_counter() - start
    sched = tldr_jax.apply(params, video, r, attention=tuning).schedule
    counts = [_padded(n, bucket) for n in sched.tokens[:-1]]
    seconds = median_time(blocking(lambda: compiled(params.tree, video)), repeats)
    return {
        "bucket": bucket,
        "distinct_counts": len(set(counts)),
        "counts": counts,
        "extra_token_layers": sum(counts) - sum(sched.tokens[:-1]),
        "compile_s": round(compile_s, 2),
        "forward_s": round(seconds, 3),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the arguments, measure every bucket and print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="umt_b16")
    ap.add_argument("--r", default="msrvtt")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--buckets", type=int, nargs="+", default=[0, 64, 128])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    from tldr_jax.schedule import parse_r

    rows = [measure(args.arch, parse_r(args.r), args.frames, b, args.repeats) for b in args.buckets]
    report = {"cpu": cpu_model(), "arch": args.arch, "r": args.r, "frames": args.frames, "rows": rows}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

"""``tldr-jax run``: classify or embed a clip with and without merging; GFLOPs and timings."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tldr_jax.cli import common
from tldr_jax.schedule import format_r

__all__ = ["add_parser", "cmd_run"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``run`` on an argparse sub-parsers object."""
    p = sub.add_parser("run", help="classify or embed a clip with and without merging; GFLOPs and time")
    common.add_model_args(p)
    p.add_argument("--repeat", type=common.positive_int, default=3, help="steady-state timing runs (median)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmerged run")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=cmd_run, interrupted_note="nothing was written")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    """``tldr-jax run``: classify / embed a clip with and without merging; FLOPs and timings.

    Every argument is checked (``--r`` against the model's config) before weights are loaded or the
    video decoded; results are printed as they come, progress goes to stderr.
    """
    from tldr_jax.api import apply, cast
    from tldr_jax.flops import gflops

    json_path = common.output_file(args.json, "--json")
    job = common.check_job(args)
    opts, source, cfg, r, sched, method = job.opts, job.source, job.cfg, job.r, job.sched, job.opts.method
    g_base = gflops(cfg, r=0, method=method)
    g_merged = gflops(cfg, r=r, method=method)
    clip, clip_desc, _ = common.read_clip(args, cfg)
    x = clip[None]
    loading = "random weights: initialising ..." if source.random_weights else "loading the weights ..."
    common.status(args, loading)
    params = source.load()
    if opts.dtype is not None:  # the kernels cast once, not inside every timed call (same values)
        params = cast(params, opts.dtype)
    common.say(f"model      {source.description}")
    common.say(
        f"           {cfg.name}, {params.num_params() / 1e6:.2f}M params, depth {cfg.depth}, "
        f"{cfg.num_tokens} tokens"
    )
    common.say(f"merging    {method}, r={format_r(r)}: {sched}")
    change = 100 * (g_merged / g_base - 1)
    common.say(f"GFLOPs     baseline {g_base:.6g} | merged {g_merged:.6g} ({change:+.1f}%)")
    result: dict[str, Any] = {
        "video": clip_desc, "model": source.description, "random_weights": source.random_weights,
        "arch": cfg.name, "num_params": params.num_params(), "method": method, "r": format_r(r),
        "options": {k: str(v) for k, v in opts.non_default().items()},
        "schedule_r": list(sched.r), "tokens": list(sched.tokens),
        "gflops_baseline": g_base, "gflops_merged": g_merged,
    }

    common.status(args, "compiling and running with merging (the first call compiles) ...")
    out, compile_m, steady_m = _timed(lambda: apply(params, x, r, **opts.kwargs()), args.repeat)
    result["time_merged"] = _timing(compile_m, steady_m)
    common.say(f"time       merged: {_timing_text(compile_m, steady_m)} (median of {args.repeat})")
    base = None
    if not args.no_baseline:
        common.status(args, "compiling and running without merging ...")
        base, compile_b, steady_b = _timed(lambda: apply(params, x, 0, **opts.kwargs()), args.repeat)
        result["time_baseline"] = _timing(compile_b, steady_b)
        common.say(f"           baseline: {_timing_text(compile_b, steady_b)}")
    for line in _describe_output(out, base, params, result):
        common.say(line)
    if source.random_weights:
        common.say("note       random weights: the numbers above only show the pipeline works.")
    if json_path is not None:
        from tldr_jax.files import write_text_atomic

        write_text_atomic(json_path, json.dumps(result, indent=2))
    return 0


def _describe_output(out: Any, base: Any, params: Any, result: dict[str, Any]) -> list[str]:
    lines = []
    if out.logits is not None:
        top = _topk(np.asarray(out.logits[0]), params.labels)
        result["top5_merged"] = top
        lines.append("top-5      (merged)" + ("" if base is None else "                      | (no merging)"))
        top_b = _topk(np.asarray(base.logits[0]), params.labels) if base is not None else None
        if top_b is not None:
            result["top5_baseline"] = top_b
        for i, (name, p) in enumerate(top):
            row = f"  {i + 1}. {name[:28]:<28} {p:6.3f}"
            if top_b is not None:
                row += f" | {top_b[i][0][:28]:<28} {top_b[i][1]:6.3f}"
            lines.append("           " + row.strip())
    else:
        kind = "embedding" if out.embedding is not None else "pooled"
        vec = np.asarray((out.embedding if out.embedding is not None else out.pooled)[0], np.float64)
        result[f"{kind}_norm"] = float(np.linalg.norm(vec))
        result[f"{kind}_first"] = vec[:4].tolist()
        first = np.round(vec[:4], 4).tolist()
        lines.append(f"{kind:<10} dim {vec.size}, L2 norm {np.linalg.norm(vec):.4f}, first {first}")
        if base is not None:
            ref = np.asarray((base.embedding if base.embedding is not None else base.pooled)[0], np.float64)
            cos = float(vec @ ref / max(np.linalg.norm(vec) * np.linalg.norm(ref), 1e-12))
            result["cosine_to_baseline"] = cos
            lines.append(f"           cosine similarity to the unmerged {kind}: {cos:.4f}")
    return lines


def _timed(fn: Any, repeat: int) -> tuple[Any, float, float]:
    """Run ``fn`` once (compile + run), then ``repeat`` times; return output, first time, median time."""
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, first, float(np.median(times))


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _timing(first: float, steady: float) -> dict[str, float]:
    """First call, steady state, and the compile time estimated as their difference (seconds)."""
    return {"first_call_s": first, "steady_s": steady, "compile_s": max(first - steady, 0.0)}


def _timing_text(first: float, steady: float) -> str:
    t = _timing(first, steady)
    return (
        f"first call {_fmt_time(first)} (compile ~{_fmt_time(t['compile_s'])}), "
        f"steady {_fmt_time(steady)}/clip"
    )


def _topk(logits: np.ndarray, labels: Sequence[str] | None, k: int = 5) -> list[tuple[str, float]]:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    idx = np.argsort(-p)[:k]
    names = [labels[i] if labels and i < len(labels) else f"class {i}" for i in idx]
    return [(n, float(p[i])) for n, i in zip(names, idx)]

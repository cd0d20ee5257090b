"""float32 against bfloat16, tldr_jax against the official vid-TLDR code, side by side in one process.

``python -m benchmarks.precision_bench`` (``--quick``: a tiny model, for the test suite) times, on
UMT-B/16 12x224^2 with the MSRVTT schedule at batch 1 and the same random weights:

* ``tldr_jax f32``: ``tldr_jax.apply`` (float32, the default);
* ``tldr_jax bf16``: ``tldr_jax.apply(dtype=jnp.bfloat16)`` (bfloat16 products, float32 accumulation);
* ``tldr_jax bf16, weights cast once``: ``apply`` on ``tldr_jax.cast(params, jnp.bfloat16)`` (no cast
  of the kernels inside every call);
* ``tldr_jax f32 / bf16, key-blocked``: the same with ``attention=AttentionTuning(key_block=512)``
  (online softmax);
* ``official f32``: the PyTorch statement of the official forward (``benchmarks/torch_reference.py``);
* ``official bf16``: the same under ``torch.autocast("cpu", torch.bfloat16)``.

The variants are timed round-robin (A B C D A B C D ...) and each is reported as the median of its
rounds, with the load average. Also measured: a GEMM probe (2352 x 768 x 3072, the UMT-B fc1 shape)
per precision in JAX and PyTorch (the machine's attainable GEMM peak), the model's achieved FLOP/s
(``tldr_jax.flops``, 2 FLOP per multiply-add) against it, and, for tldr_jax, where the time goes
(GEMMs, attention core split into ``QK^T`` / softmax / ``PV``, LayerNorm, GELU, the merge), each piece
timed on its own at every layer's token count and summed over the schedule; and the ceiling
(:mod:`benchmarks.ceiling`): the least time any program computing this forward could take at this
machine's best measured rates, hence the largest speed-up over the official code this machine allows. Writes
``benchmarks/results/precision{,_quick}.{json,md}``. Runs with glibc's malloc keeping freed memory
(``--malloc tuned``, the default: :func:`benchmarks.machine.tune_malloc`); without it the official
PyTorch forward pays page faults on every large tensor and its times move with whatever else ran in
the process (docs/guides/scale_precision.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.machine import basic_info, code_version, tune_malloc
from benchmarks.report import RESULTS_DIR

__all__ = ["ceilings", "gemm_calls", "gemm_peaks", "gemm_rates", "main", "profile_split"]

GEMM_SHAPE = (2352, 768, 3072)


def _median_round_robin(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, Any]]:
    """Each call once per round, ``rounds`` rounds after one warm-up call each; medians and load."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    loads = []
    for _ in range(rounds):
        for name, call in calls.items():
            tic = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - tic)
        loads.append(os.getloadavg()[0])
    return {name: {"median_s": statistics.median(t), "times_s": t, "loadavg_1m": loads}
            for name, t in times.items()}


def gemm_calls(shape: tuple[int, int, int] = GEMM_SHAPE, repeat: int = 3) -> dict[str, Callable[[], Any]]:
    """Blocking calls of ``repeat`` ``(M, K) @ (K, N)`` products per precision, JAX and PyTorch."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    m, k, n = shape
    rng = np.random.default_rng(0)
    a32, b32 = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb = jnp.asarray(a32), jnp.asarray(b32)
    ja16, jb16 = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
    ta16, tb16 = ta.to(torch.bfloat16), tb.to(torch.bfloat16)
    f32 = jax.jit(lambda a, b: jnp.dot(a, b, precision="highest"))
    acc = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    low = jax.jit(lambda a, b: jnp.dot(a, b))
    calls = {
        "jax f32": lambda: f32(ja, jb).block_until_ready(),
        "jax bf16 (f32 accumulation)": lambda: acc(ja16, jb16).block_until_ready(),
        "jax bf16 (bf16 result)": lambda: low(ja16, jb16).block_until_ready(),
        "torch f32": lambda: torch.mm(ta, tb),
        "torch bf16": lambda: torch.mm(ta16, tb16),
    }
    return {"gemm " + k_: _repeat(c, repeat) for k_, c in calls.items()}


def gemm_rates(timing: dict[str, dict[str, Any]], shape: tuple[int, int, int], repeat: int = 3) -> dict:
    """The GEMM rows of a round-robin ``timing`` as ``{name: {median_s, best_s, gflops, best_gflops}}``."""
    flop = 2 * shape[0] * shape[1] * shape[2]
    out = {}
    for name, row in timing.items():
        if name.startswith("gemm "):
            med, best = row["median_s"] / repeat, min(row["times_s"]) / repeat
            out[name[5:]] = {"median_s": med, "best_s": best, "gflops": flop / med / 1e9,
                             "best_gflops": flop / best / 1e9}
    return out


def gemm_peaks(gemm: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"f32": GFLOP/s, "bf16": GFLOP/s}``: the best GEMM of :func:`gemm_rates` per precision, either
    framework."""
    best = {name: row["best_gflops"] for name, row in gemm.items()}
    return {"f32": max(best["jax f32"], best["torch f32"]),
            "bf16": max(best["jax bf16 (f32 accumulation)"], best["torch bf16"])}


def ceilings(params: Any, r: Any, gemm: dict[str, dict[str, float]], repeats: int = 5) -> dict[str, Any]:
    """Per precision, :func:`benchmarks.ceiling.lower_bound` of the forward's time at this machine's best
    measured rates (GEMM peak from ``gemm``, attention products and ``exp`` probed now)."""
    from benchmarks.ceiling import lower_bound, probe_rates
    from tldr_jax.flops import flops_breakdown

    cfg = params.config
    breakdown = flops_breakdown(params, r=r)
    tokens = [layer["tokens_in"] for layer in breakdown["layers"]]
    out = {}
    for precision, peak in gemm_peaks(gemm).items():
        rates = probe_rates(tokens, cfg.num_heads, cfg.head_dim, precision, repeats=repeats)
        rates["gemm"] = peak
        out[precision] = {"bound": lower_bound(breakdown, cfg.num_heads, rates), "rates": rates}
    return out


def _repeat(fn: Callable[[], Any], times: int) -> Callable[[], Any]:
    def call() -> Any:
        for _ in range(times):
            fn()

    return call


def profile_split(params: Any, video: Any, r: Any, dtype: Any, repeats: int = 3) -> dict[str, float]:
    """Seconds per kind of work in one forward of ``tldr_jax.apply(params, video, r, dtype=dtype)``.

    Every piece of a block is jitted on its own (the model's own layer code, :mod:`tldr_jax.models`)
    and timed at the token count of each layer; the sums over the schedule are returned:
    ``gemm_qkv_proj``, ``gemm_mlp`` (fc1 + fc2), ``attn_qk`` (``QK^T``), ``softmax`` (the softmaxes and
    the sharpness of merging layers), ``attn_pv``, ``layernorm``, ``gelu``, ``merge`` (matching and
    merging, saliency included), and ``sum``; pieces run apart lose XLA's fusions, so ``sum`` exceeds
    the whole forward.
    """
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    import tldr_jax
    from tldr_jax.api import build
    from tldr_jax.merge import merge_step
    from tldr_jax.models.layers import linear
    from tldr_jax.numerics import dot_kwargs
    from tldr_jax.saliency import sharpness_from_mean

    cfg = params.config
    sched = tldr_jax.schedule(params, r)
    tree = tldr_jax.cast(params, dtype).tree if dtype is not None else params.tree
    low = dtype if dtype is not None else jnp.float32
    heads, dh = cfg.num_heads, cfg.head_dim
    totals = dict.fromkeys(("gemm_qkv_proj", "gemm_mlp", "attn_qk", "softmax", "attn_pv", "layernorm",
                            "gelu", "merge"), 0.0)
    cache: dict[Any, dict[str, float]] = {}
    key = jax.random.key(0)

    def timed(fn: Callable[..., Any], *args: Any) -> float:
        compiled = jax.jit(fn)
        jax.block_until_ready(compiled(*args))
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - tic)
        return statistics.median(times)

    def blk(tree_: Any) -> Any:
        return build(tldr_jax.Params(tree_, cfg)).blocks_0

    for layer, (n, rr) in enumerate(zip(sched.tokens[:-1], sched.r)):
        has_size = any(sched.r[:layer])
        kind = (n, rr, has_size)
        if kind not in cache:
            x = jax.random.normal(jax.random.fold_in(key, layer), (1, n, cfg.embed_dim), jnp.float32)
            qkv_in = jax.random.normal(key, (1, heads, n, dh), jnp.float32).astype(low)
            logits = jax.random.normal(key, (1, heads, n, n), jnp.float32)
            mlp_h = jax.random.normal(key, (1, n, cfg.mlp_dim), jnp.float32)
            probs = jax.nn.softmax(logits, axis=-1).astype(low)
            row = {
                "layernorm": 2 * timed(lambda t, x: blk(t).norm1(x), tree, x),
                "gemm_qkv_proj": timed(lambda t, x: linear(blk(t).attn.qkv, x), tree, x)
                + timed(lambda t, x: linear(blk(t).attn.proj, x), tree, x),
                "gemm_mlp": timed(lambda t, x: linear(blk(t).mlp.fc1, x), tree, x)
                + timed(lambda t, h: linear(blk(t).mlp.fc2, h.astype(low)), tree, mlp_h),
                "gelu": timed(lambda h: jax.nn.gelu(h, approximate=cfg.gelu_approximate).astype(low), mlp_h),
                "attn_qk": timed(lambda q, k: jnp.einsum("bhnd,bhmd->bhnm", q, k, **dot_kwargs(low)),
                                 qkv_in, qkv_in),
                "attn_pv": timed(lambda p, v: jnp.einsum("bhnm,bhmd->bhnd", p, v, **dot_kwargs(low)),
                                 probs, qkv_in),
            }
            softmaxes = 2 if (rr or has_size) else 1  # a pre-bias and a biased (or barrier) softmax
            row["softmax"] = softmaxes * timed(lambda s: jax.nn.softmax(s, axis=-1).astype(low), logits)
            if rr:
                row["softmax"] += timed(lambda s: sharpness_from_mean(jnp.mean(jax.nn.softmax(s, -1), 1)),
                                        logits)
                sharp = jax.random.normal(key, (1, n), jnp.float32)
                size = jnp.ones((1, n, 1), jnp.float32) if has_size else None
                step = functools.partial(merge_step, r=rr)
                if size is None:
                    row["merge"] = timed(lambda x, s, step=step: step(x, sharpness=s), x, sharp)
                else:
                    row["merge"] = timed(lambda x, s, z, step=step: step(x, sharpness=s, size=z),
                                         x, sharp, size)
            cache[kind] = row
        for name, seconds in cache[kind].items():
            totals[name] += seconds
    totals["sum"] = float(np.sum([v for k_, v in totals.items()]))
    return totals


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run everything and write ``benchmarks/results/precision{,_quick}.{json,md}``; return the results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.precision_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny UMT (for the test suite), 2 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 3; quick 2)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-piece profile")
    parser.add_argument("--out", default=None, help="output stem (default results/precision[_quick])")
    parser.add_argument("--malloc", default="tuned", choices=("tuned", "default"),
                        help="tuned (default): keep freed memory in the process (machine.tune_malloc), as "
                        "a caching allocator would; default: glibc as it comes (PyTorch then pays page "
                        "faults on every large tensor)")
    args = parser.parse_args(argv)
    malloc_tuned = args.malloc == "tuned" and tune_malloc()
    import jax
    import jax.numpy as jnp
    import torch

    import tldr_jax
    from benchmarks.torch_reference import from_params, to_torch_video
    from tldr_jax import api
    from tldr_jax.compile_cache import cache_events

    tldr_jax.enable_compile_cache()
    torch.set_num_threads(os.cpu_count() or 1)
    rounds = args.rounds or (2 if args.quick else 3)
    tiny = dict(depth=2, embed_dim=64, num_heads=2, mlp_dim=128, num_frames=4, img_size=32)
    over = tiny if args.quick else {}
    r = (4, 4) if args.quick else "msrvtt"
    params = tldr_jax.init(0, "umt_b16", **over)
    cfg = params.config
    video = jax.random.normal(jax.random.key(1), (1, cfg.num_frames, cfg.img_size, cfg.img_size, 3))
    sched = tldr_jax.schedule(params, r)
    macs = tldr_jax.flops(params, r=r)

    compiled: dict[str, Any] = {}
    compile_info: dict[str, Any] = {}
    cast_once = tldr_jax.cast(params, jnp.bfloat16)
    trees = {"tldr_jax bf16, weights cast once": cast_once.tree}
    for name, dtype, block in (("tldr_jax f32", None, None), ("tldr_jax bf16", jnp.bfloat16, None),
                               ("tldr_jax bf16, weights cast once", jnp.bfloat16, None),
                               ("tldr_jax f32, key-blocked", None, 512),
                               ("tldr_jax bf16, key-blocked", jnp.bfloat16, 512)):
        weights = cast_once if name in trees else params
        attention = tldr_jax.AttentionTuning(key_block=block)  # part of apply's jit cache key
        hits = cache_events()["hits"]
        tic = time.perf_counter()
        compiled[name] = api.lower(weights, video, r, dtype=dtype, attention=attention).compile()
        compile_info[name] = {"compile_s": time.perf_counter() - tic,
                              "compile_cache_hit": cache_events()["hits"] > hits}
    ref = from_params(params)
    tvideo = to_torch_video(video)
    counts = list(sched.r)

    def official(autocast: bool) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return ref(tvideo, counts)

        return call

    def timed_call(compiled_fn: Any, tree: Any) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(compiled_fn(tree, video))

    calls: dict[str, Callable[[], Any]] = {
        name: timed_call(c, trees.get(name, params.tree)) for name, c in compiled.items()
    }
    calls["official f32"] = official(False)
    calls["official bf16 (autocast)"] = official(True)
    gemm_shape = (256, 64, 128) if args.quick else GEMM_SHAPE
    calls.update(gemm_calls(gemm_shape))  # in the same rounds: the same load as the models
    timing = _median_round_robin(calls, rounds)
    gemm = gemm_rates(timing, gemm_shape)
    timing = {name: row for name, row in timing.items() if not name.startswith("gemm ")}
    for name, row in timing.items():
        row["gflops_per_s"] = 2 * macs / row["median_s"] / 1e9
        row["best_gflops_per_s"] = 2 * macs / min(row["times_s"]) / 1e9
        row.update(compile_info.get(name, {}))
    ceiling = ceilings(params, r, gemm)
    profile = {}
    if not args.no_profile:
        profile = {"f32": profile_split(params, video, r, None),
                   "bf16": profile_split(params, video, r, jnp.bfloat16)}
    result = {
        "machine": basic_info(), "code": code_version(), "jax": jax.__version__, "torch": torch.__version__,
        "model": "umt_b16" + (" (tiny)" if args.quick else ""), "schedule": str(r),
        "malloc": "tuned" if malloc_tuned else "default",
        "tokens": list(sched.tokens),
        "gmacs": macs / 1e9, "rounds": rounds, "timing": timing, "gemm": gemm, "gemm_shape": gemm_shape,
        "profile": profile, "ceiling": ceiling,
        "loadavg_end": os.getloadavg(),
    }
    stem = args.out or str(RESULTS_DIR / ("precision_quick" if args.quick else "precision"))
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(report(result))
    print(report(result))
    return result


def report(result: dict[str, Any]) -> str:
    """The markdown tables of a :func:`main` result."""
    t = result["timing"]
    g = result["gemm"]
    peak = gemm_peaks(g)
    m = result["machine"]
    lines = [
        f"# float32 / bfloat16: {result['model']}, schedule {result['schedule']}, batch 1",
        "",
        f"{m.get('cpu')}, {m.get('cores') or m.get('cpu_count')} cores; jax {result['jax']}, "
        f"torch {result['torch']}; code {result['code'].get('git_head')}"
        f"{' (dirty)' if result['code'].get('tldr_jax_dirty') else ''}; {result['gmacs']:.1f} GMACs; "
        f"malloc {result.get('malloc', 'default')} (machine.tune_malloc); "
        f"medians of {result['rounds']} round-robin rounds; load average (1 min) during the rounds "
        f"{min(next(iter(t.values()))['loadavg_1m']):.2f}-{max(next(iter(t.values()))['loadavg_1m']):.2f}.",
        "",
        "| variant | median s | best s | runs (s) | GFLOP/s (best run) | % of the best GEMM | compile s |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, row in t.items():
        p = peak["bf16" if "bf16" in name else "f32"]
        comp = f"{row['compile_s']:.1f}{' (cache)' if row.get('compile_cache_hit') else ''}" \
            if "compile_s" in row else "-"
        runs = ", ".join(f"{x:.2f}" for x in row["times_s"])
        lines.append(f"| {name} | {row['median_s']:.3f} | {min(row['times_s']):.3f} | {runs} | "
                     f"{row['best_gflops_per_s']:.0f} | "
                     f"{100 * row['best_gflops_per_s'] / p:.0f} % | {comp} |")
    ratio = [("tldr_jax bf16 / official bf16", "official bf16 (autocast)", "tldr_jax bf16", 1.5),
             ("tldr_jax bf16 / tldr_jax f32", "tldr_jax f32", "tldr_jax bf16", 1.3),
             ("tldr_jax f32 / official f32", "official f32", "tldr_jax f32", 1.5),
             ("tldr_jax bf16, weights cast once / official bf16", "official bf16 (autocast)",
              "tldr_jax bf16, weights cast once", None)]
    lines += ["", "| throughput ratio | medians | best runs | target |", "|---|---:|---:|---:|"]
    for label, slow, fast, target in ratio:
        x = t[slow]["median_s"] / t[fast]["median_s"]
        y = min(t[slow]["times_s"]) / min(t[fast]["times_s"])
        verdict = "-"
        if target is not None:
            verdict = f">= {target}x ({'met' if x >= target else 'not met'} on medians)"
        lines.append(f"| {label} | {x:.2f}x | {y:.2f}x | {verdict} |")
    gm, gk, gn = result["gemm_shape"]
    lines += ["", f"GEMM probe {gm}x{gk}x{gn}, timed in the same rounds (best GEMM: float32 "
              f"{peak['f32']:.0f}, "
              f"bfloat16 {peak['bf16']:.0f} GFLOP/s):", "",
              "| GEMM | median ms | GFLOP/s (median) | GFLOP/s (best) |", "|---|---:|---:|---:|"]
    for name, row in g.items():
        lines.append(f"| {name} | {1e3 * row['median_s']:.1f} | {row['gflops']:.0f} | "
                     f"{row['best_gflops']:.0f} |")
    lines += _ceiling_lines(result)
    if result["profile"]:
        lines += ["", "tldr_jax, where the time goes (each piece jitted alone at each layer's token count, "
                  "summed over the schedule; s):", "", "| piece | f32 | bf16 |", "|---|---:|---:|"]
        prof = result["profile"]
        for name in prof["f32"]:
            lines.append(f"| {name} | {prof['f32'][name]:.3f} | {prof['bf16'][name]:.3f} |")
    return "\n".join(lines) + "\n"


def _ceiling_lines(result: dict[str, Any]) -> list[str]:
    """The report's table of :func:`ceilings`: the fastest forward this machine allows, per precision."""
    ceiling = result.get("ceiling")
    if not ceiling:
        return []
    t = result["timing"]
    lines = ["", "Ceiling (benchmarks.ceiling): the forward's time if every linear layer ran at the best "
             "GEMM above, every QK^T / PV at the best rate measured for its token count and every attention "
             "logit's exp at the best exp rate, JAX or PyTorch, nothing overlapped, norms / GELU / "
             "reductions / merge free:", "",
             "| precision | linear s | QK^T s | PV s | exp s | bound s | official median s | "
             "at most x official | target | tldr_jax median s | tldr_jax / bound |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    names = {"f32": ("official f32", "tldr_jax f32"), "bf16": ("official bf16 (autocast)", "tldr_jax bf16")}
    for precision, row in ceiling.items():
        b = row["bound"]
        official, ours = (t[n]["median_s"] for n in names[precision])
        most = official / b["total_s"]
        verdict = f">= 1.5x: {'within reach' if most >= 1.5 else 'out of reach on this machine'}"
        lines.append(f"| {precision} | {b['linear_s']:.3f} | {b['qk_s']:.3f} | {b['pv_s']:.3f} | "
                     f"{b['exp_s']:.3f} | {b['total_s']:.3f} | {official:.3f} | {most:.2f}x | {verdict} | "
                     f"{ours:.3f} | {ours / b['total_s']:.2f}x |")
    lines += ["", "Rates behind it (GFLOP/s; exp in G elements/s): " + "; ".join(
        f"{p}: GEMM {row['rates']['gemm']:.0f}, exp {row['rates']['exp']:.2f}, QK^T "
        + ", ".join(f"N={n} {v:.0f}" for n, v in row["rates"]["qk"].items()) + ", PV "
        + ", ".join(f"N={n} {v:.0f}" for n, v in row["rates"]["pv"].items())
        for p, row in ceiling.items())]
    return lines


if __name__ == "__main__":
    main()

"""Which XLA settings make tldr_jax fast on this machine? Probe, compare, pick.

``python -m benchmarks.xla_probe --device gpu --out DIR`` runs, for each named set (a
``tldr_jax.apply(gpu_tuning=...)`` setting and ``XLA_FLAGS``), one fresh process (``XLA_FLAGS`` is read
once, when the backend starts) that times

* the float32 matrix products of UMT-B/16 at batch 1 (``precision=HIGHEST``), as TFLOP/s, and
* ``tldr_jax.apply`` on UMT-B/16 at batch 1, unmerged and (for most sets) with the MSRVTT schedule,
  with its compile time, XLA's peak memory of each program and the persistent-cache hits,

then times the same matrix products in PyTorch (float32, TF32 off) as the reference, and optionally
(``--torch eager,compile``) the PyTorch reference model eager and under ``torch.compile``. Every process
shares one fresh compile cache (``--cache``); ``--again tuned`` reruns a set in a new process on it, where
the programs (and cuBLAS autotuning results) should come from the cache. Writes
``DIR/xla_probe.{json,md}``, prints the table, then ``GPU_TUNING=<setting>`` and, as its last line,
``XLA_FLAGS=<flags>`` of the fastest set whose programs compile quickly (``heuristic`` if none
finished; ``benchmarks/device_check.sh`` checks the golden parity with it).

Why: with ``--xla_gpu_autotune_level=0`` (which keeps the compile time of many merging programs
short) tldr_jax ran far below PyTorch's GEMM speed on a GPU, already without merging (docs/benchmarks.md's GPU
section has the numbers). XLA's defaults route every supported dot to a Triton GEMM fusion
(``xla_gpu_triton_gemm_any``), and with autotuning off its GEMM-fusion autotuner
(``xla/service/gpu/autotuning/gemm_fusion_autotuner.cc``) times no tile size and never tries cuBLAS: older
versions use a fixed 32x32x32 tile (``kDefaultGemmTiling``), current ones the first configuration of a
default search space. ``cublas`` below keeps autotuning off but sends the dots to cuBLAS. ``--quick``
probes tiny shapes (CI / CPU smoke test).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.backends import run_group
from benchmarks.machine import configure_device
from benchmarks.plan import Group, full_models, quick_models
from benchmarks.report import RESULTS_DIR
from benchmarks.timing import median_time
from benchmarks.worker import WorkerError, add_worker_args, run_worker, serve
from tldr_jax.compile_cache import ENV

# name -> (XLA_FLAGS, matmul precision, schedules, eligible for the headline benchmark: float32 products and
# programs that compile quickly enough for all its schedules, tldr_jax.apply(gpu_tuning=...)). The first
# three are apply's settings (tldr_jax.xla_options); the others set XLA_FLAGS under gpu_tuning="xla".
FLAG_SETS: dict[str, tuple[str, str, tuple[str, ...], bool, str]] = {
    "heuristic": ("", "fp32", ("r0", "main"), True, "heuristic"),
    "tuned": ("", "fp32", ("r0", "main"), True, "tuned"),
    "fusion_off": ("--xla_gpu_experimental_enable_fusion_autotuner=false", "fp32", ("r0", "main"), True,
                   "xla"),
    "notune": ("--xla_gpu_autotune_level=0", "fp32", ("r0",), True, "xla"),
    "cublas": ("--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false", "fp32", ("r0", "main"), True,
               "xla"),
    "cublas_tf32": ("--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false", "tf32", ("r0",), False,
                    "xla"),
    "default": ("", "fp32", ("r0",), False, "xla"),
}
DEFAULT_SETS = ("heuristic", "tuned", "fusion_off")
FALLBACK_SET = "heuristic"  # printed when no eligible set finished (device_check.sh falls back to it too)
#: PyTorch rows of ``--torch``: name -> the benchmark backend of the reference model.
TORCH_ROWS = {"eager": "torch_ref", "compile": "torch_ref_compile"}


def gemm_shapes(quick: bool) -> list[tuple[str, tuple[int, ...]]]:
    """The matrix products of one UMT-B/16 block at batch 1 (12 x 224^2: N = 2352 tokens, width 768).

    Returns ``(name, (batch, M, K, N))`` pairs; ``--quick`` shrinks them to the tiny stand-in model.
    """
    n, c, heads = (392, 192, 3) if quick else (2352, 768, 12)
    dh = c // heads
    return [("qkv", (1, n, c, 3 * c)), ("mlp_fc1", (1, n, c, 4 * c)), ("mlp_fc2", (1, n, 4 * c, c)),
            ("attn_logits", (heads, n, dh, n)), ("attn_values", (heads, n, n, dh))]


def _tflops(shape: tuple[int, ...], seconds: float) -> float:
    b, m, k, n = shape
    return 2 * b * m * k * n / seconds / 1e12


def time_jax_gemms(quick: bool, repeats: int, precision: str) -> list[dict[str, Any]]:
    """Median time and TFLOP/s of each :func:`gemm_shapes` product, jitted, in this process's XLA setup."""
    import jax
    import jax.numpy as jnp

    prec = jax.lax.Precision.HIGH if precision == "tf32" else jax.lax.Precision.HIGHEST
    rows = []
    for i, (name, shape) in enumerate(gemm_shapes(quick)):
        b, m, k, n = shape
        key_a, key_b = jax.random.split(jax.random.key(i))
        a = jax.random.normal(key_a, (b, m, k), jnp.float32)
        w = jax.random.normal(key_b, (b, k, n), jnp.float32)
        fn = jax.jit(lambda x, y: jnp.einsum("bmk,bkn->bmn", x, y, precision=prec))
        start = time.perf_counter()
        compiled = fn.lower(a, w).compile()
        compile_s = time.perf_counter() - start
        med = median_time(lambda c=compiled, x=a, y=w: c(x, y).block_until_ready(), repeats)
        rows.append({"name": name, "shape": list(shape), "ms": med * 1e3, "tflops": _tflops(shape, med),
                     "compile_s": compile_s})
    return rows


def time_torch_gemms(quick: bool, repeats: int, device: str) -> list[dict[str, Any]]:
    """The same products in PyTorch (float32, TF32 off), the reference a cuBLAS SGEMM gives."""
    import torch

    dev = "cuda" if device == "gpu" else "cpu"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, shape in gemm_shapes(quick):
        b, m, k, n = shape
        a = torch.randn(b, m, k, generator=gen).to(dev)
        w = torch.randn(b, k, n, generator=gen).to(dev)
        med = median_time(lambda x=a, y=w: (torch.bmm(x, y), sync()), repeats)
        rows.append({"name": name, "shape": list(shape), "ms": med * 1e3, "tflops": _tflops(shape, med)})
    return rows


def probe_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One set, in the process whose ``XLA_FLAGS`` it names: GEMMs, then ``apply`` on UMT-B with its
    ``gpu_tuning`` (or, with ``job["backend"]``, the PyTorch reference model instead)."""
    import jax

    from tldr_jax.compile_cache import cache_events

    backend = job.get("backend", "jax")
    configure_device(job["device"], job["precision"], use_torch=backend != "jax")
    quick = job["quick"]
    spec = (quick_models() if quick else full_models())["umt_tiny" if quick else "umt_b16"]
    labels = tuple(spec.main if s == "main" else s for s in job["schedules"])
    gemms = time_jax_gemms(quick, job["repeats"], job["precision"]) if backend == "jax" else []
    group = Group(model=spec.key, backend=backend, batch=1, labels=labels, repeats=job["repeats"], warmup=3)
    before = cache_events()
    rows = run_group(group, spec, lambda msg: print(msg, flush=True), device=job["device"],
                     precision=job["precision"], gpu_tuning=job.get("gpu_tuning", "heuristic"))
    after = cache_events()
    keep = ("schedule", "latency_s", "latency_min_s", "latency_max_s", "compile_s", "gflops_per_clip",
            "xla_peak_mb", "compile_cache_hit", "error")
    stats = jax.devices()[0].memory_stats() or {}
    result = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
              "jax": jax.__version__, "gemms": gemms,
              "apply": [{k: row[k] for k in keep if k in row} for row in rows]}
    if backend == "jax":
        result.update(cache_hits=after["hits"] - before["hits"],
                      cache_misses=after["misses"] - before["misses"],
                      peak_device_mb=stats.get("peak_bytes_in_use", 0) / 2**20 or None)
    return result


def pick_best(results: dict[str, dict[str, Any]], eligible: dict[str, bool]) -> str | None:
    """The flag set with the lowest unmerged-model latency among the eligible ones that finished.

    Args:
      results: name -> the probe's result (``{"apply": [{"schedule", "latency_s", ...}]}``) or
        ``{"error": ...}``.
      eligible: name -> whether the set may run the headline benchmark (float32, quick to compile).

    Returns:
      The name, or ``None`` when no eligible set finished.
    """
    best, best_s = None, float("inf")
    for name, res in results.items():
        if not eligible.get(name) or "apply" not in res:
            continue
        r0 = next((row for row in res["apply"] if row["schedule"] == "r0" and "latency_s" in row), None)
        if r0 is not None and r0["latency_s"] < best_s:
            best, best_s = name, r0["latency_s"]
    return best


def markdown(report: dict[str, Any]) -> str:
    """The probe's result as markdown: one row per flag set, then the GEMM rates."""
    sets = report["sets"]
    lines = [f"# XLA flag probe ({report['machine']})", "",
             f"{report['model']} at batch 1 (tldr_jax.apply; latency median in ms, compile in s), and the "
             "float32 matrix products of one of its blocks in TFLOP/s. Best flag set (float32, quick to "
             f"compile, lowest unmerged latency): **{report['best'] or 'none'}**.", "",
             "| flag set | XLA_FLAGS | precision | r0 ms | r0 compile s | merged ms | merged compile s | "
             + " | ".join(n for n, _ in report["gemm_shapes"])
             + " | gpu_tuning | cache hits / misses | XLA peak MB (r0 / merged) | device peak MB |",
             "|---|---|---|---:|---:|---:|---:|" + "---:|" * len(report["gemm_shapes"])
             + "---|---:|---:|---:|"]
    for name, res in report["results"].items():
        base = sets.get(name) or sets[name.split(" ")[0]]  # "tuned (again)" is the "tuned" set
        flags, precision = base["flags"] or "(none)", base["precision"]
        if "error" in res:
            lines.append(f"| {name} | `{flags}` | {precision} | {res['error']} |")
            continue
        by = {row["schedule"]: row for row in res["apply"]}
        r0 = by.get("r0", {})
        merged = next((row for label, row in by.items() if label != "r0"), {})
        cells = [_ms(r0), _s(r0), _ms(merged), _s(merged)]
        cells += [f"{g['tflops']:.1f}" for g in res["gemms"]] or ["–"] * len(report["gemm_shapes"])
        peak = res.get("peak_device_mb")
        hits = f"{res.get('cache_hits', '–')} / {res.get('cache_misses', '–')}"
        cells += [base.get("gpu_tuning", "–"), hits, f"{_mb(r0)} / {_mb(merged)}"]
        cells.append(f"{peak:.0f}" if peak else "–")
        lines.append(f"| {name} | `{flags}` | {precision} | " + " | ".join(cells) + " |")
    if report.get("torch_gemms"):
        cells = [f"{g['tflops']:.1f}" for g in report["torch_gemms"]]
        lines.append("| PyTorch `bmm` | — | fp32 | | | | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ms(row: dict[str, Any]) -> str:
    return f"{row['latency_s'] * 1e3:.1f}" if "latency_s" in row else "–"


def _s(row: dict[str, Any]) -> str:
    return f"{row['compile_s']:.1f}" if row.get("compile_s") is not None else "–"


def _mb(row: dict[str, Any]) -> str:
    return f"{row['xla_peak_mb']:.0f}" if row.get("xla_peak_mb") is not None else "–"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu", choices=("cpu", "gpu"))
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS),
                        help=f"comma-separated flag sets, from {sorted(FLAG_SETS)}")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and model (smoke test)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per flag set")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all the processes together: each is capped at what is left")
    parser.add_argument("--again", default="", help="comma-separated sets to run once more in a fresh "
                        "process on the same compile cache (programs expected from the cache)")
    parser.add_argument("--torch", default="", help=f"PyTorch reference rows, from {sorted(TORCH_ROWS)}")
    parser.add_argument("--cache", type=Path, default=None,
                        help="compile cache folder shared by the processes (default: a fresh temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    add_worker_args(parser)
    return parser.parse_args(argv)


def _probe(name: str, job: dict[str, Any], flags: str, cache: Path, timeout: float) -> dict:
    """One probe worker in a fresh process, capped at ``timeout`` s; ``{"error": ...}`` on failure."""
    if timeout < 15:
        return {"error": "skipped: the probe's --budget was spent"}
    env = {"XLA_FLAGS": flags, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", ENV: str(cache)}
    print(f"== {name}: XLA_FLAGS='{flags}', {job}", flush=True)
    try:
        return run_worker("benchmarks.xla_probe", job, env=env, timeout=timeout)
    except WorkerError as err:
        return {"error": f"probe failed (exit {err.returncode})"}
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}


def _names(text: str, allowed: Any, what: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {sorted(allowed)}")
    return names


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Probe every set in a fresh process; write ``xla_probe.{json,md}``; print the best setting."""
    args = parse_args(argv)
    if serve(args, probe_worker):
        return {"worker": True}
    names = _names(args.sets, FLAG_SETS, "flag set")
    again = _names(args.again, FLAG_SETS, "flag set")
    torch_rows = _names(args.torch, TORCH_ROWS, "PyTorch row")
    start = time.perf_counter()

    def cap() -> float:
        left = float("inf") if args.budget is None else args.budget - (time.perf_counter() - start)
        return min(args.timeout, left)

    with tempfile.TemporaryDirectory(prefix="tldr_probe_cache_") as tmp:
        cache = args.cache or Path(tmp)
        results: dict[str, dict[str, Any]] = {}
        for name in names + [f"{n} (again)" for n in again]:
            flags, precision, schedules, _, tuning = FLAG_SETS[name.split(" ")[0]]
            job = {"device": args.device, "precision": precision, "quick": args.quick,
                   "schedules": list(schedules), "repeats": args.repeats, "gpu_tuning": tuning}
            results[name] = _probe(name, job, flags, cache, cap())
        for row in torch_rows:
            job = {"device": args.device, "precision": "fp32", "quick": args.quick,
                   "schedules": ["r0", "main"], "repeats": args.repeats, "backend": TORCH_ROWS[row]}
            results[f"torch_{row}"] = _probe(f"torch_{row}", job, "", cache, cap())
    best = pick_best(results, {name: FLAG_SETS[name][3] for name in names})
    done = [r for r in results.values() if "device_kind" in r]
    device_kind = f"{done[0]['device_kind']}, jax {done[0]['jax']}" if done else args.device
    sets = {n: {"flags": FLAG_SETS[n][0], "precision": FLAG_SETS[n][1], "gpu_tuning": FLAG_SETS[n][4]}
            for n in dict.fromkeys(names + again)}
    for r in torch_rows:
        sets[f"torch_{r}"] = {"flags": "", "precision": "fp32", "gpu_tuning": f"PyTorch {r}"}
    report = {
        "machine": device_kind,
        "model": "UMT-B/16 (12 x 224^2)" if not args.quick else "tiny UMT stand-in (8 x 112^2, width 192)",
        "sets": sets,
        "gemm_shapes": gemm_shapes(args.quick),
        "results": results,
        "torch_gemms": time_torch_gemms(args.quick, args.repeats, args.device),
        "best": best,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xla_probe.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / "xla_probe.md").write_text(text)
    print(text, flush=True)
    winner = FLAG_SETS[best or FALLBACK_SET]
    print(f"GPU_TUNING={winner[4]}", flush=True)
    print(f"XLA_FLAGS={winner[0]}", flush=True)
    return report


if __name__ == "__main__":
    main()

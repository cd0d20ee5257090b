"""Which XLA flags make tldr_jax fast on this machine? Probe, compare, pick.

``python -m benchmarks.xla_probe --device gpu --out DIR`` runs, for each named flag set, one fresh
process (``XLA_FLAGS`` is read once, when the backend starts) that times

* the float32 matrix products of UMT-B/16 at batch 1 (``precision=HIGHEST``), as TFLOP/s, and
* ``tldr_jax.apply`` on UMT-B/16 at batch 1, unmerged and (for some sets) with the MSRVTT schedule,
  with its compile time,

then times the same matrix products in PyTorch (float32, TF32 off) as the reference, writes
``DIR/xla_probe.{json,md}``, prints the table, and prints ``XLA_FLAGS=<flags>`` of the fastest set whose
programs compile quickly as its last line (``cublas`` if none finished; ``benchmarks/device_check.sh``
benchmarks with it).

Why: with ``--xla_gpu_autotune_level=0`` (which keeps the compile time of many merging programs
short) tldr_jax ran far below PyTorch's GEMM speed on a GPU, already without merging (the README's GPU
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

# name -> (XLA_FLAGS, matmul precision, schedules, eligible for the headline benchmark: float32 products and
# programs that compile quickly enough for all its schedules)
FLAG_SETS: dict[str, tuple[str, str, tuple[str, ...], bool]] = {
    "notune": ("--xla_gpu_autotune_level=0", "fp32", ("r0",), True),
    "cublas": ("--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false", "fp32", ("r0", "main"), True),
    "cublas_tf32": ("--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false", "tf32", ("r0",), False),
    "default": ("", "fp32", ("r0",), False),
}
DEFAULT_SETS = ("notune", "cublas", "default")
FALLBACK_SET = "cublas"  # printed when no eligible set finished (device_check.sh falls back to it too)


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
    """One flag set, in the process whose ``XLA_FLAGS`` it names: GEMMs, then ``apply`` on UMT-B."""
    import jax

    configure_device(job["device"], job["precision"], use_torch=False)
    quick = job["quick"]
    spec = (quick_models() if quick else full_models())["umt_tiny" if quick else "umt_b16"]
    labels = tuple(spec.main if s == "main" else s for s in job["schedules"])
    gemms = time_jax_gemms(quick, job["repeats"], job["precision"])
    group = Group(model=spec.key, backend="jax", batch=1, labels=labels, repeats=job["repeats"], warmup=3)
    rows = run_group(group, spec, lambda msg: print(msg, flush=True), device=job["device"],
                     precision=job["precision"])
    keep = ("schedule", "latency_s", "latency_min_s", "latency_max_s", "compile_s", "gflops_per_clip",
            "error")
    return {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "gemms": gemms,
            "apply": [{k: row[k] for k in keep if k in row} for row in rows]}


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
             + " | ".join(n for n, _ in report["gemm_shapes"]) + " |",
             "|---|---|---|---:|---:|---:|---:|" + "---:|" * len(report["gemm_shapes"])]
    for name, res in report["results"].items():
        flags, precision = sets[name]["flags"] or "(none)", sets[name]["precision"]
        if "error" in res:
            lines.append(f"| {name} | `{flags}` | {precision} | {res['error']} |")
            continue
        by = {row["schedule"]: row for row in res["apply"]}
        r0 = by.get("r0", {})
        merged = next((row for label, row in by.items() if label != "r0"), {})
        cells = [_ms(r0), _s(r0), _ms(merged), _s(merged)]
        cells += [f"{g['tflops']:.1f}" for g in res["gemms"]]
        lines.append(f"| {name} | `{flags}` | {precision} | " + " | ".join(cells) + " |")
    if report.get("torch_gemms"):
        cells = [f"{g['tflops']:.1f}" for g in report["torch_gemms"]]
        lines.append("| PyTorch `bmm` | — | fp32 | | | | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ms(row: dict[str, Any]) -> str:
    return f"{row['latency_s'] * 1e3:.1f}" if "latency_s" in row else "–"


def _s(row: dict[str, Any]) -> str:
    return f"{row['compile_s']:.1f}" if row.get("compile_s") is not None else "–"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu", choices=("cpu", "gpu"))
    parser.add_argument("--sets", default=",".join(DEFAULT_SETS),
                        help=f"comma-separated flag sets, from {sorted(FLAG_SETS)}")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and model (smoke test)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per flag set")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    add_worker_args(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Probe every flag set in a fresh process; write ``xla_probe.{json,md}``; print the best flags."""
    args = parse_args(argv)
    if serve(args, probe_worker):
        return {"worker": True}
    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(names) - set(FLAG_SETS))
    if unknown:
        raise SystemExit(f"unknown flag set(s) {unknown}; choose from {sorted(FLAG_SETS)}")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        flags, precision, schedules, _ = FLAG_SETS[name]
        print(f"== {name}: XLA_FLAGS='{flags}', precision {precision}", flush=True)
        job = {"device": args.device, "precision": precision, "quick": args.quick,
               "schedules": list(schedules), "repeats": args.repeats}
        env = {"XLA_FLAGS": flags, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        try:
            results[name] = run_worker("benchmarks.xla_probe", job, env=env, timeout=args.timeout)
        except WorkerError as err:
            results[name] = {"error": f"probe failed (exit {err.returncode})"}
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"did not finish in {args.timeout:.0f} s"}
    best = pick_best(results, {name: FLAG_SETS[name][3] for name in names})
    done = [r for r in results.values() if "device_kind" in r]
    device_kind = f"{done[0]['device_kind']}, jax {done[0]['jax']}" if done else args.device
    report = {
        "machine": device_kind,
        "model": "UMT-B/16 (12 x 224^2)" if not args.quick else "tiny UMT stand-in (8 x 112^2, width 192)",
        "sets": {n: {"flags": FLAG_SETS[n][0], "precision": FLAG_SETS[n][1]} for n in names},
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
    print(f"XLA_FLAGS={FLAG_SETS[best or FALLBACK_SET][0]}", flush=True)
    return report


if __name__ == "__main__":
    main()

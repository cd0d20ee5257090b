"""Throughput, latency, compile time and memory of tldr_jax against PyTorch baselines, on CPU or GPU.

Run ``python -m benchmarks.run --quick`` (tiny models, batch 1, a CI-sized check: < 2 minutes) or
``python -m benchmarks.run`` (UMT-B/16 12x224^2 and VideoMAE-B 16x224^2: the table in docs/benchmarks.md,
kept under a ``--budget-min`` time budget). Results go to ``benchmarks/results/<tag>.{json,md,png}``.
``--device gpu`` runs the same plan on the first CUDA GPU (both frameworks; more repeats), with
``--precision fp32`` (full float32 matrix products in both: tldr_jax's default, the official numerics)
or ``--precision tf32`` (``tldr_jax.apply(precision="tensorfloat32")`` and PyTorch's ``allow_tf32``).
``--precision bf16`` (CPU or GPU) runs ``tldr_jax.apply(dtype=jnp.bfloat16)`` against the PyTorch
models under ``torch.autocast(..., torch.bfloat16)`` (the per-block profile, float32, is skipped).
The merge similarity is float32 either way.

Backends: :mod:`benchmarks.backends`. What runs: :mod:`benchmarks.plan`. Reports:
:mod:`benchmarks.report`. Per-block profile: :mod:`benchmarks.profile`. Each group runs in a fresh
process (:mod:`benchmarks.worker`).

Method: every configuration of a (model, backend, batch) group is prepared (compiled) first; then
the group's configurations are timed *round-robin* (one call of each per round) so that load drift
on a shared machine hits them alike; statistics are medians over the rounds. Every call blocks
until the result is ready (``jax.block_until_ready``; PyTorch CPU calls are synchronous, CUDA calls
are followed by ``torch.cuda.synchronize()``). Peak memory is XLA's ``memory_analysis`` (arguments +
outputs + temporaries of the compiled program) and the process's peak-RSS growth during the timed
calls (``VmHWM`` after resetting it through ``/proc/self/clear_refs``); on a GPU, PyTorch's
``max_memory_allocated``. The load average is recorded with every result.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.backends import run_group
from benchmarks.machine import code_version, configure_device, machine_info, snapshot_sources, tune_malloc
from benchmarks.plan import (
    BACKENDS,
    Group,
    ModelSpec,
    build_plan,
    estimate_group_s,
    full_models,
    quick_models,
)
from benchmarks.profile import profile_blocks
from benchmarks.report import RESULTS_DIR, add_ratios, check_targets, write
from benchmarks.worker import add_worker_args, run_worker, serve

__all__ = ["main"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    from tldr_jax.options import GPU_TUNINGS

    parser.add_argument("--quick", action="store_true", help="tiny models, batch 1, few repeats (< 2 min)")
    parser.add_argument("--models", default=None,
                        help="comma-separated model keys (full: umt_b16,videomae_b; "
                        "quick: umt_tiny,videomae_tiny)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="batch sizes (default: 1 8 full, 1 quick); the large one runs a reduced set")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per configuration (override)")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated subset of {','.join(BACKENDS)} "
                        "(quick default: no torch.compile)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="output directory")
    parser.add_argument("--tag", default=None, help="output file stem (default: bench / bench_quick)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="skip groups that would overrun this many minutes (default 15 full, 2 quick)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                        help="where both frameworks run (gpu: the first CUDA device; more repeats)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                        help="GPU float32 matrix products: fp32 (default: full float32 in both, the "
                        "official numerics) or tf32 (tldr_jax.apply(precision='tensorfloat32'), PyTorch "
                        "allow_tf32; ignored on CPU); bf16 (CPU or GPU): tldr_jax.apply(dtype=bfloat16) "
                        "against torch.autocast(bfloat16)")
    parser.add_argument("--gpu-tuning", default="heuristic", choices=GPU_TUNINGS,
                        help="tldr_jax.apply(gpu_tuning=...): XLA's GEMM/autotuning settings on a GPU")
    parser.add_argument("--malloc", default="tuned", choices=("tuned", "default"),
                        help="tuned (default): workers keep freed memory (benchmarks.machine.tune_malloc: "
                        "glibc's mmap/trim thresholds at 1 GiB), as a caching allocator would; default: "
                        "glibc as it comes, which makes PyTorch pay page faults on every large tensor")
    parser.add_argument("--schedules", default=None,
                        help="comma-separated schedule labels to keep (e.g. r0,msrvtt,solve-40%%)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-block profile")
    parser.add_argument("--profile-repeats", type=int, default=None, help="repeats per profiled piece")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", "unset"),
                        help="OMP_WAIT_POLICY of the worker processes (PyTorch's OpenMP threads). PASSIVE "
                        "(default) avoids spin-wait stalls of PyTorch's threads on an oversubscribed machine")
    parser.add_argument("--in-process", action="store_true",
                        help="run every group in this process instead of a fresh one each (debugging)")
    add_worker_args(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks and write ``<out>/<tag>.json``, ``.md`` and ``.png``; return the report."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    start = time.perf_counter()
    log = lambda msg: print(msg, flush=True)
    if serve(args, lambda job: _work(job, log)):
        return {"worker": True}
    gpu = args.device == "gpu"
    if gpu:  # the parent process only inspects the device; the workers allocate
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    models = quick_models() if args.quick else full_models()
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(models))
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(models)}")
        models = {k: models[k] for k in wanted}
    batches = args.batch or ([1] if args.quick else [1, 8])
    default_backends = ("jax", "torch_ref", "hf") if args.quick else BACKENDS
    backends = tuple(b.strip() for b in args.backends.split(",")) if args.backends else default_backends
    bad = sorted(set(backends) - set(BACKENDS))
    if bad:
        raise SystemExit(f"unknown backend(s) {bad}; choose from {BACKENDS}")
    budget_s = 60 * (args.budget_min if args.budget_min is not None else (2 if args.quick else 15))
    tag = args.tag or ("bench_quick" if args.quick else "bench") + ("_gpu" if gpu else "")
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    import tempfile

    snapshot_dir = tempfile.TemporaryDirectory(prefix="tldr_bench_")
    args.snapshot = None if args.in_process else snapshot_sources(Path(snapshot_dir.name))

    import torch

    configure_device(args.device, args.precision)
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(args.device),
        "code": code_version(args.snapshot),
        "settings": {"batches": batches, "backends": list(backends), "budget_s": budget_s,
                     "device": args.device,
                     "precision": args.precision if gpu or args.precision == "bf16" else "fp32",
                     "torch_threads": torch.get_num_threads(), "omp_wait_policy": args.omp_wait_policy,
                     "malloc": args.malloc,
                     "isolated_processes": not args.in_process},
        "results": [],
        "skipped": [],
        "notes": [],
    }
    m = report["machine"]
    log(f"{m['cpu_model']} ({m['cpu_family_model']}), {m['cpus_usable']} CPUs, load {m['loadavg_start']}")
    if gpu:
        log(f"GPU: {m['gpu']['name']} ({m['gpu']['memory_gb']} GB), float32 matmuls: {args.precision}")
    schedules = [s.strip() for s in args.schedules.split(",")] if args.schedules else None
    plan = build_plan(models, args.quick, batches, args.repeats, backends, device=args.device,
                      schedules=schedules)
    # Initial guesses (seconds per GMAC; compile seconds per configuration), replaced by measurements.
    s_per_gmac = dict.fromkeys(BACKENDS, 3e-5 if gpu else 0.04) | {"jax": 3e-5 if gpu else 0.03}
    compile_s = {"jax": 4.0 if args.quick else 12.0, "torch_ref_compile": 40.0 if args.quick else 150.0,
                 "hf_compile": 40.0 if args.quick else 150.0}
    if gpu:
        compile_s = {"jax": 8.0, "torch_ref_compile": 60.0, "hf_compile": 60.0}
    no_profile = args.no_profile or args.precision == "bf16"  # the profile times float32 pieces
    profile_reserve = 0.0 if no_profile else (10.0 if args.quick or gpu else 120.0)
    profile_done = no_profile
    for i, group in enumerate(plan):
        spec = models[group.model]
        elapsed = time.perf_counter() - start
        estimate = estimate_group_s(group, spec, s_per_gmac, compile_s)
        reserve = 0.0 if profile_done else profile_reserve
        if i > 0 and elapsed + estimate + reserve > budget_s:
            msg = (f"{group.model} {group.backend} batch {group.batch} {list(group.labels)}: estimated "
                   f"{estimate:.0f} s, {elapsed:.0f} s of the {budget_s:.0f} s budget used")
            report["skipped"].append(msg)
            log(f"skip {msg}")
            continue
        log(f"[{elapsed:6.0f} s] {group.model} / {group.backend} / batch {group.batch}: {list(group.labels)} "
            f"(~{estimate:.0f} s)")
        try:
            rows = _isolated("group", args, log, group=dataclasses.asdict(group))
        except RuntimeError as err:
            report["skipped"].append(f"{group.model} {group.backend} batch {group.batch}: {err}")
            log(f"  {err}")
            continue
        for row in rows:
            if "latency_s" in row:
                gmac = row["gflops_per_clip"] * row["batch"]
                s_per_gmac[group.backend] = row["latency_s"] / gmac
                if row.get("compile_s") is not None:
                    compile_s[group.backend] = row["compile_s"]
            if "xla_matmul_gmac" in row:
                import tldr_jax

                bd = tldr_jax.flops_breakdown(spec.config(), r=row["r"], batch=row["batch"])
                row["analytic_matmul_gmac"] = (bd["total"] - bd["components"]["norm"]) / 1e9
        report["results"].extend(rows)
        add_ratios(report["results"])
        write(report, args.out, tag, models, final=False)
        if not profile_done and group.backend == "jax" and group.batch == 1 and spec.sweep:
            profile_done = True
            report["profile"] = _run_profile(spec, args, log)
    if not profile_done:
        spec = next((s for s in models.values() if s.sweep), None)
        if spec is not None:
            report["profile"] = _run_profile(spec, args, log)
    if args.quick:
        report["notes"].append(
            "Quick mode runs tiny stand-in models (a few hundred tokens, width 192): per-op overheads "
            "dominate, so merging is not expected to pay off there. It is a smoke test of every code "
            "path, not a performance result; see bench.md for the full-size numbers."
        )
    if "hf_compile" not in backends or "torch_ref_compile" not in backends:
        report["notes"].append(
            "torch.compile baselines were not run in this mode (pass --backends to include them)."
        )
    report["targets"] = check_targets(report["results"], models)
    report["wall_s"] = time.perf_counter() - start
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    write(report, args.out, tag, models, final=True)
    snapshot_dir.cleanup()
    log(f"done in {report['wall_s']:.0f} s -> {args.out / tag}.{{json,md,png}}")
    for t in report["targets"]:
        log(f"  target {t['target']} ({t['model']} b{t['batch']}): {'met' if t['met'] else 'NOT met'}")
    return report


def _run_profile(spec: ModelSpec, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"profile {spec.key} {spec.main} per block (each piece jitted alone)")
    repeats = args.profile_repeats or (10 if args.device == "gpu" else 5 if args.quick else 2)
    try:
        return _isolated("profile", args, log, model=spec.key, repeats=repeats)
    except Exception as err:  # noqa: BLE001 - keep the timing results even if profiling breaks
        log(f"  profile failed: {err!r}")
        return {"error": repr(err)}


def _isolated(kind: str, args: argparse.Namespace, log: Callable[[str], None], **job: Any) -> Any:
    """Run one group / the profile in a fresh Python process and return its JSON result.

    Isolation keeps the backends from disturbing each other: a PyTorch eager run in a process that has
    just run XLA programs can stall in OpenMP barriers on an oversubscribed machine, and memory, thread
    pools and ``torch.compile`` caches do not carry over.
    ``--in-process`` runs everything in this process instead (for debugging).
    """
    job = {"kind": kind, "quick": args.quick, "device": args.device, "precision": args.precision,
           "malloc": args.malloc, "gpu_tuning": args.gpu_tuning, **job}
    if args.in_process:
        return _work(job, log)
    env = {} if args.omp_wait_policy == "unset" else {"OMP_WAIT_POLICY": args.omp_wait_policy}
    return run_worker("benchmarks.run", job, root=args.snapshot, env=env)


def _work(job: dict[str, Any], log: Callable[[str], None]) -> Any:
    """The body of a worker process: one timing group or the per-block profile."""
    device, precision = job.get("device", "cpu"), job.get("precision", "fp32")
    uses_torch = job["kind"] == "group" and job["group"]["backend"] != "jax"
    configure_device(device, precision, use_torch=uses_torch)
    if job.get("malloc", "tuned") == "tuned":
        tune_malloc()
    models = quick_models() if job["quick"] else full_models()
    if job["kind"] == "group":
        group = Group(**{**job["group"], "labels": tuple(job["group"]["labels"])})
        return run_group(group, models[group.model], log, device=device, precision=precision,
                         gpu_tuning=job.get("gpu_tuning", "heuristic"))
    spec = models[job["model"]]
    return profile_blocks(spec, spec.main, job["repeats"], log)


if __name__ == "__main__":
    main()

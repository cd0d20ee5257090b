"""The speed benchmark's report: speed-ups and targets, the markdown tables, the plot, the files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.plan import ModelSpec

#: Default output directory: ``benchmarks/results`` in a source checkout; ``./benchmark_results`` when
#: the benchmarks run from an installed package (``tldr-jax bench`` anywhere), not site-packages.
RESULTS_DIR = (
    Path(__file__).resolve().parent / "results"
    if (Path(__file__).resolve().parents[1] / "pyproject.toml").is_file()
    else Path("benchmark_results")
)
#: Published UMT-B MSRVTT numbers: 303.3 -> 178.0 GFLOPs (vid-TLDR Figure 1).
TARGET_EFFICIENCY = 0.9
TARGET_VS_TORCH = 1.5

__all__ = [
    "RESULTS_DIR", "TARGET_EFFICIENCY", "TARGET_VS_TORCH", "add_ratios", "check_targets", "find", "markdown",
    "plot", "write",
]


def find(results: list[dict], **match: Any) -> dict | None:
    """The first timed row of ``results`` whose fields equal ``match``."""
    for row in results:
        if all(row.get(k) == v for k, v in match.items()) and "latency_s" in row:
            return row
    return None


def add_ratios(results: list[dict]) -> None:
    """Speed-up against r = 0 of the same model/backend/batch, the FLOPs ratio, and their quotient."""
    for row in results:
        base = find(results, model=row["model"], backend=row["backend"], batch=row["batch"], schedule="r0")
        if base is None or "latency_s" not in row:
            continue
        row["flops_ratio"] = base["gflops_per_clip"] / row["gflops_per_clip"]
        row["speedup_vs_r0"] = base["latency_s"] / row["latency_s"]
        row["efficiency"] = row["speedup_vs_r0"] / row["flops_ratio"]


def check_targets(results: list[dict], models: dict[str, ModelSpec]) -> list[dict[str, Any]]:
    """The two benchmark targets, per model with a merged headline schedule and per batch."""
    targets = []
    for spec in models.values():
        for batch in sorted({r["batch"] for r in results if r["model"] == spec.key}):
            merged = find(results, model=spec.key, backend="jax", batch=batch, schedule=spec.main)
            if merged is not None and "speedup_vs_r0" in merged:
                targets.append({
                    "target": f"merge speed-up >= {TARGET_EFFICIENCY} x FLOPs ratio",
                    "model": spec.key, "schedule": spec.main, "batch": batch,
                    "speedup": merged["speedup_vs_r0"], "flops_ratio": merged["flops_ratio"],
                    "required": TARGET_EFFICIENCY * merged["flops_ratio"],
                    "met": merged["speedup_vs_r0"] >= TARGET_EFFICIENCY * merged["flops_ratio"],
                })
            ref = find(results, model=spec.key, backend="torch_ref", batch=batch, schedule=spec.main)
            if merged is not None and ref is not None:
                ratio = merged["clips_per_s"] / ref["clips_per_s"]
                targets.append({
                    "target": f"tldr_jax >= {TARGET_VS_TORCH} x PyTorch eager reference (same merging)",
                    "model": spec.key, "schedule": spec.main, "batch": batch,
                    "jax_clips_per_s": merged["clips_per_s"], "torch_clips_per_s": ref["clips_per_s"],
                    "ratio": ratio, "met": ratio >= TARGET_VS_TORCH,
                })
    return targets


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown (machine, main table, targets, XLA flops, profile)."""
    m = report["machine"]
    gpu = m.get("gpu")
    precision = report["settings"].get("precision", "fp32")
    products = (
        "**bfloat16** products (`tldr_jax.apply(dtype=jnp.bfloat16)`: bfloat16 operands, float32 "
        "accumulation; PyTorch under `torch.autocast(..., torch.bfloat16)`)" if precision == "bf16" else
        f"float32 matrix products in **{precision}** (`tldr_jax.apply(precision=...)`, PyTorch `allow_tf32`)"
    )
    where_lines = [] if not gpu else [
        f"**GPU: {gpu['name']}** ({gpu['memory_gb']} GB, {gpu['multiprocessors']} SMs, CUDA {gpu['cuda']}; "
        f"JAX device kind {gpu['jax_device_kind']}). Both frameworks on the GPU; {products}; the merge "
        "similarity is float32 in both. The host below only launches work; its load does not matter.",
        "",
    ]
    if precision == "bf16" and not gpu:
        where_lines = [f"Both frameworks with {products}.", ""]
    lines = [
        f"# tldr_jax benchmarks ({report['mode']}{', GPU' if gpu else ''})",
        "",
        *where_lines,
        f"{'Host' if gpu else 'Machine'}: {m['cpu_model']} ({m['cpu_family_model']}, "
        f"{m['cpus_usable']} usable CPUs, "
        f"{', '.join(m['cpu_flags'])}), {m['mem_total_gb']} GB RAM; load average at start "
        f"{m['loadavg_start'][0]:.1f} / {m['loadavg_start'][1]:.1f} / {m['loadavg_start'][2]:.1f} "
        f"(1/5/15 min) on a machine **shared** with other jobs, so absolute numbers are noisy. "
        f"jax {m['versions']['jax']}, torch {m['versions']['torch']} ({m['torch_threads']} threads), "
        f"transformers {m['versions']['transformers']}. {m['date_utc']}. Wall time "
        f"{report['wall_s'] / 60:.1f} min. Code: git {report['code']['git_head']}"
        f"{' + uncommitted tldr_jax changes' if report['code']['tldr_jax_dirty'] else ''}, tldr_jax sources "
        f"sha256 {report['code']['tldr_jax_sha256']}"
        f"{' (snapshot taken at the start; every worker imports it)' if report['code']['snapshot'] else ''}.",
        "",
        "Latency: median over round-robin repeats (min–max in brackets); clips/s = batch / median. "
        "GFLOPs: analytic fvcore MACs per clip (`tldr_jax.flops`). Speed-up: against r = 0 on the "
        "same backend and batch; eff. = speed-up / FLOPs ratio. Compile: AOT `lower().compile()` for "
        "JAX; first call for `torch.compile`. Mem: XLA arguments+outputs+temporaries / peak-RSS "
        "growth during a call. Cores: process CPU time / wall time of a call (what the shared "
        "machine actually gave it). Each group runs in a fresh process "
        f"(OMP_WAIT_POLICY={report['settings']['omp_wait_policy']}).",
        "",
        "| model | backend | schedule | batch | tokens | GFLOPs | latency ms | clips/s | speed-up "
        f"| FLOPs ratio | eff. | compile s | {'XLA / CUDA' if gpu else 'XLA'} MB | RSS Δ MB | cores | load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        if row.get("variant"):
            continue
        if "latency_s" not in row:
            lines.append(
                f"| {row['model']} | {row['backend']} | {row['schedule']} | {row['batch']} | "
                f"{row['tokens_out']} | {row['gflops_per_clip']:.1f} | failed: {row.get('error', '?')[:80]} "
                "| | | | | | | | | |"
            )
            continue
        lo, hi = row["latency_min_s"] * 1e3, row["latency_max_s"] * 1e3
        digits = 1 if row["latency_s"] < 0.1 else 0
        lat = f"{row['latency_s'] * 1e3:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"
        device_mb = row.get("xla_peak_mb") or row.get("gpu_peak_mb")
        lines.append(
            f"| {row['model']} | {row['backend']} | {row['schedule']} | {row['batch']} | "
            f"{row['tokens_in']}→{row['tokens_out']} | {row['gflops_per_clip']:.1f} | {lat} | "
            f"{row['clips_per_s']:.3f} | {_fmt(row.get('speedup_vs_r0'))} | {_fmt(row.get('flops_ratio'))} | "
            f"{_fmt(row.get('efficiency'))} | {_fmt(row.get('compile_s'), '.1f')} | "
            f"{_fmt(device_mb, '.0f')} | {_fmt(row.get('rss_peak_delta_mb'), '.0f')} | "
            f"{_fmt(row.get('cpu_utilisation'), '.1f')} | "
            f"{row['loadavg_1m'][0]:.1f}–{row['loadavg_1m'][1]:.1f} |"
        )
    if report.get("skipped"):
        lines += ["", "Skipped (time budget or filters):", ""]
        lines += [f"* {s}" for s in report["skipped"]]
    if report["targets"]:
        lines += ["", "## Targets", "", "| target | model | schedule | batch | measured | required | met |",
                  "|---|---|---|---:|---:|---:|---|"]
        for t in report["targets"]:
            if "speedup" in t:
                measured = f"{t['speedup']:.2f}x (FLOPs ratio {t['flops_ratio']:.2f})"
                required = f"{t['required']:.2f}x"
            else:
                speeds = f"{t['jax_clips_per_s']:.3f} vs {t['torch_clips_per_s']:.3f} clips/s"
                measured = f"{t['ratio']:.2f}x ({speeds})"
                required = f"{TARGET_VS_TORCH:.2f}x"
            met = "yes" if t["met"] else "**no**"
            lines.append(
                f"| {t['target']} | {t['model']} | {t['schedule']} | {t['batch']} | {measured} | {required} "
                f"| {met} |"
            )
    xla_rows = [r for r in report["results"] if "xla_matmul_gmac" in r and not r.get("variant")]
    if xla_rows:
        lines += [
            "", "## XLA cost analysis vs the analytic count", "",
            "XLA CPU counts 2 flops per MAC in dots/convolutions; its per-op count (in GMACs, each op "
            "times the trip count of its loops) is compared with the analytic matmul MACs (total minus "
            "the LayerNorm terms). XLA's own module total counts a loop body once: `ops once` is the "
            "matmul part of that total, which undercounts tldr_jax's query-chunked attention "
            "(N > 2048: `lax.map` over 512-row chunks). `other` is XLA's elementwise/reduction/sort "
            "flops (exact GELU ~64 flops/element), `transc.` its exp/log/rsqrt count.", "",
            "| model | schedule | batch | analytic GMACs (matmul) | XLA matmul GMACs | XLA ops once GMACs "
            "| XLA total GFLOP | XLA other GFLOP | XLA transc. G |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in xla_rows:
            lines.append(
                f"| {r['model']} | {r['schedule']} | {r['batch']} | {r['analytic_matmul_gmac']:.3f} | "
                f"{r['xla_matmul_gmac']:.3f} | {_fmt(r.get('xla_matmul_once_gmac'), '.3f')} | "
                f"{r['xla_total_gflop']:.1f} | {r['xla_other_gflop']:.1f} | "
                f"{r['xla_transcendentals_g']:.2f} |"
            )
    lines += _context_breakdown(report["results"])
    prof = report.get("profile")
    if prof:
        lines += [
            "", f"## Where the time goes: {prof['model']} {prof['schedule']}, batch 1, per block (ms)", "",
            "Each piece is jitted on its own (median of "
            f"{prof['repeats']}); `sal-attn` is the extra cost of the pre-bias softmax + sharpness "
            "inside attention, `match` the bipartite plan (similarity matmul, argmax, argsort), "
            "`merge` the saliency-weighted scatter-sum, `merge step` the three as the block runs them "
            "(`tldr_jax.merge.merge_step`). Overhead = sal-attn + saliency + match + merge.",
            "",
            "| layer | tokens | r | attn | sal-attn | saliency | match | merge | merge step | MLP | block "
            "| block w/o merge | overhead / block |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in prof["layers"]:
            ms = lambda k, r=r: _fmt(r[k] * 1e3 if k in r else None, ".1f")
            lines.append(
                f"| {r['layer']} | {r['tokens_in']} | {r['r']} | {ms('attn')} | {ms('saliency_attn')} | "
                f"{ms('saliency')} | {ms('match')} | {ms('merge')} | {ms('merge_step')} | {ms('mlp')} | "
                f"{ms('block')} | "
                f"{ms('block_without_merge')} | {_fmt(r.get('merge_overhead_fraction'), '.1%')} |"
            )
        lines += [
            "",
            f"Merge overhead over the whole encoder: {prof['merge_overhead_s'] * 1e3:.0f} ms of "
            f"{prof['sum_of_blocks_s'] * 1e3:.0f} ms summed block time "
            f"({_fmt(prof['merge_overhead_fraction_of_encoder'], '.1%')}).",
        ]
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _context_breakdown(results: list[dict]) -> list[str]:
    """Markdown for the in-context variants: where the merging overhead goes inside the full program."""
    lines: list[str] = []
    for row in results:
        if row.get("variant") != "slice" or "latency_s" not in row:
            continue
        base = row["schedule"].split("|")[0]
        key = dict(model=row["model"], backend=row["backend"], batch=row["batch"])
        full = find(results, schedule=base, **key)
        r0 = find(results, schedule="r0", **key)
        sharp = find(results, schedule=f"{base}|sharpness+slice", **key)
        match = find(results, schedule=f"{base}|match+merge", **key)
        if full is None or r0 is None:
            continue
        t0, tf, ts = r0["latency_s"], full["latency_s"], row["latency_s"]
        if not lines:
            lines += [
                "", "## Where the merging time goes (in context, whole encoder compiled as one program)", "",
                "Same shapes, merge replaced: `slice` keeps the first N − r tokens (merging at zero cost), "
                "`sharpness+slice` adds the pre-bias softmax sharpness, `match+merge` runs bipartite "
                "matching + size-weighted merge without saliency. Overheads are differences of medians "
                "against `slice` (noisy: a few % of the total).", "",
                "| model | schedule | batch | r = 0 ms | vid-TLDR ms | slice ms | saliency attn ms "
                "| match+merge ms | total overhead ms | overhead / vid-TLDR time | ideal speed-up "
                "| measured speed-up |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
        sal = None if sharp is None else (sharp["latency_s"] - ts) * 1e3
        mm = None if match is None else (match["latency_s"] - ts) * 1e3
        lines.append(
            f"| {row['model']} | {base} | {row['batch']} | {t0 * 1e3:.0f} | {tf * 1e3:.0f} | "
            f"{ts * 1e3:.0f} | {_fmt(sal, '.0f')} | {_fmt(mm, '.0f')} | {(tf - ts) * 1e3:.0f} | "
            f"{(tf - ts) / tf:.1%} | {t0 / ts:.2f} | {t0 / tf:.2f} |"
        )
    return lines


def plot(report: dict[str, Any], path: Path, models: dict[str, ModelSpec]) -> bool:
    """Speed and FLOPs against a constant-r sweep, and measured speed-up against the FLOPs ratio."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    results = report["results"]
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(12, 4.6))
    swept = next((s for s in models.values() if s.sweep), None)
    if swept is not None:
        labels = ["r0", *swept.sweep]
        rows = [find(results, model=swept.key, backend="jax", batch=1, schedule=lb) for lb in labels]
        pts = [(dict(swept.schedules)[lb], r) for lb, r in zip(labels, rows) if r is not None]
        if pts:
            xs = [p[0] for p in pts]
            ax1.plot(xs, [p[1]["gflops_per_clip"] for p in pts], "o-", color="tab:blue", label="GFLOPs/clip")
            ax1.set_xlabel(f"constant r (tokens merged per layer), {swept.key}")
            ax1.set_ylabel("analytic GFLOPs per clip", color="tab:blue")
            ax2 = ax1.twinx()
            ax2.plot(xs, [p[1]["clips_per_s"] for p in pts], "s--", color="tab:red", label="tldr_jax clips/s")
            ax2.set_ylabel("tldr_jax clips/s (batch 1)", color="tab:red")
            ax1.set_title("Constant-r sweep: FLOPs and measured speed")
    merged = [r for r in results if "speedup_vs_r0" in r and r["schedule"] != "r0" and not r.get("variant")]
    style = {
        "jax": ("o", "tab:red"), "torch_ref": ("s", "tab:green"), "torch_ref_compile": ("^", "tab:purple"),
    }
    top = 1.0
    for backend, (marker, color) in style.items():
        for batch in sorted({r["batch"] for r in merged}):
            rows = [r for r in merged if r["backend"] == backend and r["batch"] == batch]
            if rows:
                xs = [r["flops_ratio"] for r in rows]
                ys = [r["speedup_vs_r0"] for r in rows]
                ax3.scatter(xs, ys, marker=marker, color=color, alpha=1.0 if batch == 1 else 0.5,
                            label=f"{backend} b{batch}")
                for r, x, y in zip(rows, xs, ys):
                    ax3.annotate(f"{r['model'].split('_')[0]} {r['schedule']}", (x, y), fontsize=6,
                                 xytext=(3, 3), textcoords="offset points")
                top = max(top, *(r["flops_ratio"] for r in rows), *(r["speedup_vs_r0"] for r in rows))
    grid = np.linspace(1.0, top * 1.05, 10)
    ax3.plot(grid, grid, "k-", lw=0.8, label="speed-up = FLOPs ratio")
    ax3.plot(grid, TARGET_EFFICIENCY * grid, "k:", lw=0.8,
             label=f"{TARGET_EFFICIENCY} x FLOPs ratio (target)")
    ax3.set_xlabel("FLOPs ratio (r = 0 / merged)")
    ax3.set_ylabel("measured speed-up vs r = 0")
    ax3.set_title("Merging: wall-clock speed-up vs FLOPs reduction")
    ax3.legend(fontsize=7)
    m = report["machine"]
    where = (f"{m['gpu']['name']}, {report['settings'].get('precision')}" if m.get("gpu") else
             f"{m['cpu_model']}, {m['cpus_usable']} CPUs (shared, load {m['loadavg_start'][0]:.1f})")
    fig.suptitle(f"{where}; {report['mode']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(report: dict[str, Any], out: Path, tag: str, models: dict[str, ModelSpec], final: bool) -> None:
    """Write ``<out>/<tag>.json`` (and, when ``final``, the ``.md`` tables and the ``.png`` plot)."""
    report.setdefault("targets", [])
    report.setdefault("wall_s", 0.0)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=1, default=str))
    if final:
        if report.get("profile", {}).get("error"):
            report.pop("profile")
        (out / f"{tag}.md").write_text(markdown(report))
        plot(report, out / f"{tag}.png", models)

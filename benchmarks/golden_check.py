"""Golden parity of ``tldr_jax.apply`` per dtype and matrix-product precision, on whatever device JAX uses.

``python -m benchmarks.golden_check [GOLDEN_DIR] [--gpu-tuning heuristic|tuned|xla]`` (default:
``$TLDR_GOLDEN_DIR`` or ``../shared/golden``, which must hold ``umt_tiny.pth``, ``golden_model.npz`` and
``golden_model_f64.npz``; ``apply``'s XLA options on a GPU as named) runs the official tiny UMT on every
golden schedule and prints

* float64: the max abs difference from the official code run in float64 (the parity test: 1e-10);
* float32 with ``precision="float32"`` (the default) and ``"tensorfloat32"``: the max abs distance to
  the float64 truth per schedule beside the official float32's own (the yardstick), the RMS distance
  over all schedules beside the official's (the tests' rule: at most ``conftest.F32_FACTOR`` times it),
  and the max abs difference from the official float32 outputs (``golden_model.npz``; not portable
  between machines at the 1e-5 level, printed to compare with older runs).

On a CPU both precisions are float32; on an NVIDIA GPU the second shows what TF32 costs in fidelity.
Exit status 1 if float64 misses 1e-10 or the default float32 misses the yardstick.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import (  # noqa: E402  (tests/ helpers)
    F32_FACTOR,
    F64_ATOL,
    OUTPUTS,
    as_float64,
    golden_output,
    golden_schedule,
    golden_schedules,
    golden_video,
    load_umt_tiny,
    official_f32_yardstick,
    rms_distance,
)

Outputs = dict[str, dict[str, np.ndarray]]


def run_golden(params: Any, truth: dict[str, np.ndarray], dtype=np.float32, **kwargs: Any) -> Outputs:
    """``{schedule: {"tokens", "pooled", "size"}}`` of ``tldr_jax.apply`` on the golden video.

    Args:
      params: the official tiny UMT (``conftest.load_umt_tiny``); cast to float64 for ``np.float64``.
      truth: the arrays of ``golden_model_f64.npz`` (video and schedules).
      dtype: ``np.float32`` or ``np.float64`` (run under ``jax.enable_x64``).
      **kwargs: passed to :func:`tldr_jax.apply` (e.g. ``precision``).
    """
    import jax
    import jax.numpy as jnp

    import tldr_jax

    outputs = {}
    with jax.enable_x64(dtype == np.float64):
        if dtype == np.float64:
            params = as_float64(params)
        video = jnp.asarray(golden_video(truth, dtype))
        for name in golden_schedules(truth):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", tldr_jax.ScheduleCapWarning)
                out = tldr_jax.apply(params, video, golden_schedule(truth, name), **kwargs)
            outputs[name] = {key: np.asarray(getattr(out, key)) for key in OUTPUTS}
    return outputs


def max_abs(outputs: Outputs, ref: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per schedule and output: max abs difference from ``ref`` (``inf`` where the shapes differ)."""
    errors = {}
    for name, row in outputs.items():
        errors[name] = {}
        for key, ours in row.items():
            want = golden_output(ref, name, key)
            diff = np.asarray(ours, np.float64) - want if ours.shape == want.shape else None
            errors[name][key] = float(np.abs(diff).max()) if diff is not None else float("inf")
    return errors


def same_shapes(outputs: Outputs, ref: dict[str, np.ndarray]) -> bool:
    """Whether every output has the reference's shape (the same token counts)."""
    return all(row[k].shape == golden_output(ref, n, k).shape for n, row in outputs.items() for k in row)


def _per_schedule(errors: dict[str, dict[str, float]], key: str) -> str:
    return ", ".join(f"{name} {row[key]:.1e}" for name, row in errors.items())


def _worst(errors: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{key} {max(row[key] for row in errors.values()):.2e}" for key in OUTPUTS)


def main(argv: list[str] | None = None) -> int:
    """Print the tables; exit 1 if float64 misses 1e-10 or float32 misses the official yardstick."""
    import argparse

    import jax

    from tldr_jax.options import GPU_TUNINGS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.golden_check")
    parser.add_argument("golden_dir", nargs="?", default=None)
    parser.add_argument("--gpu-tuning", default="heuristic", choices=GPU_TUNINGS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    tuning = args.gpu_tuning
    default = Path(__file__).resolve().parents[2] / "shared" / "golden"
    golden_dir = Path(args.golden_dir or os.environ.get("TLDR_GOLDEN_DIR") or default)
    missing = [f for f in ("umt_tiny.pth", "golden_model.npz", "golden_model_f64.npz")
               if not (golden_dir / f).is_file()]
    if missing:
        print(f"golden_check: {', '.join(missing)} not found in {golden_dir}; pass the folder of the golden "
              f"files as the first argument or set TLDR_GOLDEN_DIR.", file=sys.stderr)
        return 2
    params = load_umt_tiny(golden_dir / "umt_tiny.pth")
    with np.load(golden_dir / "golden_model.npz") as data:
        official = {k: data[k] for k in data.files}
    with np.load(golden_dir / "golden_model_f64.npz") as data:
        truth = {k: data[k] for k in data.files}

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); gpu_tuning {tuning}; "
          f"golden: {golden_dir}")
    f64 = run_golden(params, truth, np.float64, gpu_tuning=tuning)
    f64_errors = max_abs(f64, truth)
    f64_ok = same_shapes(f64, truth) and max(max(r.values()) for r in f64_errors.values()) <= F64_ATOL
    print(f"float64 vs the official float64: max abs {_worst(f64_errors)} (parity tolerance {F64_ATOL:g}): "
          f"{'ok' if f64_ok else 'MISSED'}")

    official_runs = {n: {k: golden_output(official, n, k) for k in OUTPUTS} for n in golden_schedules(truth)}
    official_errors = max_abs(official_runs, truth)
    here = {n: truth[f"{n}/tokens_f32_here"] for n in golden_schedules(truth)}
    yardstick = official_f32_yardstick(truth, official)
    print("official float32 vs the float64 truth (yardstick), tokens max abs per schedule: "
          f"golden_model.npz {_per_schedule(official_errors, 'tokens')}; tokens_f32_here "
          + ", ".join(f"{n} {np.abs(t - truth[f'{n}/tokens']).max():.1e}" for n, t in here.items()))
    print(f"  official max abs {_worst(official_errors)}; RMS over all schedules (the larger official run): "
          + ", ".join(f"{k} {v:.2e}" for k, v in yardstick.items()))

    f32_ok = False
    for precision in ("float32", "tensorfloat32"):
        outputs = run_golden(params, truth, precision=precision, gpu_tuning=tuning)
        errors = max_abs(outputs, truth)
        shapes_ok = same_shapes(outputs, truth)
        rms = rms_distance(outputs, truth) if shapes_ok else dict.fromkeys(OUTPUTS, float("inf"))
        within = shapes_ok and all(rms[k] <= F32_FACTOR * yardstick[k] for k in OUTPUTS)
        if precision == "float32":
            f32_ok = within
        print(f"precision={precision:14s} vs the float64 truth: max abs {_worst(errors)}; tokens per "
              f"schedule: {_per_schedule(errors, 'tokens')}")
        print("  RMS over all schedules: " + ", ".join(
            f"{k} {rms[k]:.2e} ({rms[k] / yardstick[k]:.2f}x official)" for k in OUTPUTS)
              + f"; within {F32_FACTOR:g}x: {'yes' if within else 'NO'}")
        print(f"  vs the official float32 golden_model.npz: max abs {_worst(max_abs(outputs, official))}")
    print(f"float64 parity: {'yes' if f64_ok else 'NO'}; float32 within {F32_FACTOR:g}x the official float32 "
          f"(RMS): {'yes' if f32_ok else 'NO'}")
    return 0 if f64_ok and f32_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

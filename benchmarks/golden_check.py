"""Golden parity of ``tldr_jax.apply`` per matrix-product precision, on whatever device JAX uses.

``python -m benchmarks.golden_check [GOLDEN_DIR]`` (default: ``$TLDR_GOLDEN_DIR`` or
``../shared/golden``) runs the official tiny UMT (``umt_tiny.pth``) on every schedule of
``golden_model.npz`` with ``precision="float32"`` (the default) and ``"tensorfloat32"``, and prints the
max abs difference from the official float32 outputs, and whether the token counts agree. On a CPU
both precisions are float32; on an NVIDIA GPU the second shows what TF32 costs in fidelity.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import MODEL_ATOL, golden_schedules, load_umt_tiny  # noqa: E402  (tests/ helpers)


def golden_errors(
    params: Any, gold: dict[str, np.ndarray], precision: str | None
) -> dict[str, dict[str, float]]:
    """Per schedule: max abs error of tokens, pooled and size against the golden data.

    Args:
      params: the official tiny UMT (``conftest.load_umt_tiny``).
      gold: the arrays of ``golden_model.npz``.
      precision: passed to :func:`tldr_jax.apply`.

    Returns:
      ``{schedule: {"tokens": err, "pooled": err, "size": err}}`` (``inf`` where the shapes differ).
    """
    import jax.numpy as jnp

    import tldr_jax

    video = jnp.asarray(gold["video_bcthw"].transpose(0, 2, 3, 4, 1))
    errors = {}
    for name in golden_schedules(gold):
        sched = tuple(float(v) for v in gold[f"{name}/schedule"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", tldr_jax.ScheduleCapWarning)
            out = tldr_jax.apply(params, video, sched, precision=precision)
        row = {}
        for key, ours, ref in (("tokens", out.tokens, gold[f"{name}/tokens"]),
                               ("pooled", out.pooled, gold[f"{name}/pooled"][:, 0]),
                               ("size", out.size, gold[f"{name}/size"])):
            ours = np.asarray(ours)
            row[key] = float(np.abs(ours - ref).max()) if ours.shape == ref.shape else float("inf")
        errors[name] = row
    return errors


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 1 if the default (float32) precision misses the tests' tolerance."""
    import jax

    args = sys.argv[1:] if argv is None else argv
    default = Path(__file__).resolve().parents[2] / "shared" / "golden"
    golden_dir = Path(args[0] if args else os.environ.get("TLDR_GOLDEN_DIR") or default)
    params = load_umt_tiny(golden_dir / "umt_tiny.pth")
    with np.load(golden_dir / "golden_model.npz") as data:
        gold = {k: data[k] for k in data.files}

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); golden: {golden_dir}")
    worst_default = 0.0
    for precision in ("float32", "tensorfloat32"):
        errors = golden_errors(params, gold, precision)
        worst = max(max(row.values()) for row in errors.values())
        if precision == "float32":
            worst_default = worst
        cells = ", ".join(f"{name} {row['tokens']:.1e}" for name, row in errors.items())
        per_output = ", ".join(f"{key} {max(row[key] for row in errors.values()):.2e}"
                               for key in ("tokens", "pooled", "size"))
        print(f"precision={precision:14s} max abs error {worst:.2e} ({per_output}; tokens per schedule: "
              f"{cells})")
    ok = worst_default <= MODEL_ATOL
    print(f"float32 within the tests' tolerance {MODEL_ATOL:g}: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

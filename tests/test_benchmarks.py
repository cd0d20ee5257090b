"""The benchmark runner's plan, device checks and report (no timing: timings live in benchmarks/)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("benchmarks.run") is None,
                                reason="benchmarks/ not present")



def _groups(plan):
    return [(g.model, g.backend, g.batch, g.labels) for g in plan]


def test_plan_has_no_duplicate_configurations():
    from benchmarks.run import BACKENDS, build_plan, full_models

    for batches in ([1], [1, 8]):
        seen = set()
        plan = build_plan(full_models(), False, batches, None, BACKENDS)
        for model, backend, batch, labels in _groups(plan):
            for label in labels:
                assert (model, backend, batch, label) not in seen
                seen.add((model, backend, batch, label))


def test_gpu_plan_repeats_more_and_times_pytorch_at_the_large_batch():
    from benchmarks.run import BACKENDS, build_plan, full_models

    cpu = build_plan(full_models(), False, [1, 8], None, BACKENDS)
    gpu = build_plan(full_models(), False, [1, 8], None, BACKENDS, device="gpu")
    assert all(g.repeats == 20 and g.warmup == 3 for g in gpu)
    assert max(g.repeats for g in cpu) < 20
    big = {(m, b) for m, b, batch, _ in _groups(gpu) if batch == 8}
    assert {("videomae_b", "torch_ref"), ("videomae_b", "hf"), ("umt_b16", "torch_ref")} <= big
    umt_ref_8 = [lb for m, b, batch, lbs in _groups(gpu) if (m, b, batch) == ("umt_b16", "torch_ref", 8)
                 for lb in lbs]
    assert sorted(umt_ref_8) == ["msrvtt", "r0"]


def test_gpu_device_missing_is_a_clear_error():
    import jax

    from benchmarks.run import configure_device

    configure_device("cpu", "tf32")  # nothing to check on CPU
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="--device cpu"):
        configure_device("gpu", "fp32")


def _report(gpu):
    row = {
        "model": "umt_b16", "backend": "jax", "schedule": "r0", "variant": None, "batch": 1,
        "tokens_in": 2352, "tokens_out": 2352, "gflops_per_clip": 303.3, "latency_s": 0.0123,
        "latency_min_s": 0.012, "latency_max_s": 0.013, "clips_per_s": 81.3, "compile_s": 3.0,
        "xla_peak_mb": 400.0, "cpu_utilisation": 1.0, "loadavg_1m": [0.1, 0.2],
    }
    machine = {
        "cpu_model": "Host CPU", "cpu_family_model": "family 1 model 2", "cpus_usable": 16,
        "cpu_flags": ["avx2"], "mem_total_gb": 128, "loadavg_start": [0.1, 0.1, 0.1],
        "versions": {"jax": "0", "torch": "0", "transformers": "0"}, "torch_threads": 16,
        "date_utc": "2026-11-26T00:00:00Z", "gpu": gpu,
    }
    return {"mode": "full", "machine": machine, "results": [row], "targets": [], "wall_s": 60.0,
            "settings": {"omp_wait_policy": "PASSIVE", "precision": "fp32"},
            "code": {"git_head": "abc", "tldr_jax_dirty": False, "tldr_jax_sha256": "0", "snapshot": True}}


def test_markdown_names_the_gpu_and_precision():
    from benchmarks.run import markdown

    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.1, "multiprocessors": 132, "cuda": "13.0",
           "jax_device_kind": "NVIDIA H100 80GB HBM3"}
    text = markdown(_report(gpu))
    assert "**GPU: NVIDIA H100 80GB HBM3**" in text and "**fp32**" in text
    assert "XLA / CUDA MB" in text and "| 12.3 [12.0–13.0] |" in text  # sub-100 ms: one decimal
    cpu_text = markdown(_report(None))
    assert "GPU" not in cpu_text and cpu_text.count("Machine: Host CPU") == 1

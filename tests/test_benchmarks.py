"""The benchmark runner's plan, device checks and report (no timing: timings live in benchmarks/)."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("benchmarks.run") is None,
                                reason="benchmarks/ not present")


def _groups(plan):
    return [(g.model, g.backend, g.batch, g.labels) for g in plan]


def test_plan_has_no_duplicate_configurations():
    from benchmarks.plan import BACKENDS, build_plan, full_models

    for batches in ([1], [1, 8]):
        seen = set()
        plan = build_plan(full_models(), False, batches, None, BACKENDS)
        for model, backend, batch, labels in _groups(plan):
            for label in labels:
                assert (model, backend, batch, label) not in seen
                seen.add((model, backend, batch, label))


def test_gpu_plan_repeats_more_and_times_pytorch_at_the_large_batch():
    from benchmarks.plan import BACKENDS, build_plan, full_models

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

    from benchmarks.machine import configure_device

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
    from benchmarks.report import markdown

    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.1, "multiprocessors": 132, "cuda": "13.0",
           "jax_device_kind": "NVIDIA H100 80GB HBM3"}
    text = markdown(_report(gpu))
    assert "**GPU: NVIDIA H100 80GB HBM3**" in text and "**fp32**" in text
    assert "XLA / CUDA MB" in text and "| 12.3 [12.0–13.0] |" in text  # sub-100 ms: one decimal
    cpu_text = markdown(_report(None))
    assert "GPU" not in cpu_text and cpu_text.count("Machine: Host CPU") == 1


def test_malloc_is_tuned_by_default_and_recorded():
    """Both benchmarks keep freed memory unless told otherwise (PyTorch's page faults, README)."""
    import ctypes.util
    import subprocess
    import sys

    from benchmarks.run import parse_args

    assert parse_args([]).malloc == "tuned" and parse_args(["--malloc", "default"]).malloc == "default"
    with pytest.raises(SystemExit):
        parse_args(["--malloc", "jemalloc"])
    if ctypes.util.find_library("c") is None:
        pytest.skip("no C library to tune")
    code = "from benchmarks.machine import tune_malloc; print(tune_malloc(), tune_malloc(2**20))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_markdown_names_bfloat16_on_cpu_and_gpu():
    from benchmarks.report import markdown

    gpu = {"name": "NVIDIA H200", "memory_gb": 139.8, "multiprocessors": 132, "cuda": "13.0",
           "jax_device_kind": "NVIDIA H200"}
    for device in (gpu, None):
        report = _report(device)
        report["settings"]["precision"] = "bf16"
        text = markdown(report)
        assert "**bfloat16** products" in text and "torch.autocast" in text, device
        assert "**bf16**" not in text


def test_bf16_precision_runs_apply_in_bfloat16_and_pytorch_under_autocast():
    """``--precision bf16``: tldr_jax runs apply(dtype=bfloat16) (its output moves from the float32
    one by bfloat16 rounding, not more), PyTorch calls run under autocast, merge variants refuse."""
    import numpy as np

    torch = pytest.importorskip("torch")
    from benchmarks.backends import Context, _torch_call, prepare_jax
    from benchmarks.plan import quick_models

    spec = quick_models()["umt_tiny"]
    outputs = {}
    for precision in ("fp32", "bf16"):
        ctx = Context(spec, 1, precision=precision)
        outputs[precision] = np.asarray(prepare_jax(ctx, "r0").call()[1], np.float64)
    rel = np.linalg.norm(outputs["bf16"] - outputs["fp32"]) / np.linalg.norm(outputs["fp32"])
    assert 1e-4 < rel < 5e-2, rel
    with pytest.raises(ValueError, match="float32 only"):
        prepare_jax(Context(spec, 1, precision="bf16"), "r0|slice")
    layer = torch.nn.Linear(4, 4)
    assert _torch_call(layer, torch.ones(1, 4), bf16=True)().dtype == torch.bfloat16
    assert _torch_call(layer, torch.ones(1, 4))().dtype == torch.float32


def _probe_result(r0_ms, merged_ms=None):
    rows = [{"schedule": "r0", "latency_s": r0_ms / 1e3, "compile_s": 2.0}]
    if merged_ms is not None:
        rows.append({"schedule": "msrvtt", "latency_s": merged_ms / 1e3, "compile_s": 9.0})
    gemms = [{"name": n, "tflops": 1.5} for n in ("qkv", "mlp_fc1", "mlp_fc2", "attn_logits", "attn_values")]
    return {"apply": rows, "gemms": gemms, "device_kind": "NVIDIA H200"}


def test_xla_probe_picks_the_fastest_set_that_compiles_fast():
    from benchmarks.xla_probe import pick_best

    results = {"notune": _probe_result(81.6), "cublas": _probe_result(22.0, 15.0),
               "default": _probe_result(20.0), "broken": {"error": "did not finish in 110 s"}}
    fast = {"notune": True, "cublas": True, "default": False, "broken": True}
    assert pick_best(results, fast) == "cublas"  # "default" is faster but compiles too slowly
    assert pick_best(results, dict(fast, default=True)) == "default"
    assert pick_best({"broken": {"error": "x"}, "default": _probe_result(20.0)}, fast) is None


def test_xla_probe_report_has_a_row_per_set_and_the_pytorch_reference():
    from benchmarks.xla_probe import gemm_shapes, markdown

    shapes = gemm_shapes(quick=False)
    assert dict(shapes)["mlp_fc1"] == (1, 2352, 768, 3072)  # UMT-B/16, 12 x 224^2: 2352 tokens, width 768
    assert dict(shapes)["attn_logits"] == (12, 2352, 64, 2352)
    report = {"machine": "NVIDIA H200", "model": "UMT-B/16", "gemm_shapes": shapes, "best": "cublas",
              "sets": {"cublas": {"flags": "--xla_gpu_enable_triton_gemm=false", "precision": "fp32"},
                       "default": {"flags": "", "precision": "fp32"}},
              "results": {"cublas": _probe_result(22.0, 15.0),
                          "default": {"error": "did not finish in 110 s"}},
              "torch_gemms": [{"tflops": 40.0} for _ in shapes]}
    text = markdown(report)
    assert "**cublas**" in text and "NVIDIA H200" in text
    assert "| cublas | `--xla_gpu_enable_triton_gemm=false` | fp32 | 22.0 | 2.0 | 15.0 | 9.0 |" in text
    assert "| default | `(none)` | fp32 | did not finish in 110 s |" in text
    assert "| PyTorch `bmm` |" in text and "40.0" in text


def test_xla_probe_sets_are_apply_settings_and_report_the_cache():
    """The default sets are apply's gpu_tuning settings (plus XLA's defaults with the fusion autotuner
    off); a set run again and the PyTorch rows get their own rows, with cache hits and peak memory."""
    from benchmarks.xla_probe import DEFAULT_SETS, FLAG_SETS, gemm_shapes, markdown

    assert DEFAULT_SETS == ("heuristic", "tuned", "fusion_off")
    assert [FLAG_SETS[n][4] for n in DEFAULT_SETS] == ["heuristic", "tuned", "xla"]
    assert FLAG_SETS["heuristic"][0] == FLAG_SETS["tuned"][0] == ""  # per-program options, no XLA_FLAGS
    again = dict(_probe_result(20.0, 12.0), cache_hits=2, cache_misses=0, peak_device_mb=1234.0)
    again["apply"][0]["xla_peak_mb"] = 400.0
    torch_row = {"apply": [{"schedule": "r0", "latency_s": 0.021}], "gemms": [], "device_kind": "NVIDIA H200"}
    report = {"machine": "NVIDIA H200", "model": "UMT-B/16", "gemm_shapes": gemm_shapes(quick=False),
              "best": "tuned",
              "sets": {"tuned": {"flags": "", "precision": "fp32", "gpu_tuning": "tuned"},
                       "torch_eager": {"flags": "", "precision": "fp32", "gpu_tuning": "PyTorch eager"}},
              "results": {"tuned": _probe_result(20.0, 12.0), "tuned (again)": again,
                          "torch_eager": torch_row}}
    text = markdown(report)
    assert "| tuned (again) | `(none)` | fp32 | 20.0 | 2.0 | 12.0 | 9.0 |" in text
    assert "| tuned | 2 / 0 | 400 / – | 1234 |" in text
    assert "| torch_eager | `(none)` | fp32 | 21.0 |" in text and "PyTorch eager" in text


def test_xla_probe_rejects_an_unknown_flag_set():
    from benchmarks.xla_probe import main

    with pytest.raises(SystemExit, match="unknown flag set.*'fast'.*choose from"):
        main(["--device", "cpu", "--sets", "cublas,fast"])
    with pytest.raises(SystemExit, match="unknown PyTorch row.*'jit'"):
        main(["--device", "cpu", "--torch", "eager,jit"])


@pytest.mark.slow  # over 30 s on two busy cores (compiles in child processes)
def test_xla_probe_runs_end_to_end_on_cpu(tmp_path, capsys):
    from benchmarks.xla_probe import FLAG_SETS, main

    report = main(["--device", "cpu", "--quick", "--repeats", "1", "--sets", "cublas",
                   "--out", str(tmp_path)])
    res = report["results"]["cublas"]
    assert "error" not in res, res
    assert [row["schedule"] for row in res["apply"]] == ["r0", "msrvtt-scaled"]
    assert all(row["latency_s"] > 0 for row in res["apply"])
    assert [g["name"] for g in res["gemms"]] == [g["name"] for g in report["torch_gemms"]]
    assert report["best"] == "cublas"
    assert (tmp_path / "xla_probe.json").exists() and (tmp_path / "xla_probe.md").exists()
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"XLA_FLAGS={FLAG_SETS['cublas'][0]}"


def test_variants_replace_the_merge_step_of_the_encoder():
    import numpy as np

    import tldr_jax
    from benchmarks.backends import variant_forward
    from benchmarks.plan import VARIANTS

    tiny = dict(depth=3, embed_dim=32, num_heads=2, mlp_dim=64, num_frames=4, img_size=32)
    params = tldr_jax.init(0, "umt_b16", **tiny)
    sched = tldr_jax.schedule(params, (6, 4))
    video = np.random.default_rng(0).standard_normal((1, 4, 32, 32, 3)).astype(np.float32)
    for variant in VARIANTS:
        tokens, pooled, sharp_sum = variant_forward(params.tree, video, cfg=params.config, sched=sched,
                                                    variant=variant)
        assert tokens.shape == (1, sched.tokens[-1], 32) and pooled.shape == (1, 32)
        assert (float(sharp_sum) != 0) == (variant == "sharpness+slice"), variant
    with pytest.raises(ValueError, match="variant"):
        variant_forward(params.tree, video, cfg=params.config, sched=sched, variant="x")


def test_ceiling_lower_bound_adds_each_kind_of_work_at_its_rate():
    """The bound is linear FLOPs at the GEMM rate + N^2 D per layer at the QK^T / PV rates of that N +
    H N^2 exps; norms and merge count as free (computed here from the schedule, not the breakdown)."""
    import tldr_jax
    from benchmarks.ceiling import lower_bound
    from tldr_jax.flops import flops_breakdown

    params = tldr_jax.init(0, "umt_b16", depth=3, embed_dim=64, num_heads=2, mlp_dim=128, num_frames=4,
                           img_size=32)
    cfg, r = params.config, (6, 4, 0)
    tokens = tldr_jax.schedule(params, r).tokens[:-1]
    assert len(set(tokens)) == 3
    bd = flops_breakdown(params, r=r)
    rates = {"gemm": 2.0, "qk": {n: 4.0 for n in tokens}, "pv": {n: 8.0 for n in tokens}, "exp": 0.5}
    got = lower_bound(bd, cfg.num_heads, rates)
    attn = sum(n * n * cfg.embed_dim for n in tokens)  # MACs of QK^T (and of PV) over the layers
    assert got["qk_s"] == pytest.approx(2 * attn / 4e9, rel=1e-12)
    assert got["pv_s"] == pytest.approx(2 * attn / 8e9, rel=1e-12)
    assert got["exp_s"] == pytest.approx(sum(cfg.num_heads * n * n for n in tokens) / 0.5e9, rel=1e-12)
    other = bd["components"]["norm"] + bd["components"]["merge"]  # norm holds the final and pool norms
    linear = bd["total"] - 2 * attn - other
    assert got["linear_s"] == pytest.approx(2 * linear / 2e9, rel=1e-12)
    assert got["total_s"] == pytest.approx(got["linear_s"] + got["qk_s"] + got["pv_s"] + got["exp_s"])
    del rates["qk"][tokens[1]]
    with pytest.raises(KeyError, match=f"no qk rate for N = {tokens[1]} tokens"):
        lower_bound(bd, cfg.num_heads, rates)


def test_ceiling_probe_rejects_an_unknown_precision():
    from benchmarks.ceiling import probe_rates

    with pytest.raises(ValueError, match="precision must be 'f32' or 'bf16', got 'fp8'"):
        probe_rates([16], 2, 8, "fp8")

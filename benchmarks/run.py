"""Throughput, latency, compile time and memory of tldr_jax against PyTorch baselines, on CPU or GPU.

Run ``python -m benchmarks.run --quick`` (tiny models, batch 1, a CI-sized check: < 2 minutes) or
``python -m benchmarks.run`` (UMT-B/16 12x224^2 and VideoMAE-B 16x224^2: the README table, kept under
a ``--budget-min`` time budget). Results go to ``benchmarks/results/<tag>.{json,md,png}``.
``--device gpu`` runs the same plan on the first CUDA GPU (both frameworks; more repeats), with
``--precision fp32`` (full float32 matrix products in both: tldr_jax's default, the official numerics)
or ``--precision tf32`` (``tldr_jax.apply(precision="tensorfloat32")`` and PyTorch's ``allow_tf32``).
The merge similarity is float32 either way.

Backends:

* ``jax``: :func:`tldr_jax.apply`, AOT-compiled (``jax.jit(...).lower(...).compile()``), so the
  compile time is measured separately from the steady state;
* ``torch_ref`` / ``torch_ref_compile``: the PyTorch reference with the *same* vid-TLDR merging and
  the same weights (``benchmarks/torch_reference.py``), eager and ``torch.compile(dynamic=False)``;
* ``hf`` / ``hf_compile``: Hugging Face ``transformers`` ``VideoMAEForVideoClassification``
  (no merging: r = 0 only), eager and ``torch.compile``.

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
import functools
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Default output directory: ``benchmarks/results`` in a source checkout; ``./benchmark_results`` when
#: the benchmarks run from an installed package (``tldr-jax bench`` anywhere), not site-packages.
RESULTS_DIR = (
    Path(__file__).resolve().parent / "results"
    if (Path(__file__).resolve().parents[1] / "pyproject.toml").is_file()
    else Path("benchmark_results")
)
BACKENDS = ("jax", "torch_ref", "torch_ref_compile", "hf", "hf_compile")
UMT_PRESETS = ("msrvtt", "msvd", "activitynet")
#: Published UMT-B MSRVTT numbers: 303.3 -> 178.0 GFLOPs (vid-TLDR Figure 1).
TARGET_EFFICIENCY = 0.9
TARGET_VS_TORCH = 1.5


# --------------------------------------------------------------------------------------------------
# Machine and load.
# --------------------------------------------------------------------------------------------------


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    return info


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU, GPU (``device="gpu"``), memory, load and library versions."""
    import jax
    import torch

    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
    try:
        mem_total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        mem_total = None
    versions = {"python": platform.python_version(), "jax": jax.__version__, "torch": torch.__version__}
    for name in ("jaxlib", "flax", "transformers", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {
        "cpu_model": cpu.get("model name", platform.processor()),
        "cpu_family_model": f"family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}",
        "cpu_flags": [f for f in wanted if f in flags],
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gb": None if mem_total is None else round(mem_total / 2**30, 1),
        "loadavg_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "jax_devices": [str(d) for d in jax.devices()],
        "device": device,
        "gpu": _gpu_info() if device == "gpu" else None,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _gpu_info() -> dict[str, Any]:
    """Name, memory and driver of the first CUDA device, as PyTorch and JAX see it."""
    import jax
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "memory_gb": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "jax_device_kind": jax.devices()[0].device_kind,
        "cuda": torch.version.cuda,
    }


def configure_device(device: str, precision: str, use_torch: bool = True) -> None:
    """Check that the device exists and set PyTorch's float32 matrix-product precision.

    ``use_torch=False`` (JAX worker processes) leaves PyTorch unimported, so that its CUDA libraries
    are not loaded beside XLA's. JAX's precision is ``tldr_jax.apply(precision=...)`` (prepare_jax).

    Raises:
      SystemExit: ``device="gpu"`` without a CUDA GPU visible to JAX (and PyTorch, when used).
    """
    import jax

    if device != "gpu":
        return
    cuda_torch = True
    if use_torch:
        import torch

        cuda_torch = torch.cuda.is_available()
    if jax.default_backend() != "gpu" or not cuda_torch:
        raise SystemExit(
            f"--device gpu needs a CUDA GPU for JAX (default backend: {jax.default_backend()!r})"
            + (f" and PyTorch (cuda available: {cuda_torch})" if use_torch else "")
            + "; install jax[cuda] and a CUDA torch, or run with --device cpu."
        )
    if use_torch:
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def code_version(snapshot: Path | None = None) -> dict[str, Any]:
    """Git commit and a digest of the ``tldr_jax`` sources benchmarked (the tree may be dirty)."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(((snapshot or root) / "tldr_jax").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "tldr_jax"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = None, ""
    return {"git_head": head, "tldr_jax_dirty": bool(dirty), "tldr_jax_sha256": digest.hexdigest()[:16],
            "snapshot": snapshot is not None}


def snapshot_sources(dest: Path) -> Path:
    """Copy ``tldr_jax`` and ``benchmarks`` into ``dest`` so that every worker of a run imports the same
    code even while the working tree is being edited."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for package in ("tldr_jax", "benchmarks"):
        shutil.copytree(root / package, dest / package, ignore=ignore)
    return dest


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# What to run.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: a tldr_jax architecture plus overrides, and its merge schedules.

    Attributes:
      key: name used in results.
      arch, overrides: ``tldr_jax.init(seed, arch, **overrides)``.
      schedules: label -> ``r`` (anything :func:`tldr_jax.schedule` takes).
      main: label of the headline merged schedule (the speed-up target is checked on it).
      sweep: labels forming the constant-r sweep of the plot.
      hf: the model has a Hugging Face VideoMAE counterpart.
    """

    key: str
    arch: str
    overrides: tuple[tuple[str, Any], ...]
    schedules: tuple[tuple[str, Any], ...]
    main: str
    sweep: tuple[str, ...] = ()
    hf: bool = False

    def config(self):
        from tldr_jax import get_config

        return get_config(self.arch, **dict(self.overrides))

    def schedule(self, label: str):
        """The resolved schedule of a label (``"msrvtt"``, or a variant ``"msrvtt|slice"``)."""
        import tldr_jax

        return tldr_jax.schedule(self.config(), dict(self.schedules)[label.split("|")[0]])


@dataclasses.dataclass(frozen=True)
class Group:
    """Configurations timed together, round-robin: one model, one backend, one batch size."""

    model: str
    backend: str
    batch: int
    labels: tuple[str, ...]
    repeats: int
    warmup: int


def _scaled(preset: str, num_tokens: int) -> tuple[int, ...]:
    """A UMT-B preset with its counts scaled to a model with ``num_tokens`` tokens."""
    from tldr_jax.schedule import PRESETS

    return tuple(max(1, round(c * num_tokens / 2352)) for c in PRESETS["umt_b16"][preset])


def _videomae_solved(arch: str, overrides: dict[str, Any], reduction: float) -> tuple[int, ...]:
    import tldr_jax

    return tldr_jax.solve_schedule(tldr_jax.get_config(arch, **overrides), reduction=reduction)


def full_models() -> dict[str, ModelSpec]:
    """UMT-B/16 (12 x 224^2, the vid-TLDR setting) and VideoMAE-B (16 x 224^2)."""
    sweep = (("const50", 50), ("const100", 100), ("const150", 150))
    return {
        "umt_b16": ModelSpec(
            key="umt_b16",
            arch="umt_b16",
            overrides=(),
            schedules=(("r0", 0),) + tuple((p, p) for p in UMT_PRESETS) + sweep,
            main="msrvtt",
            sweep=tuple(label for label, _ in sweep),
        ),
        "videomae_b": ModelSpec(
            key="videomae_b",
            arch="videomae_b",
            overrides=(),
            schedules=(("r0", 0), ("solve-40%", _videomae_solved("videomae_b", {}, 0.4))),
            main="solve-40%",
            hf=True,
        ),
    }


def quick_models() -> dict[str, ModelSpec]:
    """Tiny stand-ins with the same code paths (CI-sized)."""
    umt = dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768, num_frames=8, img_size=112)
    vmae = dict(depth=4, embed_dim=192, num_heads=3, mlp_dim=768, num_frames=8, img_size=112)
    n_umt = 8 * 7 * 7
    sweep = (("const8", 8), ("const16", 16), ("const32", 32))
    return {
        "umt_tiny": ModelSpec(
            key="umt_tiny",
            arch="umt_b16",
            overrides=tuple(umt.items()),
            schedules=(("r0", 0), ("msrvtt-scaled", _scaled("msrvtt", n_umt))) + sweep,
            main="msrvtt-scaled",
            sweep=tuple(label for label, _ in sweep),
        ),
        "videomae_tiny": ModelSpec(
            key="videomae_tiny",
            arch="videomae_b",
            overrides=tuple(vmae.items()),
            schedules=(("r0", 0), ("solve-40%", _videomae_solved("videomae_b", vmae, 0.4))),
            main="solve-40%",
            hf=True,
        ),
    }


def build_plan(
    models: dict[str, ModelSpec], quick: bool, batches: Sequence[int], repeats: int | None,
    backends: Sequence[str], device: str = "cpu", schedules: Sequence[str] | None = None,
) -> list[Group]:
    """The groups to run, most important first (a time budget drops the tail).

    On a GPU every group gets 20 timed rounds after 3 warm-up calls (a call takes milliseconds), and
    the PyTorch baselines also run at the large batch.
    """
    plan: list[Group] = []
    gpu = device == "gpu"

    def add(model: str, backend: str, batch: int, labels: Sequence[str], reps: int, warm: int) -> None:
        if gpu:
            reps, warm = 20, 3
        if model in models and backend in backends and batch in batches:
            known = dict(models[model].schedules)
            keep = tuple(lb for lb in labels if lb.split("|")[0] in known)
            done = {lb for g in plan if (g.model, g.backend, g.batch) == (model, backend, batch)
                    for lb in g.labels}
            keep = tuple(lb for lb in keep if lb not in done)  # big == 1: no second batch-1 group
            if schedules is not None:
                keep = tuple(lb for lb in keep if lb in schedules)
            if keep:
                plan.append(Group(model, backend, batch, keep, repeats or reps, warm))

    big = max(batches)
    if quick:
        umt, vmae = "umt_tiny", "videomae_tiny"
        umt_all = [lb for lb, _ in quick_models()[umt].schedules]
        add(umt, "jax", 1, umt_all + [f"msrvtt-scaled|{v}" for v in VARIANTS], 5, 1)
        add(umt, "torch_ref", 1, ["r0", "msrvtt-scaled"], 5, 1)
        add(vmae, "jax", 1, ["r0", "solve-40%"], 5, 1)
        add(vmae, "hf", 1, ["r0"], 5, 1)
        add(vmae, "torch_ref", 1, ["r0", "solve-40%"], 5, 1)
        add(umt, "torch_ref_compile", 1, ["msrvtt-scaled"], 5, 1)
        add(vmae, "hf_compile", 1, ["r0"], 5, 1)
        if big > 1:
            add(umt, "jax", big, ["r0", "msrvtt-scaled"], 3, 1)
        return plan
    umt, vmae = "umt_b16", "videomae_b"
    variants = [f"msrvtt|{v}" for v in VARIANTS]
    # Full size: a JAX call is already AOT-compiled, so the round-robin's first round is the warm-up
    # and the median of 3 rounds drops it; eager PyTorch gets one extra warm-up call.
    add(umt, "jax", 1, ["r0", *UMT_PRESETS, "const50", "const100", "const150", *variants], 3, 0)
    add(umt, "torch_ref", 1, ["r0", "msrvtt"], 3, 1)
    add(umt, "jax", big, ["r0", "msrvtt"], 2, 0)
    add(vmae, "jax", 1, ["r0", "solve-40%"], 3, 0)
    add(vmae, "hf", 1, ["r0"], 3, 1)
    add(vmae, "torch_ref", 1, ["r0", "solve-40%"], 3, 1)
    add(umt, "torch_ref_compile", 1, ["msrvtt"], 3, 1)
    add(vmae, "hf_compile", 1, ["r0"], 3, 1)
    add(vmae, "jax", big, ["r0", "solve-40%"], 2, 0)
    add(umt, "torch_ref", big, ["r0", "msrvtt"] if gpu else ["msrvtt"], 2, 0)
    if gpu:
        add(vmae, "torch_ref", big, ["r0", "solve-40%"], 2, 0)
        add(vmae, "hf", big, ["r0"], 2, 0)
        add(umt, "torch_ref_compile", big, ["msrvtt"], 2, 0)
        add(vmae, "hf_compile", big, ["r0"], 2, 0)
    return plan


# --------------------------------------------------------------------------------------------------
# Backends: each prepares one configuration and returns a blocking zero-argument call.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """A ready-to-time configuration."""

    call: Callable[[], Any]
    compile_s: float | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Context:
    """Weights and inputs shared by the configurations of a group (built once per model)."""

    def __init__(
        self, spec: ModelSpec, batch: int, seed: int = 0, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        import tldr_jax

        self.spec = spec
        self.cfg = spec.config()
        self.batch = batch
        self.torch_device = "cuda" if device == "gpu" else "cpu"
        #: ``tldr_jax.apply(precision=...)``: TF32 only when asked for on a GPU.
        self.jax_precision = "tensorfloat32" if device == "gpu" and precision == "tf32" else "float32"
        self.params = tldr_jax.init(seed, spec.arch, **dict(spec.overrides))
        rng = np.random.default_rng(seed)
        c = self.cfg
        self.video = rng.standard_normal((batch, c.num_frames, c.img_size, c.img_size, c.in_chans)).astype(
            np.float32
        )


#: In-context variants of a merging schedule (``"<schedule>|<variant>"`` labels), each a whole encoder
#: compiled as one program, so that the overhead of merging is measured where XLA fuses it:
#: ``slice`` keeps the first ``N - r`` tokens (same shapes, no saliency, no matching: zero-cost
#: merging); ``sharpness+slice`` adds the pre-bias softmax sharpness; ``match+merge`` runs the
#: bipartite matching and the size-weighted merge without saliency.
VARIANTS = ("slice", "sharpness+slice", "match+merge")


def variant_forward(tree: Any, video: Any, *, cfg: Any, sched: Any, variant: str) -> tuple[Any, Any, Any]:
    """An encoder forward with the merge replaced by one of :data:`VARIANTS` (proportional attention
    on, with sizes of one after a slice so the ``log(size)`` bias is still paid)."""
    import jax.numpy as jnp

    import tldr_jax
    from tldr_jax.merge import bipartite_plan, merge_wavg

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    model = tldr_jax.build(tldr_jax.Params(tree, cfg))
    x = model.embed(video)
    size = None
    extra = jnp.zeros((), jnp.float32)
    for block, r in zip(model.blocks(), sched.r):
        log_size = None if size is None else jnp.log(size[..., 0])
        need = "sharpness" if r and variant == "sharpness+slice" else None
        h, sharp = block.attn(block.norm1(x), log_size, need)
        x = x + h
        if r and variant == "match+merge":
            x, size = merge_wavg(bipartite_plan(x, r), x, size)
        elif r:
            if sharp is not None:
                extra = extra + jnp.sum(sharp)
            n = x.shape[1] - r
            x = x[:, :n]
            size = x[..., :1] * 0 + 1 if size is None else size[:, :n]
        x = x + block.mlp(block.norm2(x))
    tokens = model.norm(x) if cfg.final_norm else x
    return tokens, model.pool(tokens, size, "mean"), extra


def prepare_jax(ctx: Context, label: str) -> Prepared:
    import jax

    import tldr_jax
    from benchmarks.xla_flops import xla_flops

    sched = ctx.spec.schedule(label)
    cfg = ctx.cfg
    variant = label.split("|")[1] if "|" in label else None

    def run(tree, video):
        if variant is not None:
            with jax.default_matmul_precision(ctx.jax_precision):
                return variant_forward(tree, video, cfg=cfg, sched=sched, variant=variant)
        out = tldr_jax.apply(tldr_jax.Params(tree, cfg), video, sched, precision=ctx.jax_precision)
        return out.tokens, out.pooled

    tree = jax.device_put(ctx.params.tree)
    video = jax.device_put(ctx.video)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(tree, video).compile()
    compile_s = time.perf_counter() - start
    info: dict[str, Any] = {}
    mem = compiled.memory_analysis()
    if mem is not None:
        info["xla_argument_mb"] = mem.argument_size_in_bytes / 2**20
        info["xla_output_mb"] = mem.output_size_in_bytes / 2**20
        info["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20
        info["xla_peak_mb"] = info["xla_argument_mb"] + info["xla_output_mb"] + info["xla_temp_mb"]
    try:
        counts = xla_flops(compiled)
        info["xla_total_gflop"] = counts.total / 1e9
        info["xla_matmul_gmac"] = counts.matmul / 2e9
        info["xla_matmul_once_gmac"] = counts.matmul_once / 2e9
        info["xla_other_gflop"] = counts.other / 1e9
        info["xla_transcendentals_g"] = counts.transcendentals / 1e9
    except Exception as err:  # noqa: BLE001 - a diagnostic only; never fail the benchmark on it
        info["xla_flops_error"] = repr(err)
    return Prepared(lambda: jax.block_until_ready(compiled(tree, video)), compile_s, info)


def _torch_call(model: Any, *args: Any) -> Callable[[], Any]:
    """A blocking call of ``model(*args)`` without autograd (synchronised when on a CUDA device)."""
    import torch

    on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)

    def call():
        with torch.inference_mode():
            out = model(*args)
        if on_cuda:
            torch.cuda.synchronize()
        return out

    return call


def prepare_torch_ref(ctx: Context, label: str, compiled: bool, cache: dict[str, Any]) -> Prepared:
    import torch

    from benchmarks.torch_reference import from_params, to_torch_video

    if "ref" not in cache:
        cache["ref"] = from_params(ctx.params).to(ctx.torch_device)
        cache["video"] = to_torch_video(ctx.video).to(ctx.torch_device)
        if compiled:
            cache["ref_compiled"] = torch.compile(cache["ref"], dynamic=False)
    model = cache["ref_compiled"] if compiled else cache["ref"]
    counts = list(ctx.spec.schedule(label).r)
    return _compile_torch(_torch_call(model, cache["video"], counts), compiled)


def prepare_hf(ctx: Context, label: str, compiled: bool, cache: dict[str, Any]) -> Prepared:
    import torch
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    if label != "r0":
        raise ValueError("the Hugging Face VideoMAE has no token merging: r0 only")
    if "hf" not in cache:
        c = ctx.cfg
        config = VideoMAEConfig(
            image_size=c.img_size, patch_size=c.patch_size, num_channels=c.in_chans,
            num_frames=c.num_frames, tubelet_size=c.tubelet_size, hidden_size=c.embed_dim,
            num_hidden_layers=c.depth, num_attention_heads=c.num_heads, intermediate_size=c.mlp_dim,
            qkv_bias=True, use_mean_pooling=True, num_labels=c.num_classes or 400,
        )
        torch.manual_seed(0)
        model = VideoMAEForVideoClassification(config).eval().to(ctx.torch_device)
        cache["hf"] = model
        video = torch.from_numpy(np.ascontiguousarray(ctx.video.transpose(0, 1, 4, 2, 3)))
        cache["hf_video"] = video.to(ctx.torch_device)
        cache["hf_attn"] = getattr(model.config, "_attn_implementation", None)
        if compiled:
            cache["hf_compiled"] = torch.compile(model, dynamic=False)
    model = cache["hf_compiled"] if compiled else cache["hf"]
    prepared = _compile_torch(_torch_call(model, cache["hf_video"]), compiled)
    prepared.info["attn_implementation"] = cache["hf_attn"]
    return prepared


def _compile_torch(call: Callable[[], Any], compiled: bool) -> Prepared:
    """For ``torch.compile``: run once here so that the compile is timed apart from the steady state."""
    if not compiled:
        return Prepared(call)
    start = time.perf_counter()
    call()
    return Prepared(call, compile_s=time.perf_counter() - start, info={"compile_includes_first_call": True})


# --------------------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------------------


def _estimate_group_s(
    group: Group, spec: ModelSpec, s_per_gmac: dict[str, float], compile_s: dict[str, float]
) -> float:
    """Rough wall time of a group from the speeds and compile times measured so far."""
    import tldr_jax

    gmac = sum(tldr_jax.gflops(spec.config(), r=spec.schedule(lb)) for lb in group.labels)
    calls = group.repeats + group.warmup
    compiling = compile_s.get(group.backend, 0.0) * len(group.labels)
    return compiling + calls * group.batch * gmac * s_per_gmac[group.backend]


def run_group(
    group: Group, spec: ModelSpec, log: Callable[[str], None], device: str = "cpu", precision: str = "fp32"
) -> list[dict[str, Any]]:
    """Prepare, warm up and time every configuration of a group (round-robin)."""
    import tldr_jax

    ctx = Context(spec, group.batch, device=device, precision=precision)
    torch_cuda = device == "gpu" and group.backend != "jax"
    if torch_cuda:
        import torch
    cache: dict[str, Any] = {}
    prepared: dict[str, Prepared] = {}
    errors: dict[str, str] = {}
    for label in group.labels:
        try:
            if group.backend == "jax":
                prepared[label] = prepare_jax(ctx, label)
            elif group.backend in ("torch_ref", "torch_ref_compile"):
                prepared[label] = prepare_torch_ref(ctx, label, group.backend.endswith("compile"), cache)
            else:
                prepared[label] = prepare_hf(ctx, label, group.backend.endswith("compile"), cache)
            if prepared[label].compile_s is not None:
                log(f"  {label}: compiled in {prepared[label].compile_s:.1f} s")
        except Exception as err:  # noqa: BLE001 - record why a baseline could not run, keep going
            errors[label] = f"{type(err).__name__}: {err}"[:500]
            log(f"  {label}: FAILED to prepare: {errors[label]}")
    for _ in range(group.warmup):
        for p in prepared.values():
            p.call()
    times: dict[str, list[float]] = {label: [] for label in prepared}
    cpu: dict[str, list[float]] = {label: [] for label in prepared}
    rss_peak: dict[str, int] = dict.fromkeys(prepared, 0)
    gpu_peak: dict[str, int] = dict.fromkeys(prepared, 0)
    loads: list[float] = []
    for _ in range(group.repeats):
        for label, p in prepared.items():
            rss0 = _status_kb("VmRSS") or 0
            reset = _reset_peak_rss()
            if torch_cuda:
                torch.cuda.reset_peak_memory_stats()
            cpu0 = time.process_time()
            start = time.perf_counter()
            p.call()
            times[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - cpu0)
            if torch_cuda:
                gpu_peak[label] = max(gpu_peak[label], torch.cuda.max_memory_allocated())
            hwm = _status_kb("VmHWM") if reset else None
            if hwm is not None:
                rss_peak[label] = max(rss_peak[label], hwm - rss0)
        loads.append(os.getloadavg()[0])
    results = []
    cfg = ctx.cfg
    for label in group.labels:
        sched = spec.schedule(label)
        row: dict[str, Any] = {
            "model": spec.key,
            "arch": spec.arch,
            "backend": group.backend,
            "schedule": label,
            "variant": label.split("|")[1] if "|" in label else None,
            "r": list(sched.r),
            "batch": group.batch,
            "tokens_in": sched.tokens[0],
            "tokens_out": sched.tokens[-1],
            "gflops_per_clip": tldr_jax.gflops(cfg, r=sched),
            "input": f"{cfg.num_frames}x{cfg.img_size}x{cfg.img_size}",
            "repeats": group.repeats,
            "warmup": group.warmup,
        }
        if label in errors:
            row["error"] = errors[label]
        else:
            t = times[label]
            med = statistics.median(t)
            row.update(
                latency_s=med,
                latency_min_s=min(t),
                latency_max_s=max(t),
                latency_all_s=t,
                clips_per_s=group.batch / med,
                cpu_utilisation=statistics.median(c / w for c, w in zip(cpu[label], t)),
                compile_s=prepared[label].compile_s,
                rss_peak_delta_mb=rss_peak[label] / 1024 if rss_peak[label] else None,
                gpu_peak_mb=gpu_peak[label] / 2**20 if gpu_peak[label] else None,
                loadavg_1m=[min(loads), max(loads)],
                **prepared[label].info,
            )
            log(
                f"  {label:>14}: {med * 1e3:9.1f} ms median of {len(t)}  ({group.batch / med:7.3f} clips/s, "
                f"{row['gflops_per_clip']:.1f} GFLOPs/clip, load {loads[-1]:.1f})"
            )
        results.append(row)
    del prepared, cache, ctx
    gc.collect()
    if group.backend.endswith("compile"):
        import torch

        torch._dynamo.reset()
    return results


# --------------------------------------------------------------------------------------------------
# Per-block profile (where the time goes in a merging block).
# --------------------------------------------------------------------------------------------------


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _blocking(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args: jax_block(fn(*args))


def jax_block(value: Any) -> Any:
    import jax

    return jax.block_until_ready(value)


def _plan(x: Any, sal: Any, *, r: int) -> Any:
    from tldr_jax.merge import bipartite_plan

    return bipartite_plan(x, r, saliency=sal)


def _whole_block(block: Any, x: Any, size: Any, *, spec: Any) -> Any:
    from tldr_jax.models import TokenState

    out, state = block(x, TokenState(size=size), spec)
    return out, state.size


def profile_blocks(spec: ModelSpec, label: str, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Time the pieces of each distinct block of a schedule as separately jitted functions.

    Pieces: ``attn`` (norm1 + attention + residual, with the ``log(size)`` bias where sizes exist),
    ``saliency_attn`` (the extra cost of also computing the pre-bias softmax sharpness: the same
    piece with ``need="sharpness"`` minus ``attn``), ``saliency`` (min-max / background / sharpening),
    ``match`` (bipartite plan: normalise, similarity matmul, argmax, argsort, gathers), ``merge``
    (``merge_wavg``: gathers + scatter-add of tokens and sizes) and ``mlp`` (norm2 + MLP + residual on
    the merged tokens). ``block`` is the whole block jitted as one function.
    """
    import jax
    import jax.numpy as jnp

    import tldr_jax
    from tldr_jax.merge import merge_wavg
    from tldr_jax.models import MergeSpec
    from tldr_jax.saliency import saliency_from_sharpness

    cfg = spec.config()
    params = tldr_jax.init(0, spec.arch, **dict(spec.overrides))
    sched = spec.schedule(label)
    tree = params.tree
    key = jax.random.key(0)

    def blockfn(fn):
        @jax.jit
        def run(tree, *args):
            model = tldr_jax.build(tldr_jax.Params(tree, cfg))
            return fn(model.blocks_0, *args)

        return lambda *args: jax_block(run(tree, *args))

    attn_plain = blockfn(lambda b, x, ls: x + b.attn(b.norm1(x), ls, None)[0])

    def _attn_sharp(b, x, ls):
        h, aux = b.attn(b.norm1(x), ls, "sharpness")
        return x + h, aux

    attn_sharp = blockfn(_attn_sharp)
    mlp = blockfn(lambda b, x: x + b.mlp(b.norm2(x)))
    sal_fn = _blocking(jax.jit(saliency_from_sharpness))
    merge_fn = _blocking(jax.jit(merge_wavg))

    rows = []
    seen = set()
    for layer, (n_in, r) in enumerate(zip(sched.tokens[:-1], sched.r)):
        has_size = any(sched.r[:layer])
        kind = (n_in, r, has_size)
        if kind in seen:
            continue
        seen.add(kind)
        x = jax.random.normal(jax.random.fold_in(key, layer), (1, n_in, cfg.embed_dim), jnp.float32)
        size = None
        if has_size:
            size = 1.0 + jax.random.uniform(jax.random.fold_in(key, 100 + layer), (1, n_in, 1))
        log_size = jnp.log(size[..., 0]) if size is not None else None
        row: dict[str, Any] = {"layer": layer, "tokens_in": n_in, "r": r, "prop_attn_bias": has_size}
        row["attn"] = _median_time(functools.partial(attn_plain, x, log_size), repeats)
        if r:
            row["attn_with_sharpness"] = _median_time(functools.partial(attn_sharp, x, log_size), repeats)
            row["saliency_attn"] = max(row["attn_with_sharpness"] - row["attn"], 0.0)
            x2, sharp = attn_sharp(x, log_size)
            sal = sal_fn(sharp)
            row["saliency"] = _median_time(functools.partial(sal_fn, sharp), repeats)
            plan_fn = _blocking(jax.jit(functools.partial(_plan, r=r)))
            row["match"] = _median_time(functools.partial(plan_fn, x2, sal), repeats)
            plan = plan_fn(x2, sal)
            row["merge"] = _median_time(functools.partial(merge_fn, plan, x2, size), repeats)
            xm, _ = merge_fn(plan, x2, size)
            row["mlp"] = _median_time(functools.partial(mlp, xm), repeats)
        else:
            row["mlp"] = _median_time(functools.partial(mlp, x), repeats)
        block = blockfn(functools.partial(_whole_block, spec=MergeSpec(r=r)))
        row["block"] = _median_time(functools.partial(block, x, size), repeats)
        unmerged = blockfn(functools.partial(_whole_block, spec=MergeSpec(r=0)))
        row["block_without_merge"] = _median_time(functools.partial(unmerged, x, size), repeats)
        if r:
            overhead = row["saliency_attn"] + row["saliency"] + row["match"] + row["merge"]
            row["merge_overhead"] = overhead
            row["merge_overhead_fraction"] = overhead / row["block"]
        row["loadavg_1m"] = os.getloadavg()[0]
        rows.append(row)
        log(
            f"  layer {layer} ({n_in} tokens, r={r}): block {row['block'] * 1e3:.1f} ms"
            + (f", merge overhead {row['merge_overhead_fraction']:.1%}" if r else "")
        )
    total_block_s = 0.0
    by_kind = {(rw["tokens_in"], rw["r"], rw["prop_attn_bias"]): rw for rw in rows}
    for layer, (n_in, r) in enumerate(zip(sched.tokens[:-1], sched.r)):
        has_size = any(sched.r[:layer])
        total_block_s += by_kind[(n_in, r, has_size)]["block"]
    overhead_s = sum(rw.get("merge_overhead", 0.0) for rw in rows)
    return {
        "model": spec.key,
        "schedule": label,
        "batch": 1,
        "repeats": repeats,
        "layers": rows,
        "sum_of_blocks_s": total_block_s,
        "merge_overhead_s": overhead_s,
        "merge_overhead_fraction_of_encoder": overhead_s / total_block_s if total_block_s else None,
    }


# --------------------------------------------------------------------------------------------------
# Summaries, tables, plot.
# --------------------------------------------------------------------------------------------------


def _find(results: list[dict], **match: Any) -> dict | None:
    for row in results:
        if all(row.get(k) == v for k, v in match.items()) and "latency_s" in row:
            return row
    return None


def add_ratios(results: list[dict]) -> None:
    """Speed-up against r = 0 of the same model/backend/batch, the FLOPs ratio, and their quotient."""
    for row in results:
        base = _find(results, model=row["model"], backend=row["backend"], batch=row["batch"], schedule="r0")
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
            merged = _find(results, model=spec.key, backend="jax", batch=batch, schedule=spec.main)
            if merged is not None and "speedup_vs_r0" in merged:
                targets.append({
                    "target": f"merge speed-up >= {TARGET_EFFICIENCY} x FLOPs ratio",
                    "model": spec.key, "schedule": spec.main, "batch": batch,
                    "speedup": merged["speedup_vs_r0"], "flops_ratio": merged["flops_ratio"],
                    "required": TARGET_EFFICIENCY * merged["flops_ratio"],
                    "met": merged["speedup_vs_r0"] >= TARGET_EFFICIENCY * merged["flops_ratio"],
                })
            ref = _find(results, model=spec.key, backend="torch_ref", batch=batch, schedule=spec.main)
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
    gpu_line = [] if not gpu else [
        f"**GPU: {gpu['name']}** ({gpu['memory_gb']} GB, {gpu['multiprocessors']} SMs, CUDA {gpu['cuda']}; "
        f"JAX device kind {gpu['jax_device_kind']}). Both frameworks on the GPU; float32 matrix products in "
        f"**{precision}** (`tldr_jax.apply(precision=...)`, PyTorch `allow_tf32`); the merge "
        "similarity is float32 in both. The host below only launches work; its load does not matter.",
        "",
    ]
    lines = [
        f"# tldr_jax benchmarks ({report['mode']}{', GPU' if gpu else ''})",
        "",
        *gpu_line,
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
            "`merge` the saliency-weighted scatter-sum. Overhead = sal-attn + saliency + match + merge.",
            "",
            "| layer | tokens | r | attn | sal-attn | saliency | match | merge | MLP | block | block w/o "
            "merge | overhead / block |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in prof["layers"]:
            ms = lambda k, r=r: _fmt(r[k] * 1e3 if k in r else None, ".1f")
            lines.append(
                f"| {r['layer']} | {r['tokens_in']} | {r['r']} | {ms('attn')} | {ms('saliency_attn')} | "
                f"{ms('saliency')} | {ms('match')} | {ms('merge')} | {ms('mlp')} | {ms('block')} | "
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
        full = _find(results, schedule=base, **key)
        r0 = _find(results, schedule="r0", **key)
        sharp = _find(results, schedule=f"{base}|sharpness+slice", **key)
        match = _find(results, schedule=f"{base}|match+merge", **key)
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
        rows = [_find(results, model=swept.key, backend="jax", batch=1, schedule=lb) for lb in labels]
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


# --------------------------------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32"),
                        help="GPU float32 matrix products: fp32 (default: full float32 in both, the "
                        "official numerics) or tf32 (tldr_jax.apply(precision='tensorfloat32'), PyTorch "
                        "allow_tf32). Ignored on CPU")
    parser.add_argument("--schedules", default=None,
                        help="comma-separated schedule labels to keep (e.g. r0,msrvtt,solve-40%%)")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-block profile")
    parser.add_argument("--profile-repeats", type=int, default=None, help="repeats per profiled piece")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", "unset"),
                        help="OMP_WAIT_POLICY of the worker processes (PyTorch's OpenMP threads). PASSIVE "
                        "(default) avoids spin-wait stalls on an oversubscribed machine: UMT-B eager "
                        "measured 4.5 s vs 6.6 s with the spinning default at load 3 on 2 CPUs")
    parser.add_argument("--in-process", action="store_true",
                        help="run every group in this process instead of a fresh one each (debugging)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks and write ``<out>/<tag>.json``, ``.md`` and ``.png``; return the report."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    start = time.perf_counter()
    log = lambda msg: print(msg, flush=True)
    if args.worker is not None:
        result = _work(json.loads(args.worker), log)
        args.worker_out.write_text(json.dumps(result, default=str))
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
                     "device": args.device, "precision": args.precision if gpu else "fp32",
                     "torch_threads": torch.get_num_threads(), "omp_wait_policy": args.omp_wait_policy,
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
    profile_reserve = 0.0 if args.no_profile else (10.0 if args.quick or gpu else 120.0)
    profile_done = args.no_profile
    for i, group in enumerate(plan):
        spec = models[group.model]
        elapsed = time.perf_counter() - start
        estimate = _estimate_group_s(group, spec, s_per_gmac, compile_s)
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
        _write(report, args.out, tag, models, final=False)
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
    _write(report, args.out, tag, models, final=True)
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

    Isolation keeps the backends from disturbing each other: on a small, oversubscribed machine a
    PyTorch eager run in a process that has just run XLA programs was measured up to 60x slower
    (OpenMP barrier stalls), and memory, thread pools and ``torch.compile`` caches do not carry over.
    ``--in-process`` runs everything in this process instead (for debugging).
    """
    job = {"kind": kind, "quick": args.quick, "device": args.device, "precision": args.precision, **job}
    if args.in_process:
        return _work(job, log)
    env = {} if args.omp_wait_policy == "unset" else {"OMP_WAIT_POLICY": args.omp_wait_policy}
    return run_worker("benchmarks.run", job, root=args.snapshot, env=env)


class WorkerError(RuntimeError):
    """A worker process failed or wrote no result; ``returncode`` is its exit status."""

    def __init__(self, module: str, returncode: int, job: dict[str, Any]) -> None:
        super().__init__(f"{module} worker failed (exit {returncode}): {job}")
        self.returncode = returncode


def run_worker(
    module: str, job: dict[str, Any], *, root: Path | None = None, env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Any:
    """Run ``python -m module --worker JOB --worker-out FILE`` in a fresh process; return its JSON result.

    Args:
      module: a module whose ``main`` writes ``--worker``'s result as JSON to ``--worker-out``.
      job: the JSON-serialisable job.
      root: the source tree to import (default: this checkout); it goes first on ``PYTHONPATH``.
      env: variables set for the worker on top of this process's environment.
      timeout: seconds before the worker is killed (``subprocess.TimeoutExpired``).

    Raises:
      WorkerError: the worker failed or wrote no result.
    """
    import subprocess
    import tempfile

    root = root or Path(__file__).resolve().parents[1]
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, "--worker", json.dumps(job), "--worker-out", str(out)]
        proc = subprocess.run(cmd, cwd=root, env={**os.environ, **(env or {}), "PYTHONPATH": path},
                              timeout=timeout, check=False)
        if proc.returncode != 0 or not out.exists():
            raise WorkerError(module, proc.returncode, job)
        return json.loads(out.read_text())


def _work(job: dict[str, Any], log: Callable[[str], None]) -> Any:
    """The body of a worker process: one timing group or the per-block profile."""
    device, precision = job.get("device", "cpu"), job.get("precision", "fp32")
    uses_torch = job["kind"] == "group" and job["group"]["backend"] != "jax"
    configure_device(device, precision, use_torch=uses_torch)
    models = quick_models() if job["quick"] else full_models()
    if job["kind"] == "group":
        group = Group(**{**job["group"], "labels": tuple(job["group"]["labels"])})
        return run_group(group, models[group.model], log, device=device, precision=precision)
    spec = models[job["model"]]
    return profile_blocks(spec, spec.main, job["repeats"], log)


def _write(report: dict[str, Any], out: Path, tag: str, models: dict[str, ModelSpec], final: bool) -> None:
    report.setdefault("targets", [])
    report.setdefault("wall_s", 0.0)
    (out / f"{tag}.json").write_text(json.dumps(report, indent=1, default=str))
    if final:
        if report.get("profile", {}).get("error"):
            report.pop("profile")
        (out / f"{tag}.md").write_text(markdown(report))
        plot(report, out / f"{tag}.png", models)


if __name__ == "__main__":
    main()

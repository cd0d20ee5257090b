"""The backends of the speed benchmark: each prepares one configuration as a blocking zero-argument call,
and :func:`run_group` times a group's configurations round-robin.

* ``jax``: :func:`tldr_jax.apply`, AOT-compiled (``jax.jit(...).lower(...).compile()``), so the
  compile time is measured apart from the steady state; ``"<schedule>|<variant>"`` labels run the
  encoder with the merge step replaced by a variant (:data:`~benchmarks.plan.VARIANTS`);
* ``torch_ref`` / ``torch_ref_compile``: the PyTorch reference with the *same* vid-TLDR merging and
  the same weights (``benchmarks/torch_reference.py``), eager and ``torch.compile(dynamic=False)``;
* ``hf`` / ``hf_compile``: Hugging Face ``transformers`` ``VideoMAEForVideoClassification``
  (no merging: r = 0 only), eager and ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.plan import VARIANTS, Group, ModelSpec
from benchmarks.timing import reset_peak_rss, status_kb

__all__ = [
    "Context", "Prepared", "prepare_hf", "prepare_jax", "prepare_torch_ref", "run_group", "variant_forward",
]


@dataclasses.dataclass
class Prepared:
    """A ready-to-time configuration."""

    call: Callable[[], Any]
    compile_s: float | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Context:
    """Weights and inputs shared by the configurations of a group (built once per model)."""

    def __init__(
        self, spec: ModelSpec, batch: int, seed: int = 0, device: str = "cpu", precision: str = "fp32",
        gpu_tuning: str = "heuristic",
    ) -> None:
        import tldr_jax

        self.spec = spec
        #: ``tldr_jax.apply(gpu_tuning=...)``: the XLA options of the programs (GPU only).
        self.gpu_tuning = gpu_tuning
        self.cfg = spec.config()
        self.batch = batch
        self.torch_device = "cuda" if device == "gpu" else "cpu"
        #: ``tldr_jax.apply(precision=...)``: TF32 only when asked for on a GPU.
        self.jax_precision = "tensorfloat32" if device == "gpu" and precision == "tf32" else "float32"
        #: ``precision="bf16"``: ``tldr_jax.apply(dtype=jnp.bfloat16)`` and PyTorch under autocast.
        self.bf16 = precision == "bf16"
        self.params = tldr_jax.init(seed, spec.arch, **dict(spec.overrides))
        rng = np.random.default_rng(seed)
        c = self.cfg
        self.video = rng.standard_normal((batch, c.num_frames, c.img_size, c.img_size, c.in_chans)).astype(
            np.float32
        )


def _sliced(x: Any, r: int, *, size: Any = None, source: Any = None, **_: Any) -> tuple[Any, Any, Any, dict]:
    """The ``slice`` merge: keep the first ``N - r`` tokens (sizes of one where none exist yet, so the
    ``log(size)`` bias is still paid); the same shapes as a merge, at no cost."""
    x = x[:, : x.shape[1] - r]
    size = x[..., :1] * 0 + 1 if size is None else size[:, : x.shape[1]]
    return x, size, source, {}


def _matched(x: Any, r: int, *, size: Any = None, source: Any = None, protected: int = 0, **_: Any) -> Any:
    """The ``match+merge`` merge: the bipartite matching on the hidden states and the size-weighted
    merge, without saliency (:func:`~tldr_jax.merge.merge_step` with ToMe's arithmetic)."""
    from tldr_jax.merge import merge_step

    return merge_step(x, r, size=size, source=source, protected=protected, method="tome")


#: variant -> (the method whose attention statistic the blocks compute, the merge step run instead).
_VARIANT_MERGES: dict[str, tuple[str, Callable[..., Any]]] = {
    "slice": ("tome", _sliced),  # the unused head-mean keys are dropped by XLA
    "sharpness+slice": ("vid_tldr", _sliced),  # the sharpness is kept alive through the returned sum
    "match+merge": ("tome", _matched),
}


def variant_forward(tree: Any, video: Any, *, cfg: Any, sched: Any, variant: str) -> tuple[Any, Any, Any]:
    """The encoder forward with the merge step replaced by one of :data:`~benchmarks.plan.VARIANTS`
    (proportional attention on); returns the tokens, the pooled feature and the sum of the merging
    layers' sharpness, read from the blocks' intermediates."""
    import jax.numpy as jnp

    from tldr_jax.api import Params, build
    from tldr_jax.models import MergeSpec

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}; got {variant!r}")
    method, merge = _VARIANT_MERGES[variant]
    specs = tuple(MergeSpec(r, method, sched.protected) for r in sched.r)
    out, intermediates = build(Params(tree, cfg))(video, specs, merge=merge)
    blocks = (intermediates[f"blocks_{i}"] for i in range(len(specs)))
    extra = sum((jnp.sum(b["sharpness"]) for b in blocks if "sharpness" in b), jnp.zeros((), jnp.float32))
    return out["tokens"], out["pooled"], extra


def prepare_jax(ctx: Context, label: str) -> Prepared:
    """``tldr_jax.apply`` (or a :func:`variant_forward`) on the context's weights and video, compiled
    ahead of time, with XLA's memory and FLOP counts."""
    import jax
    import jax.numpy as jnp

    import tldr_jax
    from benchmarks.xla_flops import xla_flops
    from tldr_jax.compile_cache import cache_events
    from tldr_jax.xla_options import forward_options

    sched = ctx.spec.schedule(label)
    cfg = ctx.cfg
    variant = label.split("|")[1] if "|" in label else None
    if variant is not None and ctx.bf16:
        raise ValueError(f"merge variants run in float32 only; got {label!r} with precision bf16")
    dtype = jnp.bfloat16 if ctx.bf16 else None

    def run(tree, video):
        if variant is not None:
            with jax.default_matmul_precision(ctx.jax_precision):
                return variant_forward(tree, video, cfg=cfg, sched=sched, variant=variant)
        params = tldr_jax.Params(tree, cfg)
        out = tldr_jax.apply(params, video, sched, precision=ctx.jax_precision, dtype=dtype)
        return out.tokens, out.pooled

    tree = jax.device_put(ctx.params.tree)
    video = jax.device_put(ctx.video)
    hits = cache_events()["hits"]
    start = time.perf_counter()
    # apply traced inside this jit: the outer program gets the XLA options apply's own jit would get
    xla = forward_options(False, ctx.gpu_tuning)
    compiled = jax.jit(run, compiler_options=xla or None).lower(tree, video).compile()
    compile_s = time.perf_counter() - start
    info: dict[str, Any] = {"compile_cache_hit": cache_events()["hits"] > hits}
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


def _torch_call(model: Any, *args: Any, bf16: bool = False) -> Callable[[], Any]:
    """A blocking call of ``model(*args)`` without autograd (synchronised when on a CUDA device), under
    ``torch.autocast(..., torch.bfloat16)`` when ``bf16``."""
    import torch

    on_cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    device_type = "cuda" if on_cuda else "cpu"

    def call():
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            out = model(*args)
        if on_cuda:
            torch.cuda.synchronize()
        return out

    return call


def prepare_torch_ref(ctx: Context, label: str, compiled: bool, cache: dict[str, Any]) -> Prepared:
    """The PyTorch reference (same weights, same merging), eager or ``torch.compile``."""
    import torch

    from benchmarks.torch_reference import from_params, to_torch_video

    if "ref" not in cache:
        cache["ref"] = from_params(ctx.params).to(ctx.torch_device)
        cache["video"] = to_torch_video(ctx.video).to(ctx.torch_device)
        if compiled:
            cache["ref_compiled"] = torch.compile(cache["ref"], dynamic=False)
    model = cache["ref_compiled"] if compiled else cache["ref"]
    counts = list(ctx.spec.schedule(label).r)
    return _compile_torch(_torch_call(model, cache["video"], counts, bf16=ctx.bf16), compiled)


def prepare_hf(ctx: Context, label: str, compiled: bool, cache: dict[str, Any]) -> Prepared:
    """Hugging Face ``VideoMAEForVideoClassification`` of the same sizes (random weights; r = 0 only)."""
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
    prepared = _compile_torch(_torch_call(model, cache["hf_video"], bf16=ctx.bf16), compiled)
    prepared.info["attn_implementation"] = cache["hf_attn"]
    return prepared


def _compile_torch(call: Callable[[], Any], compiled: bool) -> Prepared:
    """For ``torch.compile``: run once here so that the compile is timed apart from the steady state."""
    if not compiled:
        return Prepared(call)
    start = time.perf_counter()
    call()
    return Prepared(call, compile_s=time.perf_counter() - start, info={"compile_includes_first_call": True})


def run_group(
    group: Group, spec: ModelSpec, log: Callable[[str], None], device: str = "cpu", precision: str = "fp32",
    gpu_tuning: str = "heuristic",
) -> list[dict[str, Any]]:
    """Prepare, warm up and time every configuration of a group (round-robin); tldr_jax compiles with
    ``gpu_tuning``'s XLA options."""
    import tldr_jax

    ctx = Context(spec, group.batch, device=device, precision=precision, gpu_tuning=gpu_tuning)
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
            rss0 = status_kb("VmRSS") or 0
            reset = reset_peak_rss()
            if torch_cuda:
                torch.cuda.reset_peak_memory_stats()
            cpu0 = time.process_time()
            start = time.perf_counter()
            p.call()
            times[label].append(time.perf_counter() - start)
            cpu[label].append(time.process_time() - cpu0)
            if torch_cuda:
                gpu_peak[label] = max(gpu_peak[label], torch.cuda.max_memory_allocated())
            hwm = status_kb("VmHWM") if reset else None
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

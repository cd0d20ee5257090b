"""The machine a benchmark runs on: CPU, memory, GPU, library versions, code version, device set-up."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "ROOT",
    "basic_info",
    "code_version",
    "configure_device",
    "cpu_model",
    "cpuinfo",
    "machine_info",
    "memory_gib",
    "snapshot_sources",
    "tune_malloc",
]

#: glibc ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def tune_malloc(threshold: int = 2**30) -> bool:
    """Keep freed memory in the process: glibc's mmap and trim thresholds raised to ``threshold`` bytes.

    By default glibc serves every allocation above 32 MB with its own ``mmap`` and gives it back to the
    system when freed, so a PyTorch forward whose attention tensors are larger (UMT-B: 12 x 2352^2
    floats) pays fresh page faults on every call, which slows the official bfloat16 UMT-B MSRVTT
    forward markedly (measured in docs/guides/scale_precision.md). The same effect as the environment
    ``MALLOC_MMAP_THRESHOLD_=N MALLOC_TRIM_THRESHOLD_=N`` or a caching allocator (jemalloc, tcmalloc),
    applied from inside the process for the allocations that follow. XLA's CPU runtime is unaffected.

    Returns:
      True when both settings were accepted; False where there is no glibc (nothing changes).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    value = ctypes.c_int(min(int(threshold), 2**31 - 1))
    return libc.mallopt(_M_TRIM_THRESHOLD, value) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, value) == 1


def cpuinfo() -> dict[str, str]:
    """``model name``, ``cpu family``, ``model`` and ``flags`` of the first CPU in ``/proc/cpuinfo``."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in info:
                info[key] = value.strip()
    return info


def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    return cpuinfo().get("model name") or platform.processor() or "unknown"


def memory_gib() -> float | None:
    """Total memory in GiB (``/proc/meminfo``), or None."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return None


def basic_info() -> dict[str, Any]:
    """CPU, cores, memory, load average and JAX version (the scaling benchmark's record)."""
    import jax

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU, GPU (``device="gpu"``), memory, load and library versions (the speed benchmark's record)."""
    import jax
    import torch

    cpu = cpuinfo()
    flags = set(cpu.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
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
        "mem_total_gb": memory_gib(),
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
    """Turn on the persistent compilation cache, check that the device exists and set PyTorch's float32
    matrix-product precision.

    ``use_torch=False`` (JAX worker processes) leaves PyTorch unimported, so that its CUDA libraries
    are not loaded beside XLA's. JAX's precision is ``tldr_jax.apply(precision=...)``.

    Raises:
      SystemExit: ``device="gpu"`` without a CUDA GPU visible to JAX (and PyTorch, when used).
    """
    import jax

    import tldr_jax

    tldr_jax.enable_compile_cache()  # TLDR_JAX_COMPILE_CACHE=0: cold compiles (compile_s then compiles)
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
    digest = hashlib.sha256()
    for path in sorted(((snapshot or ROOT) / "tldr_jax").rglob("*.py")):
        digest.update(str(path.relative_to(snapshot or ROOT)).encode() + path.read_bytes())
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "tldr_jax"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = None, ""
    return {"git_head": head, "tldr_jax_dirty": bool(dirty), "tldr_jax_sha256": digest.hexdigest()[:16],
            "snapshot": snapshot is not None}


def snapshot_sources(dest: Path) -> Path:
    """Copy ``tldr_jax`` and ``benchmarks`` into ``dest`` so that every worker of a run imports the same
    code even while the working tree is being edited."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for package in ("tldr_jax", "benchmarks"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return dest

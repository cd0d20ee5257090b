"""How the benchmarks measure: medians of blocking calls, and the resident memory a call adds."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["blocking", "call_times", "median_time", "peak_rss_during", "reset_peak_rss", "rss_bytes",
           "status_kb"]


def blocking(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` that returns only once its JAX result is ready (``jax.block_until_ready``)."""
    import jax

    return lambda *args, **kwargs: jax.block_until_ready(fn(*args, **kwargs))


def call_times(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of a blocking ``fn``, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of a blocking ``fn``, after one untimed warm-up call."""
    return statistics.median(call_times(fn, repeats))


def status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (``VmHWM``) through ``/proc/self/clear_refs``; False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_during(fn: Callable[[], Any]) -> tuple[Any, int, float]:
    """Run ``fn()``; return its result, the peak RSS seen (5 ms sampling) and its wall time."""
    peak = [rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    tic = time.perf_counter()
    try:
        result = fn()
    finally:
        wall = time.perf_counter() - tic
        stop.set()
        thread.join()
    return result, max(peak[0], rss_bytes()), wall

"""Run timing and progress in one object (big_vision's ``Chrono``): the progress bar, the throughput
(the first, compiling step excluded) and the log lines of a fine-tuning run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["Chrono"]


class Chrono:
    """Timing and progress of a run of ``total`` steps that starts at step ``initial``.

    Args:
      total, initial: steps of the whole run, and the step this call starts from (a resumed run).
      progress: show a tqdm progress bar (loss, learning rate, clips/s).
      log: where log lines go (default: ``tqdm.write`` with a progress bar, else nowhere).
    """

    def __init__(self, total: int, initial: int, *, progress: bool, log: Callable[[str], None] | None = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="finetune", unit="step", disable=not progress)
        self.log = log or (tqdm.write if progress else (lambda _msg: None))
        self.clips = 0.0
        self.start: float | None = None

    def step(self, metrics: dict[str, Any]) -> None:
        """Count one finished step (``metrics``: ``loss``, ``lr``, ``count`` on the host)."""
        if self.start is None:  # the first step compiles: the clock starts after it
            self.start = time.perf_counter()
        else:
            self.clips += float(metrics["count"])
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", clips_s=f"{self.clips_per_s:.1f}",
            refresh=False,
        )
        self.bar.update(1)

    @property
    def clips_per_s(self) -> float:
        """Training throughput so far (0 before the second step)."""
        if self.start is None:
            return 0.0
        return self.clips / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()

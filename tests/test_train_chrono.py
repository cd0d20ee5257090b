"""tldr_jax.train.chrono: run timing and progress in one object."""

from __future__ import annotations

import time

from tldr_jax.train.chrono import Chrono


def test_throughput_excludes_the_first_compiling_step():
    lines: list[str] = []
    chrono = Chrono(total=3, initial=0, progress=False, log=lines.append)
    assert chrono.clips_per_s == 0.0
    chrono.step({"loss": 1.0, "lr": 0.1, "count": 8.0})  # the first step compiles: not counted
    assert chrono.clips == 0.0
    time.sleep(0.01)
    chrono.step({"loss": 0.5, "lr": 0.1, "count": 8.0})
    assert chrono.clips == 8.0 and 0 < chrono.clips_per_s < 8.0 / 0.01
    chrono.log("epoch 1")
    chrono.close()
    assert lines == ["epoch 1"]

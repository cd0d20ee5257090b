"""The one launcher of benchmark worker processes: ``python -m MODULE --worker JOB --worker-out FILE``.

A worker is a fresh Python process: XLA flags, thread pools, memory and ``torch.compile`` caches do not
carry over between measurements. A module that serves jobs adds :func:`add_worker_args` to its parser
and starts its ``main`` with :func:`serve`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.machine import ROOT

__all__ = ["WorkerError", "add_worker_args", "run_worker", "serve"]


class WorkerError(RuntimeError):
    """A worker process failed or wrote no result; ``returncode`` is its exit status."""

    def __init__(self, module: str, returncode: int, job: dict[str, Any]) -> None:
        super().__init__(f"{module} worker failed (exit {returncode}): {job}")
        self.returncode = returncode


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """The hidden ``--worker JOB --worker-out FILE`` arguments of a module that serves jobs."""
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)


def serve(args: argparse.Namespace, work: Callable[[dict[str, Any]], Any]) -> bool:
    """In a worker process (``--worker`` given): run ``work(job)`` and write its JSON result; True.
    In the parent: do nothing; False."""
    if args.worker is None:
        return False
    args.worker_out.write_text(json.dumps(work(json.loads(args.worker)), default=str))
    return True


def run_worker(
    module: str, job: dict[str, Any], *, root: Path | None = None, env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> Any:
    """Run ``python -m module --worker JOB --worker-out FILE`` in a fresh process; return its JSON result.

    Args:
      module: a module whose ``main`` :func:`serve` s jobs.
      job: the JSON-serialisable job.
      root: the source tree to import (default: this checkout); it goes first on ``PYTHONPATH``.
      env: variables set for the worker on top of this process's environment.
      timeout: seconds before the worker is killed (``subprocess.TimeoutExpired``).

    Raises:
      WorkerError: the worker failed or wrote no result.
    """
    root = root or ROOT
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", module, "--worker", json.dumps(job), "--worker-out", str(out)]
        proc = subprocess.run(cmd, cwd=root, env={**os.environ, **(env or {}), "PYTHONPATH": path},
                              timeout=timeout, check=False)
        if proc.returncode != 0 or not out.exists():
            raise WorkerError(module, proc.returncode, job)
        return json.loads(out.read_text())

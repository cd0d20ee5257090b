"""Ctrl-C and ``kill``: every command leaves with one line and status 130 (SIGINT) or 143 (SIGTERM).

While a command runs, SIGINT and SIGTERM raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the main
thread, so the ``finally`` blocks and atomic writers on the way out remove their temporary files and the
work already finished stays on disk (an index's cache, ``run_directory``'s results).

Why the process then leaves with ``os._exit``: JAX compiles in its own threads, and a Python wait that is
interrupted does not stop them. Letting the interpreter shut down normally frees the objects those threads
still use (the MLIR context of the program being compiled) and ends in a segmentation fault now and then;
JAX's own exit hook (clearing its backends) would do the same. And a signal that arrives while Python
runs a garbage-collection callback (JAX registers one) raises there, where exceptions are ignored: it is
sent again, so the command stops every time. So the command line, once the line is
printed and the output flushed, ends the process at once when it is the process's own command (``argv``
None); callers of ``main(argv)`` in Python get the status returned. A second signal during the way out
leaves at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from tldr_jax.cli.base import PROG

__all__ = ["SIGNALS", "Interrupted", "Interruption", "exit_code"]

#: The signals a command turns into :class:`Interrupted`.
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received while a command ran (``signum``); exit status ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_code(err: BaseException) -> int:
    """The exit status of an interruption: 143 for SIGTERM, 130 for SIGINT or a plain KeyboardInterrupt."""
    return 128 + getattr(err, "signum", signal.SIGINT)


class Interruption:
    """Signal handling for one run of a command (a context manager; main thread only, else a no-op).

    Args:
      command: the command's name, for the line.
      hard_exit: leave with ``os._exit`` after the line (the console command); False returns the status.
      note: what the interruption leaves behind, appended to the line (e.g. "rerun to resume").
    """

    def __init__(self, command: str, *, hard_exit: bool, note: str = "") -> None:
        self.command = command
        self.hard_exit = hard_exit
        self.note = note
        self.signum: int | None = None
        self._said = False
        self._again = False  # the exception was swallowed (see _unraisable): raise it once more
        self._previous: dict[int, object] = {}
        self._hook: Any = sys.unraisablehook

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
            self._hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._previous:
            sys.unraisablehook = self._hook
        self._previous.clear()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None or self._again:
            self.signum, self._again = self.signum or signum, False
            raise Interrupted(self.signum)
        if self.hard_exit:  # a second signal while leaving: leave now
            self.leave(128 + signum)

    def _unraisable(self, info: Any) -> None:
        """A signal that arrived while Python ran a garbage-collection callback or a ``__del__`` raised
        there, where exceptions are ignored: send it again, so that it is raised in the command's code."""
        if isinstance(info.exc_value, Interrupted) and not self._said:
            self._again = True
            signal.raise_signal(info.exc_value.signum)
            return
        self._hook(info)

    def leave(self, code: int, *, say: bool = True) -> int:
        """Print the line (once; not with ``say=False``: a forwarded tool printed its own), then end the
        process (``hard_exit``) or return ``code``."""
        if say and not self._said:
            self._said = True
            name = signal.Signals(code - 128).name if code - 128 in set(SIGNALS) else "SIGINT"
            note = f"; {self.note}" if self.note else ""
            _print(f"{PROG} {self.command}: interrupted ({name}){note}")
        if self.hard_exit:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):  # a closed pipe: nothing more can be said
                    pass
            os._exit(code)
        return code


def _print(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass

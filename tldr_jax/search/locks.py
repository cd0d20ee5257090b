"""Who may touch an index at the same time: one writer, any number of readers, and generations removed
only when no reader holds them.

* **Writers** (:func:`writer_lock`): ``build_index`` holds an exclusive ``flock`` on ``.writer.lock``
  in the index directory for the whole build; ``encode_shard`` runs hold it shared (several shards
  encode into one cache at once; a build waits for none of them and refuses to start while they run).
  A second writer fails at once with one line naming the process that holds the lock
  (:class:`IndexBusyError`). The kernel releases the lock when its holder dies, so a crashed build
  never blocks the next one.
* **Readers** (:class:`ReaderLock`): each ``data-<id>/`` generation holds a ``readers.lock`` file; a
  :class:`~tldr_jax.search.index.VideoIndex` holds a shared ``flock`` on the one it reads for as long as
  it is open. A writer removes an old generation only when it can take that lock exclusively
  (:func:`retire_generations`); a generation still read is left for a later build to remove. Readers
  open the lock file read-only, so a read-only index can be searched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

WRITER_LOCK = ".writer.lock"
READERS_LOCK = "readers.lock"
#: Names in an index directory that belong to the locking, not to the index.
LOCK_FILES: tuple[str, ...] = (WRITER_LOCK,)

__all__ = [
    "LOCK_FILES",
    "READERS_LOCK",
    "WRITER_LOCK",
    "IndexBusyError",
    "ReaderLock",
    "not_writable",
    "retire_generations",
    "writer_lock",
]


class IndexBusyError(BlockingIOError):
    """Another process is writing the index (its pid is in the message)."""


def not_writable(path: Path, err: OSError) -> PermissionError:
    """The one-line error for an index that cannot be written (read-only folder or file system)."""
    reason = err.strerror or type(err).__name__
    return PermissionError(
        f"the index {path} cannot be written ({reason}); index into a writable path (--out), or make it "
        "writable. Searching a read-only index works."
    )


def _holder(fd: int) -> str:
    """Who holds the writer lock, from what its holder wrote into the file."""
    try:
        rec = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        rec = None
    if not isinstance(rec, dict):
        return "another process (an encode_shard run, or a build starting)"
    return f"pid {rec.get('pid')} on {rec.get('host')}, {rec.get('what', 'a build')} since {rec.get('since')}"


@contextlib.contextmanager
def writer_lock(out: Path, *, shared: bool = False, what: str = "build_index") -> Iterator[None]:
    """Hold the index's writer lock for the block (creating ``out``); exclusive unless ``shared``.

    Raises:
      IndexBusyError: another process holds it (named in the message). PermissionError: ``out`` cannot
        be written (one line, see :func:`not_writable`).
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise not_writable(out, err) from None
        raise
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexBusyError(
                f"the index {out} is being written by {_holder(fd)}; wait for it to finish (one writer "
                "at a time), or index into another path."
            ) from None
        if not shared:
            record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                      "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


class ReaderLock:
    """A shared ``flock`` on a generation's ``readers.lock`` (opened read-only), held until :meth:`close`.

    Args:
      data: the ``data-<id>/`` directory. A generation written before locking existed has no lock file:
        then nothing is held (``held`` False).

    Raises:
      FileNotFoundError: the generation was removed (the caller re-reads ``index.json``).
    """

    def __init__(self, data: Path):
        self.fd: int | None = None
        try:
            self.fd = os.open(data / READERS_LOCK, os.O_RDONLY)
        except FileNotFoundError:
            if not data.is_dir():
                raise
            return
        fcntl.flock(self.fd, fcntl.LOCK_SH)  # a writer holds it only while it removes the generation

    @property
    def held(self) -> bool:
        """Whether a lock is held."""
        return self.fd is not None

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _remove_if_unread(data: Path) -> bool:
    """Remove a generation unless a reader holds its lock; whether it was removed."""
    try:
        fd = os.open(data / READERS_LOCK, os.O_RDONLY)
    except FileNotFoundError:  # written before locking existed: nobody can hold it
        shutil.rmtree(data, ignore_errors=True)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(data, ignore_errors=True)  # a reader waiting on the lock then finds it gone
        return True
    finally:
        os.close(fd)


def retire_generations(out: Path, keep: str) -> list[str]:
    """Remove the data directories of ``out`` other than ``keep`` that no reader holds, and the
    temporary directories of interrupted builds (call with the writer lock held); the names left."""
    left = []
    for d in sorted(out.iterdir()):
        if not d.is_dir() or d.name == keep:
            continue
        if d.name.startswith(".data-"):  # an interrupted write: no reader ever opens it
            shutil.rmtree(d, ignore_errors=True)
        elif d.name.startswith("data-") and not _remove_if_unread(d):
            left.append(d.name)
    return left

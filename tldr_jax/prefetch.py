"""Prefetching: compute the next items in background threads while the caller uses the current one.

The one prefetcher of the package: batch inference reads and decodes clips ahead of the model
(:func:`tldr_jax.batch.run_directory`), the retrieval evaluation reads video batches ahead of the encoder
(:func:`tldr_jax.retrieval.features.encode_videos`), and fine-tuning builds the next training batch while
the current step runs (:func:`tldr_jax.train.finetune`). A low-layer module: it imports nothing of
tldr_jax.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["prefetch"]


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, workers: int, depth: int) -> Iterator[R]:
    """``fn(item)`` for each of ``items``, in order, computed ahead in ``workers`` threads.

    Args:
      fn: the work of one item (reading a clip, a batch of clips, a training batch).
      items: the items, consumed lazily (one ahead of the results in flight).
      workers: threads; ``<= 0`` computes each item in the caller's thread when it is asked for.
      depth: results in flight while the caller holds one (at least 1).

    Yields:
      the results, in the order of ``items``. An exception raised by ``fn`` is raised here, at its item.
      Closing the iterator early (``break``, ``close()``) cancels the results not started yet and waits
      for the running ones.
    """
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque[Future[R]] = collections.deque(
            pool.submit(fn, item) for item in itertools.islice(it, max(1, depth))
        )
        try:
            while pending:
                fut = pending.popleft()
                for item in itertools.islice(it, 1):
                    pending.append(pool.submit(fn, item))
                yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()

"""Searching a video collection with a retrieval model: encode every clip once, rank them for a text.

::

    from tldr_jax import search
    index = search.build_index("ckpt/umt_b16_ret", "videos/", "videos.index", r="msrvtt", keep_tokens=True)
    hits = search.search(index, "a dog catches a frisbee", k=10, rerank=50)   # SearchHit list
    index = search.load_index("videos.index")                 # later: opens the model it was built with

* :mod:`~tldr_jax.search.index`: the index on disk (format, :class:`VideoIndex`, :func:`load_index`);
* :mod:`~tldr_jax.search.entries`: :class:`~tldr_jax.search.entries.IndexEntry`, one row: a file or a
  time window of one (``build_index(window=...)``: moments);
* :mod:`~tldr_jax.search.validate`: the checks of every file an index reads (one line naming the file);
* :mod:`~tldr_jax.search.locks`: one writer at a time, readers that never fail because of a writer;
* :mod:`~tldr_jax.search.collection`: which files a collection holds, and their records;
* :mod:`~tldr_jax.search.build`: :func:`build_index` and :func:`encode_shard` (multi-host), through the
  retrieval features' one clip path and :func:`tldr_jax.batch.run_directory`'s content-keyed cache
  (:mod:`~tldr_jax.search.build_settings`: their checked arguments and :class:`BuildReport`);
* :mod:`~tldr_jax.search.store`: writing a generation and ``index.json``, removing what nothing needs;
* :mod:`~tldr_jax.search.ray_engine`: the same encoding on Ray (``engine="ray"``);
* :mod:`~tldr_jax.search.query`: :func:`search`, the official ITC ranking and ITM re-ranking of a query
  (videos grouped from their windows, with their moments), and :func:`search_vector`.
"""

from tldr_jax.search.build import BuildReport, build_index, encode_shard
from tldr_jax.search.index import VideoIndex, load_index
from tldr_jax.search.locks import IndexBusyError
from tldr_jax.search.query import Moment, SearchHit, search, search_vector

__all__ = [
    "BuildReport", "IndexBusyError", "Moment", "SearchHit", "VideoIndex", "build_index", "encode_shard",
    "load_index", "search", "search_vector",
]

"""``tldr-jax serve`` under load: a real uvicorn server on loopback (a free port), 8 concurrent clients x 200
queries (ITC and, every fifth, ITM re-ranking), with zero errors; and the same while the folder is
re-indexed (the server switches to each new generation without a failed query).

A tiny random model and ``.npy`` clips keep it cheap; each client holds one keep-alive HTTP connection, as a
browser does. Timings are not asserted (``benchmarks/serve_bench.py`` measures them).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest
import search_fixtures
from search_fixtures import QUERIES, R_SPEC

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tldr_jax.search import build_index, load_index, search  # noqa: E402
from tldr_jax.search.server import create_app, serve_in_thread  # noqa: E402
from tldr_jax.search.service import SearchService  # noqa: E402

CLIENTS, QUERIES_PER_CLIENT, K, RERANK = 8, 200, 3, 4

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    return search_fixtures.model(model_dir)


@pytest.fixture()
def folder(tmp_path):
    path = tmp_path / "videos"
    search_fixtures.write_clips(path, n=5)
    return path


def _request(c: int, i: int) -> tuple[str, int]:
    """The ``i``-th search of client ``c``: a query and its re-ranking depth (every fifth re-ranked)."""
    return QUERIES[(c + i) % len(QUERIES)], RERANK if i % 5 == 0 else 0


class Load:
    """``CLIENTS`` threads, each sending ``QUERIES_PER_CLIENT`` searches over one keep-alive connection,
    and more while ``until`` (an event) is not yet set. Every answer is checked: status 200, ``K`` hits,
    and the ranking of the generation it names (``expected``: generation -> (query, rerank) -> rows)."""

    def __init__(self, url: str, expected: dict, until: threading.Event | None = None):
        self.host, self.port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
        self.expected, self.until = expected, until
        self.errors: list[str] = []
        self.answers: list[tuple[str, str, int, list[int]]] = []  # generation, query, rerank, rows
        self.sent = [0] * CLIENTS
        self._lock = threading.Lock()

    def _client(self, c: int) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        i = 0
        try:
            while i < QUERIES_PER_CLIENT or (self.until is not None and not self.until.is_set()):
                i += 1
                query, rerank = _request(c, i)
                params = urllib.parse.urlencode({"q": query, "k": K, "rerank": rerank})
                try:
                    conn.request("GET", f"/api/search?{params}")
                    response = conn.getresponse()
                    body = json.loads(response.read())
                except (OSError, http.client.HTTPException, ValueError) as err:
                    self.errors.append(f"client {c} query {i}: {err!r}")
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                    continue
                with self._lock:
                    if response.status != 200 or len(body.get("hits", ())) != K:
                        self.errors.append(f"client {c} query {i}: {response.status} {body}")
                    else:
                        rows = [h["row"] for h in body["hits"]]
                        self.answers.append((body["generation"], query, rerank, rows))
        finally:
            conn.close()
            self.sent[c] = i

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _rankings(index) -> dict[tuple[str, int], list[int]]:
    """The rows the Python API ranks first for every (query, rerank) the clients send."""
    return {(q, r): [h.row for h in search(index, q, k=K, rerank=r or None)]
            for q in QUERIES for r in (0, RERANK)}


def _served(path, model, **kwargs):
    service = SearchService(path, model=model, rerank=None)
    service.warm_up()
    return create_app(service, warm_up=False, **kwargs)


def _check(load: Load, expected: dict) -> None:
    assert not load.errors, load.errors[:3]
    assert all(n >= QUERIES_PER_CLIENT for n in load.sent) and len(load.answers) == sum(load.sent)
    wrong = [(g, q, r, rows) for g, q, r, rows in load.answers if rows != expected[g][(q, r)]]
    assert not wrong, wrong[:3]  # every answer is the ranking of one complete generation


def test_eight_clients_two_hundred_queries_each_without_an_error(model, folder, tmp_path):
    out = tmp_path / "index"
    with build_index(model, folder, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False) as index:
        expected = {index.generation: _rankings(index)}
    with serve_in_thread(_served(out, model, max_concurrency=4)) as url:
        load = Load(url, expected)
        load.run()
    _check(load, expected)
    assert len(load.answers) == CLIENTS * QUERIES_PER_CLIENT
    assert sum(r == RERANK for _, _, r, _ in load.answers) == CLIENTS * QUERIES_PER_CLIENT // 5


def test_the_same_load_while_the_folder_is_reindexed(model, folder, tmp_path):
    """Two re-indexes (a clip added, then one removed) while the clients search: every answer is the
    ranking of the generation it names, the new generations are served, nothing fails."""
    out = tmp_path / "index"
    build_index(model, folder, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False).close()
    expected: dict = {}
    with load_index(out, model) as index:
        expected[index.generation] = _rankings(index)
        first = index.generation
    done = threading.Event()
    with serve_in_thread(_served(out, model, max_concurrency=4)) as url:
        load = Load(url, expected, until=done)
        clients = threading.Thread(target=load.run)
        clients.start()
        try:
            np.save(folder / "added.npy", np.random.default_rng(7).standard_normal((4, 32, 32, 3))
                    .astype(np.float32))
            for change in ("add", "remove"):
                if change == "remove":
                    (folder / "clip1.npy").unlink()
                with build_index(model, folder, out, r=R_SPEC, batch_size=4, keep_tokens=True,
                                 progress=False) as index:
                    assert index.build.written
                    expected[index.generation] = _rankings(index)
        finally:
            done.set()
            clients.join()
        with urllib.request.urlopen(f"{url}/api/info", timeout=60) as r:
            info = json.loads(r.read())
    _check(load, expected)
    served = {g for g, *_ in load.answers}
    assert first in served and len(served) >= 2, served  # switched while under load
    assert info["generation"] == list(expected)[-1] and info["videos"] == 5  # 5 + 1 added - 1 removed

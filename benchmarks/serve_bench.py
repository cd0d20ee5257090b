"""``tldr-jax serve`` over HTTP: queries per second and p50 / p99 latency of ITC search and of ITM
re-ranking of the top 10 / 50, at 1k and 10k indexed videos, against the per-process ``tldr-jax search``.

::

    python -m benchmarks.serve_bench                  # writes benchmarks/results/serve_bench.{json,md}
    python -m benchmarks.serve_bench --sizes 1000 --seconds 5 --cli-runs 2 --out /tmp/serve.json

* The index: ``--videos`` small MP4 files are indexed for real (:func:`tldr_jax.search.build_index`,
  ``keep_tokens=True``) with a random UMT retrieval model (``benchmarks.retrieval_bench`` size ``--size``).
  Encoding 10k videos would take hours on a CPU, so each size is then written as an index of that many
  rows: random unit vectors (the ITC side) and the real videos' merged tokens repeated (the ITM side), with
  the model, settings and file layout of the real index (``index.json``, a ``data-<id>/`` generation), so
  the server and the command line open it as any index.
* The server: ``tldr-jax serve INDEX --port P`` in its own process (default ``--max-concurrency`` 4),
  timed from start to its first ``/api/health`` "ok" (loading the model and compiling). Then, per mode
  (``rerank=0`` ITC only, ``rerank=10``, ``rerank=50``; ``k=10``) and per number of concurrent clients
  (``--clients``, each a thread with one keep-alive HTTP connection in this process), a few untimed
  queries, then queries of random words for ``--seconds`` (or ``--max-queries``): queries per second
  (answers / wall time), p50 / p99 of each request's latency, errors.
* The command line: ``tldr-jax search INDEX QUERY --k 10 [--rerank N] --json`` as a new process each time
  (``--cli-runs`` per mode), its wall time. At each size the command line gets its own, empty persistent
  compilation cache: its first run of a mode compiles, later runs load the compiled programs from the
  cache, as a user's repeated searches do.

Client and server share this machine's cores, so on a small machine the clients' own work (HTTP,
JSON) is part of what is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MODES: tuple[tuple[str, int], ...] = (("ITC", 0), ("ITM re-rank 10", 10), ("ITM re-rank 50", 50))
K = 10
WARM_QUERIES = 3


# --------------------------------------------------------------------------------------------------
# The index: one built for real, then written at each size.
# --------------------------------------------------------------------------------------------------


def real_index(work: Path, size: str, videos: int, batch_size: int) -> tuple[Path, Path, str, Any]:
    """Index ``videos`` MP4 files with a random model of ``size``: ``(index dir, model dir, about, r)``."""
    from benchmarks.search_bench import bench_model, make_videos
    from tldr_jax import retrieval as R
    from tldr_jax.search import build_index

    model, r, about = bench_model(size)
    model_dir = work / "model"
    R.save(model, model_dir)
    files = make_videos(work / "videos", videos)
    out = work / "real.index"
    build_index(model_dir, files, out, r=r, batch_size=batch_size, keep_tokens=True, progress=False).close()
    return out, model_dir, about, r


def synthetic_index(real: Path, out: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """Write an index of ``n`` rows at ``out`` with ``real``'s model and settings: random unit vectors,
    ``real``'s tokens repeated, entries naming ``real``'s files. Returns its sizes."""
    from benchmarks.search_bench import unit_vectors
    from tldr_jax.files import write_text_atomic
    from tldr_jax.search.index import INDEX_FILE, TOKENS_FILE, VECTORS_FILE, load_index
    from tldr_jax.search.locks import READERS_LOCK

    with load_index(real, False) as index:
        info = json.loads(json.dumps(index.info))
        real_tokens = np.asarray(index.tokens, np.float32)
    m = len(info["entries"])
    data = f"data-{uuid.uuid4().hex[:12]}"
    folder = out / data
    folder.mkdir(parents=True)
    (folder / READERS_LOCK).touch()
    vectors = unit_vectors(n, int(info["dim"]), seed)
    np.save(folder / VECTORS_FILE, vectors)
    tokens = np.lib.format.open_memmap(folder / TOKENS_FILE, mode="w+", dtype=np.float32,
                                       shape=(n, *real_tokens.shape[1:]))
    for start in range(0, n, 512):
        stop = min(n, start + 512)
        tokens[start:stop] = real_tokens[np.arange(start, stop) % m]
    tokens.flush()
    del tokens
    entries = []
    for i in range(n):
        e = dict(info["entries"][i % m])
        e["video"] = f"synthetic/{i:05d}_{Path(e['video']).name}"
        e["sha256"] = hashlib.sha256(f"synthetic {i}".encode()).hexdigest()
        entries.append(e)
    token_bytes = (folder / TOKENS_FILE).stat().st_size
    info.update(data=data, count=n, entries=entries,
                bytes={"vectors": int(vectors.nbytes), "tokens": int(token_bytes), "hnsw": 0, "cache": 0,
                       "tokens_unmerged": 0},
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_text_atomic(out / INDEX_FILE, json.dumps(info) + "\n")
    return {"videos": n, "vectors_bytes": int(vectors.nbytes), "tokens_bytes": int(token_bytes),
            "tokens_shape": list(real_tokens.shape[1:])}


# --------------------------------------------------------------------------------------------------
# The server and its clients.
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_path() -> list[str]:
    """The installed ``tldr-jax`` script (not a shell shim), run by this Python."""
    script = Path(sysconfig.get_path("scripts")) / "tldr-jax"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tldr_jax.cli"]


def start_server(index: Path, port: int, env: dict[str, str], log: Path) -> tuple[subprocess.Popen, float]:
    """``tldr-jax serve INDEX --port PORT`` in a new process; returns it and the seconds until it
    answered ``/api/health`` with "ok" (RuntimeError when it exits or takes more than 10 minutes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cli_path(), "serve", str(index), "--port", str(port)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    while time.perf_counter() - t0 < 600:
        if proc.poll() is not None:
            raise RuntimeError(f"tldr-jax serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return proc, time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("tldr-jax serve did not become ready in 10 minutes")


def random_query(rng: np.random.Generator, words: int = 500) -> str:
    """3-8 random words of the benchmark vocabulary (``w0`` ... ``w499``)."""
    return " ".join(f"w{w}" for w in rng.integers(0, words, rng.integers(3, 9)))


@dataclasses.dataclass
class _Client:
    latencies: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)


def _client(port: int, rerank: int, seed: int, stop_at: float, max_queries: int, out: _Client) -> None:
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while len(out.latencies) + len(out.errors) < max_queries and time.perf_counter() < stop_at:
        path = "/api/search?" + urllib.parse.urlencode({"q": random_query(rng), "k": K, "rerank": rerank})
        t0 = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or len(json.loads(body)["hits"]) != K:
                out.errors.append(f"{response.status} {body[:200]!r}")
                continue
        except (OSError, http.client.HTTPException, ValueError) as err:
            out.errors.append(repr(err))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            continue
        out.latencies.append(time.perf_counter() - t0)
    conn.close()


def http_load(port: int, rerank: int, clients: int, seconds: float, max_queries: int) -> dict[str, Any]:
    """``clients`` threads searching for ``seconds`` (or ``max_queries`` in all): QPS and latencies."""
    warm = _Client()
    _client(port, rerank, 10_000, time.perf_counter() + 600, WARM_QUERIES, warm)  # untimed
    results = [_Client() for _ in range(clients)]
    t0 = time.perf_counter()
    each = -(-max_queries // clients)
    threads = [threading.Thread(target=_client, args=(port, rerank, c, t0 + seconds, each, results[c]))
               for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([x for r in results for x in r.latencies]) * 1e3
    errors = [e for r in (warm, *results) for e in r.errors]
    return {
        "clients": clients, "queries": int(lat.size), "errors": len(errors), "error_examples": errors[:3],
        "wall_s": round(wall, 3), "qps": round(lat.size / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "mean_ms": round(float(lat.mean()), 2) if lat.size else None,
        "max_ms": round(float(lat.max()), 2) if lat.size else None,
    }


def cli_runs(index: Path, rerank: int, runs: int, env: dict[str, str]) -> dict[str, Any]:
    """Wall seconds of ``runs`` ``tldr-jax search`` processes (the first also compiles, unless an
    earlier call filled the compilation cache)."""
    rng = np.random.default_rng(rerank)
    walls = []
    for _ in range(runs):
        argv = [*cli_path(), "search", str(index), random_query(rng), "--k", str(K), "--json"]
        if rerank:
            argv += ["--rerank", str(rerank)]
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        walls.append(round(time.perf_counter() - t0, 3))
        if done.returncode != 0 or len(json.loads(done.stdout)) != K:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-1000:]}")
    return {"runs": walls, "median_s": round(float(np.median(walls)), 3),
            "median_after_first_s": round(float(np.median(walls[1:] or walls)), 3)}


# --------------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------------


def bench_size(work: Path, real: Path, n: int, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Every measurement at one index size."""
    index = work / f"index_{n}"
    t0 = time.perf_counter()
    row: dict[str, Any] = {"index": synthetic_index(real, index, n)}
    row["index"]["write_s"] = round(time.perf_counter() - t0, 1)
    port = free_port()
    proc, ready = start_server(index, port, env, work / f"serve_{n}.log")
    row["server_ready_s"] = round(ready, 1)
    row["http"] = []
    try:
        for label, rerank in MODES:
            for clients in args.clients:
                res = {"mode": label, "rerank": rerank,
                       **http_load(port, rerank, clients, args.seconds, args.max_queries)}
                print(json.dumps(res), flush=True)
                row["http"].append(res)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    row["cli"] = []
    # the command line's own, empty compilation cache: its first run compiles, later runs load
    cli_env = {**env, "TLDR_JAX_COMPILE_CACHE": str(work / f"cli_cache_{n}")}
    for label, rerank in MODES:
        if label in args.cli_modes:
            res = {"mode": label, "rerank": rerank, **cli_runs(index, rerank, args.cli_runs, cli_env)}
            print(json.dumps(res), flush=True)
            row["cli"].append(res)
    return row


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results (also written to ``--out`` and a Markdown file beside it)."""
    from benchmarks.machine import cpu_model
    from benchmarks.retrieval_bench import SIZES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=[*sorted(SIZES), "umt_b16"], default="small")
    p.add_argument("--videos", type=int, default=8, help="MP4 files indexed for real")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sizes", default="1000,10000", help="indexed videos of the served indexes")
    p.add_argument("--clients", default="1,8", help="concurrent HTTP clients (one run each)")
    p.add_argument("--seconds", type=float, default=12.0, help="seconds per (mode, clients) run")
    p.add_argument("--max-queries", type=int, default=2000, help="queries per run at most")
    p.add_argument("--cli-runs", type=int, default=3, help="tldr-jax search processes per mode")
    p.add_argument("--cli-modes", default="ITC,ITM re-rank 50", help="modes timed on the command line")
    p.add_argument("--out", default=str(RESULTS / "serve_bench.json"))
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.cli_modes = [m.strip() for m in args.cli_modes.split(",") if m.strip()]

    res: dict[str, Any] = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "k": K,
        "seconds_per_run": args.seconds, "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp:
        work = Path(tmp)
        env = {**os.environ, "TLDR_JAX_COMPILE_CACHE": str(work / "jax_cache")}
        t0 = time.perf_counter()
        real, _, res["model"], r = real_index(work, args.size, args.videos, args.batch_size)
        res["real_index_s"] = round(time.perf_counter() - t0, 1)
        res["r"] = list(r) if isinstance(r, tuple) else r
        for n in [int(s) for s in args.sizes.split(",") if s]:
            res["sizes"][str(n)] = bench_size(work, real, n, args, env)
            res["load_avg_after_" + str(n)] = os.getloadavg()
    res["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        "# `tldr-jax serve` over HTTP against `tldr-jax search` (`python -m benchmarks.serve_bench`)", "",
        f"CPU: {res['cpu']} ({res['cpus']} CPUs; load average {res['load_avg_start'][0]:.1f} at the start, "
        f"{res['load_avg_end'][0]:.1f} at the end; client threads in the same machine). Model: "
        f"{res['model']}, r = {res['r']}. k = {res['k']}; {res['seconds_per_run']:g} s per run.", "",
        "| videos | mode | how | clients | queries | QPS | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, row in res["sizes"].items():
        for h in row["http"]:
            # a p99 of fewer than 100 latencies is close to their maximum: say so
            p99 = h["p99_ms"] if h["queries"] >= 100 else f"{h.get('max_ms', h['p99_ms'])} (max)"
            lines.append(f"| {int(n):,} | {h['mode']} | `serve` (HTTP) | {h['clients']} | {h['queries']} | "
                         f"{h['qps']:.1f} | {h['p50_ms']} | {p99} | {h['errors']} |")
        for c in row["cli"]:
            first, later = c["runs"][0], c["median_after_first_s"]
            lines.append(f"| {int(n):,} | {c['mode']} | `tldr-jax search` (a process per query) | 1 | "
                         f"{len(c['runs'])} | {1 / later:.2f} | {later * 1e3:.0f} (first {first * 1e3:.0f}) "
                         f"| | 0 |")
    lines += ["", "| videos | vectors | tokens | index written in | server ready in (load + compile) |",
              "|---|---|---|---|---|"]
    for n, row in res["sizes"].items():
        ix = row["index"]
        shape = ix["tokens_shape"]
        lines.append(f"| {int(n):,} | {ix['vectors_bytes'] / 2**20:.1f} MiB | "
                     f"{ix['tokens_bytes'] / 2**20:.0f} MiB ({shape[0]} x {shape[1]} per video) | "
                     f"{ix['write_s']} s | {row['server_ready_s']} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Video search: index build throughput (with / without vid-TLDR, single process / Ray), query latency at
10k and 1M stored vectors, index size on disk.

::

    python -m benchmarks.search_bench                       # writes benchmarks/results/search.{json,md}
    python -m benchmarks.search_bench --videos 32 --no-ray --sizes 10000

* Build: ``--videos`` synthetic MP4 files (distinct content, 24 frames of 96x128, decoded and resized by the
  indexer like any video) indexed by :func:`tldr_jax.search.build_index` with a small random UMT
  retrieval model (``benchmarks.retrieval_bench`` size ``--size``), ``keep_tokens=True``. Single process:
  programs compiled first on a warm-up index of a few of the files, so videos/s is steady-state encoding
  (decode + encoder + writes). Ray (``ray.init(num_cpus=os.cpu_count())``, 1 and 2 actors on this
  machine's CPUs): each run starts fresh actors, which load the model and compile, so its wall time
  includes that start-up.
* Query: the end-to-end ``search`` (text tower + ITC, and with ``rerank``) on the built index; then the
  vector-search stage alone on synthetic unit vectors of the UMT-B retrieval width (512) at each of
  ``--sizes``: exact inner product (usearch's brute-force kernel over the memory-mapped matrix, what an
  index uses by default) and, up to ``--hnsw-max`` vectors, the HNSW graph (build time, latency, recall@10
  against exact).
* Size: bytes per video of vectors and tokens, measured on the built index and computed for UMT-B/16.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import median_time

RESULTS = Path(__file__).resolve().parent / "results"


def make_videos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` small MP4 files of distinct content (the synthetic clip, shifted and tinted per file)."""
    from tldr_jax.video import write_video
    from tldr_jax.video.synthetic import synthetic_frames

    folder.mkdir(parents=True, exist_ok=True)
    base = synthetic_frames(24, 96, 128).astype(np.int16)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        tint = rng.integers(-40, 40, size=3)
        frames = np.clip(np.roll(base, shift=(i * 7) % 128, axis=2) + tint, 0, 255).astype(np.uint8)
        paths.append(write_video(folder / f"video{i:04d}.mp4", frames, fps=8.0))
    return paths


def bench_model(size: str) -> tuple[Any, Any, str]:
    """A random retrieval model, its schedule and a description: ``benchmarks.retrieval_bench`` sizes, or
    ``"umt_b16"`` (the full UMT-B/16 vision encoder, 12 frames of 224 px, MSR-VTT schedule, with a small
    text tower: indexing runs only the vision side)."""
    from benchmarks.retrieval_bench import SIZES, build
    from tldr_jax import retrieval as R

    if size != "umt_b16":
        model, r = build(size)
        return model, r, (f"random UMT retrieval model, benchmarks.retrieval_bench size {size!r}: "
                          f"{SIZES[size]['vision']}")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(500)]
    tc = R.TextConfig(vocab_size=len(words), hidden_size=128, num_layers=4, num_heads=2,
                      intermediate_size=512, fusion_layer=2, max_position_embeddings=64, encoder_width=768,
                      embed_dim=512)
    return (R.init(0, "umt_b16", text_config=tc, vocab=words), "msrvtt",
            "UMT-B/16 vision encoder (random weights, 12 frames of 224 px, vision_proj 512) + a small "
            "text tower")


def timed_build(model_dir: Path, files: list[Path], out: Path, r: Any, batch_size: int, **kw: Any) -> dict:
    """One index build; its report as a dict."""
    from tldr_jax.search import build_index

    index = build_index(model_dir, files, out, r=r, batch_size=batch_size, keep_tokens=True,
                          progress=False, **kw)
    b = index.build
    return {
        "videos": len(index), "encoded": len(b.computed), "encode_seconds": round(b.encode_seconds, 3),
        "total_seconds": round(b.seconds, 3), "videos_per_s": round(b.videos_per_second, 3),
        "tokens": index.settings["tokens"], "bytes": index.sizes(), "engine": b.engine,
    }


def median_ms(fn: Any, reps: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (after one untimed call)."""
    return median_time(fn, reps) * 1e3


class SyntheticIndex:
    """The part of a :class:`~tldr_jax.search.VideoIndex` the vector search reads."""

    def __init__(self, vectors: np.ndarray, hnsw: Any = None):
        self.vectors, self.hnsw, self.approximate = vectors, hnsw, hnsw is not None

    def __len__(self) -> int:
        return len(self.vectors)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``(n, dim)`` random unit float32 vectors (made in chunks: no float64 copy of the whole matrix)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def vector_search(sizes: list[int], dim: int, hnsw_max: int, work: Path) -> list[dict]:
    """Exact and HNSW search latency of the index's search stage on synthetic vectors."""
    from usearch.index import Index

    from tldr_jax.search.index import HNSW_EXPANSION_ADD, HNSW_EXPANSION_SEARCH
    from tldr_jax.search.query import candidates

    rows = []
    queries = unit_vectors(32, dim, seed=1)
    for n in sizes:
        vectors = unit_vectors(n, dim, seed=0)
        path = work / f"vectors_{n}.npy"
        np.save(path, vectors)
        mapped = np.load(path, mmap_mode="r")
        exact = SyntheticIndex(mapped)
        reps = 20 if n <= 100_000 else 7
        it = iter(range(10**9))
        row: dict[str, Any] = {
            "vectors": n, "dim": dim, "vectors_bytes": path.stat().st_size,
            "exact_ms": median_ms(lambda ex=exact, it=it: candidates(ex, queries[next(it) % 32], 10), reps),
        }
        if n <= hnsw_max:
            t = time.perf_counter()
            ann = Index(ndim=dim, metric="ip", dtype="f32", expansion_add=HNSW_EXPANSION_ADD)
            ann.add(np.arange(n, dtype=np.uint64), vectors)
            row["hnsw_build_s"] = round(time.perf_counter() - t, 2)
            ann.save(str(work / "h.usearch"))
            row["hnsw_bytes"] = (work / "h.usearch").stat().st_size
            graph = Index.restore(str(work / "h.usearch"), view=True)
            graph.expansion_search = HNSW_EXPANSION_SEARCH
            approx = SyntheticIndex(mapped, graph)
            row["hnsw_ms"] = median_ms(
                lambda ap=approx, it=it: candidates(ap, queries[next(it) % 32], 10), reps
            )
            hits = [len(set(candidates(approx, q, 10)[0]) & set(candidates(exact, q, 10)[0])) / 10
                    for q in queries]
            row["hnsw_recall_at_10"] = float(np.mean(hits))
            (work / "h.usearch").unlink()
        print(json.dumps(row), flush=True)
        rows.append(row)
        del vectors, mapped, exact
        path.unlink()
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the results (also written to ``--out`` and a Markdown file beside it)."""
    from benchmarks.machine import cpu_model
    from benchmarks.retrieval_bench import SIZES
    from tldr_jax import retrieval as R
    from tldr_jax import search

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--size", choices=[*sorted(SIZES), "umt_b16"], default="small")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sizes", default="10000,1000000", help="stored vectors for the latency test")
    p.add_argument("--dim", type=int, default=512, help="vector width of the latency test (UMT-B: 512)")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest set given an HNSW graph")
    p.add_argument("--repeats", type=int, default=1, help="single-process builds of each schedule")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "search.json"))
    args = p.parse_args(argv)

    model, r, about = bench_model(args.size)
    res: dict[str, Any] = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "model": about,
        "videos": args.videos, "batch_size": args.batch_size, "build": [], "queries": {},
    }
    with tempfile.TemporaryDirectory(prefix="search_bench_") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        R.save(model, model_dir)
        files = make_videos(work / "videos", args.videos)
        warm = files[: args.batch_size]
        label_r = "vid-TLDR r=" + (",".join(map(str, r)) if isinstance(r, tuple) else str(r))
        runs = ((label_r, r), ("no merging", 0))
        for _, sched in runs:
            timed_build(model_dir, warm, work / f"warm_{sched != 0}", sched, args.batch_size)  # compile
        for rep in range(args.repeats):  # interleaved: A B A B (the machine's load drifts)
            for label, sched in runs:
                out = work / f"idx_{sched != 0}"
                if out.exists():
                    shutil.rmtree(out)
                row = timed_build(model_dir, files, out, sched, args.batch_size)
                row["label"], row["engine"], row["repeat"] = label, "local (1 process)", rep
                print(json.dumps(row), flush=True)
                res["build"].append(row)
        if not args.no_ray:
            import ray

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            try:
                for actors in (1, 2):
                    row = timed_build(model_dir, files, work / f"ray_{actors}", r, args.batch_size,
                                      engine="ray", actors=actors)
                    row["label"] = label_r
                    plural = "s" if actors > 1 else ""
                    row["engine"] = f"ray, {actors} actor{plural} (start-up and compile included)"
                    print(json.dumps(row), flush=True)
                    res["build"].append(row)
            finally:
                ray.shutdown()
        index = search.load_index(work / "idx_True")
        query = "w1 w7 w42 w3"
        res["queries"]["end_to_end"] = {
            "videos": len(index),
            "itc_ms": median_ms(lambda: search.search(index, query, k=10), 10),
            "itm_rerank_50_ms": median_ms(lambda: search.search(index, query, k=10, rerank=50), 5),
        }
        print(json.dumps(res["queries"]["end_to_end"]), flush=True)
        res["queries"]["vector_search"] = vector_search(
            [int(s) for s in args.sizes.split(",") if s], args.dim, args.hnsw_max, work
        )
    res["umt_b16_per_video_bytes"] = {
        "vector (512 float32)": 512 * 4,
        "tokens, msrvtt schedule (1452 x 768 float32)": 1452 * 768 * 4,
        "tokens, no merging (2352 x 768 float32)": 2352 * 768 * 4,
    }
    res["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    """The results as Markdown tables."""
    lines = [
        "# Video search benchmark (`python -m benchmarks.search_bench`)", "",
        f"CPU: {res['cpu']} ({res['cpus']} CPUs; load average {res['load_avg_start'][0]:.1f} at the start, "
        f"{res['load_avg_end'][0]:.1f} at the end). Model: {res['model']}.", "",
        f"## Index build: {res['videos']} MP4 files, batch {res['batch_size']}, tokens kept", "",
        "| schedule | engine | tokens per video | videos/s (encoding) | build wall s | tokens on disk |",
        "|---|---|---|---|---|---|",
    ]
    for b in res["build"]:
        lines.append(
            f"| {b['label']} | {b['engine']} | {b['tokens'][0]} -> {b['tokens'][-1]} | "
            f"{b['videos_per_s']:.2f} | "
            f"{b['total_seconds']:.1f} | {b['bytes']['tokens'] / 2**20:.1f} MiB |"
        )
    e = res["queries"]["end_to_end"]
    lines += [
        "", f"## Query latency, end to end ({e['videos']} videos; text tower + search)", "",
        f"ITC top-10: {e['itc_ms']:.1f} ms; ITM re-ranking of the top 50: {e['itm_rerank_50_ms']:.1f} ms "
        "(medians, compiled).", "",
        "## Vector search alone (synthetic unit vectors; top 10; medians)", "",
        "| stored vectors | dim | vectors on disk | exact ms | HNSW build s | HNSW ms | HNSW recall@10 "
        "| HNSW file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in res["queries"]["vector_search"]:
        h = ("| {:.1f} | {:.2f} | {:.3f} | {:.1f} MiB".format(
            v["hnsw_build_s"], v["hnsw_ms"], v["hnsw_recall_at_10"], v["hnsw_bytes"] / 2**20)
            if "hnsw_ms" in v else "| not built | | |")
        lines.append(
            f"| {v['vectors']:,} | {v['dim']} | {v['vectors_bytes'] / 2**20:.1f} MiB | "
            f"{v['exact_ms']:.2f} {h} |"
        )
    lines += ["", "## Size per video, UMT-B/16 (computed)", ""]
    lines += [f"- {k}: {v / 2**20:.2f} MiB" if v > 2**20 else f"- {k}: {v} B"
              for k, v in res["umt_b16_per_video_bytes"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

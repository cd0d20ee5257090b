"""Retrieval evaluation time with and without vid-TLDR: tldr_jax against the official PyTorch evaluation.

The official UMT retrieval evaluation (``tasks/retrieval_utils.evaluation``: every text and video encoded
once, ITC, ITM re-ranking of each query's top-k, ``itm_eval``) at MSR-VTT 1k size by default: 1000 videos
x 1000 captions (one each), k = 128, on a small random UMT retrieval model (synthetic clips and captions:
the scores mean nothing; time, memory and agreement do)::

    python -m benchmarks.retrieval_bench                                  # tldr_jax only
    python -m benchmarks.retrieval_bench --official-dir multi_modality \
        --official-python /tmp/ref_venv/bin/python

With ``--official-dir`` (the official ``multi_modality`` directory) and ``--official-python`` (an
interpreter with PyTorch and ``transformers==4.32.1``, see ``benchmarks/official_retrieval.py``) the same
weights and data go through the official code, which is timed too; its four matrices are compared with
tldr_jax's. tldr_jax's programs are compiled on a small warm-up set first (compile time reported apart);
the official code runs eagerly. Both use the same CPU threads. Results: ``--out`` JSON and a Markdown
table beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Model sizes: vision (tldr_jax.init overrides of umt_b16), text tower, merge schedule (r about MSR-VTT's
#: fractions: 600/2352, 200/1752, 100/1552, keeping 62 % of the tokens as UMT-B's 2352 -> 1452). As in
#: UMT-B (2352 video tokens, 32 text tokens), a video has many more tokens than a caption.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": dict(depth=4, embed_dim=128, num_heads=2, mlp_dim=512, img_size=112, num_frames=8),
        "text": dict(
            hidden_size=128,
            num_layers=4,
            num_heads=2,
            intermediate_size=512,
            fusion_layer=2,
            max_position_embeddings=64,
            embed_dim=64,
        ),
        "r": (100, 33, 17),
    },
    "small": {
        "vision": dict(depth=6, embed_dim=256, num_heads=4, mlp_dim=1024, img_size=112, num_frames=12),
        "text": dict(
            hidden_size=256,
            num_layers=6,
            num_heads=4,
            intermediate_size=1024,
            fusion_layer=4,
            max_position_embeddings=64,
            embed_dim=128,
        ),
        "r": (150, 50, 25),
    },
}
WORDS = 500


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far (GiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(size: str, seed: int = 0) -> tuple[Any, tuple[int, ...]]:
    """A random retrieval model of ``size`` and its merge schedule."""
    from tldr_jax import retrieval as R

    spec = SIZES[size]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(WORDS)]
    tc = R.TextConfig(vocab_size=len(words), encoder_width=spec["vision"]["embed_dim"], **spec["text"])
    return R.init(seed, "umt_b16", text_config=tc, vocab=words, **spec["vision"]), spec["r"]


def synthetic(
    model: Any, n_videos: int, n_texts: int, seed: int = 0
) -> tuple[np.ndarray, list[str], list[int]]:
    """Random clips ``(n, T, H, W, 3)``, captions of 6-14 random words, caption i -> video i mod n."""
    rng = np.random.default_rng(seed)
    cfg = model.vision.config
    videos = rng.normal(size=(n_videos, cfg.num_frames, cfg.img_size, cfg.img_size, 3)).astype(np.float32)
    texts = [" ".join(f"w{w}" for w in rng.integers(0, WORDS, rng.integers(6, 15))) for _ in range(n_texts)]
    return videos, texts, [i % n_videos for i in range(n_texts)]


def run_tldr(
    model: Any, videos: np.ndarray, texts: list[str], gt: list[int], r: Any, args: argparse.Namespace
) -> dict:
    """One timed evaluation (programs already compiled by the warm-up)."""
    from tldr_jax import retrieval as R

    start = time.perf_counter()
    res = R.evaluate(
        model,
        videos,
        texts,
        txt2vid=gt,
        k=args.k,
        r=r,
        max_length=args.max_length,
        batch_size=args.batch_size,
        rerank_group=args.rerank_group,
        progress=False,
    )
    wall = time.perf_counter() - start
    return {
        "seconds": wall,
        "timing": res.timing,
        "itm_pairs": res.num_pairs,
        "metrics": res.metrics,
        "metrics_emb": res.metrics_emb,
        "tokens": list(res.schedule.tokens),
        "result": res,
    }


def official_inputs(
    model: Any,
    videos: np.ndarray,
    texts: list[str],
    gt: list[int],
    r: Any,
    args: argparse.Namespace,
    root: Path,
) -> None:
    """Write what ``benchmarks/official_retrieval.py`` reads."""
    from checkpoints_convert.retrieval import save_official

    root.mkdir(parents=True, exist_ok=True)
    save_official(model, root / "model.pth")
    tc = model.text_config
    (root / "bert_config.json").write_text(json.dumps(official_bert_config(tc)))
    (root / "vocab.txt").write_text("\n".join(model.vocab.tokens) + "\n")
    setup = {
        "vision_encoder": official_vision_config(model.vision.config, r, tc.embed_dim),
        "embed_dim": tc.embed_dim,
        "max_txt_l": args.max_length,
        "k": args.k,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    (root / "setup.json").write_text(json.dumps(setup))
    (root / "texts.json").write_text(json.dumps(texts))
    (root / "txt2img.json").write_text(json.dumps(gt))
    np.save(root / "videos.npy", np.ascontiguousarray(videos.transpose(0, 1, 4, 2, 3)))  # (n, T, C, H, W)


def official_bert_config(tc: Any) -> dict[str, Any]:
    """The official ``config_bert.json`` of a :class:`~tldr_jax.text.bert.TextConfig`."""
    return {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": tc.hidden_act,
        "hidden_dropout_prob": 0.1,
        "hidden_size": tc.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": tc.intermediate_size,
        "layer_norm_eps": tc.layer_norm_eps,
        "max_position_embeddings": tc.max_position_embeddings,
        "model_type": "bert",
        "num_attention_heads": tc.num_heads,
        "num_hidden_layers": tc.num_layers,
        "pad_token_id": tc.pad_token_id,
        "type_vocab_size": tc.type_vocab_size,
        "vocab_size": tc.vocab_size,
        "fusion_layer": tc.fusion_layer,
        "encoder_width": tc.encoder_width,
        "cross_module": "ca",
    }


def official_vision_config(cfg: Any, r: Any, embed_dim: int) -> dict[str, Any]:
    """The official ``model.vision_encoder`` config of an ArchConfig with vid-TLDR schedule ``r``."""
    r_list = list(r) + [0] * (cfg.depth - len(r)) if isinstance(r, tuple) else [r] * cfg.depth
    return dict(
        name="vit_b16",
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        d_model=cfg.embed_dim,
        encoder_embed_dim=cfg.embed_dim,
        encoder_depth=cfg.depth,
        encoder_num_heads=cfg.num_heads,
        drop_path_rate=0.0,
        num_frames=cfg.num_frames,
        tubelet_size=cfg.tubelet_size,
        use_checkpoint=False,
        checkpoint_num=0,
        clip_decoder_embed_dim=cfg.embed_dim,
        clip_output_dim=embed_dim,
        clip_return_layer=0,
        clip_student_return_interval=1,
        pretrained=None,
        clip_teacher="none",
        clip_img_size=cfg.img_size,
        clip_return_interval=1,
        video_mask_type="attention",
        video_mask_ratio=0.0,
        video_double_mask_ratio=0.0,
        image_mask_type="attention",
        image_mask_ratio=0.0,
        image_double_mask_ratio=0.0,
        keep_temporal=False,
        vidTLDR_use=True,
        vidTLDR_r=r_list,
    )


def run_official(root: Path, args: argparse.Namespace) -> dict:
    """The official evaluation in a fresh process of ``--official-python``."""
    out, mats = root / "official.json", root / "official_matrices.npz"
    script = Path(__file__).with_name("official_retrieval.py")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            args.official_python,
            str(script),
            "--official-dir",
            args.official_dir,
            "--data",
            str(root),
            "--out",
            str(out),
            "--matrices",
            str(mats),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        raise RuntimeError(f"the official evaluation failed:\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["process_seconds"] = time.perf_counter() - start
    with np.load(mats) as m:
        res["matrices"] = {k: m[k] for k in m.files}
    return res


def compare(tldr: Any, official: dict) -> dict:
    """Max abs differences of the four matrices and whether the official metrics agree."""
    from tldr_jax.retrieval.fusion import UNSCORED
    from tldr_jax.retrieval.metrics import official_only

    m = official["matrices"]
    pairs = {"i2t_x": tldr.i2t, "t2i_x": tldr.t2i, "i2t_emb": tldr.i2t_emb, "t2i_emb": tldr.t2i_emb}
    diff = {k: float(np.max(np.abs(np.asarray(v, np.float64) - m[k]))) for k, v in pairs.items()}
    unscored_same = bool(
        ((tldr.i2t == UNSCORED) == (m["i2t_x"] == UNSCORED)).all()
        and ((tldr.t2i == UNSCORED) == (m["t2i_x"] == UNSCORED)).all()
    )
    return {
        "max_abs_diff": diff,
        "same_topk": unscored_same,
        "metrics_equal": official_only(tldr.metrics) == official["metrics"],
        "metrics_emb_equal": official_only(tldr.metrics_emb) == official["metrics_emb"],
    }


def markdown(report: dict) -> str:
    """The results as a Markdown table."""
    m = report["machine"]
    lines = [
        f"# Retrieval evaluation: {report['videos']} videos x {report['texts']} captions, k = {report['k']}",
        "",
        f"Model `{report['size']}` (random weights): {report['model']}. Machine: {m['cpu']}, {m['cores']} "
        "cores "
        f"(load average {m['loadavg_before']} before, {m['loadavg_after']} after), jax {m['jax']}; "
        f"official code: torch {report.get('official_torch', '-')}, {report['threads']} threads.",
        "",
        "| run | tokens | total s | text s | video s | ITM re-rank s | ITM pairs | official total s | "
        "speed-up vs official |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["runs"]:
        t, off = row["timing"], row.get("official_seconds")
        cells = [
            row["label"],
            f"{row['tokens'][0]} -> {row['tokens'][-1]}",
            f"{row['seconds']:.2f}",
            f"{t['text']:.2f}",
            f"{t['video']:.2f}",
            f"{t['rerank']:.2f}",
            str(row["itm_pairs"]),
            f"{off:.2f}" if off else "-",
            f"{off / row['seconds']:.2f}x" if off else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Compile (warm-up, not in the times above): {report['compile_seconds']:.1f} s. Peak RSS of the "
        f"tldr_jax process: {report['peak_rss_gib']:.2f} GiB; video-token cache "
        f"{report['token_cache_mib']:.0f} MiB "
        "(no merging).",
    ]
    for row in report["runs"]:
        times = ", ".join(f"{x:.1f}" for x in row.get("all_seconds", []))
        lines.append(
            f"- {row['label']}: tldr_jax median of round-robin runs ({times} s)"
            + (
                f"; official timing and agreement from {row['official_from']} (an earlier run, same setup)"
                if "official_from" in row
                else ""
            )
        )
    for row in report["runs"]:
        if "agreement" in row:
            a = row["agreement"]
            lines.append(
                f"- {row['label']}: max |tldr_jax - official| "
                + ", ".join(f"{k} {v:.1e}" for k, v in a["max_abs_diff"].items())
                + f"; same top-k {a['same_topk']}, metrics equal "
                f"{a['metrics_equal']} (ITC {a['metrics_emb_equal']})"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write ``--out`` (JSON) and the Markdown beside it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--videos", type=int, default=1000)
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--max-length", type=int, default=32, help="tokens per caption (MSR-VTT: 32)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="videos per encoder call (both implementations)"
    )
    p.add_argument("--rerank-group", type=int, default=None, help="tldr_jax ITM work items per call")
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads of the official run"
    )
    p.add_argument("--official-dir", default=None, help="the official multi_modality directory")
    p.add_argument("--official-python", default=None, help="python with torch + transformers==4.32.1")
    p.add_argument("--no-baseline", action="store_true", help="only the vid-TLDR run")
    p.add_argument(
        "--repeat", type=int, default=1, help="tldr_jax timed runs per schedule (round robin; median)"
    )
    p.add_argument(
        "--reuse-official",
        default=None,
        metavar="JSON",
        help="take the official timings / agreement of a previous report of the same setup",
    )
    p.add_argument("--out", default="benchmarks/results/retrieval.json")
    args = p.parse_args(argv)
    if bool(args.official_dir) != bool(args.official_python):
        p.error("--official-dir and --official-python go together")

    import jax

    model, r = build(args.size)
    videos, texts, gt = synthetic(model, args.videos, args.texts)
    schedules = [("vid-TLDR", r)] + ([] if args.no_baseline else [("no merging", 0)])
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()
    # Compile every program on a subset big enough for the same batch shapes (texts: 256 per call).
    warm = min(len(videos), len(texts), max(256, 2 * args.batch_size))
    for _, rr in schedules:
        run_tldr(model, videos[:warm], texts[:warm], [g % warm for g in gt[:warm]], rr, args)
    compile_s = time.perf_counter() - start
    report: dict[str, Any] = {
        "size": args.size,
        "model": {"vision": SIZES[args.size]["vision"], "text": SIZES[args.size]["text"]},
        "videos": args.videos,
        "texts": args.texts,
        "k": args.k,
        "threads": args.threads,
        "compile_seconds": compile_s,
        "runs": [],
    }
    rows = {}
    for rep in range(args.repeat):  # round robin, so that load drift hits every schedule alike
        for label, rr in schedules:
            row = run_tldr(model, videos, texts, gt, rr, args)
            row["label"] = f"{label} ({','.join(map(str, rr)) if isinstance(rr, tuple) else rr})"
            print(f"tldr_jax {row['label']} #{rep}: {row['seconds']:.2f} s {row['timing']}", flush=True)
            rows.setdefault(label, []).append(row)
    previous = (
        {r["label"]: r for r in json.loads(Path(args.reuse_official).read_text())["runs"]}
        if (args.reuse_official)
        else {}
    )
    for label, rr in schedules:
        runs = rows[label]
        row = dict(runs[0])
        row["seconds"] = float(np.median([r["seconds"] for r in runs]))
        row["timing"] = {k: float(np.median([r["timing"][k] for r in runs])) for k in runs[0]["timing"]}
        row["all_seconds"] = [r["seconds"] for r in runs]
        if args.official_dir:
            with tempfile.TemporaryDirectory() as tmp:
                official_inputs(model, videos, texts, gt, rr, args, Path(tmp))
                off = run_official(Path(tmp), args)
            row["official_seconds"] = off["seconds"]
            row["official_metrics"] = off["metrics"]
            row["agreement"] = compare(row["result"], off)
            report["official_torch"] = off["torch"]
            print(
                f"official {row['label']}: {off['seconds']:.2f} s; agreement {row['agreement']}", flush=True
            )
        elif row["label"] in previous and "official_seconds" in previous[row["label"]]:
            old = previous[row["label"]]
            row.update({k: old[k] for k in ("official_seconds", "official_metrics", "agreement") if k in old})
            row["official_from"] = args.reuse_official
            report["official_torch"] = json.loads(Path(args.reuse_official).read_text()).get("official_torch")
        for r in runs:
            r.pop("result", None)
        row.pop("result", None)
        report["runs"].append(row)
    cfg = model.vision.config
    report["token_cache_mib"] = args.videos * cfg.num_patches * cfg.embed_dim * 4 / 2**20
    report["peak_rss_gib"] = peak_rss_gib()
    report["machine"] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "jax": jax.__version__,
        "python": platform.python_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

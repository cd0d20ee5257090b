"""``tldr-jax retrieve``: the official UMT retrieval evaluation with and without vid-TLDR, or a text query.

Examples::

    tldr-jax retrieve --model ckpt/umt_b16_ret --videos videos/ --captions captions.jsonl --r msrvtt --k 128
    tldr-jax retrieve --model ckpt/umt_b16_ret --videos msrvtt/ --annotations msrvtt_ret_test1k.json \\
        --dataset msrvtt                       # the paper's MSR-VTT 1k evaluation in one command
    tldr-jax retrieve --model ckpt/umt_b16_ret --videos videos/ --query "a dog runs"   # ranked videos

``--captions`` is JSON lines ``{"video": "name.mp4", "caption": "..." | [...]}`` (video names are matched
against the files of ``--videos`` by path, name or stem); ``--annotations`` is an official annotation
JSON file read with the dataset's conventions (paragraphs, several captions or videos per entry).
``--videos`` is a directory (every video / ``.npy`` file in it) or a text file listing one path per line.

:func:`add_parser` registers the sub-command on the ``tldr-jax`` parser; :func:`main` runs it and raises
``ValueError`` / ``OSError`` for bad inputs (the ``tldr-jax`` entry point prints them as one line, exit
status 2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.cli import common, sources
from tldr_jax.schedule import DEFAULT_PRESET, default_r, format_r, schedule_for

METRIC_COLUMNS: tuple[str, ...] = (
    "txt_r1",
    "txt_r5",
    "txt_r10",
    "img_r1",
    "img_r5",
    "img_r10",
    "r_mean",
    "txt_mdr",
    "img_mdr",
    "img_mnr",
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``retrieve`` on an argparse sub-parsers object (``set_defaults(func=main)``)."""
    from tldr_jax.retrieval.presets import DATASETS

    p = subparsers.add_parser(
        "retrieve",
        help="video-text retrieval (official UMT evaluation) with and without vid-TLDR, or a text query",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--model", "-m", required=True, help="retrieval model directory (tldr-jax convert ... --vocab)"
    )
    p.add_argument(
        "--videos",
        required=True,
        help="directory of videos / .npy clips, or a text file listing one path per line",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--captions", default=None, help='JSON lines {"video": ..., "caption": ...}')
    src.add_argument(
        "--annotations", default=None, help="an official annotation JSON file (e.g. msrvtt_ret_test1k.json)"
    )
    src.add_argument(
        "--query", action="append", default=None, help="rank the videos for this text (repeatable)"
    )
    p.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default=None,
        help="dataset conventions: text length, frames, k, paragraphs, vid-TLDR schedule",
    )
    p.add_argument(
        "--r",
        type=common.r_type,
        default=None,
        help="vid-TLDR schedule (preset, '600,200,100', fraction, 0); default: the dataset's / msrvtt",
    )
    p.add_argument(
        "--k", type=common.positive_int, default=None, help="k_test: candidates re-ranked per query (128)"
    )
    p.add_argument(
        "--max-length", type=common.positive_int, default=None, help="tokens per caption (MSRVTT 32)"
    )
    p.add_argument(
        "--frames",
        type=common.positive_int,
        default=None,
        help="frames per clip (default: the dataset's / model's)",
    )
    p.add_argument("--batch-size", type=common.positive_int, default=8, help="videos per encoder call")
    p.add_argument("--top", type=common.positive_int, default=10, help="--query: videos shown")
    p.add_argument("--no-baseline", action="store_true", help="skip the evaluation without merging")
    p.add_argument(
        "--dual-softmax",
        type=common.positive_float,
        default=None,
        metavar="TEMP",
        help="also report ITC metrics re-scored by dual softmax (not the official protocol)",
    )
    p.add_argument(
        "--raw-captions",
        action="store_true",
        help="tokenise captions as written (default: the official pre_text cleaning)",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=main, interrupted_note="nothing was written")
    return p


# --------------------------------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------------------------------


def video_files(spec: str) -> list[Path]:
    """The files ``--videos`` names: a directory's videos / ``.npy`` clips (sorted) or a list file's lines."""
    from tldr_jax.video import CLIP_EXTENSIONS

    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CLIP_EXTENSIONS)
        if not files:
            raise FileNotFoundError(
                f"--videos {spec}: no video or .npy files ({', '.join(CLIP_EXTENSIONS)}) inside."
            )
        return files
    if path.is_file():
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        files = [(path.parent / s) if not Path(s).is_absolute() else Path(s) for s in lines]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"--videos {spec} lists {len(missing)} missing file(s), e.g. {missing[0]}."
            )
        if not files:
            raise ValueError(f"--videos {spec} lists no files; write one path per line.")
        return files
    raise FileNotFoundError(f"--videos {spec}: no such directory or list file.")


def _resolve(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """k, r, max_length, frames, trim from the flags, the dataset preset and the model."""
    from tldr_jax.retrieval.presets import get_dataset

    preset = get_dataset(args.dataset) if args.dataset else None
    frames = args.frames or (preset.num_frames if preset else cfg.num_frames)
    run_cfg = cfg.replace(num_frames=frames)
    r = args.r
    r_note = ""
    if r is None:
        name = preset.r if preset else DEFAULT_PRESET
        r = default_r(run_cfg, name)
        if r != name:
            r_note = f" (the '{name}' schedule is not published for {cfg.name}, or does not fit it)"
    sched = schedule_for(run_cfg, r)  # ValueError for a bad r, before weights are read
    return {
        "k": args.k or (preset.k_test if preset else 128),
        "r": r,
        "r_note": r_note,
        "schedule": sched,
        "max_length": args.max_length or (preset.max_txt_l if preset else 32),
        "num_frames": frames,
        "trim_seconds": preset.trim_seconds if preset else None,
    }


def _row(label: str, metrics: dict[str, float], timing: dict[str, float] | None) -> str:
    cells = " ".join(f"{metrics[k]:>7.2f}" for k in METRIC_COLUMNS)
    t = f"  {timing['video']:7.2f} {timing['rerank']:7.2f} {timing['total']:7.2f}" if timing else ""
    return f"{label:<24}{cells}{t}"


def _header() -> str:
    return (
        f"{'':<24}"
        + " ".join(f"{k:>7}" for k in METRIC_COLUMNS)
        + f"  {'video s':>7} {'rerank s':>7} {'total s':>7}"
    )


# --------------------------------------------------------------------------------------------------
# Commands.
# --------------------------------------------------------------------------------------------------


def _evaluate(
    args: argparse.Namespace, model: Any, opts: dict[str, Any], files: list[Path]
) -> dict[str, Any]:
    from tldr_jax.retrieval import annotations as ann
    from tldr_jax.retrieval.evaluation import evaluate
    from tldr_jax.retrieval.features import encode_texts

    clean = not args.raw_captions
    if args.annotations:
        data = ann.load_annotations(args.annotations, None, dataset=args.dataset, clean=clean)
    else:
        data = ann.load_caption_lines(args.captions, None, clean=clean)
    videos = ann.match_videos(data.videos, files)
    progress = False if args.quiet else None
    print(
        f"data    {len(videos)} videos, {len(data.texts)} captions; k={opts['k']}, "
        f"max_length={opts['max_length']},"
        f" {opts['num_frames']} frames",
        flush=True,
    )
    text = encode_texts(model, data.texts, max_length=opts["max_length"])
    runs = [("vid-TLDR r=" + format_r(opts["r"]), opts["r"])]
    if not args.no_baseline:
        runs.append(("no merging", 0))
    out: dict[str, Any] = {"runs": []}
    print(_header())
    for label, r in runs:
        res = evaluate(
            model,
            videos,
            text,
            txt2vid=data.txt2vid,
            vid2txt=data.vid2txt,
            k=opts["k"],
            r=r,
            batch_size=args.batch_size,
            num_frames=opts["num_frames"],
            trim_seconds=opts["trim_seconds"],
            dual_softmax=args.dual_softmax,
            progress=progress,
        )
        print(_row(label + " ITM", res.metrics, res.timing), flush=True)
        print(_row(label + " ITC", res.metrics_emb, None), flush=True)
        if res.metrics_emb_dsl is not None:
            print(_row(label + " ITC+DSL*", res.metrics_emb_dsl, None), flush=True)
        out["runs"].append(
            {
                "label": label,
                "r": r if not isinstance(r, tuple) else list(r),
                "tokens": list(res.schedule.tokens) if res.schedule else None,
                "metrics": res.metrics,
                "metrics_emb": res.metrics_emb,
                "metrics_emb_dual_softmax": res.metrics_emb_dsl,
                "timing": res.timing,
                "itm_pairs": res.num_pairs,
            }
        )
    if args.dual_softmax is not None:
        print(f"* dual softmax (temperature {args.dual_softmax}) is not part of the official UMT evaluation.")
    if len(out["runs"]) == 2:
        a, b = out["runs"]
        print(
            f"time    vid-TLDR {a['timing']['total']:.2f} s vs {b['timing']['total']:.2f} s without merging "
            f"(video encoding {a['timing']['video']:.2f} vs {b['timing']['video']:.2f} s, ITM re-ranking "
            f"{a['timing']['rerank']:.2f} vs {b['timing']['rerank']:.2f} s; first runs include compilation)"
        )
    return out


def _query(args: argparse.Namespace, model: Any, opts: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    from tldr_jax.retrieval.features import encode_texts, encode_videos
    from tldr_jax.retrieval.fusion import rerank
    from tldr_jax.text.tokenizer import check_query, shorten

    t0 = time.perf_counter()
    vid = encode_videos(
        model,
        [str(f) for f in files],
        opts["r"],
        batch_size=args.batch_size,
        num_frames=opts["num_frames"],
        trim_seconds=opts["trim_seconds"],
        progress=False if args.quiet else None,
    )
    t1 = time.perf_counter()
    # cleaned as the evaluation cleans captions; a query the model reads only in part warns (one line)
    queries = [check_query(q, model, clean=not args.raw_captions, max_length=opts["max_length"])
               for q in args.query]
    text = encode_texts(model, queries, max_length=opts["max_length"])
    sim = np.asarray(vid.feat) @ np.asarray(text.feat).T
    _, t2i, _ = rerank(model, sim, text, vid.tokens, opts["k"], progress=False)
    t2 = time.perf_counter()
    out: dict[str, Any] = {"queries": []}
    for q, raw in enumerate(args.query):
        order = np.argsort(t2i[q])[::-1][: args.top]
        print(f"query   {shorten(raw)!r} (r={format_r(opts['r'])}; {len(files)} videos)")
        ranked = []
        for rank, v in enumerate(order, 1):
            itm = float(t2i[q, v])
            shown = f"{itm:8.3f}" if itm != -100.0 else "       -"
            print(f"  {rank:3d}. {shown}  itc {sim[v, q]:.4f}  {files[v]}")
            ranked.append({"rank": rank, "video": str(files[v]), "itm": itm, "itc": float(sim[v, q])})
        out["queries"].append({"query": raw, "ranked": ranked})
    print(f"time    video encoding {t1 - t0:.2f} s, matching {t2 - t1:.2f} s (includes compilation)")
    return out


def main(args: argparse.Namespace) -> int:
    """Run ``tldr-jax retrieve``; returns the exit status (0). Bad inputs raise ValueError / OSError."""
    if not (args.captions or args.annotations or args.query):
        raise ValueError(
            "give --captions FILE (or --annotations FILE) to evaluate, or --query TEXT to rank videos."
        )
    json_path = common.output_file(args.json, "--json")  # before any model load or decode
    if args.query:  # "" or "!!!": the same one line as tldr-jax search, before anything is read
        from tldr_jax.text.tokenizer import check_query

        for q in args.query:
            check_query(q, clean=not args.raw_captions)
    files = video_files(args.videos)
    source = sources.resolve_model(args.model, kind="umt_retrieval", quiet=args.quiet)
    cfg = source.config
    opts = _resolve(args, cfg)
    model = source.load()
    tc = model.text_config
    print(
        f"model   {args.model}: {cfg.name} (depth {cfg.depth}, width {cfg.embed_dim}) + BERT "
        f"({tc.num_layers} layers, "
        f"fusion from {tc.fusion_layer}); r={format_r(opts['r'])}{opts['r_note']}: "
        f"{' -> '.join(str(t) for t in opts['schedule'].tokens[:1] + opts['schedule'].tokens[-1:])} tokens",
        flush=True,
    )
    result = _query(args, model, opts, files) if args.query else _evaluate(args, model, opts, files)
    if json_path is not None:
        from tldr_jax.files import write_text_atomic

        write_text_atomic(json_path, json.dumps(result, indent=2, default=str) + "\n")
    return 0

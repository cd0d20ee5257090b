"""``tldr-jax qa`` (video question answering) and ``tldr-jax mc`` (multiple choice), with vid-TLDR.

Examples::

    tldr-jax qa --model ckpt/umt_b16_qa clip.mp4 "what is the man doing?" --answers answers.json --k 5
    tldr-jax qa --model ckpt/umt_b16_qa --dataset msrvtt_qa --annotations msrvtt_qa_test.json \\
        --answer-list msrvtt_qa_answer_list.json --videos msrvtt/videos --out qa.json
    tldr-jax mc --model ckpt/umt_b16_ret --annotations msrvtt_mc_test.json --videos msrvtt/videos

``--answers`` / ``--answer-list`` is a JSON list of strings or a text file with one answer per line.
A data set is evaluated with vid-TLDR and, unless ``--no-baseline``, without merging; the accuracy of
each run is printed, and ``--out`` receives them with every prediction as JSON (written atomically; the
path is checked before any work). Every bad input is one ``tldr-jax qa: error:`` line (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tldr_jax.cli import common, sources
from tldr_jax.schedule import default_r, format_r, schedule_for

__all__ = ["add_parser", "main_mc", "main_qa"]


def add_parser(subparsers: Any) -> None:
    """Register ``qa`` and ``mc`` on an argparse sub-parsers object."""
    from tldr_jax.qa.data import PRESETS

    p = subparsers.add_parser(
        "qa",
        help="video question answering (official UMT-QA ranking) with vid-TLDR",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("video", nargs="?", default=None, help="one video file or .npy clip (with QUESTION)")
    p.add_argument("question", nargs="?", default=None, help="the question about VIDEO")
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="QA model directory (tldr-jax convert SRC OUT --format umt_qa --vocab vocab.txt)",
    )
    p.add_argument("--answers", default=None, help="answer list for one question (JSON list or lines)")
    p.add_argument("--top", type=common.positive_int, default=5, help="one question: answers shown")
    qa_sets = sorted(n for n, q in PRESETS.items() if q.task == "qa")
    p.add_argument(
        "--dataset", choices=qa_sets, default=None, help="data-set conventions (frames, k, lengths, r)"
    )
    p.add_argument(
        "--annotations", default=None, help="official QA annotation file (e.g. msrvtt_qa_test.json)"
    )
    p.add_argument(
        "--answer-list", default=None, help="official answer list (e.g. msrvtt_qa_answer_list.json)"
    )
    p.add_argument("--k", type=common.positive_int, default=None, help="answers re-scored per question (128)")
    p.add_argument(
        "--max-question-length", type=common.positive_int, default=None, help="question tokens (25)"
    )
    p.add_argument("--max-answer-length", type=common.positive_int, default=None, help="answer tokens (5)")
    _shared(p)
    p.set_defaults(func=main_qa)
    m = subparsers.add_parser(
        "mc",
        help="multiple choice (official MSR-VTT-MC scoring) with vid-TLDR",
        description="Multiple choice with a UMT retrieval model: ITM + ITC ensemble.",
    )
    m.add_argument(
        "--model", "-m", required=True, help="retrieval model directory (tldr-jax convert ... --vocab)"
    )
    m.add_argument("--annotations", required=True, help="official multiple-choice file (msrvtt_mc_test.json)")
    m.add_argument("--max-length", type=common.positive_int, default=None, help="caption tokens (32)")
    _shared(m)
    m.set_defaults(func=main_mc, dataset="msrvtt_mc")


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--videos", default=None, help="folder the annotation file's video names are relative to")
    p.add_argument(
        "--r",
        type=common.r_type,
        default=None,
        help="vid-TLDR schedule (preset, '600,200', fraction, 0); default: the data set's",
    )
    p.add_argument("--frames", type=common.positive_int, default=None, help="frames per clip (model's)")
    p.add_argument("--batch-size", type=common.positive_int, default=32, help="questions per ranking call")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without merging")
    p.add_argument("--out", default=None, metavar="FILE", help="write the results as JSON (atomically)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def read_answers(path: str, flag: str) -> list[str]:
    """A JSON list of strings, or one answer per line; ``FileNotFoundError`` / ``ValueError`` naming
    ``flag``."""
    from tldr_jax.qa.data import load_answer_list

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file.")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return load_answer_list(p)
    answers = [line.strip() for line in text.splitlines() if line.strip()]
    if not answers:
        raise ValueError(f"{flag} {path} holds no answers; give a JSON list or one answer per line.")
    return answers


def _options(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """r (and its schedule), k, lengths and frames from the flags, the preset and the model."""
    from tldr_jax.qa.data import get_preset

    preset = get_preset(args.dataset) if args.dataset else None
    frames = args.frames or (preset.num_frames if preset else cfg.num_frames)
    run_cfg = cfg.replace(num_frames=frames)
    wanted = (preset.r or preset.name) if preset else "msrvtt_qa"  # no published schedule: the generic one
    r = args.r if args.r is not None else default_r(run_cfg, wanted)
    return {
        "r": r,
        "schedule": schedule_for(run_cfg, r),  # ValueError for a bad r, before the weights are read
        "frames": frames,
        "k": getattr(args, "k", None) or (preset.k_test if preset else 128),
        "max_q": getattr(args, "max_question_length", None) or (preset.max_q_len if preset else 25),
        "max_a": getattr(args, "max_answer_length", None) or (preset.max_a_len if preset else 5),
        "max_txt": getattr(args, "max_length", None) or (preset.max_txt_l if preset else 32),
    }


def _videos(names: list[str], root: str | None, flag: str = "--videos") -> list[str]:
    """The annotation's videos under ``root``, every one checked to exist before any work."""
    paths = [str(Path(root).expanduser() / n) if root else n for n in names]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        hint = "" if root else f"; pass {flag} FOLDER (the names in the annotation file are relative)"
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} videos not found, e.g. {missing[0]}{hint}.")
    return paths


def _runs(args: argparse.Namespace, opts: dict[str, Any]) -> list[tuple[str, Any]]:
    runs = [(f"vid-TLDR r={format_r(opts['r'])}", opts["r"])]
    if not args.no_baseline and opts["schedule"].last_merge >= 0:
        runs.append(("no merging", 0))
    return runs


def _model_line(args: argparse.Namespace, model: Any, opts: dict[str, Any]) -> None:
    tokens = opts["schedule"].tokens
    common.say(
        f"model   {args.model}: {model.vision.config.name}; r={format_r(opts['r'])}: "
        f"{tokens[0]} -> {tokens[-1]} tokens, {opts['frames']} frames"
    )


def _single(args: argparse.Namespace, model: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Rank the answer list for one question about one video; print the top answers."""
    from tldr_jax import qa
    from tldr_jax.video import load_clip, preprocessing_for

    answers = read_answers(args.answers, "--answers")
    prep = preprocessing_for(model.vision, num_frames=opts["frames"], sampling="middle", pad=True)
    clip = load_clip(args.video, prep)
    tokens = qa.encode_video(model, clip[None], opts["r"]).tokens
    q_ids, q_mask = qa.tokenize_questions(model, [args.question], opts["max_q"])
    a_ids, a_mask = qa.tokenize_answers(model, answers, opts["max_a"])
    states = qa.encode_question(model, q_ids, q_mask, tokens)
    ids, probs = qa.rank_answers(model, states, q_mask, a_ids, a_mask, min(opts["k"], len(answers)))
    top = [(answers[int(i)], float(p)) for i, p in zip(np.asarray(ids)[0], np.asarray(probs)[0])][: args.top]
    common.say(f"question {args.question!r} about {args.video}")
    for rank, (answer, prob) in enumerate(top, 1):
        common.say(f"  {rank:2d}. {prob:7.4f}  {answer}")
    return {"video": args.video, "question": args.question, "top": top}


def _dataset(args: argparse.Namespace, model: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """The official evaluation of an annotation file with and without merging; accuracy per run."""
    from tldr_jax import qa

    ann = qa.load_qa_annotations(args.annotations)
    answers = read_answers(args.answer_list, "--answer-list")
    videos = _videos(ann.videos, args.videos)
    common.say(
        f"data    {len(ann.questions)} questions about {len(videos)} videos, {len(answers)} answers; "
        f"k={opts['k']}"
    )
    out: dict[str, Any] = {"dataset": args.dataset, "runs": []}
    for label, r in _runs(args, opts):
        start = time.perf_counter()
        res = qa.evaluate(
            model,
            videos,
            ann.questions,
            answers,
            question_video=ann.question_video,
            gt=ann.answers,
            k=min(opts["k"], len(answers)),
            r=r,
            max_question_length=opts["max_q"],
            max_answer_length=opts["max_a"],
            batch_size=args.batch_size,
            num_frames=opts["frames"],
            progress=False if args.quiet else None,
        )
        seconds = time.perf_counter() - start
        common.say(f"{label:<28} accuracy {res.accuracy:6.2f} %   {seconds:8.1f} s")
        rows = res.to_json(answers)["questions"]
        for row, qid, question, gt in zip(rows, ann.question_ids, ann.questions, ann.answers):
            row.update(question_id=qid, question=question, answer=gt)
        out["runs"].append(
            {
                "label": label,
                "r": r if not isinstance(r, tuple) else list(r),
                "accuracy": res.accuracy,
                "seconds": seconds,
                "predictions": rows,
            }
        )
    return out


def _write(path: Path | None, result: dict[str, Any]) -> None:
    from tldr_jax.files import jsonable, write_text_atomic

    if path is not None:
        write_text_atomic(path, json.dumps(jsonable(result), indent=2) + "\n")
        common.say(f"wrote   {path}")


def main_qa(args: argparse.Namespace) -> int:
    """Run ``tldr-jax qa``; bad inputs raise ``ValueError`` / ``OSError`` (one line, exit status 2)."""
    single = args.video is not None or args.question is not None
    if single and (args.video is None or args.question is None or args.answers is None):
        raise ValueError("one question needs VIDEO, QUESTION and --answers FILE.")
    if single and (args.annotations or args.answer_list or args.dataset):
        raise ValueError("give VIDEO QUESTION --answers, or --annotations and --answer-list, not both.")
    if not single and not (args.annotations and args.answer_list):
        raise ValueError(
            "give VIDEO QUESTION --answers FILE, or --annotations FILE --answer-list FILE [--dataset]."
        )
    for flag, value in (
        ("--answers", args.answers),
        ("--annotations", args.annotations),
        ("--answer-list", args.answer_list),
        ("VIDEO", args.video),
    ):
        if value is not None and not Path(value).expanduser().is_file():
            raise FileNotFoundError(f"{flag} {value}: no such file.")
    out = common.output_file(args.out, "--out")
    source = sources.resolve_model(args.model, kind="umt_qa", quiet=args.quiet)
    opts = _options(args, source.config)
    model = source.load()
    _model_line(args, model, opts)
    _write(out, _single(args, model, opts) if single else _dataset(args, model, opts))
    return 0


def main_mc(args: argparse.Namespace) -> int:
    """Run ``tldr-jax mc``: the official multiple-choice accuracy with and without merging."""
    from tldr_jax import qa
    from tldr_jax.retrieval import multiple_choice

    out = common.output_file(args.out, "--out")
    ann = qa.load_mc_annotations(args.annotations)
    videos = _videos(ann.videos, args.videos)
    source = sources.resolve_model(args.model, kind="umt_retrieval", quiet=args.quiet)
    opts = _options(args, source.config)
    model = source.load()
    _model_line(args, model, opts)
    result: dict[str, Any] = {"dataset": "msrvtt_mc", "runs": []}
    for label, r in _runs(args, opts):
        start = time.perf_counter()
        res = multiple_choice(
            model,
            videos,
            ann.captions,
            answers=ann.answers,
            r=r,
            max_length=opts["max_txt"],
            batch_size=min(args.batch_size, 8),
            num_frames=opts["frames"],
            progress=False if args.quiet else None,
        )
        seconds = time.perf_counter() - start
        common.say(f"{label:<28} accuracy {res.accuracy:6.2f} %   {seconds:8.1f} s")
        result["runs"].append(
            {
                "label": label,
                "accuracy": res.accuracy,
                "seconds": seconds,
                "pred": res.pred.tolist(),
                "scores": res.scores.tolist(),
            }
        )
    _write(out, result)
    return 0

"""Video-QA evaluation time with and without vid-TLDR: tldr_jax against the official PyTorch evaluation.

The official ``tasks/vqa.py::evaluation`` (answer list with ``" [SEP]"``, ``UMT_QA.rank_answer`` with
``k_test``, ``eval_simple_qa_acc``) on a small random UMT-QA model and synthetic data (random clips,
questions and answers of random words: the answers mean nothing; time and agreement do)::

    python -m benchmarks.official_qa                                     # tldr_jax only
    python -m benchmarks.official_qa --official-dir multi_modality --official-python /tmp/ref_venv/bin/python

With ``--official-dir`` (the official ``multi_modality`` directory) and ``--official-python`` (an
interpreter with PyTorch and ``transformers==4.32.1``, see ``benchmarks/official_retrieval.py``) the same
weights and data go through the official code in a fresh process of that interpreter (this file with
``--run-official``; the official module and task functions are imported or executed from their own source
text, nothing is copied here), and the predictions are compared. As in the official loader, the official
run encodes a question's video once per question; tldr_jax encodes each video once. tldr_jax's programs
are compiled by a warm-up on the same shapes first (reported apart). Results: ``--out`` JSON and a
Markdown table beside it.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

#: Model sizes: vision (tldr_jax.init overrides of umt_b16), text (the question encoder; the decoder has
#: ``num_layers - fusion_layer`` layers), merge schedule (about MSR-VTT-QA's 600/2352, 200/1752).
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
        ),
        "r": (100, 33),
    },
}
WORDS = 800


def build(size: str, seed: int = 0) -> tuple[Any, tuple[int, ...]]:
    """A random QA model of ``size`` and its merge schedule."""
    from tldr_jax import qa
    from tldr_jax.text import TextConfig

    spec = SIZES[size]
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(WORDS)]
    tc = TextConfig(vocab_size=len(words), encoder_width=spec["vision"]["embed_dim"], **spec["text"])
    return qa.init(seed, "umt_b16", text_config=tc, vocab=words, **spec["vision"]), spec["r"]


def synthetic(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Random clips, ``--per-video`` questions of 5-12 words per clip, an answer list of one- and two-word
    answers, a ground-truth answer per question."""
    rng = np.random.default_rng(args.seed)
    cfg = model.vision.config
    shape = (args.videos, cfg.num_frames, cfg.img_size, cfg.img_size, 3)
    answers = list(
        dict.fromkeys(
            " ".join(f"w{w}" for w in rng.integers(0, WORDS, 1 + (i % 4 == 0)))
            for i in range(args.answers * 2)
        )
    )[: args.answers]
    n = args.videos * args.per_video
    return {
        "videos": rng.normal(size=shape).astype(np.float32),
        "questions": [
            " ".join(f"w{w}" for w in rng.integers(0, WORDS, rng.integers(5, 13))) for _ in range(n)
        ],
        "question_video": np.repeat(np.arange(args.videos), args.per_video),
        "answers": answers,
        "gt": [answers[i] for i in rng.integers(0, len(answers), n)],
    }


def run_tldr(model: Any, data: dict[str, Any], r: Any, args: argparse.Namespace) -> dict:
    """One evaluation of every question."""
    import tldr_jax
    from tldr_jax import qa

    start = time.perf_counter()
    res = qa.evaluate(
        model,
        data["videos"],
        data["questions"],
        data["answers"],
        question_video=data["question_video"],
        gt=data["gt"],
        k=args.k,
        r=r,
        batch_size=args.batch_size,
        video_batch_size=args.video_batch_size,
        progress=False,
    )
    return {
        "seconds": time.perf_counter() - start,
        "accuracy": res.accuracy,
        "predictions": res.predictions,
        "tokens": list(tldr_jax.schedule(model.vision, r).tokens),
    }


def official_inputs(model: Any, data: dict[str, Any], r: Any, args: argparse.Namespace, root: Path) -> None:
    """Write what ``--run-official`` reads."""
    from benchmarks.retrieval_bench import official_bert_config, official_vision_config
    from checkpoints_convert.qa import save_official

    root.mkdir(parents=True, exist_ok=True)
    save_official(model, root / "model.pth")
    tc = model.text_config
    (root / "bert_config.json").write_text(json.dumps(official_bert_config(tc)))
    (root / "vocab.txt").write_text("\n".join(model.vocab.tokens) + "\n")
    setup = {
        "vision_encoder": official_vision_config(model.vision.config, r, tc.hidden_size),
        "k": args.k,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "max_q_len": 25,
        "max_a_len": 5,
    }
    (root / "setup.json").write_text(json.dumps(setup))
    for key in ("questions", "answers", "gt"):
        (root / f"{key}.json").write_text(json.dumps(data[key]))
    (root / "question_video.json").write_text(json.dumps(data["question_video"].tolist()))
    np.save(
        root / "videos.npy", np.ascontiguousarray(data["videos"].transpose(0, 1, 4, 2, 3))
    )  # (n, T, C, H, W)


def run_official(root: Path, args: argparse.Namespace) -> dict:
    """The official evaluation in a fresh process of ``--official-python``."""
    out = root / "official.json"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }
    cmd = [
        args.official_python,
        "-m",
        "benchmarks.official_qa",
        "--run-official",
        "--official-dir",
        args.official_dir,
        "--data",
        str(root),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"the official evaluation failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# --------------------------------------------------------------------------------------------------
# The official side (runs under --official-python).
# --------------------------------------------------------------------------------------------------


def _function_from_source(path: Path, name: str, namespace: dict[str, Any]) -> Any:
    """The top-level function ``name`` of the official file ``path``, executed from its own source text
    (its module imports training-only packages such as wandb)."""
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


class _Loader:
    """The minimum of the official QA test loader: ``dataset.answer_list`` and batches of
    ``(clips (b, T, C, H, W), questions, question ids)``, one clip per question as the official dataset."""

    def __init__(
        self,
        videos: Any,
        questions: list[str],
        question_video: list[int],
        answers: list[str],
        batch_size: int,
    ):
        self.videos, self.questions, self.qv = videos, questions, question_video
        self.batch_size, self.dataset = batch_size, types.SimpleNamespace(answer_list=answers)

    def __len__(self) -> int:
        return (len(self.questions) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Any:
        import torch

        for s in range(0, len(self.questions), self.batch_size):
            idx = list(range(s, min(s + self.batch_size, len(self.questions))))
            yield self.videos[[self.qv[i] for i in idx]], [self.questions[i] for i in idx], torch.tensor(idx)


def _official_model(data: Path, setup: dict[str, Any], pretrained: str) -> tuple[Any, Any, Any]:
    """The official ``UMT_QA`` with the weights of ``data / model.pth``, its tokenizer and config."""
    import torch
    from models.backbones.bert.tokenization_bert import BertTokenizer
    from models.backbones.bert.xbert import BertConfig, BertModel
    from models.umt_qa import UMT_QA
    from utils.easydict import EasyDict

    bert_cfg = data / "bert_config.json"
    bert = json.loads(bert_cfg.read_text())
    BertModel(BertConfig.from_json_file(str(bert_cfg)), add_pooling_layer=False).save_pretrained(pretrained)
    (Path(pretrained) / "vocab.txt").write_text((data / "vocab.txt").read_text())
    config = EasyDict(
        model=dict(
            vision_encoder=setup["vision_encoder"],
            multimodal=dict(enable=True),
            embed_dim=32,
            temp=0.07,
            text_encoder=dict(
                name="bert_base",
                pretrained=pretrained,
                config=str(bert_cfg),
                d_model=bert["hidden_size"],
                fusion_layer=bert["fusion_layer"],
            ),
        ),
        criterion=dict(
            loss_weight=dict(vtc=1.0, mlm=0.0, vtm=1.0, uta=0.0),
            vtm_hard_neg=True,
            mlm_masking_prob=0.5,
            uta_norm_type="l2",
            uta_loss_type="l2",
        ),
        gradient_checkpointing=False,
        fp16=False,
        distributed=False,
        eos="[SEP]",
        log_freq=10**9,
        max_q_len=setup["max_q_len"],
        max_a_len=setup["max_a_len"],
        evaluation=dict(k_test=setup["k"]),
    )
    tokenizer = BertTokenizer.from_pretrained(pretrained)
    model = UMT_QA(config=config, tokenizer=tokenizer, is_pretrain=False)
    state = torch.load(data / "model.pth", map_location="cpu", weights_only=True)["model"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"official model and weights disagree: missing {missing}, unexpected {unexpected}")
    return model.eval(), tokenizer, config


def official_main(args: argparse.Namespace) -> int:
    """Build the official UMT_QA from ``--data``, run ``evaluation`` and ``eval_simple_qa_acc``, write
    ``--out``."""
    import logging

    import torch

    data = Path(args.data)
    setup = json.loads((data / "setup.json").read_text())
    torch.set_num_threads(int(setup["threads"]))
    official = Path(args.official_dir).resolve()
    sys.path.insert(0, str(official))
    from benchmarks.official_retrieval import timm_stand_in

    timm_stand_in()
    from utils.basic_utils import MetricLogger

    logger = logging.getLogger("vqa")  # the task functions, executed from their source text:
    pre_text = _function_from_source(official / "dataset" / "utils.py", "pre_text", {"re": re})
    acc = _function_from_source(
        official / "tasks" / "vqa_utils.py", "eval_simple_qa_acc", {"json": json, "logger": logger}
    )
    evaluation = _function_from_source(
        official / "tasks" / "vqa.py",
        "evaluation",
        {"torch": torch, "MetricLogger": MetricLogger, "logger": logger},
    )
    with tempfile.TemporaryDirectory() as pretrained:
        model, tokenizer, config = _official_model(data, setup, pretrained)
    questions = [pre_text(q) for q in json.loads((data / "questions.json").read_text())]
    loader = _Loader(
        torch.from_numpy(np.load(data / "videos.npy")),
        questions,
        json.loads((data / "question_video.json").read_text()),
        json.loads((data / "answers.json").read_text()),
        int(setup["batch_size"]),
    )
    start = time.perf_counter()
    with torch.no_grad():
        result = evaluation(model, loader, tokenizer, torch.device("cpu"), config)
    seconds = time.perf_counter() - start
    gt = [{"question_id": i, "answer": a} for i, a in enumerate(json.loads((data / "gt.json").read_text()))]
    result = sorted(result, key=lambda row: row["question_id"])
    Path(args.out).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "accuracy": acc(gt, result),
                "predictions": [r["answer"] for r in result],
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
        + "\n"
    )
    return 0


# --------------------------------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        f"# Video QA evaluation: {report['questions']} questions about {report['videos']} videos, "
        f"{report['answers']} answers, k = {report['k']}",
        "",
        f"Model `{report['size']}` (random weights): {report['model']}. {report['machine']}.",
        "",
        "| run | tokens | tldr_jax s | official s | speed-up | same predictions | accuracy (tldr_jax / "
        "official) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in report["runs"]:
        off = row.get("official")
        cells = [
            row["label"],
            f"{row['tokens'][0]} -> {row['tokens'][-1]}",
            f"{row['seconds']:.2f}",
            f"{off['seconds']:.2f}" if off else "-",
            f"{off['seconds'] / row['seconds']:.1f}x" if off else "-",
            f"{row['same_predictions']} / {report['questions']}" if off else "-",
            f"{row['accuracy']} / {off['accuracy']}" if off else str(row["accuracy"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"tldr_jax compile (warm-up, not in the times above): {report['compile_seconds']:.1f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--run-official``, the official side of it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--videos", type=int, default=60)
    p.add_argument("--per-video", type=int, default=3, help="questions per video")
    p.add_argument("--answers", type=int, default=500)
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="questions per batch (both sides)")
    p.add_argument("--video-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official-dir", default=None)
    p.add_argument("--official-python", default=sys.executable)
    p.add_argument("--out", default="benchmarks/results/official_qa.json")
    p.add_argument("--run-official", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_official:
        return official_main(args)
    model, r = build(args.size, args.seed)
    data = synthetic(model, args)
    start = time.perf_counter()
    for rr in (r, 0):  # warm-up: the whole evaluation once, so the timed runs reuse every compiled program
        run_tldr(model, data, rr, args)
    report: dict[str, Any] = {
        "size": args.size,
        "videos": args.videos,
        "questions": len(data["questions"]),
        "answers": len(data["answers"]),
        "k": args.k,
        "compile_seconds": time.perf_counter() - start,
        "model": f"vision {SIZES[args.size]['vision']}, text {SIZES[args.size]['text']}",
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "runs": [],
    }
    for label, rr in ((f"vid-TLDR r={r}", r), ("no merging", 0)):
        row = {"label": label, **run_tldr(model, data, rr, args)}
        if args.official_dir:
            root = Path(tempfile.mkdtemp(prefix="official_qa_"))
            official_inputs(model, data, rr, args, root)
            row["official"] = run_official(root, args)
            row["same_predictions"] = sum(
                a == b for a, b in zip(row["predictions"], row["official"]["predictions"])
            )
        report["runs"].append(row)
        print(
            f"{label}: tldr_jax {row['seconds']:.2f} s"
            + (f", official {row['official']['seconds']:.2f} s" if "official" in row else ""),
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

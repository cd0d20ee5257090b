"""``tldr-jax finetune``: fine-tune a classifier on a labelled-video folder, with merging on.

The hyper-parameter flags are generated from :class:`~tldr_jax.train.config.FinetuneConfig`'s fields
(name, type, default, choices, and the help text from its ``Attributes:``), so the config is their one
source; this module adds only the flags that are not settings of a run (folders, ``--stop-at``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

from tldr_jax.cli.common import output_file, parse_r
from tldr_jax.cli.sources import load_model
from tldr_jax.schedule import RSpec
from tldr_jax.train.config import FinetuneConfig

__all__ = ["add_parser", "config_flags", "finetune_main"]


def _r_type(text: str) -> RSpec:
    """``argparse`` type of a merge schedule (``8``, ``0.1``, ``8,4,2``, a preset)."""
    try:
        return parse_r(text)
    except Exception as err:  # CliError: one line, naming the text
        raise argparse.ArgumentTypeError(str(err).removeprefix("--")) from None


def _attribute_help(cls: type) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of ``cls``'s docstring (``a, b: text`` lines
    describe several fields; more deeply indented lines continue the previous one)."""
    doc = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for line in doc.splitlines():
        depth = len(line) - len(line.lstrip())
        m = re.match(r"\s*([a-z_0-9, ]+):\s+(.*)$", line)
        if m and (indent is None or depth == indent):
            indent = depth
            names = [n.strip() for n in m.group(1).split(",")]
            out.update(dict.fromkeys(names, m.group(2).strip()))
        elif names and line.strip() and depth > (indent or 0):
            for n in names:
                out[n] += " " + line.strip()
    return out


def config_flags(p: argparse.ArgumentParser, cls: type = FinetuneConfig) -> None:
    """One flag per field of the config dataclass ``cls``: ``--batch-size``, ``--remat`` (a False
    default) or ``--no-progress`` (a True default); a merge schedule parses like ``--r``."""
    hints = typing.get_type_hints(cls)
    helps = _attribute_help(cls)
    for f in dataclasses.fields(cls):
        flag, hint, text = "--" + f.name.replace("_", "-"), hints[f.name], helps[f.name].rstrip(".")
        if hint is bool:
            if f.default:
                p.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=f"do not {text}")
            else:
                p.add_argument(flag, dest=f.name, action="store_true", help=text)
            continue
        if hint == RSpec:
            kind = _r_type
        else:
            kind = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
        choices = f.metadata.get("choices")
        if choices is not None:
            choices = [c for c in choices if c is not None]
        p.add_argument(flag, dest=f.name, type=kind, default=f.default, choices=choices,
                       help=f"{text} (default: {f.default})")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``finetune`` on an ``argparse`` sub-parsers object (calls :func:`finetune_main`)."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a video classifier on a labelled-video folder, with token merging active",
        description=(
            "Fine-tune MODEL (a tldr_jax checkpoint, a source checkpoint or hf:ORG/NAME as run's --model "
            "takes it, or an architecture name for a random init) on "
            "TRAIN (one sub-folder per class with video files or .npy clips). The train state is saved "
            "in OUT/state (rerun the same command to resume) and the best model by validation top-1 is "
            "exported to OUT/best."
        ),
    )
    p.add_argument("model", help="the model, as run's --model takes it: a tldr_jax checkpoint directory (a "
                                 "retrieval model: its vision encoder), a PyTorch checkpoint or Hugging Face "
                                 "model directory, hf:ORG/NAME (converted once and cached), or an "
                                 "architecture name (random init)")
    p.add_argument("train", help="labelled-video folder: TRAIN/<class>/<clip>")
    p.add_argument(
        "--out", required=True, help="run folder (train state in OUT/state, best model in OUT/best)"
    )
    p.add_argument("--val", default=None, help="validation folder with the same class sub-folders")
    p.add_argument(
        "--val-fraction", type=float, default=None, help="without --val: held-out fraction of TRAIN"
    )
    config_flags(p)
    p.add_argument(
        "--stop-at", type=int, default=None, help="stop (state saved) at this step; rerun to resume"
    )
    p.add_argument("--sampling", default=None, help="frame sampling override for video files")
    p.add_argument(
        "--override",
        type=_parse_override,
        action="append",
        default=[],
        help="architecture override for a random init, e.g. --override depth=2 (repeatable)",
    )
    p.add_argument("--json", default=None, help="also write the result summary to this JSON file")
    p.set_defaults(func=finetune_main)
    return p


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--override needs key=value; got {text!r}.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def finetune_main(args: argparse.Namespace) -> int:
    """Run ``tldr-jax finetune`` from parsed arguments; returns the exit status.

    The settings and the data folders are checked before the model is loaded or anything is written.
    """
    from tldr_jax.train import finetune

    out = output_file(args.out, "--out", directory=True)  # before the model is loaded
    fc = FinetuneConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)})
    for flag, folder in (("TRAIN", args.train), ("--val", args.val)):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder!r}: no such directory (one sub-folder per class).")
    params = load_model(args.model, overrides=dict(args.override), flag="MODEL").params
    folder_kwargs = {"sampling": args.sampling} if args.sampling else {}
    result = finetune(
        params,
        args.train,
        args.val,
        config=fc,
        ckpt_dir=out / "state",
        export=out / "best",
        val_fraction=args.val_fraction,
        stop_at=args.stop_at,
        folder_kwargs=folder_kwargs,
        log=print,
    )
    summary = {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "resumed_from": result.resumed_from,
        "best_top1": result.best_top1,
        "best_step": result.best_step,
        "history": result.history,
        "skipped": result.skipped,
        "export": str(result.export_path) if result.export_path else None,
        "clips_per_s": result.clips_per_s,
        "classes": list(result.params.labels or ()),
    }
    if result.steps < result.total_steps:
        print(f"stopped at step {result.steps}/{result.total_steps}; rerun the same command to resume.")
    else:
        print(
            f"done: {result.steps} steps, best val top-1 {result.best_top1:.4f} at step {result.best_step}"
            f"; model exported to {summary['export']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0

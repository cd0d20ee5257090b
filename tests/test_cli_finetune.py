"""tldr_jax.cli.finetune: ``tldr-jax finetune`` stops and resumes, and its flags come from FinetuneConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
from conftest import FT_CLASSES, FT_TINY

from tldr_jax.cli import finetune
from tldr_jax.train import FinetuneConfig


def test_cli_finetune_stops_and_resumes(motion_folders, tmp_path):
    parser = argparse.ArgumentParser(prog="tldr-jax")
    finetune.add_parser(parser.add_subparsers(dest="command"))
    argv = [
        "finetune",
        "videomae_s",
        str(motion_folders / "val"),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--warmup-epochs",
        "1",
        "--weight-decay",
        "0.05",
        "--layer-decay",
        "0.9",
        "--label-smoothing",
        "0.1",
        "--train-r",
        "8",
        "--eval-r",
        "8",
        "--workers",
        "2",
        "--no-progress",
        "--json",
        str(tmp_path / "summary.json"),
        *[f"--override={k}={v}" for k, v in {**FT_TINY, "num_classes": FT_CLASSES}.items()],
    ]
    args = parser.parse_args([*argv, "--stop-at", "2"])
    assert args.func is finetune.finetune_main and args.train_r == 8
    assert args.func(args) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 2
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == summary["total_steps"] == 4
    assert summary["classes"] == ["down", "left", "right", "up"]


def test_train_r_parses_like_r():
    parser = argparse.ArgumentParser(prog="tldr-jax")
    finetune.add_parser(parser.add_subparsers(dest="command"))

    def parse_r(text):
        return parser.parse_args(["finetune", "m", "t", "--out", "o", "--train-r", text]).train_r

    assert parse_r("8") == 8 and parse_r("0.25") == 0.25
    assert parse_r("8,4,2") == (8, 4, 2) and parse_r("msrvtt") == "msrvtt"
    assert parse_r("0") == 0


def test_flags_are_generated_from_the_config_fields(capsys):
    """Every FinetuneConfig field is a flag with the field's default, and parses into the same config."""
    parser = argparse.ArgumentParser(prog="tldr-jax")
    finetune.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "m", "t", "--out", "o"])
    fields = dataclasses.fields(FinetuneConfig)
    assert {f.name: getattr(args, f.name) for f in fields} == {f.name: f.default for f in fields}
    args = parser.parse_args(["finetune", "m", "t", "--out", "o", "--b2", "0.99", "--remat", "--no-progress",
                              "--dtype", "bfloat16", "--eval-r", "4,2", "--save-every", "3"])
    fc = FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields})
    assert (fc.b2, fc.remat, fc.progress, fc.dtype, fc.eval_r, fc.save_every) == (
        0.99, True, False, "bfloat16", (4, 2), 3
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "m", "t", "--out", "o", "--method", "fast"])
    assert "invalid choice: 'fast'" in capsys.readouterr().err

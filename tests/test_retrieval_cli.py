"""``tldr-jax retrieve`` on the official UMT retrieval golden set (``retrieval_fixtures.py``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from retrieval_fixtures import F32_ATOL, official_metrics

from tldr_jax.retrieval.metrics import official_only


def cli_args(argv):
    import argparse

    from tldr_jax.cli import retrieve as cli

    parser = argparse.ArgumentParser(prog="tldr-jax")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["retrieve", *argv])


def test_cli_evaluates_with_and_without_vid_tldr(model_dir, clip_dir, gold, f32_runs, capsys, tmp_path):
    out = tmp_path / "res.json"
    args = cli_args(
        [
            "--model",
            str(model_dir),
            "--videos",
            str(clip_dir),
            "--captions",
            str(clip_dir / "captions.jsonl"),
            "--r",
            "6,4,2",
            "--k",
            "2",
            "--max-length",
            "16",
            "--raw-captions",
            "--batch-size",
            "2",
            "--json",
            str(out),
            "-q",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    runs = {r["label"]: r for r in json.loads(out.read_text())["runs"]}
    assert official_only(runs["vid-TLDR r=6,4,2"]["metrics"]) == official_metrics(
        gold, "ints/eval_k2_metrics"
    )
    assert official_only(runs["no merging"]["metrics"]) == official_metrics(gold, "zero/eval_k2_metrics")
    assert runs["vid-TLDR r=6,4,2"]["tokens"][-1] == 4 and runs["no merging"]["tokens"][-1] == 16
    assert "vid-TLDR r=6,4,2 ITM" in printed and "no merging ITC" in printed and "time" in printed


def test_cli_reads_an_official_annotation_file_with_dataset_conventions(model_dir, clip_dir, gold, tmp_path):
    """MSVD-style entries (several captions per video) give the golden texts and ground truth."""
    entries = [{"video": f"v{v}.npy", "caption": [str(gold["texts"][t]) for t in ts if t >= 0]}
               for v, ts in enumerate(gold["img2txt"])]
    ann, out = tmp_path / "msvd_ret_test.json", tmp_path / "res.json"
    ann.write_text(json.dumps(entries))
    args = cli_args(["--model", str(model_dir), "--videos", str(clip_dir), "--annotations", str(ann),
                     "--dataset", "msvd", "--raw-captions", "--max-length", "16", "--frames", "4", "--k", "2",
                     "--r", "6,4,2", "--batch-size", "2", "--no-baseline", "--json", str(out), "-q"])
    assert args.func(args) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert official_only(run["metrics"]) == official_metrics(gold, "ints/eval_k2_metrics")


def test_cli_query_ranks_videos_by_the_matching_head(model_dir, clip_dir, gold, capsys, tmp_path):
    out = tmp_path / "q.json"
    query = str(gold["texts"][0])
    args = cli_args(
        [
            "--model",
            str(model_dir),
            "--videos",
            str(clip_dir),
            "--query",
            query,
            "--r",
            "6,4,2",
            "--max-length",
            "16",
            "--raw-captions",
            "--batch-size",
            "2",
            "--json",
            str(out),
            "-q",
        ]
    )
    assert args.func(args) == 0
    ranked = json.loads(out.read_text())["queries"][0]["ranked"]
    want = np.argsort(-gold["ints/eval_k128_t2i_x"][0])
    assert [r["video"].endswith(f"v{v}.npy") for r, v in zip(ranked, want)] == [True] * 3
    np.testing.assert_allclose(
        [r["itm"] for r in ranked], gold["ints/eval_k128_t2i_x"][0][want], atol=F32_ATOL
    )
    assert query in capsys.readouterr().out


def test_cli_refuses_bad_inputs_before_loading_weights(model_dir, clip_dir):
    from tldr_jax.cli import retrieve as cli

    base = ["--model", str(model_dir), "--videos", str(clip_dir), "--query", "dog"]
    with pytest.raises(FileNotFoundError, match="--videos"):
        cli.main(cli_args([*base[:2], "--videos", str(clip_dir / "missing"), "--query", "dog"]))
    with pytest.raises(ValueError, match="not a retrieval model"):
        cli.main(cli_args(["--model", str(model_dir / "vision"), *base[2:]]))
    with pytest.raises(ValueError, match="--captions"):
        cli.main(cli_args(base[:4]))
    with pytest.raises(ValueError, match="only 3 layers"):
        cli.main(cli_args([*base, "--r", "0,0,0,0,0"]))  # checked before any weights are read
    with pytest.raises(SystemExit):
        cli_args([*base, "--r", "6;4"])
    from tldr_jax.cli.main import main as tldr_jax_main

    argv = ["retrieve", "--model", str(model_dir), "--videos", str(clip_dir / "missing"), "--query", "x"]
    assert tldr_jax_main(argv) == 2

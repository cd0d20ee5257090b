"""tldr_jax.loading: ``tldr_jax.load`` decides the checkpoint kind above every loader, and every command's
``--model`` takes the same sources (tldr_jax.cli.sources)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tldr_jax
from tldr_jax import checkpoint, loading
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.cli import sources
from tldr_jax.cli.main import main as cli_main

VISION = dict(depth=3, embed_dim=64, num_heads=2, mlp_dim=128, img_size=32, num_frames=4)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(20)]


def _text_config():
    from tldr_jax.text import TextConfig

    return TextConfig(vocab_size=len(WORDS), hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                      max_position_embeddings=16, fusion_layer=1, encoder_width=64, embed_dim=16)


@pytest.fixture(scope="module")
def vision_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("loading") / "vision"
    checkpoint.save(tldr_jax.init(0, "umt_b16", **VISION), path)
    return path


@pytest.fixture(scope="module")
def retrieval_dir(tmp_path_factory):
    from tldr_jax.retrieval.checkpoint import save
    from tldr_jax.retrieval.model import init

    path = tmp_path_factory.mktemp("loading") / "retrieval"
    save(init(0, "umt_b16", text_config=_text_config(), vocab=WORDS, **VISION), path)
    return path


def test_load_dispatches_on_the_recorded_kind(vision_dir, retrieval_dir):
    from tldr_jax.retrieval.model import RetrievalModel

    assert tldr_jax.load is loading.load
    assert loading.kind_of(vision_dir) == "vision" and loading.kind_of(retrieval_dir) == "umt_retrieval"
    assert isinstance(tldr_jax.load(vision_dir), tldr_jax.Params)
    model = tldr_jax.load(retrieval_dir)
    assert isinstance(model, RetrievalModel)
    assert isinstance(tldr_jax.load(retrieval_dir, kind="umt_retrieval"), RetrievalModel)
    encoder = loading.load_vision(retrieval_dir)  # the vision tower alone, the same weights
    assert encoder.config == model.vision.config
    assert all(np.array_equal(a, b) for a, b in zip(
        checkpoint.flatten_tree(encoder.tree).values(), checkpoint.flatten_tree(model.vision.tree).values()))
    assert loading.vision_path(vision_dir) == vision_dir


def test_kind_mismatches_are_one_line_errors(vision_dir, retrieval_dir):
    with pytest.raises(CheckpointError, match="tldr_jax.load"):
        checkpoint.load(retrieval_dir)  # the vision loader reads vision encoders only, and names the fix
    with pytest.raises(CheckpointError, match="'vision' checkpoint, not the 'umt_retrieval'"):
        tldr_jax.load(vision_dir, kind="umt_retrieval")


def test_unknown_kind_asks_for_an_upgrade(tmp_path, vision_dir):
    import shutil

    path = tmp_path / "future"
    shutil.copytree(vision_dir, path)
    info = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**info, "kind": "hologram"}))
    with pytest.raises(CheckpointError, match="'hologram' is unknown.*upgrade tldr_jax"):
        tldr_jax.load(path)
    with pytest.raises(CheckpointError, match="'hologram'"):
        checkpoint.load(path)


def test_a_new_kind_is_one_loader_entry(monkeypatch, tmp_path, vision_dir):
    import shutil

    path = tmp_path / "qa"
    shutil.copytree(vision_dir, path)
    info = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**info, "kind": "toy_qa"}))
    monkeypatch.setitem(loading.LOADERS, "toy_qa", "os.path:basename")
    assert tldr_jax.load(str(path)) == "qa"


def test_the_vision_core_imports_no_multimodal_package():
    import subprocess
    import sys

    code = ("import sys, tldr_jax.checkpoint, tldr_jax.loading; "
            "print(sorted(m for m in sys.modules if m.startswith(('tldr_jax.retrieval', 'tldr_jax.text'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# --model: one resolver for every command.
# --------------------------------------------------------------------------------------------------


def test_vision_commands_take_the_vision_tower_of_a_retrieval_model(retrieval_dir):
    source = sources.resolve_model(str(retrieval_dir))
    assert source.kind == "vision" and source.path == retrieval_dir and not source.random_weights
    assert "the vision encoder of a retrieval model" in source.description
    params = source.load()
    assert isinstance(params, tldr_jax.Params) and params.config == source.config


def test_retrieval_commands_refuse_other_sources_in_one_line(vision_dir, tmp_path):
    for model in (str(vision_dir), "umt_b16", str(tmp_path)):
        with pytest.raises(sources.CliError, match="is not a retrieval model directory"):
            sources.resolve_model(model, kind="umt_retrieval")
    src = tmp_path / "ret.pth"
    src.write_bytes(b"weights")
    with pytest.raises(sources.CliError, match="--vocab vocab.txt"):
        sources.resolve_model(str(src), kind="umt_retrieval")  # converting needs --vocab: not guessed


def test_run_uses_the_vision_tower_of_a_retrieval_model(retrieval_dir, capsys):
    code = cli_main(["run", "--model", str(retrieval_dir), "--r", "6,4,2", "--no-baseline", "--repeat", "1",
                     "-q"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "the vision encoder of a retrieval model" in out and "embedding  dim 16" in out


def test_finetune_takes_the_same_sources_as_run(monkeypatch, tmp_path):
    """``finetune MODEL`` resolves MODEL like ``run --model``: a source file is converted (once, cached)."""
    from tldr_jax.cli import finetune

    monkeypatch.setenv("TLDR_JAX_CACHE", str(tmp_path / "cache"))
    converted = []

    def fake_convert(src, out, quiet):
        params = tldr_jax.init(0, "umt_b16", **VISION)
        checkpoint.save(params, out)
        converted.append(src)
        return params

    monkeypatch.setattr(sources, "_convert", fake_convert)
    loaded = []
    monkeypatch.setattr("tldr_jax.train.finetune", lambda params, *a, **k: loaded.append(params) or 1 / 0)
    src = tmp_path / "model.pth"
    src.write_bytes(b"pretend weights")
    (tmp_path / "train").mkdir()
    import argparse

    parser = argparse.ArgumentParser()
    finetune.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", str(src), str(tmp_path / "train"), "--out", str(tmp_path / "o")])
    with pytest.raises(ZeroDivisionError):
        args.func(args)
    assert converted == [str(src)] and loaded[0].config.depth == VISION["depth"]
    args = parser.parse_args(["finetune", str(src), str(tmp_path / "train"), "--out", str(tmp_path / "o"),
                              "--override", "depth=2"])
    with pytest.raises(sources.CliError, match="--override only applies"):
        args.func(args)

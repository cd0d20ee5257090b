"""Official UMT-QA checkpoints -> a tldr_jax QA directory (``checkpoints_convert.qa``), the directory format
(``tldr_jax.qa.checkpoint``, kind ``"umt_qa"``) and ``tldr_jax.load`` of it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from qa_fixtures import GOLD, SIZES

import tldr_jax
from checkpoints_convert import ConversionError
from checkpoints_convert import main as convert_main
from checkpoints_convert.bert import read_vocab
from checkpoints_convert.qa import convert_qa_state_dict, to_official_state_dict
from tldr_jax import qa
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.loading import kind_of
from tldr_jax.text import TextConfig

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def official():
    """The golden ``UMT_QA.state_dict()`` as numpy arrays."""
    if not (GOLD / "umt_qa.pth").exists():
        pytest.skip(f"golden QA checkpoint not found in {GOLD}")
    return {k: v.numpy() for k, v in torch.load(GOLD / "umt_qa.pth", weights_only=True)["model"].items()}


def convert_sd(state, **options):
    bert = json.loads((GOLD / "qa_config.json").read_text())
    kwargs = {"vocab": read_vocab(GOLD / "vocab.txt"), "text_config": bert, "verbose": False, **SIZES}
    return convert_qa_state_dict({"model": state}, **{**kwargs, **options})


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_converted_directory_loads_as_a_qa_model(qa_model_dir, qa_model):
    info = json.loads((qa_model_dir / "config.json").read_text())
    assert info["kind"] == "umt_qa" and kind_of(qa_model_dir) == "umt_qa"
    vc = qa_model.vision.config
    assert not vc.pool_norm and vc.vision_proj_dim == 0 and "pool_norm" not in qa_model.vision.tree
    assert qa_model.decoder_config.num_layers == 2 and qa_model.text_config.fusion_layer == 2
    assert isinstance(tldr_jax.load(qa_model_dir / "vision"), tldr_jax.Params)
    source = info["metadata"]["source"]
    assert source["format"] == "umt_qa" and any("tied" in g for g in source["dropped"])


def test_the_golden_checkpoint_round_trips_through_the_official_layout(official):
    conv = convert_sd(official)
    back = to_official_state_dict(conv.model)
    assert sorted(back) == sorted(official)
    for key, value in official.items():
        np.testing.assert_array_equal(np.asarray(back[key], value.dtype), value, err_msg=key)
    assert leaves_equal(convert_sd(back).model, conv.model)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda sd: sd.__setitem__(
                "text_decoder.cls.predictions.decoder.weight",
                sd["text_decoder.cls.predictions.decoder.weight"] + 1.0,
            ),
            "ties them",
        ),
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("text_decoder.bert.encoder.layer.1.")],
            "Missing answer decoder weights",
        ),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("text_decoder.")], "no answer decoder"),
        (lambda sd: sd.__setitem__("vision_proj.weight", np.zeros((32, 64), np.float32)), "vision_proj"),
        (
            lambda sd: sd.__setitem__("text_decoder.bert.embeddings.position_ids", np.arange(32)[None] + 1),
            "not 0, 1, 2",
        ),
    ],
    ids=["untied-projection", "decoder-layer-missing", "no-decoder", "retrieval-head", "position-ids"],
)
def test_damaged_or_foreign_checkpoints_are_refused(official, change, message):
    state = dict(official)
    change(state)
    with pytest.raises(ConversionError, match=message):
        convert_sd(state)


def test_text_config_and_vocabulary_that_contradict_the_weights_are_refused(official):
    bert = {**json.loads((GOLD / "qa_config.json").read_text()), "hidden_size": 96}
    with pytest.raises(ConversionError, match="hidden_size=96"):
        convert_sd(official, text_config=bert)
    with pytest.raises(ConversionError, match="130 rows"):
        convert_sd(official, vocab=[*read_vocab(GOLD / "vocab.txt").tokens, "extra"])


MAKE_RELEASED = textwrap.dedent("""
    import os, sys, torch
    out = sys.argv[1]
    sys.path.insert(0, out)
    os.makedirs(os.path.join(out, "utils"), exist_ok=True)
    open(os.path.join(out, "utils", "__init__.py"), "w").close()
    with open(os.path.join(out, "utils", "easydict.py"), "w") as f:
        f.write("class EasyDict(dict):\\n"
                "    def __init__(self, d=None):\\n"
                "        super().__init__()\\n"
                "        for k, v in dict(d or {}).items():\\n"
                "            setattr(self, k, v)\\n"
                "    def __setattr__(self, name, value):\\n"
                "        if isinstance(value, dict) and not isinstance(value, EasyDict):\\n"
                "            value = EasyDict(value)\\n"
                "        super().__setattr__(name, value)\\n"
                "        super().__setitem__(name, value)\\n")
    from utils.easydict import EasyDict
    sd = torch.load(sys.argv[2], weights_only=True)["model"]
    config = EasyDict({"model": {"vision_encoder": {"encoder_num_heads": 2, "img_size": 32, "num_frames": 4}},
                       "max_q_len": 25})
    torch.save({"model": sd, "optimizer": {"state": {}}, "scheduler": {}, "config": config, "epoch": 5},
               os.path.join(out, "qa_finetuned.pth"))
""")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-style QA file: weights, optimizer state and a pickled training config (made in another
    process, whose ``utils.easydict`` this process never imports)."""
    root = tmp_path_factory.mktemp("released")
    subprocess.run([sys.executable, "-c", MAKE_RELEASED, str(root), str(GOLD / "umt_qa.pth")], check=True)
    return root / "qa_finetuned.pth"


def test_command_line_reads_the_vision_sizes_from_the_stored_training_config(
    released, qa_model, tmp_path, capsys
):
    out = tmp_path / "qa"
    base = [
        str(released),
        str(out),
        "--format",
        "umt_qa",
        "--vocab",
        str(GOLD / "vocab.txt"),
        "--text-config",
        str(GOLD / "qa_config.json"),
    ]
    assert convert_main(base) == 0
    printed = capsys.readouterr().out
    assert "umt_qa" in printed and "num_heads=2 (config.model.vision_encoder.encoder_num_heads" in printed
    loaded = tldr_jax.load(out)
    assert (loaded.vision.config.num_heads, loaded.vision.config.num_frames) == (2, 4)
    assert leaves_equal(loaded, qa_model)
    assert "utils.easydict" not in sys.modules
    bad = tmp_path / "bad"
    assert convert_main([*base[:1], str(bad), *base[2:], "--num-frames", "8"]) == 1
    err = capsys.readouterr().err
    assert "--num-frames 8 contradicts the 4 recorded" in err and len(err.strip().splitlines()) == 1
    assert not bad.exists()
    assert convert_main([*base[:1], str(bad), *base[4:]]) == 1  # --vocab alone: the retrieval converter
    assert "--format umt_qa" in capsys.readouterr().err and not bad.exists()


def test_directory_round_trip_and_damage_detection(tmp_path):
    tc = TextConfig(
        vocab_size=40,
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        intermediate_size=48,
        max_position_embeddings=16,
        fusion_layer=1,
        encoder_width=32,
    )
    model = qa.init(
        0,
        "umt_b16",
        text_config=tc,
        depth=2,
        embed_dim=32,
        num_heads=2,
        mlp_dim=64,
        num_frames=2,
        img_size=32,
    )
    path = qa.save(model, tmp_path / "m", metadata={"note": "test"})
    loaded = tldr_jax.load(path)
    assert isinstance(loaded, qa.QAModel) and leaves_equal(loaded, model) and loaded.vocab == model.vocab
    with pytest.raises(FileExistsError):
        qa.save(model, path)
    with jax.enable_x64(True):
        as64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)
        assert isinstance(as64, qa.QAModel) and as64.dtype == jnp.float64
    (path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(CheckpointError, match="checksum"):
        tldr_jax.load(path)
    with pytest.raises(CheckpointError, match="not the 'umt_retrieval' model"):
        tldr_jax.load(qa.save(model, tmp_path / "m2"), kind="umt_retrieval")
    with pytest.raises(TypeError, match="QAModel"):
        qa.save(model.vision, tmp_path / "m3")

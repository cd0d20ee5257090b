"""Converting official UMT retrieval checkpoints (both towers) and the retrieval directory format.

Tiny random models written in the official key layout
(``checkpoints_convert.retrieval.to_official_state_dict``, checked against the golden official checkpoint
in ``test_golden_official_checkpoint_round_trips_exactly``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import GOLDEN_DIR

torch = pytest.importorskip("torch")

import tldr_jax  # noqa: E402
from checkpoints_convert import ConversionError, readers  # noqa: E402
from checkpoints_convert import main as convert_main  # noqa: E402
from checkpoints_convert import retrieval as conv  # noqa: E402
from tldr_jax import retrieval as R  # noqa: E402
from tldr_jax.checkpoint import CheckpointError, flatten_tree  # noqa: E402
from tldr_jax.text.tokenizer import Vocabulary, default_vocab  # noqa: E402

TEXT = R.TextConfig(
    vocab_size=20,
    hidden_size=32,
    num_layers=3,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=16,
    fusion_layer=1,
    encoder_width=64,
    embed_dim=16,
)
VISION = dict(depth=2, embed_dim=64, num_heads=2, mlp_dim=128, img_size=32, num_frames=4)
OPTS = dict(num_heads=2, num_frames=4, img_size=32)
BERT = {"num_attention_heads": 2, "hidden_size": 32, "vocab_size": 20}


@pytest.fixture(scope="module")
def model():
    return R.init(0, "umt_b16", text_config=TEXT, temp=0.05, **VISION)


@pytest.fixture(scope="module")
def official(model):
    return conv.to_official_state_dict(model)


def as_torch(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def assert_same_model(a, b):
    fa, fb = flatten_tree(a.text), flatten_tree(b.text)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]), err_msg=key)
    for key, value in flatten_tree(a.vision.tree).items():
        np.testing.assert_array_equal(
            np.asarray(value), np.asarray(flatten_tree(b.vision.tree)[key]), err_msg=key
        )
    assert a.text_config == b.text_config and a.vocab == b.vocab


def convert_sd(sd, model, **kw):
    kw = {"vocab": model.vocab, "text_config": BERT, "verbose": False, **OPTS, **kw}
    return conv.convert_retrieval_state_dict({"model": as_torch(sd)}, **kw)


def test_golden_official_checkpoint_round_trips_exactly():
    """Converting the official checkpoint and writing it back in the official layout gives the same keys,
    shapes and values as ``UMT(is_pretrain=False).state_dict()``."""
    path = GOLDEN_DIR / "umt_retrieval" / "umt_retrieval.pth"
    if not path.exists():
        pytest.skip("golden retrieval checkpoint not found")
    ref = torch.load(path, weights_only=True)["model"]
    vocab = Vocabulary.from_file(path.parent / "vocab.txt")
    res = conv.convert_retrieval_state_dict(
        ref, vocab=vocab, text_config={"num_attention_heads": 2}, verbose=False, **OPTS
    )
    back = conv.to_official_state_dict(res.model)
    assert back.keys() == ref.keys()
    for key, value in ref.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_round_trip_through_the_official_layout(model, official):
    res = convert_sd(official, model)
    assert_same_model(res.model, model)
    assert res.dropped == {
        "text_encoder position_ids (arange buffer, verified)": ["text_encoder.embeddings.position_ids"]
    }


def test_pretraining_layout_is_mapped_and_its_extra_heads_dropped(model, official):
    sd = {
        (k.replace("text_encoder.", "text_encoder.bert.", 1) if k.startswith("text_encoder.") else k): v
        for k, v in official.items()
    }
    sd["text_encoder.cls.predictions.bias"] = np.zeros(20, np.float32)
    sd["text_encoder.cls.predictions.transform.dense.weight"] = np.zeros((32, 32), np.float32)
    sd["vision_encoder.clip_decoder.0.head.weight"] = np.zeros((8, 64), np.float32)
    res = convert_sd(sd, model)
    assert_same_model(res.model, model)
    assert any("pre-training layout" in n for n in res.notes)
    groups = " | ".join(res.dropped)
    assert "masked-language-model" in groups and "clip_decoder" in groups


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda sd: sd.pop("itm_head.bias"), "itm_head"),
        (
            lambda sd: sd.pop("text_encoder.encoder.layer.2.crossattention.self.value.weight"),
            "crossattention",
        ),
        (
            lambda sd: sd.update({"text_encoder.encoder.layer.0.attention.self.extra": np.zeros(3)}),
            "Unexpected",
        ),
        (
            lambda sd: sd.update({"text_encoder.embeddings.position_ids": np.arange(16)[None, ::-1].copy()}),
            "position_ids",
        ),
        (
            lambda sd: [sd.pop(k) for k in list(sd) if ".crossattention." in k],
            "no text layer has cross-attention",
        ),
        (
            lambda sd: sd.update(
                {"text_proj.weight": np.zeros((8, 32), np.float32), "text_proj.bias": np.zeros(8, np.float32)}
            ),
            "do not belong together",
        ),
    ],
    ids=["missing head", "missing cross-attention", "unexpected", "position ids", "no fusion", "proj width"],
)
def test_incomplete_or_foreign_text_towers_are_refused(model, official, change, message):
    sd = dict(official)
    change(sd)
    with pytest.raises(ConversionError, match=message):
        convert_sd(sd, model)


def test_ignore_drops_a_text_key_explicitly(model, official):
    sd = {**official, "text_encoder.encoder.layer.0.attention.self.extra": np.zeros(3, np.float32)}
    res = convert_sd(sd, model, ignore=(r"text_encoder\.encoder\.layer\.0\.attention\.self\.extra",))
    assert any("extra" in k for keys in res.dropped.values() for k in keys)


def test_text_config_contradicting_the_weights_and_wrong_vocab_are_refused(model, official):
    with pytest.raises(ConversionError, match="hidden_size=48"):
        convert_sd(official, model, text_config={**BERT, "hidden_size": 48})
    with pytest.raises(ConversionError, match="21 tokens"):
        convert_sd(official, model, vocab=default_vocab(21))
    noted = convert_sd(official, model, text_config={**BERT, "fusion_layer": 2})
    assert any("fusion_layer=2 ignored" in n for n in noted.notes)
    heads = convert_sd(official, model, text_config=None)
    assert heads.model.text_config.num_heads == 1 and any("width / 64" in n for n in heads.notes)


# --------------------------------------------------------------------------------------------------
# Files: the command line, the pickled training config, the directory format.
# --------------------------------------------------------------------------------------------------

MAKE_FILES = textwrap.dedent("""
    import os, sys, torch
    out, sd_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, out)
    os.makedirs(os.path.join(out, "utils"), exist_ok=True)
    open(os.path.join(out, "utils", "__init__.py"), "w").close()
    with open(os.path.join(out, "utils", "easydict.py"), "w") as f:
        f.write(
            "class EasyDict(dict):\\n"
            "    def __init__(self, d=None, **kw):\\n"
            "        super().__init__()\\n"
            "        for k, v in dict(d or {}, **kw).items():\\n"
            "            setattr(self, k, v)\\n"
            "    def __setattr__(self, name, value):\\n"
            "        if isinstance(value, dict) and not isinstance(value, EasyDict):\\n"
            "            value = EasyDict(value)\\n"
            "        super().__setattr__(name, value)\\n"
            "        super().__setitem__(name, value)\\n")
    with open(os.path.join(out, "evil.py"), "w") as f:
        f.write(
            "import os\\n"
            "class Payload:\\n"
            "    def __reduce__(self):\\n"
            "        return (os.mkdir, (os.path.join(%r, 'PWNED'),))\\n" % out)
    from utils.easydict import EasyDict
    import evil
    sd = torch.load(sd_path, weights_only=True)
    config = EasyDict({"model": {"vision_encoder": {"vidTLDR_r": [6, 4, 2]}}, "max_txt_l": 32, "fp16": True})
    state = {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}, "config": config,
             "epoch": 3, "global_step": 10}
    torch.save(state, os.path.join(out, "ret_finetuned.pth"))
    torch.save({**state, "config": evil.Payload()}, os.path.join(out, "ret_evil.pth"))
    torch.save({**state, "extra": evil.Payload()}, os.path.join(out, "ret_mixed.pth"))
""")


@pytest.fixture(scope="module")
def files(tmp_path_factory, model, official):
    """A fine-tuned-style checkpoint with optimizer state and a pickled EasyDict config (made in another
    process, whose ``utils.easydict`` module this process never sees), plus files pickling other classes."""
    root = tmp_path_factory.mktemp("official")
    torch.save(as_torch(official), root / "sd.pth")
    subprocess.run([sys.executable, "-c", MAKE_FILES, str(root), str(root / "sd.pth")], check=True)
    (root / "vocab.txt").write_text("\n".join(model.vocab.tokens) + "\n")
    (root / "config_bert.json").write_text(json.dumps(BERT))
    return root


def test_pickled_easydict_config_is_read_as_a_plain_dict_without_importing_it(files):
    state = readers.read_file(files / "ret_finetuned.pth").state
    assert "utils.easydict" not in sys.modules and "utils" not in sys.modules
    assert type(state["config"]) is dict and type(state["config"]["model"]) is dict
    assert state["config"]["model"]["vision_encoder"]["vidTLDR_r"] == [6, 4, 2]
    assert state["epoch"] == 3 and "itm_head.weight" in state["model"]


@pytest.mark.parametrize("name", ["ret_evil.pth", "ret_mixed.pth"])
def test_any_other_pickled_class_is_refused_and_never_run(files, name):
    with pytest.raises(ConversionError, match="pickled Python objects"):
        readers.read_file(files / name)
    assert not (files / "PWNED").exists() and "evil" not in sys.modules


def test_command_line_converts_a_finetuned_checkpoint_into_a_loadable_directory(files, model, capsys):
    out = files / "converted"
    argv = [
        str(files / "ret_finetuned.pth"),
        str(out),
        "--vocab",
        str(files / "vocab.txt"),
        "--text-config",
        str(files / "config_bert.json"),
        "--num-heads",
        "2",
        "--num-frames",
        "4",
        "--img-size",
        "32",
    ]
    assert convert_main(argv) == 0
    assert "umt_retrieval" in capsys.readouterr().out
    loaded = tldr_jax.load(out)
    assert isinstance(loaded, R.RetrievalModel)
    assert_same_model(loaded, model)
    assert isinstance(tldr_jax.load(out / "vision"), tldr_jax.Params)
    info = json.loads((out / "config.json").read_text())
    assert info["metadata"]["source"]["training_config"]["max_txt_l"] == 32
    # a failing conversion leaves nothing behind
    bad = files / "bad"
    assert convert_main([*argv[:1], str(bad), *argv[2:4], "--text-config", str(files / "nope.json")]) == 1
    assert not bad.exists()
    assert convert_main([*argv[:1], str(bad), "--format", "umt_retrieval", *argv[4:]]) == 1
    assert "--vocab" in capsys.readouterr().err and not bad.exists()


def test_retrieval_directory_round_trip_and_damage_detection(tmp_path, model):
    path = R.save(model, tmp_path / "m", metadata={"note": "test"})
    assert_same_model(tldr_jax.load(path), model)
    with pytest.raises(FileExistsError):
        R.save(model, path)
    info = json.loads((path / "config.json").read_text())
    key = "layer_0/attention/query/kernel"
    info["checksums"]["text"][key] = "00000000"
    (path / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="checksums"):
        tldr_jax.load(path)
    R.save(model, path, overwrite=True)
    (path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(CheckpointError, match="vocab"):
        tldr_jax.load(path)
    assert not list(tmp_path.glob(".m.*"))  # no temporary siblings left


def test_random_models_and_casting(model):
    assert model.vision.config.vision_proj_dim == TEXT.embed_dim and float(
        model.text["temp"]
    ) == pytest.approx(0.05)
    with jax.enable_x64(True):
        m64 = model.astype(np.float64)
        leaves = jax.tree_util.tree_leaves(m64)
        assert all(x.dtype == np.float64 for x in leaves)
    with pytest.raises(ValueError, match="encoder_width"):
        R.init(0, "umt_b16", text_config=TEXT, **{**VISION, "embed_dim": 32})


# --------------------------------------------------------------------------------------------------
# Sizes recorded with the weights (issue 28): the training config a fine-tuned file carries and a
# --text-config that records vision sizes are the defaults; a contradicting flag is refused.
# --------------------------------------------------------------------------------------------------

SIZES = {"encoder_num_heads": 2, "num_frames": 4, "img_size": 32, "tubelet_size": 1, "patch_size": 16}


def wrapped(official, config=None):
    return {"model": as_torch(official), **({"config": config} if config is not None else {})}


def test_training_config_sizes_are_the_defaults(model, official):
    config = {"model": {"vision_encoder": {**SIZES, "vidTLDR_r": [6, 4, 2]}}}
    got = conv.convert_retrieval_state_dict(wrapped(official, config), vocab=model.vocab, text_config=BERT,
                                            verbose=False)
    vc = got.params.vision.config
    assert (vc.num_heads, vc.num_frames, vc.img_size) == (2, 4, 32)
    assert_same_model(got.params, model)
    assert "assumed" not in got.summary()
    assert any("config.model.vision_encoder.encoder_num_heads" in n for n in got.notes)
    assert any("vidTLDR_r=[6, 4, 2]" in n for n in got.notes)


def test_text_config_vision_sizes_are_the_defaults(model, official):
    bert = {**BERT, "num_frames": 4, "img_size": 32,
            "vision_encoder": {"encoder_num_heads": 2, "num_frames": 4}}
    got = conv.convert_retrieval_state_dict(wrapped(official), vocab=model.vocab, text_config=bert,
                                            verbose=False)
    vc = got.params.vision.config
    assert (vc.num_heads, vc.num_frames, vc.img_size) == (2, 4, 32)
    assert "assumed" not in got.summary()


@pytest.mark.parametrize(
    "config, bert, flags, message",
    [
        ({"model": {"vision_encoder": SIZES}}, BERT, {"num_heads": 1},
         "--num-heads 1 contradicts the 2 recorded in config.model.vision_encoder.encoder_num_heads of "
         "<state dict>"),
        (None, {**BERT, "img_size": 32}, {"img_size": 224}, "--img-size 224 contradicts the 32 recorded in "
         "--text-config.img_size"),
        ({"model": {"vision_encoder": {"num_frames": 4}}}, {**BERT, "num_frames": 8}, {}, "disagree"),
        ({"model": {"vision_encoder": {**SIZES, "tubelet_size": 2}}}, BERT, {},
         "records tubelet_size 2 but the weights have 1"),
    ],
    ids=["flag-vs-training-config", "flag-vs-text-config", "files-disagree", "tubelet-vs-weights"],
)
def test_contradicting_sizes_are_refused(model, official, config, bert, flags, message):
    with pytest.raises(ConversionError, match=re_escape(message)) as err:
        conv.convert_retrieval_state_dict(wrapped(official, config), vocab=model.vocab, text_config=bert,
                                          verbose=False, **flags)
    assert "\n" not in str(err.value)


def re_escape(text):
    import re

    return re.escape(text)


def test_unrecorded_sizes_are_named_as_assumed(model, official):
    got = conv.convert_retrieval_state_dict(wrapped(official), vocab=model.vocab, text_config=BERT,
                                            verbose=False, num_heads=2)
    summary = got.summary()
    assert "assumed (recorded nowhere): 12 frames, 224 px" in summary and "heads," not in summary.split(
        "assumed")[1]
    got = convert_sd(official, model)  # every size given: nothing assumed
    assert "assumed" not in got.summary()


def test_vision_only_conversion_reads_the_training_config(official):
    from checkpoints_convert import core

    vision = {k: v for k, v in official.items() if not conv.TEXT_KEYS.match(k)}
    config = {"model": {"vision_encoder": SIZES}}
    got = core.convert_state_dict_detailed(wrapped(vision, config), "umt", verbose=False)
    cfg = got.params.config
    assert (cfg.num_heads, cfg.num_frames, cfg.img_size) == (2, 4, 32)
    assert "assumed" not in got.summary()
    with pytest.raises(ConversionError, match="--num-frames 8 contradicts the 4 recorded"):
        core.convert_state_dict_detailed(wrapped(vision, config), "umt", verbose=False, num_frames=8)
    bare = core.convert_state_dict_detailed(wrapped(vision), "umt", verbose=False)
    assert "assumed (recorded nowhere): 1 heads, 12 frames, 224 px" in bare.summary()


def test_command_line_refuses_a_flag_against_the_text_config(files, tmp_path, capsys):
    bert = tmp_path / "config_bert.json"
    bert.write_text(json.dumps({**BERT, "encoder_num_heads": 2, "num_frames": 4, "img_size": 32}))
    out = tmp_path / "converted"
    argv = [str(files / "ret_finetuned.pth"), str(out), "--vocab", str(files / "vocab.txt"), "--text-config",
            str(bert)]
    assert convert_main([*argv, "--num-frames", "12"]) == 1
    err = capsys.readouterr().err
    assert "--num-frames 12 contradicts the 4 recorded in --text-config.num_frames" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert convert_main(argv) == 0  # the recorded sizes, no flags
    summary = capsys.readouterr().out
    assert "2 heads, 4 frames @ 32px" in summary and "assumed" not in summary
    assert convert_main([str(files / "ret_finetuned.pth"), str(tmp_path / "no" / "such" / "out"), "--vocab",
                         str(files / "vocab.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err

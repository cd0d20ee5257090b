"""End-to-end tests of the ``tldr-jax`` command line (tiny random models, the embedded clip, small files)."""

from __future__ import annotations

import importlib.util
import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

import tldr_jax
from tldr_jax import cli
from tldr_jax.cli import GENERIC_R, TINY_OVERRIDES, main, parse_r
from tldr_jax.configs import get_config
from tldr_jax.video import default_clip


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    pytest.importorskip("av")
    from tldr_jax.video import make_test_video

    return make_test_video(tmp_path_factory.mktemp("cli") / "moving.mp4", num_frames=16, height=72, width=96)


# --------------------------------------------------------------------------------------------------
# Argument parsing.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [
        ("16", 16), ("0.25", 0.25), ("600,200,100", (600, 200, 100)), ("0.3, 0.2", (0.3, 0.2)),
        ("msrvtt", "msrvtt"), ("umt_b16/msrvtt", "umt_b16/msrvtt"), ("none", 0), ("0", 0), (None, None),
    ],
)
def test_parse_r(text, want):
    assert parse_r(text) == want


@pytest.mark.parametrize("text", ["", "1.5", "-3", "12,x", "3.2.1", "!!"])
def test_parse_r_errors(text):
    with pytest.raises(cli.CliError):
        parse_r(text)


def test_default_r():
    assert cli.default_r(get_config("umt_b16")) == "msrvtt"
    assert cli.default_r(get_config("videomae_b")) == GENERIC_R
    assert cli.default_r(get_config("umt_b16", **TINY_OVERRIDES)) == GENERIC_R


def test_help(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "run" in out and "vis" in out and "convert" in out and "bench" in out


# --------------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------------


def test_run_default_clip(capsys, tmp_path):
    js = tmp_path / "run.json"
    code, out, err = run_cli(capsys, "run", "--tiny", "--repeat", "1", "--json", str(js))
    assert code == 0, err
    assert "RANDOM WEIGHTS" in out and "default clip" in out
    params = tldr_jax.init(0, "umt_b16", **TINY_OVERRIDES)
    g0 = tldr_jax.gflops(params, r=0)
    g1 = tldr_jax.gflops(params, r=GENERIC_R)
    m = re.search(r"GFLOPs\s+baseline (\S+) \| merged (\S+)", out)
    assert m, out
    assert m.group(1) == f"{g0:.6g}" and m.group(2) == f"{g1:.6g}"
    assert "196 -> 138 -> 111" in out
    data = json.loads(js.read_text())
    assert data["gflops_baseline"] == g0 and data["gflops_merged"] == g1
    assert data["tokens"][0] == 196 and data["random_weights"] is True
    assert data["time_merged"]["first_call_s"] > 0 and data["time_merged"]["steady_s"] > 0
    ref = tldr_jax.apply(params, default_clip(4, 112)[None], GENERIC_R)
    assert data["pooled_norm"] == pytest.approx(float(np.linalg.norm(np.asarray(ref.pooled[0]))), rel=1e-5)


def test_run_bfloat16_casts_once_with_the_same_result(capsys, tmp_path, monkeypatch):
    """``run --dtype bfloat16`` casts the kernels once (not in every timed call); the result equals the
    per-call cast's (the same run with ``cast`` made a no-op) bit for bit."""
    real_cast = tldr_jax.cast
    casts = []

    def run(cast) -> dict:
        monkeypatch.setattr(tldr_jax.api, "cast", cast)  # run.py takes cast from tldr_jax.api
        js = tmp_path / f"run{len(casts)}.json"
        code, _, err = run_cli(
            capsys, "run", "--tiny", "--repeat", "2", "--dtype", "bfloat16", "--no-baseline", "-q",
            "--json", str(js),
        )
        assert code == 0, err
        return json.loads(js.read_text())

    once = run(lambda p, dt: casts.append(dt) or real_cast(p, dt))
    assert len(casts) == 1
    per_call = run(lambda p, dt: p)
    assert once["pooled_norm"] == per_call["pooled_norm"] and once["pooled_first"] == per_call["pooled_first"]
    params = tldr_jax.init(0, "umt_b16", **TINY_OVERRIDES)
    ref = tldr_jax.apply(params, default_clip(4, 112)[None], GENERIC_R, dtype=jnp.bfloat16)
    want = float(np.linalg.norm(np.asarray(ref.pooled[0], np.float32)))
    assert once["pooled_norm"] == pytest.approx(want, rel=1e-2)  # bfloat16 rounding of the input clip


def test_run_video_file_and_options(capsys, clip_file):
    code, out, err = run_cli(
        capsys, "run", str(clip_file), "--tiny", "--r", "20", "--method", "tome", "--frames", "6",
        "--no-baseline", "--repeat", "1", "-q",
    )
    assert code == 0, err
    assert "6 frames, 112x112" in out and "tome, r=20" in out
    g = tldr_jax.gflops(tldr_jax.init(0, "umt_b16", **TINY_OVERRIDES), r=20, num_frames=6, method="tome")
    assert f"merged {g:.6g}" in out


def test_run_classifier_checkpoint_with_labels(capsys, tmp_path):
    """A saved classifier checkpoint: --model loads it and top-5 uses its labels."""
    checkpoint = pytest.importorskip("tldr_jax.checkpoint")
    over = dict(TINY_OVERRIDES, num_classes=7)
    params = tldr_jax.init(1, "videomae_b", **over)
    labels = tuple(f"label_{i}" for i in range(7))
    params = params.replace(labels=labels)
    ckpt = tmp_path / "ckpt"
    checkpoint.save(params, ckpt)
    code, out, err = run_cli(capsys, "run", "--model", str(ckpt), "--repeat", "1", "-q", "--r", "0.25")
    assert code == 0, err
    assert "RANDOM WEIGHTS" not in out and "top-5" in out
    assert len(re.findall(r"label_\d", out)) == 10  # 5 merged + 5 unmerged


# --------------------------------------------------------------------------------------------------
# vis
# --------------------------------------------------------------------------------------------------


def test_vis_png(capsys, tmp_path, clip_file):
    from PIL import Image

    out_png = tmp_path / "vis.png"
    code, out, err = run_cli(capsys, "vis", str(clip_file), "--tiny", "--out", str(out_png), "-q")
    assert code == 0, err
    assert f"wrote      {out_png}" in out
    img = np.asarray(Image.open(out_png).convert("RGB"))
    h = TINY_OVERRIDES["img_size"]
    cols = TINY_OVERRIDES["num_frames"]
    assert img.shape == (18 + 3 * h + 4 * 4, 110 + cols * h + (cols + 1) * 4, 3)
    tiles = img[18 + 4 :, 110 + 4 :]
    rows = [tiles[k * (h + 4) : k * (h + 4) + h, :h] for k in range(3)]
    assert all(r.std() > 10 for r in rows), "a row of the grid is blank"
    assert not np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[0], rows[2])


def test_vis_gif_default_clip(capsys, tmp_path):
    from PIL import Image

    out_gif = tmp_path / "vis.gif"
    code, _, err = run_cli(capsys, "vis", "default", "--tiny", "--out", str(out_gif), "-q")
    assert code == 0, err
    with Image.open(out_gif) as im:
        assert im.n_frames == TINY_OVERRIDES["num_frames"]


# --------------------------------------------------------------------------------------------------
# Errors: exit status 2, one clear line, no traceback.
# --------------------------------------------------------------------------------------------------


def _assert_clean_error(code, err, *needles):
    assert code == 2
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_missing_video(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", str(tmp_path / "missing.mp4"), "--tiny")
    _assert_clean_error(code, err, "missing.mp4", "not found")


def test_unreadable_video(capsys, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    code, _, err = run_cli(capsys, "vis", str(bad), "--tiny", "--out", str(tmp_path / "x.png"))
    _assert_clean_error(code, err, "bad.mp4")


def test_too_short_video(capsys, clip_file):
    code, _, err = run_cli(capsys, "run", str(clip_file), "--tiny", "--frames", "40", "-q")
    _assert_clean_error(code, err, "16 frame", "40 are needed", "--frames")


def test_bad_arguments(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--tiny", "--r", "1.5")
    _assert_clean_error(code, err, "--r")
    code, _, err = run_cli(capsys, "run", "--tiny", "--r", "nosuchpreset")
    _assert_clean_error(code, err, "nosuchpreset", "Known presets")
    code, _, err = run_cli(capsys, "run", "--arch", "resnet50")
    _assert_clean_error(code, err, "resnet50")
    code, _, err = run_cli(capsys, "vis", "--tiny", "--out", str(tmp_path / "x.txt"))
    _assert_clean_error(code, err, "x.txt")
    code, _, err = run_cli(capsys, "run", "--model", str(tmp_path / "nowhere"))
    _assert_clean_error(code, err, "nowhere")
    code, _, err = run_cli(capsys, "run", "--frames", "zero")
    assert code == 2 and "positive integer" in err


# --------------------------------------------------------------------------------------------------
# Forwarded subcommands.
# --------------------------------------------------------------------------------------------------

has_converter = importlib.util.find_spec("checkpoints_convert") is not None
has_bench = importlib.util.find_spec("benchmarks") is not None and (
    importlib.util.find_spec("benchmarks.run") is not None
)


@pytest.mark.skipif(not has_converter, reason="checkpoints_convert not present")
def test_convert_forwards(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "convert", "--help")
    assert code == 0 and "src" in out and "out" in out
    code, _, err = run_cli(capsys, "convert", str(tmp_path / "missing.pth"), str(tmp_path / "out"))
    assert code != 0 and "Traceback" not in err


@pytest.mark.skipif(not has_bench, reason="benchmarks.run not present")
def test_bench_forwards(capsys):
    code, out, err = run_cli(capsys, "bench", "--help")
    assert code == 0, err
    assert out or err


@pytest.mark.parametrize("ret, want", [(None, 0), (0, 0), (3, 3), ({"results": 1}, 0), ("failed", 1)])
def test_forward_main_exit_codes(monkeypatch, capsys, ret, want):
    import sys
    import types

    mod = types.ModuleType("fake_tool")
    seen = []

    def fake_main(argv):
        seen.append(argv)
        if ret == 3:
            raise SystemExit(3)
        return ret

    mod.main = fake_main
    monkeypatch.setitem(sys.modules, "fake_tool", mod)
    assert cli.common.forward_main(("no_such_module_xyz", "fake_tool"), ["--a", "b"], "fake") == want
    assert seen == [["--a", "b"]]


def test_forward_main_missing(capsys):
    with pytest.raises(cli.CliError, match="not available"):
        cli.common.forward_main(("no_such_module_xyz",), [], "the thing")

"""Bad inputs at every entry point: one clear error before any work, nothing left on disk, no result.

Parametrised tables cover every option of the API (``init``, ``apply``, ``schedule``, ``flops``,
``sharded_apply``, ``visualize``, ``write_video``), the batch runner (``run_directory``), checkpoint
loading (damaged files), the ``tldr-jax`` command line and the converter's; hypothesis draws random
video shapes and dtypes, ``r`` specs (objects and text) and byte-level checkpoint corruptions. Each case
asserts the kind of error, that the message is one short line naming the bad value, and that nothing
was written. The first tests keep the entry points' option lists from drifting apart.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tldr_jax
from tldr_jax import batch, checkpoint, cli, options, parallel, vis
from tldr_jax.api import config_for_video, validate_video
from tldr_jax.checkpoint import CheckpointError
from tldr_jax.options import APPLY_OPTIONS, ApplyOptions
from tldr_jax.schedule import Schedule, ScheduleCapWarning, parse_r, resolve_schedule
from tldr_jax.video import VideoReadError, load_clip

TINY = dict(depth=1, embed_dim=32, num_heads=2, mlp_dim=64, num_frames=2, img_size=32)
#: Longest acceptable error message (one line, with the bad value and the fix).
MAX_MESSAGE = 400
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def assert_clear(err: BaseException, *needles: str) -> None:
    """One line, short, naming what it should."""
    msg = str(err)
    assert "\n" not in msg and 0 < len(msg) <= MAX_MESSAGE, msg
    for needle in needles:
        assert needle in msg, msg


def tree_of(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its modification time (what a failed call must not change)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def params():
    return tldr_jax.init(0, "umt_b16", **TINY)


@pytest.fixture(scope="module")
def video():
    return jax.random.normal(jax.random.key(1), (1, 2, 32, 32, 3))


# --------------------------------------------------------------------------------------------------
# One list of apply options.
# --------------------------------------------------------------------------------------------------


def test_apply_signature_is_the_one_option_list():
    sig = inspect.signature(tldr_jax.apply)
    keyword = {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert tuple(keyword) == APPLY_OPTIONS
    assert keyword == ApplyOptions().kwargs()


def test_option_values_come_from_one_place():
    from tldr_jax import api
    from tldr_jax.train import config as train_config

    flops_module = importlib.import_module("tldr_jax.flops")  # tldr_jax.flops is the function
    for module in (api, flops_module, train_config):
        assert module.METHODS is options.METHODS, module.__name__
    assert api.POOLS is options.POOLS and train_config.POOLS is options.POOLS
    assert api.SOURCES is options.SOURCES and api.PRECISIONS is options.PRECISIONS
    assert parallel.APPLY_OPTIONS is APPLY_OPTIONS


def test_command_line_covers_every_apply_option():
    """Each apply option is a flag of ``run`` and ``vis`` or listed, with a reason, as left out."""
    assert set(cli.APPLY_FLAGS) | set(cli.NOT_ON_CLI) == set(APPLY_OPTIONS)
    assert not set(cli.APPLY_FLAGS) & set(cli.NOT_ON_CLI)
    parser = cli.build_parser()
    for command in ("run", "vis"):
        sub = parser._subparsers._group_actions[0].choices[command]
        flags = {s for a in sub._actions for s in a.option_strings}
        dests = {a.dest for a in sub._actions}
        for option, (flag, dest) in cli.APPLY_FLAGS.items():
            assert flag in flags and dest in dests, (command, option)
    args = parser.parse_args(
        ["run", "--method", "tome", "--pool", "weighted", "--no-prop-attn", "--dtype", "bfloat16",
         "--precision", "tensorfloat32", "--fast-compile", "--gpu-tuning", "tuned"]
    )
    opts = cli.apply_options(args)
    assert opts == ApplyOptions(method="tome", pool="weighted", prop_attn=False, dtype="bfloat16",
                                precision="tensorfloat32", fast_compile=True, gpu_tuning="tuned")


def test_sharded_apply_and_run_directory_take_every_apply_option(params, video, tmp_path):
    """precision (once missing from sharded_apply) and every other option, non-default."""
    opts = dict(method="tome", pool="weighted", source="origin", return_saliency=True, prop_attn=False,
                dtype="bfloat16", remat=True, precision="tensorfloat32", fast_compile=True,
                attention=tldr_jax.AttentionTuning(query_chunk=64), gpu_tuning="xla")
    assert set(opts) == set(APPLY_OPTIONS)
    ref = tldr_jax.apply(params, video, 2, **opts)
    out = parallel.sharded_apply(params, video, 2, **opts)
    pooled, ref_pooled = np.asarray(out.pooled, np.float32), np.asarray(ref.pooled, np.float32)
    np.testing.assert_allclose(pooled, ref_pooled, atol=2e-2)
    assert out.source.owner.shape == ref.source.owner.shape

    in_dir = tmp_path / "in"
    in_dir.mkdir()
    np.save(in_dir / "a.npy", np.asarray(video[0]))
    summary = batch.run_directory(params, in_dir, tmp_path / "out", r=2, progress=False, workers=0, **opts)
    assert summary.processed == ["a.npy"] and not summary.failed
    run = json.loads((tmp_path / "out" / batch.RUN_FILE).read_text())
    assert run["options"]["precision"] == "tensorfloat32" and run["options"]["dtype"] == "bfloat16"


# --------------------------------------------------------------------------------------------------
# apply: the video.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, exc, needles",
    [
        (lambda: [[0.0]], ValueError, ["(B, T, H, W, 3)", "list"]),
        (lambda: np.zeros((2, 32, 32, 3), np.float32), ValueError, ["video[None]"]),
        (lambda: np.zeros((1, 1, 2, 32, 32, 3), np.float32), ValueError, ["(1, 1, 2, 32, 32, 3)"]),
        (lambda: np.zeros((1, 3, 2, 32, 32), np.float32), ValueError, ["channels", "(B, T, H, W, C)"]),
        (lambda: np.zeros((1, 2, 32, 32, 4), np.float32), ValueError, ["4 channels"]),
        (lambda: np.zeros((0, 2, 32, 32, 3), np.float32), ValueError, ["empty", "batch 0"]),
        (lambda: np.zeros((1, 0, 32, 32, 3), np.float32), ValueError, ["empty", "frames 0"]),
        (lambda: np.zeros((1, 2, 32, 48, 3), np.float32), ValueError, ["32x48", "preprocess"]),
        (lambda: np.zeros((1, 2, 32, 32, 3), np.int32), TypeError, ["must be float", "int32"]),
        (lambda: np.zeros((1, 2, 32, 32, 3), np.uint8), TypeError, ["must be float", "preprocess"]),
        (lambda: np.zeros((1, 2, 32, 32, 3), bool), TypeError, ["must be float"]),
        (lambda: np.zeros((1, 2, 32, 32, 3), np.complex64), TypeError, ["must be float"]),
        (lambda: np.full((1, 2, 32, 32, 3), np.nan, np.float32), ValueError, ["NaN"]),
        (lambda: jnp.zeros((1, 2, 32, 32, 3)).at[0, 1, 2, 3, 1].set(jnp.inf), ValueError, ["infinite"]),
    ],
)
def test_bad_video(params, make, exc, needles):
    with pytest.raises(exc) as e:
        tldr_jax.apply(params, make(), 0)
    assert_clear(e.value, *needles)


def test_frame_size_message_only_suggests_sizes_the_model_can_take(params):
    """40x40 is not a multiple of the patch size: no 'img_size=40' hint; 48x48 is."""
    with pytest.raises(ValueError) as e:
        tldr_jax.apply(params, np.zeros((1, 2, 40, 40, 3), np.float32), 0)
    assert_clear(e.value, "40x40", "32x32", "img_size=32")
    assert "img_size=40" not in str(e.value)
    with pytest.raises(ValueError) as e:
        tldr_jax.apply(params, np.zeros((1, 2, 48, 48, 3), np.float32), 0)
    assert_clear(e.value, "img_size=48")
    with pytest.raises(ValueError, match="img_size 40 is not divisible"):
        tldr_jax.init(0, "umt_b16", **{**TINY, "img_size": 40})


@pytest.mark.parametrize(
    "arch, shape, needle",
    [("videomae_s", (1, 3, 32, 32, 3), "tubelet size 2"), ("vivit_b", (1, 4, 32, 32, 3), "learned position")],
)
def test_frame_count_the_model_cannot_take(arch, shape, needle):
    model = tldr_jax.init(0, arch, **TINY)
    with pytest.raises(ValueError) as e:
        tldr_jax.apply(model, np.zeros(shape, np.float32), 0)
    assert_clear(e.value, needle)


VIDEO_DTYPES = [np.float32, np.float16, np.float64, np.int32, np.uint8, np.int8, bool, np.complex64]


@FUZZ
@given(
    shape=st.lists(st.sampled_from([0, 1, 2, 3, 4, 32, 33]), min_size=0, max_size=7),
    dtype=st.sampled_from(VIDEO_DTYPES),
)
def test_random_video_shapes_and_dtypes(params, shape, dtype):
    """validate_video accepts exactly the (B >= 1, T >= 1, 32, 32, 3) float videos; anything else is one
    clear ValueError / TypeError (no IndexError, no NaN result)."""
    video = np.broadcast_to(np.zeros((), dtype), tuple(shape))
    valid = (
        len(shape) == 5 and shape[0] >= 1 and shape[1] >= 1 and tuple(shape[2:]) == (32, 32, 3)
        and np.issubdtype(np.dtype(dtype), np.floating)
    )
    if valid:
        validate_video(params.config, video)
        assert config_for_video(params.config, video).num_frames == shape[1]
    else:
        with pytest.raises((ValueError, TypeError)) as e:
            validate_video(params.config, video)
        assert_clear(e.value)


# --------------------------------------------------------------------------------------------------
# apply: options and r.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, exc, needle",
    [
        ("method", "fast", ValueError, "'fast'"),
        ("method", None, ValueError, "method must be one of"),
        ("pool", "max", ValueError, "'max'"),
        ("source", "sparse", ValueError, "'sparse'"),
        ("precision", "fast", ValueError, "'fast'"),
        ("precision", 32, ValueError, "precision must be one of"),
        ("dtype", "int32", ValueError, "int32"),
        ("dtype", "int8", ValueError, "int8"),
        ("dtype", "uint8", ValueError, "uint8"),
        ("dtype", "bool", ValueError, "bool"),
        ("dtype", jnp.int32, ValueError, "int32"),
        ("dtype", "complex64", ValueError, "complex64"),
        ("dtype", "float8_e4m3fn", ValueError, "float8"),
        ("dtype", "foo", ValueError, "'foo'"),
        ("return_saliency", "yes", TypeError, "True or False"),
        ("prop_attn", "no", TypeError, "True or False"),
        ("prop_attn", 0, TypeError, "True or False"),
        ("remat", None, TypeError, "True or False"),
    ],
)
def test_bad_apply_option(params, video, option, value, exc, needle):
    """Integer / bool compute dtypes once ran and returned numbers up to 5.0 off; now every bad option
    is refused before anything is computed."""
    with pytest.raises(exc) as e:
        tldr_jax.apply(params, video, 0, **{option: value})
    assert_clear(e.value, option, needle)
    with pytest.raises(exc):
        parallel.sharded_apply(params, video, 0, **{option: value})


def test_unknown_option_names_the_valid_ones(params, video):
    with pytest.raises(TypeError) as e:
        parallel.sharded_apply(params, video, 0, bogus=1)
    assert_clear(e.value, "bogus", "precision")


def test_unknown_run_directory_option(params, clips_dir, tmp_path):
    with pytest.raises(TypeError) as e:
        batch.run_directory(params, clips_dir, tmp_path / "out", bogus=1)
    assert_clear(e.value, "bogus", "precision")
    assert not (tmp_path / "out").exists()


BAD_R = [
    ("abc", ValueError, ["unknown schedule preset 'abc'", "Known presets"]),
    (-1, ValueError, ["-1"]),
    (1.5, ValueError, ["1.5", "neither a whole count"]),
    (float("nan"), ValueError, ["nan"]),
    (float("inf"), ValueError, ["inf"]),
    ((1, "a"), TypeError, ["layer 1", "'a'"]),
    ((1, None), TypeError, ["layer 1", "None"]),
    ((1, -2), ValueError, ["layer 1", "-2"]),
    ({1: 2}, TypeError, ["dict"]),
    ({1}, TypeError, ["set"]),
    (True, TypeError, ["bool"]),
    (b"x", TypeError, ["bytes"]),
    ([[1]], TypeError, ["[1]"]),
    ((1, 1), ValueError, ["2 entries", "only 1 layers"]),
    ("msrvtt", ValueError, ["3 entries", "only 1 layers"]),
]


@pytest.mark.parametrize("r, exc, needles", BAD_R)
def test_bad_r(params, video, r, exc, needles):
    with pytest.raises(exc) as e:
        tldr_jax.apply(params, video, r)
    assert_clear(e.value, *needles)
    with pytest.raises(exc):
        tldr_jax.schedule(params, r)
    with pytest.raises(exc):
        tldr_jax.flops(params, r=r)


def test_preset_for_a_model_without_presets():
    with pytest.raises(ValueError) as e:
        tldr_jax.schedule("videomae_b", "msrvtt")
    assert_clear(e.value, "videomae_b", "UMT-B/16", "an int, a fraction")


def test_huge_count_is_capped_not_called_fractional(params):
    """r = 10**30 is a whole count (capped at N // 2 with a warning), not 'neither a whole count'."""
    for r in (10**30, 1e30, np.int64(2**62)):
        with pytest.warns(ScheduleCapWarning, match="capped at 4"):
            sched = tldr_jax.schedule(params, r)  # 8 tokens
        assert sched.r == (4,)


R_ENTRY = st.one_of(
    st.integers(-3, 10**40), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.text(max_size=3),
    st.booleans(),
)


@FUZZ
@given(r=st.one_of(R_ENTRY, st.lists(R_ENTRY, max_size=5), st.tuples(R_ENTRY, R_ENTRY), st.sampled_from(
    ["msrvtt", "umt_b16/msvd", "MSRVTT", "nope", ""]
)))
def test_random_r_specs(r):
    """Either a consistent schedule (counts >= 0, each at most half the tokens) or one clear error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleCapWarning)
        try:
            sched = resolve_schedule(r, num_tokens=36, depth=4, arch="umt_b16")
        except (ValueError, TypeError) as e:
            assert_clear(e)
            return
    assert isinstance(sched, Schedule) and len(sched.r) == 4
    for n, c, n_next in zip(sched.tokens, sched.r, sched.tokens[1:]):
        assert 0 <= c <= n // 2 and n_next == n - c


@FUZZ
@given(text=st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(-5, 10**12), st.floats(-2, 1e12).map(repr), st.just("")), max_size=5).map(
        lambda xs: ",".join(str(x) for x in xs)
    ),
))
def test_random_r_text(text):
    """--r text parses to something resolve_schedule takes, or to one ValueError naming the text."""
    try:
        r = parse_r(text)
    except ValueError as e:
        assert_clear(e)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleCapWarning)
        try:
            resolve_schedule(r, num_tokens=36, depth=12, arch="umt_b16")
        except ValueError as e:  # a well-formed name that is no preset, or too many entries
            assert_clear(e)


@pytest.mark.parametrize("text, want", [("1e9", 10**9), ("1000000000", 10**9), ("600.0", 600), ("1.0", 1),
                                        ("600,", (600,)), ("0.5,1e2", (0.5, 100))])
def test_r_text_counts_in_any_notation(text, want):
    value = parse_r(text)
    assert value == want and type(value) is type(want)


@pytest.mark.parametrize("text", ["1.5", "nan", "inf", "-1", "600,,100", ",5", "1e400", "0x10"])
def test_bad_r_text(text):
    with pytest.raises(ValueError) as e:
        parse_r(text)
    assert_clear(e.value, repr(text))


# --------------------------------------------------------------------------------------------------
# init, flops, visualize, write_video.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, exc, needle",
    [
        (lambda: tldr_jax.init(0.5, "umt_b16", **TINY), TypeError, "rng"),
        (lambda: tldr_jax.init("0", "umt_b16", **TINY), TypeError, "rng"),
        (lambda: tldr_jax.init(0, "umt_b61"), ValueError, "Did you mean 'umt_b16'"),
        (lambda: tldr_jax.init(0, "umt_b16", depht=2), TypeError, "depht"),
        (lambda: tldr_jax.init(0, "umt_b16", num_heads=0), ValueError, "num_heads"),
        (lambda: tldr_jax.init(0, "umt_b16", num_frames=0), ValueError, "num_frames"),
        (lambda: tldr_jax.init(0, "umt_b16", depth=0), ValueError, "depth"),
        (lambda: tldr_jax.init(0, "umt_b16", embed_dim=-64), ValueError, "embed_dim"),
        (lambda: tldr_jax.init(0, "umt_b16", ckpt_num_frames=0), ValueError, "ckpt_num_frames"),
        (lambda: tldr_jax.flops("umt_b16", method="fast"), ValueError, "'fast'"),
        (lambda: tldr_jax.flops("umt_b16", batch=0), ValueError, "batch"),
        (lambda: tldr_jax.flops("umt_b16", batch=True), ValueError, "batch"),
        (lambda: tldr_jax.gflops("umt_b16", r="nope"), ValueError, "'nope'"),
        (lambda: tldr_jax.solve_schedule("umt_b16", reduction=1.5), ValueError, "reduction"),
    ],
)
def test_bad_init_and_flops_arguments(call, exc, needle):
    with pytest.raises(exc) as e:
        call()
    assert_clear(e.value, needle)


@pytest.mark.parametrize(
    "kwargs, needle",
    [({"fps": 0}, "fps"), ({"fps": -1.0}, "fps"), ({"fps": float("nan")}, "fps"), ({"fps": "4"}, "fps"),
     ({"max_frames": 0}, "max_frames"), ({"max_frames": 1.5}, "max_frames")],
)
def test_bad_visualize_arguments_write_nothing(params, tmp_path, kwargs, needle):
    clip = np.zeros((2, 32, 32, 3), np.float32)
    out = tmp_path / "vis.gif"
    with pytest.raises((ValueError, TypeError)) as e:
        vis.visualize(params, clip, out, 2, **kwargs)
    assert_clear(e.value, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -2, float("inf"), None])
def test_write_video_refuses_bad_fps(tmp_path, fps):
    from tldr_jax.video import write_video

    with pytest.raises(ValueError) as e:
        write_video(tmp_path / "a.gif", np.zeros((2, 8, 8, 3), np.uint8), fps=fps)
    assert_clear(e.value, "fps")
    with pytest.raises(ValueError):
        write_video(tmp_path / "b.gif", np.zeros((0, 8, 8, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_preprocess_refuses_bad_normalisation():
    from tldr_jax.video import preprocess

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    for mean, std, needle in [((0.5, 0.5), (1, 1, 1), "mean"), ((0, 0, 0), (1, 0, 1), "std"),
                              ((0, 0, float("nan")), (1, 1, 1), "mean")]:
        with pytest.raises(ValueError) as e:
            preprocess(frames, 8, mean, std)
        assert_clear(e.value, needle)


# --------------------------------------------------------------------------------------------------
# run_directory: validated before anything is written.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    np.save(root / "a.npy", rng.normal(size=(2, 32, 32, 3)).astype(np.float32))
    np.save(root / "b.npy", rng.integers(0, 256, size=(5, 40, 36, 3), dtype=np.uint8))
    return root


BAD_RUN = [
    (dict(r="abc"), ValueError, "'abc'"),
    (dict(r=-1), ValueError, "-1"),
    (dict(r=(1, 1)), ValueError, "2 entries"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=1.5), TypeError, "batch_size"),
    (dict(batch_size=True), TypeError, "batch_size"),
    (dict(workers=-1), ValueError, "workers"),
    (dict(num_frames=0), ValueError, "num_frames"),
    (dict(num_frames=2.5), TypeError, "num_frames"),
    (dict(sampling="bogus"), ValueError, "'bogus'"),
    (dict(normalization="bogus"), ValueError, "'bogus'"),
    (dict(mean=(0.5, 0.5)), ValueError, "mean"),
    (dict(std=(0.0, 1.0, 1.0)), ValueError, "std"),
    (dict(pad="yes"), TypeError, "pad"),
    (dict(save_tokens=1), TypeError, "save_tokens"),
    (dict(method="fast"), ValueError, "'fast'"),
    (dict(dtype="int32"), ValueError, "int32"),
    (dict(precision="fast"), ValueError, "'fast'"),
    (dict(mesh="cpu"), TypeError, "mesh"),
    (dict(reader="read"), TypeError, "reader"),
]


@pytest.mark.parametrize("kwargs, exc, needle", BAD_RUN)
def test_bad_run_directory_argument_writes_nothing(params, clips_dir, tmp_path, kwargs, exc, needle):
    """Checked before any write: a fresh out_dir is not created, a used one is left as it was, and the
    same directory then takes a valid call (a failed call poisoned it before: run.json was written
    first)."""
    out = tmp_path / "out"
    with pytest.raises(exc) as e:
        batch.run_directory(params, clips_dir, out, progress=False, **kwargs)
    assert_clear(e.value, needle)
    assert not out.exists()


def test_failed_call_leaves_a_used_directory_untouched_and_a_valid_rerun_works(params, clips_dir, tmp_path):
    out = tmp_path / "out"
    batch.run_directory(params, clips_dir, out, r=2, progress=False, workers=0)
    before = tree_of(out)
    for kwargs, exc, _ in BAD_RUN:
        with pytest.raises(exc):
            batch.run_directory(params, clips_dir, out, progress=False, **kwargs)
    assert tree_of(out) == before
    again = batch.run_directory(params, clips_dir, out, r=2, progress=False, workers=0)
    assert sorted(again.skipped) == ["a.npy", "b.npy"] and not again.processed


@pytest.mark.parametrize(
    "arch, kwargs, needle",
    [("videomae_s", dict(num_frames=3), "tubelet size 2"), ("vivit_b", dict(num_frames=4), "learned")],
)
def test_run_directory_checks_frames_against_the_model(clips_dir, tmp_path, arch, kwargs, needle):
    model = tldr_jax.init(0, arch, **TINY)
    with pytest.raises(ValueError) as e:
        batch.run_directory(model, clips_dir, tmp_path / "out", progress=False, **kwargs)
    assert_clear(e.value, "num_frames", needle)
    assert not (tmp_path / "out").exists()


def test_run_directory_bad_paths_and_params(params, clips_dir, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        ((params, tmp_path / "missing", tmp_path / "o1"), FileNotFoundError, "does not exist"),
        ((params, a_file, tmp_path / "o2"), FileNotFoundError, "not a directory"),
        ((params, clips_dir, a_file), NotADirectoryError, "not a directory"),
        ((params.tree, clips_dir, tmp_path / "o3"), TypeError, "tldr_jax.Params"),
        ((None, clips_dir, tmp_path / "o4"), TypeError, "tldr_jax.Params"),
    ]
    for args, exc, needle in cases:
        with pytest.raises(exc) as e:
            batch.run_directory(*args, progress=False)
        assert_clear(e.value, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_nan_inputs_and_nan_outputs_are_failures_not_results(params, tmp_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    good = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    bad = good.copy()
    bad[1, 3, 4, 2] = np.nan
    np.save(in_dir / "good.npy", good)
    np.save(in_dir / "nan.npy", bad)
    np.save(in_dir / "inf.npy", np.where(good > 2, np.inf, good).astype(np.float32))
    summary = batch.run_directory(params, in_dir, tmp_path / "out", r=2, progress=False, workers=0)
    assert summary.processed == ["good.npy"] and sorted(summary.failed) == ["inf.npy", "nan.npy"]
    assert "NaN" in summary.failed["nan.npy"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npz")) == ["good.npy.npz"]

    broken = params.replace(tree=jax.tree_util.tree_map(lambda a: a * jnp.nan, params.tree))
    summary = batch.run_directory(broken, in_dir, tmp_path / "out2", r=2, progress=False, workers=0)
    assert not summary.processed and "non-finite model output" in summary.failed["good.npy"]
    assert not list((tmp_path / "out2").glob("*.npz"))


def test_errors_jsonl_has_one_line_per_failing_input_after_reruns(params, tmp_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    np.save(in_dir / "ok.npy", np.zeros((2, 32, 32, 3), np.float32))
    (in_dir / "broken.mp4").write_bytes(b"not a video" * 50)
    np.save(in_dir / "wrong.npy", np.zeros((2, 8, 8), np.float32))
    for _ in range(3):
        summary = batch.run_directory(params, in_dir, tmp_path / "out", r=2, progress=False, workers=0)
    assert sorted(summary.failed) == ["broken.mp4", "wrong.npy"]
    names = [rec["name"] for rec in batch.read_jsonl(tmp_path / "out" / batch.ERRORS)]
    assert sorted(names) == ["broken.mp4", "wrong.npy"]
    (in_dir / "broken.mp4").unlink()
    batch.run_directory(params, in_dir, tmp_path / "out", r=2, progress=False, workers=0)
    assert [rec["name"] for rec in batch.read_jsonl(tmp_path / "out" / batch.ERRORS)] == ["wrong.npy"]


def test_a_reader_returning_a_bad_clip_fails_that_file_only(params, clips_dir, tmp_path):
    def reader(path, spec):
        return np.zeros((1, 8, 8, 3), np.float32) if path.name == "b.npy" else load_clip(path, spec)

    summary = batch.run_directory(params, clips_dir, tmp_path / "out", r=2, progress=False, reader=reader)
    assert summary.processed == ["a.npy"] and "the model needs" in summary.failed["b.npy"]


# --------------------------------------------------------------------------------------------------
# Truncated videos: used, with a warning.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def truncated_mp4(tmp_path_factory):
    """An mp4 whose header lists 48 frames but whose data ends after about two thirds of them."""
    av = pytest.importorskip("av")
    from tldr_jax.video import synthetic_frames

    path = tmp_path_factory.mktemp("video") / "whole.mp4"
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in synthetic_frames(48, 48, 64):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    cut = path.with_name("cut.mp4")
    cut.write_bytes(data[: int(len(data) * 0.9)])
    return cut


def test_truncated_video_warns(truncated_mp4):
    from tldr_jax.video import VideoReadWarning, count_frames, read_video

    listed, decodable = count_frames(truncated_mp4), count_frames(truncated_mp4, exact=True)
    assert listed == 48 and 4 <= decodable < 48
    with pytest.warns(VideoReadWarning, match=f"lists 48 frames but only {decodable} decode"):
        frames = read_video(truncated_mp4, 4)
    assert frames.shape[0] == 4
    with pytest.raises(VideoReadError) as e:
        read_video(truncated_mp4, 47)
    assert_clear(e.value, f"has {decodable} frame(s) that decode", "lists 48", "truncated")


def test_truncated_video_is_recorded_in_the_batch_manifest(params, truncated_mp4, tmp_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    shutil.copy(truncated_mp4, in_dir / "cut.mp4")
    summary = batch.run_directory(params, in_dir, tmp_path / "out", r=2, progress=False, workers=1)
    assert summary.processed == ["cut.mp4"] and "lists 48 frames" in summary.warnings["cut.mp4"][0]
    (line,) = batch.read_jsonl(tmp_path / "out" / batch.MANIFEST)
    assert "lists 48 frames" in line["warnings"][0]


# --------------------------------------------------------------------------------------------------
# Checkpoints: damaged files are reported as corrupt, in one line, never loaded as wrong weights.
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, params):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    checkpoint.save(params, path)
    return path


def _largest_data_file(path: Path) -> Path:
    return max((p for p in (path / "params").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def _flip(p: Path, at: float = 0.5) -> None:
    data = bytearray(p.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    p.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated data file": (lambda c: _truncate(_largest_data_file(c)), "corrupt or truncated"),
    "zeroed data file": (lambda c: _largest_data_file(c).write_bytes(b"\0" * 4096), "corrupt or truncated"),
    "flipped bit in data": (lambda c: _flip(_largest_data_file(c)), "checksums"),
    "deleted manifest": (lambda c: (c / "params" / "manifest.ocdbt").unlink(), "incomplete or corrupt"),
    "deleted _METADATA": (lambda c: (c / "params" / "_METADATA").unlink(), "incomplete or corrupt"),
    "deleted data files": (lambda c: shutil.rmtree(_largest_data_file(c).parent), "corrupt"),
    "deleted params/": (lambda c: shutil.rmtree(c / "params"), "no params/"),
    "garbage config.json": (lambda c: (c / "config.json").write_text("{not json"), "not valid JSON"),
    "empty config.json": (lambda c: (c / "config.json").write_text(""), "not valid JSON"),
    "edited norm_eps": (
        lambda c: (c / "config.json").write_text(
            (c / "config.json").read_text().replace("1e-06", "1e-05", 1)
        ),
        "checksum",
    ),
    "labels not a list": (
        lambda c: (c / "config.json").write_text(
            json.dumps({**json.loads((c / "config.json").read_text()), "labels": 7})
        ),
        "labels",
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_damaged_checkpoint_is_one_line_and_no_noise(saved, tmp_path, name):
    corrupt, needle = CORRUPTIONS[name]
    damaged = tmp_path / "damaged"
    shutil.copytree(saved, damaged)
    corrupt(damaged)
    reports = []
    previous = sys.unraisablehook
    sys.unraisablehook = reports.append  # what orbax's in-flight reads report after a failure
    try:
        with pytest.raises(CheckpointError) as e:
            checkpoint.load(damaged)
        time.sleep(0.3)
    finally:
        sys.unraisablehook = previous
    assert_clear(e.value, needle)
    assert not reports, [str(r.exc_value)[:80] for r in reports]


# orbax's in-flight reads of a damaged file may report "Event loop is closed" after the hook below is
# restored (the library filters that report for users; test_damaged_checkpoint_... checks it).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_corruption_never_loads_wrong_weights(saved, tmp_path_factory, data):
    """Flip or cut bytes of any checkpoint file: load gives the original weights or a CheckpointError."""
    damaged = tmp_path_factory.mktemp("fuzz") / "ckpt"
    shutil.copytree(saved, damaged)
    files = sorted(p for p in damaged.rglob("*") if p.is_file())
    target = data.draw(st.sampled_from(files), label="file")
    raw = bytearray(target.read_bytes())
    if data.draw(st.booleans(), label="truncate") or not raw:
        raw = raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="keep")]
    else:
        i = data.draw(st.integers(0, len(raw) - 1), label="byte")
        raw[i] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    target.write_bytes(bytes(raw))
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: None
    try:
        loaded = checkpoint.load(damaged)
    except CheckpointError as e:
        assert len(str(e)) <= 2000  # the tree-mismatch report may list entries on several lines
        return
    finally:
        sys.unraisablehook = previous
    reference = checkpoint.load(saved)
    assert loaded.config == reference.config and loaded.labels == reference.labels
    for a, b in zip(jax.tree_util.tree_leaves(loaded.tree), jax.tree_util.tree_leaves(reference.tree)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# The tldr-jax command line: exit 2, one line, nothing written.
# --------------------------------------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_cli_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err and len(lines[0]) <= 700, err
    for needle in needles:
        assert needle in lines[0], err


@pytest.fixture(scope="module")
def files(tmp_path_factory, saved):
    root = tmp_path_factory.mktemp("cli_files")
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(b"definitely not a video" * 40)
    (root / "adir").mkdir()
    corrupt = root / "corrupt_ckpt"
    shutil.copytree(saved, corrupt)
    _truncate(_largest_data_file(corrupt))
    incomplete = root / "incomplete_ckpt"
    shutil.copytree(saved, incomplete)
    (incomplete / "params" / "manifest.ocdbt").unlink()
    return root


CLI_CASES = [
    (["run", "--tiny", "--r", "1.5"], ["--r", "'1.5'", "whole count"]),
    (["run", "--tiny", "--r", "nan"], ["'nan'"]),
    (["run", "--tiny", "--r", "600,,100"], ["empty entry"]),
    (["run", "--tiny", "--r", "abc"], ["'abc'", "Known presets"]),
    (["run", "--tiny", "--r", "1,1,1,1,1"], ["5 entries", "only 4 layers"]),
    (["run", "--tiny", "--frames", "0"], ["--frames", "positive integer"]),
    (["run", "--model", "videomae_s", "--tiny", "--frames", "3"], ["--frames 3", "multiple of 2"]),
    (["run", "--model", "vivit_b", "--tiny", "--frames", "8"], ["--frames 8", "learned position"]),
    (["run", "--tiny", "--repeat", "0"], ["--repeat"]),
    (["run", "--tiny", "--seed", "-1"], ["--seed"]),
    (["run", "--tiny", "--seed", "x"], ["--seed"]),
    (["run", "--tiny", "--method", "fast"], ["--method", "'fast'"]),
    (["run", "--tiny", "--pool", "max"], ["--pool"]),
    (["run", "--tiny", "--dtype", "int32"], ["--dtype", "'int32'"]),
    (["run", "--tiny", "--precision", "fast"], ["--precision"]),
    (["run", "--tiny", "--sampling", "bogus"], ["--sampling"]),
    (["run", "--tiny", "--normalization", "bogus"], ["--normalization"]),
    (["run", "--arch", "resnet50"], ["resnet50"]),
    (["run", "--model", "videomae_s", "--arch", "umt_b16"], ["--arch"]),
    (["run", "--model", "{tmp}/missing"], ["no such file or directory"]),
    (["run", "--model", "org_x/missing_model"], ["no such file or directory", "hf:org_x/missing_model"]),
    (["run", "--model", "hf:not-an-id"], ["hf:ORG/NAME"]),
    (["run", "--model", "{saved}", "--tiny"], ["--tiny"]),
    (["run", "--model", "{saved}", "--arch", "umt_b16"], ["--arch"]),
    (["run", "--model", "{files}/corrupt_ckpt", "-q"], ["corrupt or truncated"]),
    (["run", "--model", "{files}/incomplete_ckpt", "-q"], ["incomplete or corrupt"]),
    (["run", "--tiny", "--json", "{files}/adir"], ["--json", "is a directory"]),
    (["run", "--tiny", "--json", "{files}/empty.mp4/x.json"], ["--json", "is a file"]),
    (["run", "--tiny", "-q", "{tmp}/missing.mp4"], ["not found"]),
    (["run", "--tiny", "-q", "{files}/adir"], ["is a directory"]),
    (["run", "--tiny", "-q", "{files}/empty.mp4"], ["empty"]),
    (["run", "--tiny", "-q", "{files}/garbage.mp4"], ["cannot read"]),
    (["vis", "--tiny", "--out", "{tmp}/x.txt"], ["x.txt"]),
    (["vis", "--tiny", "--out", "{tmp}/a.gif", "--fps", "0"], ["--fps", "positive number"]),
    (["vis", "--tiny", "--out", "{tmp}/a.gif", "--fps", "-1"], ["--fps"]),
    (["vis", "--tiny", "--out", "{tmp}/a.gif", "--fps", "nan"], ["--fps"]),
    (["vis", "--tiny", "--out", "{tmp}/a.png", "--max-frames", "0"], ["--max-frames"]),
    (["vis", "--tiny", "--out", "{files}/adir"], ["is a directory"]),
    (["vis", "--tiny"], ["--out"]),
    (["run", "--bogus-flag"], ["--bogus-flag"]),
    (["finetune", "umt_b16", "{tmp}/missing", "--out", "{tmp}/ft", "--epochs", "0"], ["epochs"]),
    (["finetune", "umt_b16", "{tmp}/missing", "--out", "{tmp}/ft"], ["no such directory"]),
    (["finetune", "umt_b16", "{tmp}/missing", "--out", "{tmp}/ft", "--train-r", "1.5"], ["--train-r"]),
    ([], ["COMMAND"]),
    (["nosuchcommand"], ["nosuchcommand"]),
]


def test_missing_relative_folder_gets_no_hub_hint(capsys):
    """``./missing`` is a local path that does not exist, not a hub id: no ``hf:`` suggestion."""
    code, _, err = run_cli(capsys, "run", "--model", "./no_such_folder_here")
    assert_cli_error(code, err, "no such file or directory")
    assert "hf:./" not in err


@pytest.mark.parametrize("argv, needles", CLI_CASES, ids=[" ".join(a) or "(none)" for a, _ in CLI_CASES])
def test_cli_bad_input(capsys, tmp_path, files, saved, argv, needles):
    argv = [a.format(tmp=tmp_path, files=files, saved=saved) for a in argv]
    code, _, err = run_cli(capsys, *argv)
    assert_cli_error(code, err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output file, no partial file


def test_cli_debug_shows_the_traceback(capsys, tmp_path):
    with pytest.raises(cli.CliError, match="'abc'"):
        cli.main(["--debug", "run", "--tiny", "--r", "abc"])


def test_cli_internal_error_is_one_line_with_exit_1(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(cli.sources, "resolve_model", boom)
    code, _, err = run_cli(capsys, "run", "--tiny")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "internal error (RuntimeError)" in err
    assert "second line" in err and "--debug" in err


def test_random_weights_description_does_not_ask_for_a_passed_model():
    source = cli.resolve_model("videomae_s", tiny=True)
    assert source.random_weights and "RANDOM WEIGHTS" in source.description
    assert "pass --model" not in source.description and "--model names an architecture" in source.description
    assert "no --model given" in cli.resolve_model(None, tiny=True).description


def test_cli_prints_a_truncated_video_warning_as_one_line(capsys, truncated_mp4):
    code, out, err = run_cli(capsys, "run", truncated_mp4, "--tiny", "--no-baseline", "--repeat", "1", "-q",
                             "--r", "1e9")
    assert code == 0, err
    warned = [line for line in err.splitlines() if line.startswith("tldr-jax: warning:")]
    assert any("lists 48 frames" in w for w in warned), err
    assert any("capped" in w for w in warned), err  # --r 1e9 is a count, capped layer by layer
    assert "Traceback" not in err and all(len(w) <= 700 for w in warned)
    assert "merging    vid_tldr, r=1000000000" in out


# --------------------------------------------------------------------------------------------------
# The conversion cache: keyed by content.
# --------------------------------------------------------------------------------------------------


def test_cache_is_keyed_by_content_not_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TLDR_JAX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "x").mkdir()
    a, b = tmp_path / "x" / "y.pth", tmp_path / "x--y.pth"
    a.write_bytes(b"weights A")
    b.write_bytes(b"weights B")
    key_a, key_b = cli.conversion_cache_path(str(a)), cli.conversion_cache_path(str(b))
    assert key_a != key_b  # once both were ~/.cache/.../x--y.pth
    assert cli.conversion_cache_path(str(a)) == key_a
    a.write_bytes(b"weights A, changed in place")
    assert cli.conversion_cache_path(str(a)) not in (key_a, key_b)
    c = tmp_path / "copy.pth"
    c.write_bytes(b"weights B")
    assert cli.conversion_cache_path(str(c)).name.split("-")[-1] == key_b.name.split("-")[-1]
    assert cli.conversion_cache_path("hf:a--b/c") != cli.conversion_cache_path("hf:a/b--c")


def test_changed_source_is_converted_again(tmp_path, monkeypatch):
    """End to end through resolve_model with a stub converter: one conversion per content."""
    monkeypatch.setenv("TLDR_JAX_CACHE", str(tmp_path / "cache"))
    conversions = []

    def fake_convert(src, out, quiet):
        depth = 1 + len(Path(src).read_bytes()) % 2  # the "weights" decide the model
        model = tldr_jax.init(0, "umt_b16", **{**TINY, "depth": depth})
        checkpoint.save(model, out)
        conversions.append(src)
        return model

    monkeypatch.setattr(cli.sources, "_convert", fake_convert)
    src = tmp_path / "m.pth"
    src.write_bytes(b"a")
    assert cli.resolve_model(str(src), quiet=True).config.depth == 2
    assert cli.resolve_model(str(src), quiet=True).config.depth == 2 and len(conversions) == 1
    src.write_bytes(b"ab")
    assert cli.resolve_model(str(src), quiet=True).config.depth == 1 and len(conversions) == 2


# --------------------------------------------------------------------------------------------------
# The converter's command line.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, needle",
    [(["--num-heads", "0"], "--num-heads"), (["--num-heads", "-2"], "--num-heads"),
     (["--num-heads", "x"], "'x'"),
     (["--num-frames", "0"], "--num-frames"), (["--img-size", "0"], "--img-size"),
     (["--ckpt-num-frames", "0"], "--ckpt-num-frames"), (["--num-classes", "-1"], "--num-classes"),
     (["--ignore", "("], "regular expression"), (["--format", "bogus"], "--format")],
)
def test_converter_bad_options(capsys, tmp_path, flags, needle):
    from checkpoints_convert.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "src.pth"), str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags, needle", [(["--num-heads", "5"], "num_heads"), (["--img-size", "40"], "img_size")]
)
def test_converter_sizes_the_model_rejects(capsys, tmp_path, flags, needle):
    """Sizes the architecture cannot take fail with one message and exit 1, no traceback, no output."""
    pytest.importorskip("torch")
    from conftest import GOLDEN_DIR

    from checkpoints_convert.cli import main

    src = GOLDEN_DIR / "umt_tiny.pth"
    if not src.exists():
        pytest.skip(f"{src} not found")
    code = main([str(src), str(tmp_path / "out"), "--quiet", "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and needle in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, needle", [({"num_heads": 0}, "num_heads"), ({"num_frames": 0}, "num_frames")]
)
def test_python_convert_rejects_non_positive_sizes(tmp_path, kwargs, needle):
    """``checkpoints_convert.convert`` (Python) refuses what the CLI refuses: no ZeroDivisionError, no
    output."""
    pytest.importorskip("torch")
    from conftest import GOLDEN_DIR

    import checkpoints_convert

    src = GOLDEN_DIR / "umt_tiny.pth"
    if not src.exists():
        pytest.skip(f"{src} not found")
    with pytest.raises(ValueError) as e:
        checkpoints_convert.convert(src, tmp_path / "out", **kwargs)
    assert_clear(e.value, needle)
    assert not (tmp_path / "out").exists()


def test_bench_runs_from_any_directory(tmp_path):
    """The benchmarks are installed with the package: `tldr-jax bench` needs no repository checkout."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)

    if run("-c", "import tldr_jax").returncode != 0:
        pytest.skip("tldr_jax is not installed in this environment (pip install -e .)")
    proc = run("-m", "tldr_jax.cli", "bench", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "not available" not in proc.stderr

"""Shared pieces of the multi-modal tests: the official UMT retrieval golden data
(``../shared/golden/umt_retrieval``), its converted model, and comparison helpers.

The golden set is the official ``UMT`` retrieval model (vid-TLDR merging in its vision encoder, the xbert
text tower, ``tasks/retrieval_utils.evaluation`` + ``itm_eval``) run on a tiny seeded model in float32
and float64. Float64 parity is asked at 1e-9 for every tower output and every schedule; the float32
evaluation matrices at 1e-4 and the metrics exactly, at k = 2 (re-ranking changes the order) and 128.

The fixtures are session-scoped and registered in ``conftest.py`` (so that the converted model and the
float32 evaluation runs are made once for all the files that use them).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN_DIR, golden

from tldr_jax import retrieval as R
from tldr_jax.retrieval.features import encode_video, text_hidden_states
from tldr_jax.retrieval.fusion import UNSCORED

GOLD = GOLDEN_DIR / "umt_retrieval"
SCHEDULES = ("zero", "ints", "frac")
F64_ATOL = 1e-9
#: The official float64 run stores the re-ranked matrices as float32 (it pre-allocates them so):
#: a float64 port's values round to them within half a float32 ulp (|score| < 1: 6e-8).
X_F32_STORAGE_ATOL = 1e-7
F32_ATOL = 1e-4


@pytest.fixture(scope="session")
def gold():
    return golden("umt_retrieval/golden_retrieval.npz")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The golden official checkpoint converted by ``checkpoints_convert`` into a retrieval directory."""
    pytest.importorskip("torch")
    if not (GOLD / "umt_retrieval.pth").exists():
        pytest.skip(f"golden retrieval checkpoint not found in {GOLD}")
    from checkpoints_convert import convert

    out = tmp_path_factory.mktemp("ret") / "umt_tiny_ret"
    convert(
        GOLD / "umt_retrieval.pth",
        out,
        vocab=GOLD / "vocab.txt",
        text_config=GOLD / "text_config.json",
        num_heads=2,
        num_frames=4,
        img_size=32,
        verbose=False,
    )
    return out


@pytest.fixture(scope="session")
def model(model_dir):
    """The converted golden model, loaded by ``tldr_jax.load``."""
    import tldr_jax

    loaded = tldr_jax.load(model_dir)
    assert isinstance(loaded, R.RetrievalModel)
    return loaded


def schedule(gold, name):
    """The golden per-layer r (counts as ints, fractions as floats)."""
    return tuple(int(v) if v >= 1 or v == 0 else float(v) for v in gold[f"{name}/schedule"])


def video(gold, dtype=np.float32):
    """(B, T, C, H, W) golden clips as tldr_jax's (B, T, H, W, C)."""
    return gold["video_btchw"].transpose(0, 1, 3, 4, 2).astype(dtype)


def official_metrics(gold, key):
    return json.loads(str(gold[key]))


def assert_close(got, want, atol, what):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)


def assert_reranked(got, want, atol, what):
    """Re-ranked matrices: the same -100 (unscored) positions, scores within ``atol``."""
    got = np.asarray(got)
    np.testing.assert_array_equal(got == UNSCORED, want == UNSCORED, err_msg=what)
    assert_close(got, want.astype(np.float64), atol, what)


@pytest.fixture(scope="session")
def f64(model, gold):
    """The float64 model and its tower outputs: ``{"model", "ids", "mask", "hidden", "text", "video":
    {schedule: VideoFeatures}}`` (made under ``jax.enable_x64``; use them inside it too)."""
    ids, mask = R.tokenize(model, list(gold["texts"]), 16)
    with jax.enable_x64(True):
        m64 = model.astype(jnp.float64)
        clips = jnp.asarray(video(gold, np.float64))
        return {
            "model": m64,
            "ids": ids,
            "mask": mask,
            "hidden": text_hidden_states(m64, ids, mask),
            "text": R.encode_text(m64, ids, mask),
            "video": {name: encode_video(m64, clips, r=schedule(gold, name)) for name in SCHEDULES},
        }


@pytest.fixture(scope="session")
def f32_runs(model, gold):
    """``{(schedule, k): EvalResult}``: the whole evaluation from raw captions and clips (batches of 2 + 1,
    as the official loader), the texts encoded once and reused for k = 128."""
    texts = list(gold["texts"])
    runs = {}
    for name in SCHEDULES:
        first = R.evaluate(
            model,
            video(gold),
            texts,
            txt2vid=gold["txt2img"],
            k=2,
            r=schedule(gold, name),
            max_length=16,
            batch_size=2,
        )
        runs[name, 2] = first
        text = R.encode_texts(model, texts, max_length=16)
        vid = R.encode_videos(model, list(video(gold)), r=schedule(gold, name), batch_size=2)
        runs[name, 128] = R.evaluate(model, vid, text, vid2txt=gold["img2txt"], k=128)
    return runs


@pytest.fixture(scope="session")
def clip_dir(gold, tmp_path_factory):
    """The golden clips as .npy files and the golden captions as JSON lines."""
    root = tmp_path_factory.mktemp("clips")
    for i, clip in enumerate(video(gold)):
        np.save(root / f"v{i}.npy", clip)
    lines = [
        json.dumps({"video": f"v{v}.npy", "caption": str(t)}) for t, v in zip(gold["texts"], gold["txt2img"])
    ]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root

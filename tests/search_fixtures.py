"""Shared pieces of the video search tests: a tiny random retrieval model, ``.npy`` clips, an index, and
the official evaluation's steps on the same files (``encode_videos``, ``encode_texts``, the ITC matrix).

The fixture functions are registered per test module (``index = pytest.fixture(scope="module")(
search_fixtures.index)``), so each module builds its own index.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from tldr_jax import retrieval as R
from tldr_jax.search import build_index
from tldr_jax.text.tokenizer import pre_text

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(20)]
TEXT = R.TextConfig(vocab_size=len(WORDS), hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64,
                    max_position_embeddings=16, fusion_layer=1, encoder_width=64, embed_dim=16)
VISION = dict(depth=3, embed_dim=64, num_heads=2, mlp_dim=128, img_size=32, num_frames=4)
R_SPEC = (6, 4, 2)  # 16 -> 10 -> 6 -> 4 tokens
QUERIES = ["w1 w2 w3", "w7", "w4 w4 w9 w12 w0"]
N_CLIPS = 6



def tiny_model(seed: int = 0) -> R.RetrievalModel:
    return R.init(seed, "umt_b16", text_config=TEXT, vocab=WORDS, **VISION)


def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "model"
    R.save(tiny_model(), path)
    return path


def model(model_dir):
    import tldr_jax

    return tldr_jax.load(model_dir)


def write_clips(folder, n=N_CLIPS, seed=0):
    """``n`` normalised float clips as ``.npy`` files, the last one in a sub-folder."""
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / ("sub" if i == n - 1 else "") / f"clip{i}.npy"
        np.save(p, rng.standard_normal((4, 32, 32, 3)).astype(np.float32))
        paths.append(p)
    return paths


def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_clips(folder)
    return folder


def index(model_dir, clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    return build_index(model_dir, clips, out, r=R_SPEC, batch_size=4, keep_tokens=True, progress=False)


def official(model, index):
    """The official evaluation's steps on the same files: ITC matrix ``(n_videos, n_texts)`` and ITM."""
    files = [e.path for e in index.entries]
    vid = R.encode_videos(model, files, R_SPEC, batch_size=4, progress=False)
    text = R.encode_texts(model, [pre_text(q) for q in QUERIES], max_length=16)
    sim = np.asarray(jnp.asarray(vid.feat) @ jnp.asarray(text.feat).T)
    return vid, text, sim


def plain_index(model_dir, clips, tmp_path_factory):
    """An index without tokens (copied by the CLI cases that might change it)."""
    path = tmp_path_factory.mktemp("plain") / "index"
    build_index(model_dir, clips, path, r=R_SPEC, batch_size=4, progress=False)
    return path

"""The per-program XLA options of a forward (:mod:`tldr_jax.xla_options`): chosen per backend and
``gpu_tuning``, ``XLA_FLAGS`` keys left alone, unknown keys explained in one line, applied by ``apply``
and ``sharded_apply`` (the GPU backend faked on CPU); the compile cache's per-version folder and
per-worker autotuning folder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import tldr_jax
from tldr_jax import api, compile_cache, parallel, xla_options
from tldr_jax.options import GPU_TUNINGS, ApplyOptions
from tldr_jax.xla_options import FAST_COMPILE_XLA_CPU, GPU_TUNING_XLA, compiler_options

TINY = dict(depth=2, embed_dim=32, num_heads=2, mlp_dim=64, num_frames=4, img_size=32)
HEURISTIC = {"xla_gpu_enable_triton_gemm": False, "xla_gpu_autotune_level": 0}
TUNED = {"xla_gpu_enable_triton_gemm": False, "xla_gpu_experimental_enable_fusion_autotuner": False}


@pytest.mark.parametrize("backend", ["cpu", "gpu", "cuda", "rocm", "tpu"])
@pytest.mark.parametrize("gpu_tuning", GPU_TUNINGS)
@pytest.mark.parametrize("fast_compile", [False, True])
def test_options_per_backend_and_setting(backend, gpu_tuning, fast_compile):
    got = compiler_options(backend, fast_compile=fast_compile, gpu_tuning=gpu_tuning, xla_flags="")
    if backend == "cpu":
        assert got == (FAST_COMPILE_XLA_CPU if fast_compile else {})
    elif backend == "tpu":
        assert got == {}
    else:  # fast_compile changes nothing on a GPU
        assert got == {"heuristic": HEURISTIC, "tuned": TUNED, "xla": {}}[gpu_tuning]
    assert got is not GPU_TUNING_XLA.get(gpu_tuning)  # a fresh dict: callers may change it


def test_xla_flags_keys_are_left_alone(monkeypatch):
    flags = "--xla_gpu_autotune_level=4 --xla_dump_to=/tmp/x -xla_cpu_use_fusion_emitters=true"
    assert xla_options.user_xla_flags(flags) == {
        "xla_gpu_autotune_level", "xla_dump_to", "xla_cpu_use_fusion_emitters"
    }
    assert compiler_options("gpu", xla_flags=flags) == {"xla_gpu_enable_triton_gemm": False}
    assert compiler_options("cpu", fast_compile=True, xla_flags=flags) == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")
    assert compiler_options("gpu", gpu_tuning="tuned") == {
        "xla_gpu_experimental_enable_fusion_autotuner": False
    }
    monkeypatch.delenv("XLA_FLAGS")
    assert compiler_options("gpu", gpu_tuning="tuned") == TUNED


def test_autotune_folder_on_gpu_only(tmp_path):
    got = compiler_options("gpu", gpu_tuning="xla", autotune_dir=tmp_path, xla_flags="")
    assert got == {"xla_gpu_per_fusion_autotune_cache_dir": str(tmp_path)}
    assert compiler_options("cpu", autotune_dir=tmp_path, xla_flags="") == {}


def test_gpu_tuning_is_checked_like_every_option():
    with pytest.raises(ValueError, match="gpu_tuning must be one of 'heuristic', 'tuned', 'xla'; got 'fast'"):
        ApplyOptions(gpu_tuning="fast")
    with pytest.raises(ValueError, match="gpu_tuning must be one of"):
        compiler_options("gpu", gpu_tuning="fast")
    params = tldr_jax.init(0, "umt_b16", **TINY)
    with pytest.raises(ValueError, match="gpu_tuning must be one of"):
        tldr_jax.apply(params, jnp.zeros((1, 4, 32, 32, 3)), 0, gpu_tuning=None)


def test_unknown_option_becomes_one_line(monkeypatch):
    params = tldr_jax.init(1, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(1), (1, 4, 32, 32, 3))
    monkeypatch.setattr(api, "forward_options", lambda *a: {"xla_gpu_no_such_option_here": False})
    with pytest.raises(RuntimeError) as info:
        tldr_jax.apply(params, video, 2)
    line = str(info.value)
    assert "\n" not in line and "xla_gpu_no_such_option_here" in line and "gpu_tuning='xla'" in line
    assert info.value.__cause__ is None and info.value.__suppress_context__
    # other errors pass unchanged, and so does a refusal of a key tldr_jax did not set
    with pytest.raises(ZeroDivisionError), xla_options.explain_unknown_options({"xla_a": 1}):
        raise ZeroDivisionError
    err = ValueError("INVALID_ARGUMENT: No such compile option: 'xla_b'")
    assert xla_options.unknown_option(err, {"xla_a": 1}) is None
    assert "without fast_compile" in xla_options.unknown_option(
        ValueError("No such compile option: 'xla_cpu_use_fusion_emitters'"), FAST_COMPILE_XLA_CPU
    )


def _record_jits(monkeypatch, module, name):
    """Spy on a cached jit factory: the XLA option tuples it is asked for."""
    seen = []
    original = getattr(module, name)

    def spy(*args):
        seen.append(args[-1])
        return original(*args)

    monkeypatch.setattr(module, name, spy)
    return seen


def test_apply_and_sharded_apply_compile_with_the_gpu_options(monkeypatch):
    """With the backend faked as a GPU (XLA CPU accepts the GPU debug options and ignores them), apply
    and sharded_apply compile with the chosen set; a key in XLA_FLAGS is dropped from it."""
    params = tldr_jax.init(2, "umt_b16", **TINY)
    video = jax.random.normal(jax.random.key(2), (2, 4, 32, 32, 3))
    ref = tldr_jax.apply(params, video, 2)
    forward = _record_jits(monkeypatch, api, "_jitted")
    sharded = _record_jits(monkeypatch, parallel, "_sharded_apply_fn")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    out = tldr_jax.apply(params, video, 2)
    tldr_jax.apply(params, video, 2, gpu_tuning="tuned")
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=1")
    tldr_jax.apply(params, video, 2, gpu_tuning="heuristic")
    parallel.sharded_apply(params, video, 2, gpu_tuning="tuned")
    assert forward[:3] == [tuple(sorted(HEURISTIC.items())), tuple(sorted(TUNED.items())),
                           (("xla_gpu_enable_triton_gemm", False),)]
    assert forward[3:] == [()]  # apply traced inside sharded_apply's jit: the outer jit has them
    assert sharded == [tuple(sorted(TUNED.items()))]
    monkeypatch.undo()
    assert jnp.allclose(out.pooled, ref.pooled, atol=1e-5)


@pytest.fixture
def restore_cache_config():
    """Put JAX's persistent-cache settings back after a test that enables the cache in-process."""
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes", "jax_persistent_cache_enable_xla_caches")
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    compile_cache._AUTOTUNE = compile_cache._WORKER = None


def test_worker_gets_its_own_autotune_folder(tmp_path, restore_cache_config):
    assert compile_cache.autotune_dir() is None
    folder = compile_cache.enable_compile_cache(tmp_path / "xla", worker="actor-3")
    assert compile_cache.autotune_dir() == folder / "autotune" / "actor-3"
    assert jax.config.jax_persistent_cache_enable_xla_caches == "none"  # JAX sets no folder of its own
    got = compiler_options("gpu", autotune_dir=compile_cache.autotune_dir(), xla_flags="")
    assert got["xla_gpu_per_fusion_autotune_cache_dir"] == str(folder / "autotune" / "actor-3")
    other = compile_cache.enable_compile_cache(tmp_path / "other")  # e.g. run_directory's call: the
    assert compile_cache.autotune_dir() == other / "autotune" / "actor-3"  # worker keeps its name
    compile_cache._WORKER = None  # a process that never named itself
    compile_cache.enable_compile_cache(tmp_path / "xla")
    assert compile_cache.autotune_dir() is None
    assert jax.config.jax_persistent_cache_enable_xla_caches == "xla_gpu_per_fusion_autotune_cache_dir"
    with pytest.raises(ValueError, match="worker must be a plain name"):
        compile_cache.enable_compile_cache(tmp_path / "xla", worker="../up")


def test_default_cache_folder_is_per_jaxlib_version(monkeypatch, tmp_path):
    import jaxlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setattr("os.name", "posix")
    expected = tmp_path / "tldr_jax" / "xla" / f"jaxlib-{jaxlib.__version__}"
    assert compile_cache.default_cache_dir() == expected


def test_tuned_jit_picks_the_options_per_call(monkeypatch):
    """The text side's decorator: the forward rule at each call (gpu_tuning keyword), none under an outer
    trace, the setting validated, one jit per option set."""
    @xla_options.tuned_jit(static_argnames=("k",))
    def scale(x, *, k):
        return x * k

    seen = _record_tuned(monkeypatch)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    x = jnp.arange(3.0)
    assert jnp.array_equal(scale(x, k=2), 2 * x)
    scale(x, k=2, gpu_tuning="tuned")
    jax.jit(lambda v: scale(v, k=3))(x)
    with pytest.raises(ValueError, match="gpu_tuning must be one of"):
        scale(x, k=2, gpu_tuning="fast")
    assert seen == [("scale", tuple(sorted(HEURISTIC.items()))), ("scale", tuple(sorted(TUNED.items()))),
                    ("scale", ())]
    assert scale._cache_size() >= 2  # one program per option set, as a jit counts them


def _record_tuned(monkeypatch):
    """Spy on :func:`xla_options.jit_for` as the text side's ``tuned_jit`` calls it: (function, options)."""
    seen = []
    original = xla_options.jit_for

    def spy(fn, options=(), **kwargs):
        seen.append((fn.__name__, options))
        return original(fn, options, **kwargs)

    monkeypatch.setattr(xla_options, "jit_for", spy)
    return seen


def test_text_side_compiles_with_the_gpu_options(monkeypatch):
    """Retrieval text features and the ITM re-ranking compile with the rule apply uses (backend faked as a
    GPU): the default "heuristic", or the gpu_tuning passed; the results are those of the CPU programs."""
    import numpy as np

    from tldr_jax import retrieval as R
    from tldr_jax.retrieval.fusion import rerank

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(8)]
    text_cfg = R.TextConfig(vocab_size=len(words), hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64, max_position_embeddings=16, fusion_layer=1,
                            encoder_width=32, embed_dim=16)
    model = R.init(0, "umt_b16", text_config=text_cfg, vocab=words, **TINY)
    texts = ["w1 w2 w3", "w4"]
    tokens = np.random.default_rng(0).normal(size=(2, 5, 32)).astype(np.float32)
    sim = np.eye(2, dtype=np.float32)
    ref = R.encode_texts(model, texts, max_length=8)
    ref_i2t = rerank(model, sim, ref, tokens, 1)[0]
    seen = _record_tuned(monkeypatch)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    out = R.encode_texts(model, texts, max_length=8)
    R.encode_texts(model, texts, max_length=8, gpu_tuning="tuned")
    i2t = rerank(model, sim, out, tokens, 1, gpu_tuning="tuned")[0]
    heuristic, tuned = tuple(sorted(HEURISTIC.items())), tuple(sorted(TUNED.items()))
    assert seen == [("_encode_text", heuristic), ("_encode_text", tuned), ("_fusion_self", tuned),
                    ("_itm_groups", tuned)]
    monkeypatch.undo()
    assert jnp.allclose(out.feat, ref.feat, atol=1e-6) and np.allclose(i2t, ref_i2t, atol=1e-5)

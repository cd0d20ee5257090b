"""Shared fixtures: the golden data made by the official vid-TLDR code (``../shared/golden``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: ``../shared/golden`` beside the clone, or the folder named by ``TLDR_GOLDEN_DIR`` (e.g. a copy
#: taken to a GPU machine).
#: The CLI and run_directory turn JAX's persistent compilation cache on by default; the suite keeps it off
#: (no writes to ~/.cache, no cross-test effects) unless the caller sets the variable.
#: tests/test_compile_cache.py passes explicit folders.
os.environ.setdefault("TLDR_JAX_COMPILE_CACHE", "0")

GOLDEN_DIR = Path(
    os.environ.get("TLDR_GOLDEN_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "golden"
)

#: Whole-model parity is judged in float64 against the official code run in float64
#: (``golden_model_f64.npz``): two runs of the same algorithm agree to ~1e-13 on any machine, because
#: float64 rounding (~1e-16) stays far below the tolerance even after the saliency's amplification.
#: Float32 goldens of this tiny model are not portable: its attention is nearly uniform, so the
#: saliency's min-max normalisation divides by a score range of ~0.02 and amplifies last-ulp
#: differences of the matmuls, ``exp`` and ``log`` ~200-fold; the official code re-run in float32 on an
#: Intel CPU misses its own ``golden_model.npz`` (made on AMD) by 1.3e-5.
F64_ATOL = 1e-10

#: Outputs compared with the float64 truth (``pooled`` is stored ``(B, 1, C)``, tldr_jax gives ``(B, C)``).
OUTPUTS = ("tokens", "pooled", "size")

#: Float32 is judged against the float64 truth with the official float32 as the yardstick: per output,
#: the RMS distance to the truth over every element of every golden schedule (:func:`rms_distance`) may
#: be at most ``F32_FACTOR`` times the official float32's (:func:`official_f32_yardstick`). Not the max
#: abs per schedule: on this ill-conditioned model that statistic varies ~2.5x between correct float32
#: runs of the *same* code (the official code on one AMD EPYC with PyTorch's default / AVX2 / AVX-512
#: kernels: tokens on ``fractions`` 1.7e-5 / 8.6e-6 / 8.3e-6 from the truth, 7.3e-6 on the CPU that
#: made ``tokens_f32_here``), so a 2x bound per schedule fails the official code itself. The RMS over
#: all schedules moves ~1.5x between those runs (tokens 0.90e-6 to 1.36e-6), and so does tldr_jax's
#: float32 under XLA's AVX-512 / AVX2 / AVX / SSE4.2 code paths (0.95e-6 to 1.36e-6). A real loss of
#: precision shows at once: bfloat16 (low-precision operands, float32 accumulation) puts the tokens
#: 1.7e-2 (max abs) from the truth, several hundred times the float32 error (tests/test_precision.py).
F32_FACTOR = 2.0


def golden(name: str) -> dict[str, np.ndarray]:
    """Load ``shared/golden/<name>`` or skip the test with the reason."""
    path = GOLDEN_DIR / name
    if not path.exists():
        pytest.skip(f"golden data {path} not found (CI keeps shared/ beside the clone)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def umt_tiny_tree(state_dict: dict[str, np.ndarray], depth: int = 3) -> dict:
    """Minimal map of the official tiny UMT state dict onto our parameter tree (tests only).

    The full, checked converter lives in ``checkpoints_convert``; this keeps the model tests
    independent of it.
    """
    sd = state_dict

    def ln(pre):
        return {"scale": sd[pre + ".weight"], "bias": sd[pre + ".bias"]}

    def lin(pre):
        return {"kernel": sd[pre + ".weight"].T, "bias": sd[pre + ".bias"]}

    tree = {
        "patch_embed": {
            "proj": {
                "kernel": sd["encoder.patch_embed.proj.weight"].transpose(2, 3, 4, 1, 0),
                "bias": sd["encoder.patch_embed.proj.bias"],
            }
        },
        "norm": ln("encoder.norm"),
        "pool_norm": ln("pool_norm"),
    }
    for i in range(depth):
        b = f"encoder.blocks.{i}."
        tree[f"blocks_{i}"] = {
            "norm1": ln(b + "norm1"),
            "norm2": ln(b + "norm2"),
            "attn": {
                "qkv": {"kernel": sd[b + "attn.qkv.weight"].T},
                "q_bias": sd[b + "attn.q_bias"],
                "v_bias": sd[b + "attn.v_bias"],
                "proj": lin(b + "attn.proj"),
            },
            "mlp": {"fc1": lin(b + "mlp.fc1"), "fc2": lin(b + "mlp.fc2")},
        }
    return tree


#: The official tiny UMT's sizes. Named as the converter names a UMT of width 64 and depth 3, so that a
#: converted copy has the same config and the golden tests share their compiled programs.
UMT_TINY = dict(name="umt_w64_d3", embed_dim=64, depth=3, num_heads=2, mlp_dim=256, num_frames=4, img_size=48)


@pytest.fixture(scope="session")
def umt_golden_params():
    """``tldr_jax.Params`` holding the official tiny UMT weights (``umt_tiny.pth``)."""
    pytest.importorskip("torch")
    path = GOLDEN_DIR / "umt_tiny.pth"
    if not path.exists():
        pytest.skip(f"golden weights {path} not found")
    return load_umt_tiny(path)


def load_umt_tiny(path: Path):
    """``tldr_jax.Params`` of the official tiny UMT checkpoint at ``path`` (also used by
    ``benchmarks/golden_check.py``)."""
    import jax
    import jax.numpy as jnp
    import torch

    import tldr_jax

    sd = {k: v.numpy() for k, v in torch.load(path, weights_only=True, map_location="cpu").items()}
    params = tldr_jax.init(0, "umt_b16", **UMT_TINY)
    return params.replace(tree=jax.tree_util.tree_map(jnp.asarray, umt_tiny_tree(sd)))


@pytest.fixture(scope="session")
def golden_model():
    """Arrays of ``golden_model.npz``."""
    return golden("golden_model.npz")


@pytest.fixture(scope="session")
def golden_f64():
    """Arrays of ``golden_model_f64.npz``: the official code in float64 (the parity reference)."""
    return golden("golden_model_f64.npz")


def golden_schedules(data: dict[str, np.ndarray]) -> list[str]:
    """Schedule names present in ``golden_model.npz`` / ``golden_model_f64.npz``."""
    return sorted({k.split("/")[0] for k in data if k.endswith("/schedule")})


def golden_video(data: dict[str, np.ndarray], dtype=np.float32) -> np.ndarray:
    """The golden input ``(B, C, T, H, W)`` as tldr_jax's ``(B, T, H, W, C)`` in ``dtype``.

    The float64 file holds the float32 video widened, so both dtypes see the same pixels."""
    return data["video_bcthw"].transpose(0, 2, 3, 4, 1).astype(dtype)


def golden_schedule(data: dict[str, np.ndarray], name: str) -> tuple[float, ...]:
    """The per-layer ``r`` list of schedule ``name``."""
    return tuple(float(v) for v in data[f"{name}/schedule"])


def golden_output(data: dict[str, np.ndarray], name: str, key: str) -> np.ndarray:
    """Output ``key`` of schedule ``name`` in tldr_jax's layout (``pooled`` ``(B, C)``)."""
    ref = data[f"{name}/{key}"]
    return ref[:, 0] if key == "pooled" else ref


def as_float64(params):
    """``params`` with every leaf cast to float64 (call under ``jax.enable_x64``); the copies are fresh,
    uncommitted arrays whatever the originals were (loaded ones are committed to a device), so every
    copy of the same weights shares compiled programs."""
    import jax
    import jax.numpy as jnp

    return params.replace(
        tree=jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params.tree)
    )


def assert_float64_parity(out, truth: dict[str, np.ndarray], name: str) -> None:
    """tokens, pooled and sizes of a float64 ``tldr_jax.Output`` within :data:`F64_ATOL` of the truth."""
    for key in OUTPUTS:
        got = np.asarray(getattr(out, key))
        assert got.dtype == np.float64, (name, key, got.dtype)
        np.testing.assert_allclose(got, golden_output(truth, name, key), atol=F64_ATOL, rtol=0,
                                   err_msg=f"{name}/{key}")


def rms_distance(outputs: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output, the root mean square of ``output - truth`` over every element of every schedule.

    Args:
      outputs: ``{schedule: {"tokens": (B, N', C), "pooled": (B, C), "size": (B, N', 1)}}``.
      truth: the arrays of ``golden_model_f64.npz``.

    Returns:
      ``{"tokens": rms, "pooled": rms, "size": rms}`` (only the keys present in ``outputs``).
    """
    keys = [k for k in OUTPUTS if all(k in row for row in outputs.values())]
    result = {}
    for key in keys:
        diffs = [np.asarray(row[key], np.float64) - golden_output(truth, name, key)
                 for name, row in outputs.items()]
        result[key] = float(np.sqrt(np.mean(np.concatenate([d.ravel() for d in diffs]) ** 2)))
    return result


def official_f32_yardstick(
    truth: dict[str, np.ndarray], official_f32: dict[str, np.ndarray]
) -> dict[str, float]:
    """How far the official code's own float32 runs are from the float64 truth (see :func:`rms_distance`).

    Two official float32 runs are held, made on different CPUs: ``golden_model.npz`` (tokens, pooled,
    sizes) and ``S/tokens_f32_here`` in the float64 file (tokens only). Per output the yardstick is the
    larger of the runs that have it: the official float32 error as it shows on an x86 CPU.
    """
    names = golden_schedules(truth)
    runs = [{n: {k: golden_output(official_f32, n, k) for k in OUTPUTS} for n in names},
            {n: {"tokens": truth[f"{n}/tokens_f32_here"]} for n in names}]
    dists = [rms_distance(run, truth) for run in runs]
    return {k: max(d[k] for d in dists if k in d) for k in OUTPUTS}


@pytest.fixture(scope="module")
def counter_video(tmp_path_factory):
    """A 30-frame mp4 whose grey level encodes the frame index (8 * i); needs PyAV."""
    pytest.importorskip("av")
    from tldr_jax import video as V

    frames = np.repeat((8 * np.arange(30, dtype=np.uint8))[:, None, None, None], 3, axis=-1)
    frames = np.broadcast_to(frames, (30, 48, 64, 3)).copy()
    return V.write_video(tmp_path_factory.mktemp("vid") / "counter.mp4", frames, fps=10)


# --------------------------------------------------------------------------------------------------
# Fine-tuning: one tiny classifier and one synthetic labelled task shared by the train and CLI tests.
# --------------------------------------------------------------------------------------------------

#: Every fine-tuning test shares one tiny architecture and one set of step settings, so the train and
#: eval steps compile once (the linear-probe test compiles its own).
FT_TINY = dict(depth=2, num_heads=2, embed_dim=32, mlp_dim=64, num_frames=4, img_size=32, patch_size=8)
FT_CLASSES = 4
FT_SETTINGS = dict(
    batch_size=16,
    lr=3e-3,
    warmup_epochs=1.0,
    weight_decay=0.05,
    layer_decay=0.9,
    label_smoothing=0.1,
    train_r=8,
    eval_r=8,
    method="vid_tldr",
    workers=2,
    progress=False,
)


@pytest.fixture(scope="session")
def ft_params():
    """A random tiny VideoMAE-layout classifier with a 4-way head (32 tokens; r=8: 32 -> 24 -> 16)."""
    import tldr_jax

    return tldr_jax.init(0, "videomae_s", num_classes=FT_CLASSES, **FT_TINY)


@pytest.fixture(scope="session")
def motion_folders(tmp_path_factory):
    """Train/val class folders of .npy clips (up/down/left/right), with two unreadable train files."""
    from tldr_jax.train import data

    root = tmp_path_factory.mktemp("motion")
    videos, labels, classes = data.moving_square(256, num_classes=FT_CLASSES, seed=0)
    data.save_npy_folder(root / "train", videos, labels, classes)
    videos, labels, classes = data.moving_square(64, num_classes=FT_CLASSES, seed=1)
    data.save_npy_folder(root / "val", videos, labels, classes)
    (root / "train" / "left" / "corrupt.npy").write_bytes(b"this is not a numpy file")
    (root / "train" / "up" / "broken.mp4").write_bytes(b"\x00\x01 not a video")
    return root


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every XLA CPU executable keeps about a dozen memory mappings of its code alive while a jit cache holds
    it; one process compiling the thousands of programs of the whole suite passed Linux's default limit
    of 65530 mappings (``vm.max_map_count``), after which LLVM's code allocation crashed the process in a
    later compile (a segfault inside ``backend_compile_and_load``). Clearing the caches between modules
    unmaps them (measured: 300 small programs 434 -> 3697 mappings, 514 after ``jax.clear_caches()``).
    """
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


# --------------------------------------------------------------------------------------------------
# Two processes: pyproject's addopts run the suite as `-n auto --dist loadgroup --no-loadscope-reorder`
# (pytest-xdist). Nearly every test is bound by XLA's single-threaded compile, so two workers on two
# cores take about half the time of one process.
# --------------------------------------------------------------------------------------------------

#: Worker processes for a run of whole folders (the suite): two, the CI machine's cores.
WORKERS = 2


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many workers ``-n auto`` starts: :data:`WORKERS` for the suite, none for a few tests.

    A run of the whole suite (no paths, or only folders) gets two workers (one where the machine has
    one core). A run naming test files or tests (``pytest tests/test_api.py -k jit``) stays in this
    process: two workers would each import JAX, PyTorch and the test modules first, several times the
    cost of a handful of tests. ``-n N`` on the command line, or ``PYTEST_XDIST_AUTO_NUM_WORKERS``, sets
    the number outright.

    Returns:
      the number of workers; 0 runs the tests in this process.
    """
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if env:
        return int(env)
    whole = config.args_source == pytest.Config.ArgsSource.TESTPATHS or all(
        Path(arg.split("::")[0]).is_dir() for arg in config.args
    )
    return min(WORKERS, os.cpu_count() or 1) if whole and (os.cpu_count() or 1) > 1 else 0

#: Files handed out first, longest first (per-file CPU seconds measured on the 2-core CI machine): the
#: workers take one file at a time, and a long file taken last would run alone at the end.
LONG_FILES = (
    "test_flops_xla.py",
    "test_search_concurrency.py",
    "test_search_ray.py",
    "test_train_loop.py",
    "test_qa_golden.py",
)

#: Files whose tests are handed out one by one, not as a whole file: a few long, independent tests
#: behind cheap fixtures (each one starts a notebook kernel or the console command in subprocesses).
SPLIT_FILES = ("test_notebooks.py", "test_cli_interrupt.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker, keep each test file on one worker and put the long files first.

    ``--dist loadgroup`` hands out tests one by one unless they share an ``xdist_group`` mark; a file
    spread over both workers would build its module fixtures (compiled models, indexes, fine-tuning
    runs) in each. So every test without a group of its own gets its file as group (except in
    :data:`SPLIT_FILES`; an explicit ``xdist_group`` mark still joins tests of several files).
    Both workers collect, and sort, the same list. Runs without xdist (``-n 0``, ``-p no:xdist``)
    are left as collected.
    """
    if not hasattr(config, "workerinput") or not config.getoption("loadgroup", False):  # set in workers
        return
    for item in items:
        name = item.path.name
        if name not in SPLIT_FILES and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(name))
    rank = {name: i for i, name in enumerate(SPLIT_FILES + LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise kept


# The UMT retrieval golden data and its converted model, shared (session-scoped) by the multi-modal test
# files; defined in retrieval_fixtures.py.
# The UMT-QA / multiple-choice golden data and its converted models (issue 27); defined in qa_fixtures.py.
from qa_fixtures import f32_qa_runs, mc_model, qa_gold, qa_model, qa_model_dir  # noqa: E402, F401
from retrieval_fixtures import clip_dir, f32_runs, f64, gold, model, model_dir  # noqa: E402, F401

"""tldr_jax: training-free token merging (vid-TLDR, ToMe) for video transformers in JAX/Flax.

The names here are those the README and the getting-started page teach; everything else stays importable
from its module (``tldr_jax.merge``, ``tldr_jax.schedule``, ``tldr_jax.video``, ``tldr_jax.train``, ...).
"""

from tldr_jax import options
from tldr_jax.api import Output, Params, apply, cast, init, schedule
from tldr_jax.batch import RunSummary, run_directory
from tldr_jax.checkpoint import CheckpointError, save
from tldr_jax.compile_cache import enable_compile_cache
from tldr_jax.configs import ARCHS
from tldr_jax.flops import flops, flops_breakdown, gflops, solve_schedule
from tldr_jax.loading import load
from tldr_jax.merge import (
    MergePlan,
    TokenOrigin,
    apply_plan,
    bipartite_plan,
    merge_source,
    merge_tokens,
    merge_wavg,
    unmerge,
)
from tldr_jax.options import AttentionTuning
from tldr_jax.parallel import make_mesh, sharded_apply
from tldr_jax.saliency import saliency, saliency_from_sharpness, sharpness
from tldr_jax.schedule import PRESETS, ScheduleCapWarning
from tldr_jax.train import LabelMismatchError, finetune
from tldr_jax.version import __version__
from tldr_jax.video import load_video, preprocess

#: Sub-packages imported on first use (``tldr_jax.retrieval``, ...): not to break an import loop (imports
#: only run down, none of them imports this package) but to keep ``import tldr_jax`` as light as the vision
#: path needs; the text side (tokenizer, BERT tower) and the search engine are loaded when first named.
_ON_FIRST_USE = ("retrieval", "search")


def __getattr__(name: str) -> object:
    """``tldr_jax.retrieval`` / ``tldr_jax.search``: imported on first use (see :data:`_ON_FIRST_USE`)."""
    if name in _ON_FIRST_USE:
        import importlib

        return importlib.import_module(f"tldr_jax.{name}")
    raise AttributeError(f"module 'tldr_jax' has no attribute {name!r}")


__all__ = [
    "ARCHS",
    "__version__",
    "AttentionTuning",
    "PRESETS",
    "CheckpointError",
    "LabelMismatchError",
    "MergePlan",
    "Output",
    "Params",
    "RunSummary",
    "ScheduleCapWarning",
    "TokenOrigin",
    "apply",
    "apply_plan",
    "bipartite_plan",
    "cast",
    "enable_compile_cache",
    "finetune",
    "flops",
    "flops_breakdown",
    "gflops",
    "init",
    "load",
    "load_video",
    "make_mesh",
    "merge_source",
    "merge_tokens",
    "merge_wavg",
    "options",
    "preprocess",
    "retrieval",
    "run_directory",
    "save",
    "saliency",
    "saliency_from_sharpness",
    "schedule",
    "sharded_apply",
    "sharpness",
    "solve_schedule",
    "unmerge",
]

"""tldr_jax: training-free token merging (vid-TLDR, ToMe) for video transformers in JAX/Flax."""

from tldr_jax.api import Output, Params, apply, build, check_video, init, schedule
from tldr_jax.batch import RunSummary, run_directory
from tldr_jax.checkpoint import CheckpointError, load, read_info, save
from tldr_jax.configs import ARCHS, ArchConfig, get_config
from tldr_jax.data import ArrayDataset, FolderDataset
from tldr_jax.flops import flops, flops_breakdown, gflops, solve_schedule
from tldr_jax.merge import (
    MergePlan,
    ScheduleCapWarning,
    TokenOrigin,
    apply_plan,
    bipartite_plan,
    destination_index,
    identity_origin,
    identity_source,
    merge_source,
    merge_tokens,
    merge_wavg,
    origin_to_dense,
    resolve_r,
    unmerge,
    update_origin,
)
from tldr_jax.parallel import make_mesh, replicate, shard_batch, sharded_apply
from tldr_jax.saliency import saliency, saliency_from_sharpness, sharpness
from tldr_jax.schedule import PRESETS, Schedule, preset_names, resolve_schedule
from tldr_jax.train import FinetuneConfig, FinetuneResult, LabelMismatchError, evaluate, finetune
from tldr_jax.video import VideoReadError, VideoReadWarning, default_clip, load_video, preprocess

__version__ = "0.1.0"

__all__ = [
    "RunSummary",
    "make_mesh",
    "replicate",
    "run_directory",
    "shard_batch",
    "sharded_apply",
    "ArrayDataset",
    "FinetuneConfig",
    "FinetuneResult",
    "FolderDataset",
    "LabelMismatchError",
    "evaluate",
    "finetune",
    "ARCHS",
    "PRESETS",
    "ArchConfig",
    "CheckpointError",
    "MergePlan",
    "Output",
    "Params",
    "Schedule",
    "ScheduleCapWarning",
    "TokenOrigin",
    "VideoReadError",
    "VideoReadWarning",
    "apply",
    "apply_plan",
    "bipartite_plan",
    "build",
    "check_video",
    "default_clip",
    "destination_index",
    "flops",
    "flops_breakdown",
    "get_config",
    "gflops",
    "identity_origin",
    "identity_source",
    "init",
    "load",
    "load_video",
    "merge_source",
    "merge_tokens",
    "merge_wavg",
    "origin_to_dense",
    "preset_names",
    "preprocess",
    "read_info",
    "resolve_r",
    "resolve_schedule",
    "save",
    "saliency",
    "saliency_from_sharpness",
    "schedule",
    "sharpness",
    "solve_schedule",
    "unmerge",
    "update_origin",
]

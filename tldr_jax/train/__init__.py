"""Fine-tuning with token merging active (VideoMAE's recipe), resumable, with a best-model export.

* :mod:`~tldr_jax.train.config`: :class:`FinetuneConfig`, the one list of hyper-parameters;
* :mod:`~tldr_jax.train.data`: labelled clip datasets, batching, a synthetic task;
* :mod:`~tldr_jax.train.optim`: AdamW, weight-decay mask, layer-wise decay, warm-up + cosine;
* :mod:`~tldr_jax.train.step`: the compiled train and evaluation steps;
* :mod:`~tldr_jax.train.heads`: fitting the classifier head to a label set;
* :mod:`~tldr_jax.train.state_io`: orbax train-state checkpoints and the model export;
* :mod:`~tldr_jax.train.chrono`: run timing and progress;
* :mod:`~tldr_jax.train.loop`: :func:`finetune` and :func:`evaluate`.

Python API::

    result = tldr_jax.finetune(params, "data/train", "data/val", ckpt_dir="runs/a/state",
                               export="runs/a/best", epochs=10, train_r=8, new_head=True)

Command line: ``tldr-jax finetune MODEL TRAIN_DIR --out DIR`` (:mod:`tldr_jax.cli.finetune`).
"""

from tldr_jax.train.config import FinetuneConfig, StepSpec
from tldr_jax.train.heads import LabelMismatchError, prepare_head
from tldr_jax.train.loop import FinetuneResult, evaluate, finetune
from tldr_jax.train.optim import decay_mask, layer_id, layer_scales, lr_at, make_optimizer
from tldr_jax.train.step import TrainState, eval_step, train_step

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "LabelMismatchError",
    "StepSpec",
    "TrainState",
    "decay_mask",
    "eval_step",
    "evaluate",
    "finetune",
    "layer_id",
    "layer_scales",
    "lr_at",
    "make_optimizer",
    "prepare_head",
    "train_step",
]

"""The fine-tuning loop: it only orchestrates (data, compiled steps, evaluation, checkpoints, export).

Everything that changes during training lives in one :class:`~tldr_jax.train.step.TrainState`,
saved by an orbax ``CheckpointManager`` together with a JSON record (epoch, position in the epoch,
seed, best top-1, evaluation history, skipped clips). The data order is a function of ``(seed,
epoch)`` and the learning rate a function of the step, so a resumed run repeats exactly what an
uninterrupted run does. The best parameters by evaluation top-1 are exported with
:func:`tldr_jax.checkpoint.save` (the format :func:`tldr_jax.load` reads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.api import Params
from tldr_jax.configs import ArchConfig
from tldr_jax.prefetch import prefetch
from tldr_jax.schedule import RSpec
from tldr_jax.train.chrono import Chrono
from tldr_jax.train.config import FinetuneConfig, StepSpec, freeze_r
from tldr_jax.train.data import ClipDataset, as_dataset, batch_slices, epoch_order, load_batch, split
from tldr_jax.train.heads import LabelMismatchError, prepare_head
from tldr_jax.train.state_io import StateCheckpoints, export_model
from tldr_jax.train.step import TrainState, device_batch, eval_step, train_step

__all__ = ["FinetuneResult", "evaluate", "finetune"]


# --------------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------------


def _evaluate_tree(
    tree: dict[str, Any], dataset: ClipDataset, spec: StepSpec, batch_size: int, pool: ThreadPoolExecutor
) -> dict[str, float]:
    sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    order = np.arange(len(dataset))
    for sl in batch_slices(len(dataset), batch_size, drop_last=False):
        batch = load_batch(dataset, order[sl], batch_size, pool)
        out = jax.device_get(eval_step(tree, device_batch(batch), spec=spec))
        for key in sums:
            sums[key] += float(out[key])
    n = max(sums["count"], 1.0)
    return {
        "top1": sums["top1"] / n,
        "top5": sums["top5"] / n,
        "loss": sums["loss"] / n,
        "count": int(sums["count"]),
    }


def evaluate(
    params: Params,
    data: Any,
    r: RSpec = 0,
    *,
    batch_size: int = 8,
    workers: int = 4,
    method: str = "vid_tldr",
    pool: str = "mean",
    dtype: str | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy of a classifier on a labelled dataset.

    Args:
      params: a classifier (``params.config.num_classes`` must equal the dataset's class count).
      data: a dataset, ``(videos, labels)`` or a labelled-video folder.
      r: the merge schedule, as in :func:`tldr_jax.apply`.
      method: ``"vid_tldr"`` or ``"tome"``, as there.
      pool: the pooling, as there.
      dtype: the compute dtype, as there.
      batch_size: evaluation batch size.
      workers: video decoding threads.

    Returns:
      ``{"top1", "top5", "loss", "count"}`` (unreadable clips are skipped and reported in
      ``dataset.skipped``; ``count`` is the number of clips evaluated).
    """
    dataset = as_dataset(data, params)
    params = prepare_head(params, dataset.classes, new_head=False)
    fc = FinetuneConfig(method=method, pool=pool, dtype=dtype, progress=False)
    spec = StepSpec.from_config(params.config, fc, freeze_r(r)).for_eval()
    with ThreadPoolExecutor(workers) as threads:
        return _evaluate_tree(params.tree, dataset, spec, batch_size, threads)


# --------------------------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
      params: the final :class:`Params` (``labels`` = the dataset's classes).
      best_params: the best parameters by evaluation top-1 of this process (host copy), or None
        without validation data.
      best_top1: the best evaluation top-1 over the whole run.
      best_step: the step it was reached at.
      history: one dict per evaluation (``epoch``, ``step``, ``top1``, ``top5``, ``loss``, ``count``,
        ``train_loss``, ``train_acc``).
      steps: steps taken in total.
      total_steps: steps of the whole run.
      resumed_from: the step this call resumed from, or None.
      skipped: unreadable clips (name -> reason) met by this process.
      export_path: where the best (or, without validation data, the final) model was exported.
      clips_per_s: training throughput of this call (first, compiling step excluded).
    """

    params: Params
    best_params: Params | None
    best_top1: float
    best_step: int
    history: list[dict[str, Any]]
    steps: int
    total_steps: int
    resumed_from: int | None
    skipped: dict[str, str]
    export_path: Path | None
    clips_per_s: float


def _resolve_data(
    params: Params, train: Any, val: Any, val_fraction: float | None, seed: int, folder_kwargs: dict[str, Any]
) -> tuple[ClipDataset, ClipDataset | None]:
    """The training and validation datasets (a stratified split of ``train`` when asked)."""
    train_ds = as_dataset(train, params, **folder_kwargs)
    val_ds = as_dataset(val, params, **folder_kwargs) if val is not None else None
    if val_ds is None and val_fraction:
        train_ds, val_ds = split(train_ds, val_fraction, seed)
    if val_ds is not None and tuple(val_ds.classes) != tuple(train_ds.classes):
        raise LabelMismatchError(
            f"validation classes {list(val_ds.classes)} differ from training classes "
            f"{list(train_ds.classes)}; both folders need the same class sub-folders."
        )
    if len(train_ds) == 0:
        raise ValueError("the training set is empty.")
    return train_ds, val_ds


def _check_resume(record: dict[str, Any], fingerprint: dict[str, Any], ckpt_dir: Any) -> None:
    """Refuse to resume a run made with other settings (it would not repeat that run)."""
    saved = record.get("fingerprint", {})
    diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"the checkpoint in {str(ckpt_dir)!r} is from a run with different settings ({details}); "
            "resuming would not repeat that run. Use the same settings, or a new ckpt_dir to start afresh."
        )


def _skipped(*datasets: ClipDataset | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for ds in datasets:
        if ds is not None:
            out.update(ds.skipped)
    return out


def _fresh_record() -> dict[str, Any]:
    """The JSON part of the train state (everything but arrays)."""
    return {
        "best_top1": -1.0,
        "best_step": -1,
        "history": [],
        "export": None,
        "epoch_stats": {"loss_sum": 0.0, "steps": 0, "correct": 0.0, "count": 0.0},
    }


def _accumulate(stats: dict[str, float], metrics: dict[str, Any]) -> None:
    stats["loss_sum"] += float(metrics["loss"])
    stats["steps"] += 1
    stats["correct"] += float(metrics["correct"])
    stats["count"] += float(metrics["count"])


def _epoch_summary(stats: dict[str, float]) -> dict[str, float]:
    return {
        "train_loss": stats["loss_sum"] / max(stats["steps"], 1),
        "train_acc": stats["correct"] / max(stats["count"], 1.0),
    }


def _format_eval(entry: dict[str, Any]) -> str:
    return (
        f"epoch {entry['epoch']}: val top-1 {entry['top1']:.4f} top-5 {entry['top5']:.4f} "
        f"loss {entry['loss']:.4f} (train loss {entry['train_loss']:.4f}, acc {entry['train_acc']:.4f})"
    )


def _is_live(state: TrainState) -> bool:
    """False when ``state``'s buffers were donated to a step that did not finish."""
    return not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree_util.tree_leaves(state))


def _check_clip_shape(dataset: ClipDataset, cfg: ArchConfig, what: str) -> None:
    want = (cfg.num_frames, cfg.img_size, cfg.img_size, cfg.in_chans)
    if tuple(dataset.clip_shape) != want:
        raise ValueError(
            f"{what} clips are {tuple(dataset.clip_shape)} (T, H, W, C) but the model needs {want}; "
            "resample/resize the clips (FolderDataset does it for video files) or build the model for them."
        )


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The fixed shape of a run: steps, learning-rate schedule, compiled-step specs, fingerprint."""

    steps_per_epoch: int
    total: int
    schedule: jax.Array  # [peak lr, min lr, warm-up steps, total steps]
    spec: StepSpec
    eval_spec: StepSpec
    save_every: int
    fingerprint: dict[str, Any]

    @classmethod
    def make(cls, fc: FinetuneConfig, cfg: ArchConfig, train_ds: ClipDataset) -> _Plan:
        """The plan of ``fc`` for a model ``cfg`` on ``train_ds``."""
        steps_per_epoch = len(batch_slices(len(train_ds), fc.batch_size, drop_last=True))
        total = fc.epochs * steps_per_epoch
        warmup = int(round(fc.warmup_epochs * steps_per_epoch))
        return cls(
            steps_per_epoch=steps_per_epoch,
            total=total,
            schedule=jnp.asarray([fc.lr, fc.min_lr, warmup, total], jnp.float32),
            spec=StepSpec.from_config(cfg, fc, fc.train_r),
            eval_spec=StepSpec.from_config(cfg, fc, fc.resolved_eval_r).for_eval(),
            save_every=fc.save_every or steps_per_epoch,
            fingerprint=fc.fingerprint() | {"classes": list(train_ds.classes), "train_size": len(train_ds)},
        )


class _Run:
    """The mutable state of one :func:`finetune` call: train state, JSON record, best model, clock."""

    def __init__(self, fc: FinetuneConfig, plan: _Plan, train_ds: ClipDataset, val_ds: ClipDataset | None,
                 params: Params, ckpt_dir: Any, export_to: Any, log: Callable[[str], None] | None):
        self.fc, self.plan, self.train_ds, self.val_ds = fc, plan, train_ds, val_ds
        self.cfg, self.classes = params.config, tuple(train_ds.classes)
        self.ckpt_dir, self.export_to = ckpt_dir, export_to
        self.ckpts = StateCheckpoints(ckpt_dir, fc.max_to_keep) if ckpt_dir is not None else None
        self.state, self.record = TrainState.create(params.tree, plan.spec), _fresh_record()
        self.resumed_from: int | None = None
        if self.ckpts is not None and self.ckpts.latest_step() is not None:
            self.resumed_from = int(self.ckpts.latest_step())
            self.state, saved = self.ckpts.restore(self.resumed_from, self.state)
            _check_resume(saved, plan.fingerprint, ckpt_dir)
            self.record.update({k: saved.get(k, v) for k, v in _fresh_record().items()})
        self.step, self.saved_at = int(self.state.step), self.resumed_from
        self.best_params: Params | None = None
        self.chrono = Chrono(plan.total, self.step, progress=fc.progress, log=log)

    def batch_for(self, at: int, threads: ThreadPoolExecutor) -> Any:
        """The training batch of global step ``at`` (a function of the seed, the epoch and the step)."""
        epoch, pos = divmod(at, self.plan.steps_per_epoch)
        sl = batch_slices(len(self.train_ds), self.fc.batch_size, drop_last=True)[pos]
        order = epoch_order(len(self.train_ds), self.fc.seed, epoch)
        return load_batch(self.train_ds, order[sl], self.fc.batch_size, threads)

    def train(self, batch: Any) -> None:
        """One compiled train step, counted in the epoch statistics and the clock."""
        plan = self.plan
        self.state, metrics = train_step(self.state, device_batch(batch), plan.schedule, spec=plan.spec)
        metrics = jax.device_get(metrics)
        self.step += 1
        _accumulate(self.record["epoch_stats"], metrics)
        self.chrono.step(metrics)

    def end_epoch(self, threads: ThreadPoolExecutor) -> None:
        """Close an epoch: its training statistics, an evaluation when due, the best model's export."""
        epoch = self.step // self.plan.steps_per_epoch
        summary = _epoch_summary(self.record["epoch_stats"])
        self.record["epoch_stats"] = _fresh_record()["epoch_stats"]
        if self.val_ds is None or not (epoch % self.fc.eval_every == 0 or self.step == self.plan.total):
            return
        ev = _evaluate_tree(self.state.tree, self.val_ds, self.plan.eval_spec, self.fc.batch_size, threads)
        entry = {"epoch": epoch, "step": self.step, **ev, **summary}
        self.record["history"].append(entry)
        self.chrono.log(_format_eval(entry))
        if ev["top1"] > self.record["best_top1"]:
            self.record["best_top1"], self.record["best_step"] = ev["top1"], self.step
            self.best_params = Params(jax.device_get(self.state.tree), self.cfg, self.classes)
            if self.export_to is not None:
                self.record["export"] = str(export_model(self.best_params, self.export_to, entry))

    def save(self) -> None:
        """Save the train state and the record at the current step."""
        epoch, pos = divmod(self.step, self.plan.steps_per_epoch)
        extra = {"step": self.step, "epoch": epoch, "position": pos, "seed": self.fc.seed,
                 "total_steps": self.plan.total, "fingerprint": self.plan.fingerprint,
                 "skipped": _skipped(self.train_ds, self.val_ds)}
        self.ckpts.save(self.step, self.state, self.record | extra)
        self.saved_at = self.step

    def save_on_interrupt(self, consistent: bool) -> None:
        """After Ctrl-C: save the last finished step (when state and record agree), say where to resume."""
        if self.ckpts is None:
            return
        if consistent and _is_live(self.state) and self.saved_at != self.step:
            self.save()
        where = f"step {self.saved_at}" if self.saved_at is not None else "the start (nothing saved yet)"
        self.chrono.log(f"interrupted: rerunning resumes from {where} in {self.ckpt_dir}.")

    def result(self) -> FinetuneResult:
        """The :class:`FinetuneResult` (without validation data, the final model is exported)."""
        final = Params(self.state.tree, self.cfg, self.classes)
        if self.val_ds is None and self.export_to is not None and self.step == self.plan.total:
            meta = {"step": self.step, "epoch": self.fc.epochs}
            self.record["export"] = str(export_model(final, self.export_to, meta))
        skipped = _skipped(self.train_ds, self.val_ds)
        if skipped:
            self.chrono.log(
                f"skipped {len(skipped)} unreadable clip(s): "
                + "; ".join(f"{k} ({v})" for k, v in skipped.items())
            )
        return FinetuneResult(
            params=final,
            best_params=self.best_params,
            best_top1=float(self.record["best_top1"]),
            best_step=int(self.record["best_step"]),
            history=list(self.record["history"]),
            steps=self.step,
            total_steps=self.plan.total,
            resumed_from=self.resumed_from,
            skipped=skipped,
            export_path=Path(self.record["export"]) if self.record["export"] else None,
            clips_per_s=self.chrono.clips_per_s,
        )


def finetune(
    params: Params,
    train: Any,
    val: Any = None,
    *,
    config: FinetuneConfig | None = None,
    ckpt_dir: str | Path | None = None,
    export: str | Path | None = None,
    val_fraction: float | None = None,
    stop_at: int | None = None,
    folder_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune a video classifier with token merging active.

    Args:
      params: the starting model (:func:`tldr_jax.load`, :func:`tldr_jax.init` or the converter).
      train: a labelled-video folder, a ``(videos, labels[, classes])`` tuple or a dataset
        (:mod:`tldr_jax.train.data`).
      val: the same kinds, or None.
      config: a :class:`~tldr_jax.train.config.FinetuneConfig` (default: its defaults).
      ckpt_dir: orbax train-state directory. A run with a checkpoint there resumes from its latest
        step and repeats exactly what an uninterrupted run does (same settings required).
      export: where the best model by validation top-1 is written with
        :func:`tldr_jax.checkpoint.save` (without validation data: the final model).
      val_fraction: without ``val``, hold out this (stratified) fraction of ``train``.
      stop_at: stop once the global step reaches this (after saving the train state); resume later.
      folder_kwargs: :func:`tldr_jax.video.preprocessing_for` overrides for folder datasets
        (``sampling``, ...).
      log: where evaluation lines go (default: ``tqdm.write`` when ``progress``, else nowhere).
      **overrides: fields of ``config`` to replace (``epochs=5, train_r=8``).

    Returns:
      :class:`FinetuneResult`.

    Raises:
      LabelMismatchError: the head does not fit the label set and ``new_head`` is False.
      ~tldr_jax.train.data.EmptyClassError: a class folder has no clips.
    """
    fc = (config or FinetuneConfig()).replace(**overrides)
    train_ds, val_ds = _resolve_data(params, train, val, val_fraction, fc.seed, folder_kwargs or {})
    params = prepare_head(
        params, train_ds.classes, new_head=fc.new_head, seed=fc.seed, init_std=fc.head_init_std
    )
    for what, ds in (("training", train_ds), ("validation", val_ds)):
        if ds is not None:
            _check_clip_shape(ds, params.config, what)
    plan = _Plan.make(fc, params.config, train_ds)
    run = _Run(fc, plan, train_ds, val_ds, params, ckpt_dir, export, log)
    consistent = True  # the train state and the record describe the same step (safe to save)
    with ThreadPoolExecutor(fc.workers) as threads:
        last = plan.total if stop_at is None else min(plan.total, stop_at)
        # The next step's batch is built in a background thread while this step trains.
        batches = prefetch(lambda at: run.batch_for(at, threads), range(run.step, last), workers=1, depth=1)
        try:
            for batch in batches:
                consistent = False
                run.train(batch)
                if run.step % plan.steps_per_epoch == 0:
                    run.end_epoch(threads)
                if run.ckpts is not None and (
                    run.step % plan.save_every == 0 or run.step in (plan.total, stop_at)
                ):
                    run.save()
                consistent = True
        except KeyboardInterrupt:
            run.save_on_interrupt(consistent)
            raise
        finally:
            run.chrono.close()
            batches.close()
            if run.ckpts is not None:
                run.ckpts.close()
    return run.result()

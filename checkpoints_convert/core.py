"""The vision converter: state dict -> :class:`~tldr_jax.api.Params`, and file -> checkpoint directory.

The converters of other kinds build on this one (:mod:`checkpoints_convert.retrieval` converts the
vision tower of a retrieval checkpoint through :func:`convert_state_dict_detailed`); which converter a
source goes to is decided in :mod:`checkpoints_convert.dispatch`, above them all.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from checkpoints_convert import formats, readers
from checkpoints_convert import recorded as rec_mod
from checkpoints_convert.common import (
    file_records,
    ignore_rules,
    output_path,
    report_lines,
    section,
    write_output,
)
from checkpoints_convert.errors import ConversionError
from checkpoints_convert.rules import SINCOS_POS_EMBED, Mapped, apply_table
from tldr_jax.api import Params
from tldr_jax.checkpoint import expected_shapes, save, unflatten_tree
from tldr_jax.configs import ArchConfig
from tldr_jax.models import sinusoid_table

AUTO_PROGRESS_BYTES = 256 << 20  # show a progress bar by default above this size (on a terminal)
SINCOS_ATOL = 1e-4  # a stored pos_embed within this of the recomputed table is the fixed table


@dataclasses.dataclass
class Conversion:
    """A finished conversion.

    Attributes:
      params: the converted :class:`~tldr_jax.api.Params`.
      format: the source format id (see :data:`checkpoints_convert.formats.FORMATS`).
      origin: the source file / directory / ``hf:`` name.
      num_tensors: tensors in the source state dict.
      dropped: drop-group description -> dropped source keys.
      notes: other things the conversion decided (verified/synthesised entries, ...).
      out: the checkpoint directory written, when converting to disk.
      assumed: the sizes no flag and no file recorded (``"12 heads"``), named by the summary.
    """

    params: Params
    format: str
    origin: str
    num_tensors: int
    dropped: dict[str, list[str]]
    notes: list[str]
    out: Path | None = None
    assumed: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        """One line: source, format, architecture, size and destination."""
        cfg = self.params.config
        parts = [
            cfg.family,
            f"depth {cfg.depth}",
            f"width {cfg.embed_dim}",
            f"{cfg.num_heads} heads",
            f"{cfg.num_frames} frames{' (fixed: learned pos_embed)' if cfg.pos_embed == 'learned' else ''} "
            f"@ {cfg.img_size}px",
            f"{self.params.num_params() / 1e6:.2f}M params",
        ]
        if cfg.num_classes:
            parts.append(f"{cfg.num_classes} classes")
        if cfg.vision_proj_dim:
            parts.append(f"vision_proj {cfg.vision_proj_dim}")
        n_dropped = sum(len(v) for v in self.dropped.values())
        dest = f" -> {self.out}" if self.out is not None else ""
        return (
            f"converted {self.origin} ({self.format}, {self.num_tensors} tensors, {n_dropped} dropped)"
            f"{dest}: {cfg.name} [{', '.join(parts)}]{assumed_text(self.assumed)}"
        )

    def report_lines(self) -> list[str]:
        """What was dropped and decided, one line each (printed unless ``verbose=False``)."""
        return report_lines(self.dropped, self.notes)


def assumed_text(assumed: list[str]) -> str:
    """The summary's words for the sizes nothing recorded (empty when every size was given)."""
    if not assumed:
        return ""
    return (f"; assumed (recorded nowhere): {', '.join(assumed)}: pass --num-heads / --num-frames / "
            "--img-size if the model differs")


# --------------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------------


def _as_dict(hf_config: Any) -> dict[str, Any] | None:
    if hf_config is None or isinstance(hf_config, dict):
        return hf_config
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"hf_config must be a dict or a transformers config; got {type(hf_config).__name__}.")


def _progress_fn(
    enabled: bool | None, state: Mapping[str, Any]
) -> Callable[[Iterable[str]], Iterable[str]] | None:
    if enabled is None:
        total = sum(int(np.prod(np.shape(v))) * 4 for v in state.values())
        enabled = sys.stderr.isatty() and total >= AUTO_PROGRESS_BYTES
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return functools.partial(tqdm, total=len(state), desc="converting", unit="tensor", leave=False)


def _head_rules(
    fmt: formats.Format, state: Mapping[str, Any], opts: formats.Options
) -> list[tuple[str, str]]:
    if opts.num_classes != 0:
        return []
    return [
        (re.escape(k) + "$", "classifier head (removed by num_classes=0)")
        for k in fmt.head_keys
        if k in state
    ]


def _sincos_deviation(
    fmt: str, state: Mapping[str, Any], user_drops: list[tuple[str, str]], origin: str
) -> tuple[tuple[int, int, int], float] | None:
    """Shape and max deviation of a VideoMAE ``pos_embed (1, N, D)`` from the fixed sinusoid table.

    None when there is no table to judge: another format, no ``pos_embed``, or dropped by ``--ignore``.
    """
    if fmt != "videomae_pth" or "pos_embed" not in state:
        return None
    if any(re.match(p, "pos_embed") for p, _ in user_drops):
        return None
    arr = readers.to_numpy(state["pos_embed"], "pos_embed")
    if arr.ndim != 3 or arr.shape[0] != 1:
        raise ConversionError(f"{origin}: pos_embed has shape {arr.shape}; expected (1, N, D).")
    _, n, d = arr.shape
    return (1, n, d), float(np.max(np.abs(arr[0] - sinusoid_table(n, d))))


def _pos_embed_notes(shape: tuple[int, int, int], dev: float, cfg: ArchConfig) -> list[str]:
    """What became of a stored VideoMAE ``pos_embed (1, N, D)`` (deviation ``dev`` from the sinusoid)."""
    n = shape[1]
    if cfg.pos_embed == "learned":
        t, h, w = cfg.grid
        made = f"{t} frames" if cfg.tubelet_size == 1 else f"{t} temporal positions ({cfg.num_frames} frames)"
        return [
            f"pos_embed {shape} stored by the checkpoint (not the fixed sinusoid table, max deviation "
            f"{dev:.3g}: it was made for {made} of {h}x{w} patches; the official fine-tuning code "
            "interpolates its 8-frame 224 px sinusoid table to any other size and stores it as a trainable "
            "parameter); loaded as the model's position embedding (pos_embed='learned'); the model now runs "
            f"on exactly {cfg.num_frames} frames of {cfg.img_size}x{cfg.img_size} px"
        ]
    notes = [f"pos_embed verified as the fixed sinusoid table for {n} tokens (max deviation {dev:.1e})"]
    if n != cfg.num_patches:
        notes.append(
            f"pos_embed was made for {n} tokens; the model runs on {cfg.num_patches} tokens "
            "(the table is recomputed, as the official code does when the size changes)"
        )
    return notes


def _synthesise_pool_norm(
    fmt: formats.Format, state: Mapping[str, Any], mapped: Mapped, cfg: ArchConfig, notes: list[str]
) -> None:
    """HF ``VideoMAEModel`` has no ``fc_norm``: fill ``pool_norm`` with a unit affine, and say so."""
    bare = fmt.name == "hf_videomae" and "fc_norm.weight" not in state and "classifier.weight" not in state
    if not bare or "pool_norm/scale" in mapped.arrays:
        return
    mapped.arrays["pool_norm/scale"] = np.ones((cfg.embed_dim,), np.float32)
    mapped.arrays["pool_norm/bias"] = np.zeros((cfg.embed_dim,), np.float32)
    mapped.sources["pool_norm/scale"] = mapped.sources["pool_norm/bias"] = ("(synthesised)",)
    notes.append(
        "VideoMAEModel has no fc_norm: pool_norm set to scale 1, bias 0 (out.tokens equal HF "
        "last_hidden_state; out.pooled is LayerNorm(mean) without a learned affine)"
    )


def _display_prefix(names: Mapping[str, str]) -> str:
    """The prefix most source keys carried before normalisation (for naming missing keys)."""
    counts = collections.Counter(orig[: len(orig) - len(k)] for k, orig in names.items())
    return counts.most_common(1)[0][0] if counts else ""


def _check_complete(
    fmt: formats.Format,
    mapped: Mapped,
    cfg: ArchConfig,
    names: Mapping[str, str],
    state: Mapping[str, Any],
    origin: str,
) -> None:
    """Every source key mapped or dropped, every target filled with the right shape; else raise."""
    expected = expected_shapes(cfg)
    prefix = _display_prefix(names)

    def src(key: str) -> str:
        return names.get(key, prefix + key)

    missing = []
    for target in expected:
        if target in mapped.arrays:
            continue
        keys = mapped.incomplete.get(target) or [k for k, _ in fmt.table.sources_for(target)]
        missing.append(f"{' + '.join(src(k) for k in keys) or '?'} -> {target}")
    unexpected = [f"{src(k)} {tuple(np.shape(state[k]))}" for k in mapped.unexpected]
    unexpected += [
        f"{' + '.join(src(k) for k in mapped.sources[t])} -> {t} (not used by {cfg.name})"
        for t in mapped.arrays
        if t not in expected
    ]
    mismatched = [
        f"{' + '.join(f'{src(k)} {tuple(np.shape(state[k]))}' for k in mapped.sources[t])} -> {t}: "
        f"converted {tuple(mapped.arrays[t].shape)}, {cfg.name} expects {expected[t]}"
        for t in expected
        if t in mapped.arrays and tuple(mapped.arrays[t].shape) != expected[t]
    ]
    mismatched += [f"{src(k)} {tuple(np.shape(state[k]))}: {why}" for k, why in mapped.bad]
    duplicates = [f"{src(a)} and {src(b)} both fill {t}" for t, a, b in mapped.duplicates]
    if not (missing or unexpected or mismatched or duplicates):
        return
    lines = [f"cannot convert {origin} ({fmt.description}) to {cfg.name}:"]
    lines += section("Missing source keys", missing)
    lines += section("Unexpected source keys", unexpected)
    lines += section("Shape mismatches", mismatched)
    lines += section("Duplicate keys", duplicates)
    fixes = []
    if missing:
        fixes.append(
            "the checkpoint lacks weights: it is truncated/incomplete (re-download or re-export it) or "
            "not of this layout (force another with --format)"
        )
    if unexpected:
        fixes.append(
            "unused weights are never dropped silently: if they are not needed, drop them explicitly "
            "with --ignore REGEX"
        )
    if mismatched:
        fixes.append(
            "shapes disagree with the inferred architecture: check --num-frames / --img-size (learned "
            "position embeddings) and that the file is not corrupt"
        )
    if duplicates:
        fixes.append("keep one copy of each weight")
    lines.append("Fix: " + "; ".join(fixes) + ".")
    raise ConversionError("\n".join(lines))


# --------------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------------


def convert_state_dict_detailed(
    state_dict: Mapping[str, Any],
    fmt: str = "auto",
    *,
    hf_config: Any = None,
    origin: str = "<state dict>",
    arch: str | None = None,
    num_heads: int | None = None,
    num_frames: int | None = None,
    img_size: int | None = None,
    num_classes: int | None = None,
    ckpt_num_frames: int | None = None,
    ignore: Iterable[str] = (),
    config_overrides: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    verbose: bool = True,
    recorded: rec_mod.Recorded | None = None,
) -> Conversion:
    """Like :func:`convert_state_dict`, returning a :class:`Conversion` (params, drops, notes).

    ``recorded``: the sizes recorded with the weights (:mod:`checkpoints_convert.recorded`; default: those
    of the ``config`` entry beside the weights in ``state_dict``, if any) are the defaults of
    ``num_heads`` / ``num_frames`` / ``img_size``; an option that contradicts one is refused."""
    hf = _as_dict(hf_config)
    raw = formats.unwrap_state_dict(state_dict, origin)
    name = formats.detect_format(raw.keys(), hf) if fmt == "auto" else fmt
    if name not in formats.FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; use 'auto' or one of {', '.join(formats.FORMATS)}.")
    spec = formats.FORMATS[name]
    names = formats.normalise_keys(spec, raw.keys(), origin)
    state = {k: raw[orig] for k, orig in names.items()}
    if recorded is None:
        config = state_dict.get("config") if isinstance(state_dict, Mapping) else None
        recorded = rec_mod.read_recorded(config, origin=origin)
    sizes = rec_mod.fill_options({"num_heads": num_heads, "num_frames": num_frames, "img_size": img_size},
                                 recorded)
    opts = formats.Options(
        arch=arch,
        **sizes,
        num_classes=num_classes,
        ckpt_num_frames=ckpt_num_frames,
        config_overrides=tuple((config_overrides or {}).items()),
    )
    user_drops = ignore_rules(ignore, names, origin)
    pos = _sincos_deviation(name, state, user_drops, origin)
    stored_pos = pos is not None and not pos[1] <= SINCOS_ATOL  # NaN counts as stored
    cfg, labels = formats.infer_config(spec, state, hf, opts, origin, stored_pos_embed=stored_pos)
    rec_mod.check_weights(cfg, recorded)
    drops = user_drops + _head_rules(spec, state, opts)
    if pos is not None and not stored_pos:
        drops.append(SINCOS_POS_EMBED)
    mapped = _apply(spec, state, names, drops, progress)
    notes = [*recorded.notes(), *(_pos_embed_notes(*pos, cfg) if pos is not None else [])]
    _synthesise_pool_norm(spec, state, mapped, cfg, notes)
    _check_complete(spec, mapped, cfg, names, state, origin)
    if hf is not None and cfg.num_classes and labels is None:
        notes.append("config.json id2label does not cover the classifier: labels not stored")
    order = expected_shapes(cfg)
    tree = unflatten_tree({p: jnp.asarray(mapped.arrays[p]) for p in order})
    dropped = {g: [names[k] for k in keys] for g, keys in mapped.dropped.items()}
    conv = Conversion(Params(tree=tree, config=cfg, labels=labels), name, origin, len(raw), dropped, notes)
    conv.assumed = rec_mod.assumed_sizes(cfg, sizes, skip=_fixed_sizes(name, state))
    if verbose:
        for line in conv.report_lines():
            print(line)
    return conv


def _fixed_sizes(fmt: str, state: Mapping[str, Any]) -> tuple[str, ...]:
    """The sizes a format's own files fix (a Hugging Face config.json; a stored VideoMAE pos_embed's
    frame count), so that the summary does not call them assumed."""
    if fmt.startswith("hf_"):
        return tuple(rec_mod.UNITS)
    return ("num_frames",) if fmt == "videomae_pth" and "pos_embed" in state else ()


def _apply(
    spec: formats.Format,
    state: Mapping[str, Any],
    names: Mapping[str, str],
    extra: list[tuple[str, str]],
    progress: bool | None,
) -> Mapped:
    """Run the format's rename table over ``state`` (tensors become float32 numpy on the way)."""
    return apply_table(
        spec.table,
        state,
        extra_ignore=extra,
        to_array=lambda k, v: readers.to_numpy(v, names[k]),
        progress=_progress_fn(progress, state),
    )


def convert_state_dict(state_dict: Mapping[str, Any], fmt: str = "auto", **options: Any) -> Params:
    """Convert an in-memory PyTorch state dict to :class:`~tldr_jax.api.Params`.

    Args:
      state_dict: ``{name: tensor}`` (torch tensors or arrays), optionally wrapped as
        ``{"model": {...}}`` / ``{"module": {...}}``; ``module.`` prefixes are stripped.
      fmt: ``"auto"`` or one of ``"umt"``, ``"videomae_pth"``, ``"hf_videomae"``, ``"hf_vivit"``.
      **options: ``hf_config`` (dict or transformers config; required for HF formats), ``arch``,
        ``num_heads``, ``num_frames``, ``img_size``, ``num_classes`` (0 drops the head),
        ``ckpt_num_frames``, ``ignore`` (regexes of keys to drop explicitly), ``config_overrides``
        (other ArchConfig fields), ``progress`` (tqdm bar; None: auto), ``verbose`` (print drops
        and notes; default True), ``origin`` (name used in messages).

    Returns:
      :class:`~tldr_jax.api.Params`; parameters are float32 ``(t, p, p, C, D)`` conv kernels,
      ``(in, out)`` dense kernels, as documented in :mod:`tldr_jax.models`.

    Raises:
      ConversionError: unknown layout, missing / unexpected / mis-shaped keys, unsupported options.
    """
    return convert_state_dict_detailed(state_dict, fmt, **options).params


def _provenance(source: readers.Source, conv: Conversion, options: Mapping[str, Any]) -> dict[str, Any]:
    files = file_records(source.files)
    used = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in options.items() if v is not None}
    used.pop("verbose", None)
    used.pop("progress", None)
    return {
        "source": {
            "converter": "checkpoints_convert",
            "format": conv.format,
            "path": source.label,
            "files": files,
            "options": used,
            "dropped": {g: len(k) for g, k in conv.dropped.items()},
            "notes": conv.notes,
        }
    }


def convert_vision_detailed(
    src: str | Path, out: str | Path, *, fmt: str = "auto", overwrite: bool = False, **options: Any
) -> Conversion:
    """Convert a vision checkpoint file / HF model directory / ``hf:ORG/NAME`` into a tldr_jax
    checkpoint directory (written atomically with :func:`tldr_jax.checkpoint.save`; on any error
    nothing is left at ``out``).

    Args:
      src, out, fmt, overwrite: as :func:`checkpoints_convert.convert`.
      **options: everything :func:`convert_state_dict` accepts.

    Returns:
      The :class:`Conversion` (``.params``, drops, notes, ``.out``).

    Raises:
      ConversionError: see :func:`checkpoints_convert.convert`.
    """
    out_path = output_path(out, overwrite)
    source = readers.read_source(src)
    conv = convert_state_dict_detailed(
        source.state, fmt, hf_config=source.hf_config, origin=source.label, **options
    )
    metadata = _provenance(source, conv, options)
    write_output(save, conv.params, out_path, metadata=metadata, overwrite=overwrite)
    conv.out = out_path
    return conv

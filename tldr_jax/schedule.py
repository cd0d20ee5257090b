"""Merge schedules: turn a user's ``r`` into static per-layer merge counts before tracing.

``r`` may be

* an ``int``: merge that many tokens in every layer;
* a ``float`` in ``[0, 1)``: merge that fraction of the current tokens in every layer;
* a tuple/list with one entry per layer (shorter ones are padded with zeros), each a count or a
  fraction ``< 1`` of the current tokens, exactly as the official vid-TLDR ``vidTLDR_r`` list;
* a preset name (e.g. ``"msrvtt"``): the per-dataset schedules published with vid-TLDR for
  UMT-B/16 and UMT-L/16 (see :data:`PRESETS`).

Each layer's count is capped at ``(N - protected) // 2`` as the official code does, with a
:class:`ScheduleCapWarning` so that nothing is silent.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

#: What ``r`` may be: a count per layer (int), a fraction ``< 1`` of the current tokens, a preset name,
#: a per-layer sequence of counts or fractions, or None (no merging).
RSpec = int | float | str | Sequence[int | float] | None

__all__ = [
    "DEFAULT_PRESET",
    "GENERIC_R",
    "PRESETS",
    "RSpec",
    "Schedule",
    "ScheduleCapWarning",
    "check_r_entry",
    "check_schedule",
    "default_r",
    "format_r",
    "lookup_preset",
    "parse_r",
    "per_layer",
    "preset_names",
    "resolve_r",
    "resolve_schedule",
    "schedule_for",
]


class ScheduleCapWarning(UserWarning):
    """Raised (as a warning) when a requested merge count exceeds what a layer can merge."""

#: Per-dataset schedules released with vid-TLDR (README of mlvlab/vid-TLDR), tokens removed per layer:
#: ``PRESETS[dataset][arch]``, a tuple of per-layer counts.
PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    "umt_b16": {
        "msrvtt": (600, 200, 100),
        "msvd": (450, 250, 200),
        "activitynet": (500,),
        "didemo": (250, 150, 150, 150),
        "lsmdc": (400, 150, 150),
        "ssv2_label": (200, 200, 200, 100),
        "ssv2_template": (400, 300),
        "msrvtt_qa": (600, 200),
        "msvd_qa": (600, 200),
    },
    "umt_l16": {
        "msrvtt": (550, 400),
        "msvd": (600, 200, 100, 100),
        "activitynet": (600, 300),
        "didemo": (800, 100),
        "lsmdc": (250, 250, 200, 200),
        "ssv2_label": (450, 250, 100),
        "ssv2_template": (350, 300, 100, 50),
        "msrvtt_qa": (400, 400, 100),
        "msvd_qa": (400, 400, 100),
    },
}


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A resolved merge schedule; hashable, so it can be a static jit argument.

    Attributes:
      r: effective tokens removed in each layer, length ``depth``.
      tokens: token counts, length ``depth + 1``: ``tokens[0]`` enters layer 0, ``tokens[l + 1]``
        leaves layer ``l`` (protected tokens included).
      protected: leading tokens never merged.
    """

    r: tuple[int, ...]
    tokens: tuple[int, ...]
    protected: int = 0

    @property
    def depth(self) -> int:
        """Number of layers."""
        return len(self.r)

    @property
    def last_merge(self) -> int:
        """Index of the last layer that merges, or -1 when none does."""
        merging = [i for i, v in enumerate(self.r) if v]
        return merging[-1] if merging else -1

    def __str__(self) -> str:
        return " -> ".join(str(t) for t in dict.fromkeys(self.tokens)) if self.last_merge >= 0 else (
            f"{self.tokens[0]} (no merging)"
        )


def preset_names(arch: str | None = None) -> list[str]:
    """Names of the published schedules, for one architecture or all (``"arch/name"``)."""
    if arch is not None:
        return sorted(PRESETS.get(arch, {}))
    return sorted(f"{a}/{n}" for a, table in PRESETS.items() for n in table)


def lookup_preset(name: str, arch: str | None) -> tuple[int, ...]:
    """The per-layer counts of a named preset (``"msrvtt"`` or ``"umt_b16/msrvtt"``)."""
    key = name.lower().replace("-", "_")
    if "/" in key:
        arch, key = key.split("/", 1)
    table = PRESETS.get(arch or "", {})
    if key in table:
        return table[key]
    if table:
        raise ValueError(
            f"unknown schedule preset {name!r} for {arch}. Known presets: {', '.join(sorted(table))}; or "
            "pass an int, a fraction or a per-layer tuple."
        )
    names = sorted({n for t in PRESETS.values() for n in t})
    raise ValueError(
        f"unknown schedule preset {name!r} for {arch or 'this model'}: Presets are published for UMT-B/16 "
        f"and UMT-L/16 only ({', '.join(names)}); pass an int, a fraction or a per-layer tuple."
    )


def check_r_entry(entry: Any, layer: int | None = None) -> int | float:
    """One per-layer ``r`` entry as a count (an ``int >= 0``) or a fraction (a float in ``[0, 1)``).

    Integral floats ``>= 1`` (``600.0``, ``1e9``) are counts; anything else raises ``TypeError`` /
    ``ValueError`` naming the entry and what is allowed.
    """
    where = f" at layer {layer}" if layer is not None else ""
    allowed = "a count (int >= 0, tokens to merge) or a fraction in [0, 1) of the current tokens"
    if isinstance(entry, (bool, np.bool_)) or not isinstance(entry, (numbers.Integral, numbers.Real)):
        raise TypeError(f"r{where} must be {allowed}; got {entry!r} ({type(entry).__name__}).")
    if isinstance(entry, numbers.Integral):
        if entry < 0:
            raise ValueError(f"r{where} must be {allowed}; got {entry} (0 means no merging).")
        return int(entry)
    value = float(entry)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"r{where} must be {allowed}; got {entry!r}.")
    if value < 1:
        return value
    if not value.is_integer():
        raise ValueError(
            f"r{where} = {entry!r} is neither a whole count nor a fraction < 1; use an int (tokens to merge) "
            "or a float in [0, 1) (fraction of the current tokens)."
        )
    return int(value)


def resolve_r(r: int | float, num_tokens: int, protected: int = 0, *, layer: int | None = None) -> int:
    """Effective merge count of one layer, exactly as the official vid-TLDR code computes it.

    Args:
      r: a count (int, or an integral float) or a fraction ``0 < r < 1`` of the current tokens.
      num_tokens: current token count ``N`` (protected tokens included).
      protected: leading tokens that are never merged.
      layer: only used in messages.

    Returns:
      ``int(N * r)`` for fractions, else ``r``, capped at ``(N - protected) // 2``. A
      :class:`ScheduleCapWarning` is emitted (at trace time) when the cap bites.
    """
    entry = check_r_entry(r, layer)
    count = int(num_tokens * entry) if isinstance(entry, float) else entry
    cap = max((num_tokens - protected) // 2, 0)
    if count > cap:
        where = f" at layer {layer}" if layer is not None else ""
        warnings.warn(
            f"r{where}: asked to merge {count} of {num_tokens} tokens"
            f"{f' ({protected} protected)' if protected else ''}; capped at {cap} "
            "(a bipartite merge removes at most half of the tokens), as the official code does.",
            ScheduleCapWarning,
            stacklevel=3,
        )
        count = cap
    return count


def per_layer(r: RSpec, depth: int, arch: str | None = None) -> tuple[int | float, ...]:
    """Expand an ``r`` spec to one checked entry per layer (counts or fractions, not yet capped)."""
    if r is None:
        return (0,) * depth
    if isinstance(r, str):
        r = lookup_preset(r, arch)
    if isinstance(r, (np.ndarray, jax.Array)):
        r = r.tolist()  # a 0-d array becomes a scalar, a 1-d one a list
    if isinstance(r, (bool, np.bool_)) or not isinstance(r, (numbers.Real, Sequence)) or isinstance(r, bytes):
        raise TypeError(
            "r must be an int, a fraction < 1, a per-layer tuple or a preset name; got "
            f"{r!r} ({type(r).__name__})."
        )
    if isinstance(r, numbers.Real):
        return (check_r_entry(r),) * depth
    entries = tuple(check_r_entry(v, layer) for layer, v in enumerate(r))
    if len(entries) > depth:
        raise ValueError(
            f"the schedule has {len(entries)} entries but the model has only {depth} layers: {entries}. "
            f"Give at most {depth} entries (missing trailing layers merge nothing)."
        )
    return entries + (0,) * (depth - len(entries))


def resolve_schedule(
    r: RSpec,
    *,
    num_tokens: int,
    depth: int,
    protected: int = 0,
    arch: str | None = None,
) -> Schedule:
    """Resolve an ``r`` spec into effective per-layer counts and token counts.

    Args:
      r: see the module docstring.
      num_tokens: tokens entering the first layer (protected tokens included).
      depth: number of layers.
      protected: leading tokens that are never merged.
      arch: architecture name, for presets.

    Returns:
      A :class:`Schedule`.
    """
    if isinstance(r, Schedule):
        if r.depth != depth or r.tokens[0] != num_tokens or r.protected != protected:
            raise ValueError(
                f"this Schedule was resolved for depth {r.depth}, {r.tokens[0]} tokens, {r.protected} "
                f"protected; the model has depth {depth}, {num_tokens} tokens, {protected} protected."
            )
        return r
    raw = per_layer(r, depth, arch)
    counts, tokens = [], [num_tokens]
    n = num_tokens
    for layer, entry in enumerate(raw):
        c = resolve_r(entry, n, protected, layer=layer)
        counts.append(c)
        n -= c
        tokens.append(n)
    return Schedule(tuple(counts), tuple(tokens), protected)


def schedule_for(cfg: Any, r: RSpec) -> Schedule:
    """The schedule of ``r`` for an :class:`~tldr_jax.configs.ArchConfig` (its tokens, depth, protected
    tokens and presets): the one call every entry point makes."""
    return resolve_schedule(
        r, num_tokens=cfg.num_tokens, depth=cfg.depth, protected=cfg.protected, arch=cfg.preset_arch
    )


def check_schedule(cfg: Any, r: RSpec) -> Schedule:
    """:func:`schedule_for` without the capping warning: checks ``r`` up front, before any work (the
    cap is reported once, when the model runs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleCapWarning)
        return schedule_for(cfg, r)


#: The ``r`` used where none is given and no published preset fits the model: merge 30 % then 20 % of
#: the tokens in the first two layers.
GENERIC_R: tuple[float, ...] = (0.3, 0.2)

#: The preset used by default where one is published for the architecture (vid-TLDR's MSR-VTT schedule).
DEFAULT_PRESET = "msrvtt"


def default_r(cfg: Any, preset: str = DEFAULT_PRESET) -> RSpec:
    """The ``r`` used when none is given (every command and entry point uses this one rule).

    Args:
      cfg: the model's :class:`~tldr_jax.configs.ArchConfig`, with the frames and image size it runs on.
      preset: the preset wanted (e.g. a dataset's; default :data:`DEFAULT_PRESET`).

    Returns:
      ``preset`` where it is published for the architecture and fits ``cfg`` as published (no
      capping, no more entries than layers); else :data:`GENERIC_R` (at most ``cfg.depth`` entries).
    """
    if preset in PRESETS.get(cfg.preset_arch, {}):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ScheduleCapWarning)
            try:
                schedule_for(cfg, preset)
                return preset
            except (ScheduleCapWarning, ValueError):  # capped, or more entries than the model's layers
                pass
    return GENERIC_R[: cfg.depth]


def format_r(r: RSpec) -> str:
    """A short display form of an ``r`` spec: ``(600, 200, 100)`` -> ``"600,200,100"``, ``"msrvtt"``."""
    if isinstance(r, (tuple, list)):
        return ",".join(str(v) for v in r)
    return str(r)


def _number(text: str) -> int | float:
    """``"16"`` -> 16, ``"1e9"`` / ``"600.0"`` -> an int count, ``"0.25"`` -> 0.25 (ValueError otherwise)."""
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    value = float(t)
    if math.isfinite(value) and value >= 1 and value.is_integer():
        return int(value)
    return value


def parse_r(text: str) -> RSpec:
    """Parse an ``r`` given as text (command lines): ``"16"`` -> 16, ``"0.25"`` -> 0.25,
    ``"600,200,100"`` -> (600, 200, 100), ``"msrvtt"`` / ``"umt_b16/msrvtt"`` -> the preset name,
    ``"none"`` -> 0. Raises ``ValueError`` naming the bad text."""
    t = str(text).strip()
    if not t:
        raise ValueError("r is empty; give an int, a fraction, a comma list or a preset name.")
    if t.lower() in ("none", "off", "no"):
        return 0
    if "," in t:
        parts = t.split(",")
        if parts[-1].strip() == "":
            parts = parts[:-1]  # one trailing comma: "600,"
        if any(not p.strip() for p in parts):
            raise ValueError(f"r {text!r} has an empty entry; give one number per layer, e.g. '600,200,100'.")
        try:
            values = tuple(_number(p) for p in parts)
        except ValueError as err:
            raise ValueError(
                f"r {text!r}: every comma-separated entry must be a number (count or fraction < 1)."
            ) from err
        return _check_r_values(values, text)
    try:
        return _check_r_values((_number(t),), text)[0]
    except ValueError as err:
        if "entries must be" in str(err):
            raise
    if re.fullmatch(r"[A-Za-z][\w/-]*", t):
        return t
    raise ValueError(f"r {text!r} is not an int, a fraction, a comma list or a preset name.")


def _check_r_values(values: tuple[int | float, ...], text: str) -> tuple[int | float, ...]:
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"r {text!r}: entries must be counts >= 0 or fractions in [0, 1); got {v}.")
        if isinstance(v, float) and v >= 1:
            raise ValueError(
                f"r {text!r}: entries must be counts >= 0 or fractions in [0, 1); got {v}, which is neither "
                "a whole count nor a fraction < 1."
            )
    return values

"""Sizes recorded with the weights: the defaults of a conversion, and the sizes nothing records.

The weights give width, depth, MLP size, patch and tubelet size; the attention heads, the frame count and
the image size they do not. Two files may record them:

* the training config a released fine-tuned UMT / vid-TLDR checkpoint carries beside its weights
  (``{"model": ..., "config": ...}``): ``config.model.vision_encoder`` with ``encoder_num_heads``,
  ``num_frames``, ``img_size``, ``tubelet_size``, ``patch_size`` and ``vidTLDR_r``;
* a ``--text-config`` JSON that records the vision sizes too (the golden ``text_config.json``): at its top
  level or under ``vision_encoder``, with the same names (``num_heads`` also accepted).

A recorded size is the default of its flag (``--num-heads``, ``--num-frames``, ``--img-size``); a flag
that contradicts it is refused with one line, as are two files that disagree, and a recorded patch or
tubelet size the weights contradict. A size nothing records is assumed from the architecture's defaults,
and the conversion's summary says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from checkpoints_convert.errors import ConversionError

__all__ = ["FLAGS", "Recorded", "assumed_sizes", "check_weights", "fill_options", "read_recorded"]

#: Converter option -> its command-line flag.
FLAGS: dict[str, str] = {"num_heads": "--num-heads", "num_frames": "--num-frames", "img_size": "--img-size"}
#: Converter option or config field -> the names a recorded config gives it.
KEYS: dict[str, tuple[str, ...]] = {
    "num_heads": ("encoder_num_heads", "num_heads"),
    "num_frames": ("num_frames",),
    "img_size": ("img_size",),
    "tubelet_size": ("tubelet_size",),
    "patch_size": ("patch_size",),
}
#: How a summary names each size.
UNITS: dict[str, str] = {"num_heads": "heads", "num_frames": "frames", "img_size": "px"}


@dataclasses.dataclass
class Recorded:
    """The sizes recorded with the weights.

    Attributes:
      values: field (``num_heads``, ``num_frames``, ``img_size``, ``tubelet_size``, ``patch_size``) ->
        value.
      where: field -> where it is recorded (for messages).
      vidtldr_r: the recorded ``vidTLDR_r`` (kept in the provenance), or None.
    """

    values: dict[str, int] = dataclasses.field(default_factory=dict)
    where: dict[str, str] = dataclasses.field(default_factory=dict)
    vidtldr_r: Any = None

    def notes(self) -> list[str]:
        """One note naming the sizes taken from the files, and one for ``vidTLDR_r``."""
        used = [f"{k}={v} ({self.where[k]})" for k, v in self.values.items()]
        out = [f"recorded with the weights: {', '.join(used)}"] if used else []
        if self.vidtldr_r is not None:
            out.append(f"the training config records vidTLDR_r={self.vidtldr_r!r} (kept in the provenance)")
        return out


def _sections(config: Mapping[str, Any], where: str, top: bool) -> list[tuple[Mapping[str, Any], str]]:
    """The mappings of ``config`` that may hold vision sizes, with their names."""
    out = [(config, where)] if top else []
    model = config.get("model") if not top else None
    for parent, name in ((model, f"{where}.model"), (config, where)):
        vis = parent.get("vision_encoder") if isinstance(parent, Mapping) else None
        if isinstance(vis, Mapping):
            out.append((vis, f"{name}.vision_encoder"))
    return out


def _add(rec: Recorded, field: str, value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return  # unresolved templates ("${num_frames}") and other non-sizes record nothing
    if field in rec.values and rec.values[field] != value:
        raise ConversionError(
            f"the recorded sizes disagree: {field} is {rec.values[field]} in {rec.where[field]} but {value} "
            f"in {where}; fix the file that is wrong (or pass a --text-config that matches the checkpoint)."
        )
    rec.values.setdefault(field, value)
    rec.where.setdefault(field, where)


def read_recorded(
    training_config: Any, text_config: Mapping[str, Any] | None = None, *, origin: str = "the checkpoint"
) -> Recorded:
    """The sizes ``training_config`` (the ``config`` entry of a checkpoint) and ``text_config`` (a
    ``--text-config`` dict) record.

    Raises:
      ConversionError: two places record different values for one size.
    """
    rec = Recorded()
    places: list[tuple[Mapping[str, Any], str, str]] = []
    if isinstance(training_config, Mapping):
        places += [(m, w, f" of {origin}") for m, w in _sections(training_config, "config", top=False)]
    if isinstance(text_config, Mapping):
        places += [(m, w, "") for m, w in _sections(text_config, "--text-config", top=True)]
    for section, where, suffix in places:
        for field, names in KEYS.items():
            for name in names:
                if name in section:
                    _add(rec, field, section[name], f"{where}.{name}{suffix}")
        if rec.vidtldr_r is None and section.get("vidTLDR_r") is not None and "vision_encoder" in where:
            rec.vidtldr_r = section["vidTLDR_r"]
    return rec


def fill_options(options: dict[str, Any], rec: Recorded) -> dict[str, Any]:
    """``options`` with each size a flag left unset taken from ``rec``.

    Raises:
      ConversionError: a flag contradicts a recorded size (one line naming both and the fix).
    """
    out = dict(options)
    for field, flag in FLAGS.items():
        given, recorded = out.get(field), rec.values.get(field)
        if recorded is None:
            continue
        if given is not None and given != recorded:
            raise ConversionError(
                f"{flag} {given} contradicts the {recorded} recorded in {rec.where[field]}; drop {flag} "
                "(the recorded size is used). To run on other frame counts, convert as recorded and pass "
                "--frames / num_frames= when running."
            )
        out[field] = recorded
    return out


def check_weights(cfg: Any, rec: Recorded) -> None:
    """A recorded patch or tubelet size the weights (``cfg``) contradict: the files do not belong together.

    Raises:
      ConversionError: naming the size, the file and the weights' value.
    """
    for field in ("patch_size", "tubelet_size"):
        recorded = rec.values.get(field)
        if recorded is not None and recorded != getattr(cfg, field):
            raise ConversionError(
                f"{rec.where[field]} records {field} {recorded} but the weights have {getattr(cfg, field)}: "
                "the config does not belong to these weights; pass the matching one."
            )


def assumed_sizes(cfg: Any, options: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """The sizes of ``cfg`` that no flag and no recorded config gave (``options`` after
    :func:`fill_options`), as ``"12 heads"``; ``skip`` names fields the weights or a config.json fixed."""
    out = []
    for field, unit in UNITS.items():
        if options.get(field) is None and field not in skip:
            out.append(f"{getattr(cfg, field)} {unit}")
    return out

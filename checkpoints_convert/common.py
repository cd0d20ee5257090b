"""What every converter shares: error reports, ``--ignore`` rules, the output directory, provenance.

The vision converter (:mod:`checkpoints_convert.core`) and the converters built on it (the UMT
retrieval one in :mod:`checkpoints_convert.retrieval`, ...) import these; this module imports no
converter, so converters never import each other to share a helper.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from checkpoints_convert.errors import ConversionError
from tldr_jax.files import sha256_file

#: Entries listed per section of an error report (the rest are counted).
REPORT_LIMIT = 20

__all__ = [
    "REPORT_LIMIT",
    "file_records",
    "text_model_metadata",
    "ignore_rules",
    "json_safe",
    "output_path",
    "report_lines",
    "section",
    "write_output",
]


def section(title: str, items: list[str]) -> list[str]:
    """The lines of one section of a conversion error report: ``"title (n):"`` then at most
    :data:`REPORT_LIMIT` indented items and a count of the others; no lines for no items."""
    if not items:
        return []
    lines = [f"{title} ({len(items)}):", *(f"  {x}" for x in items[:REPORT_LIMIT])]
    if len(items) > REPORT_LIMIT:
        lines.append(f"  ... and {len(items) - REPORT_LIMIT} more")
    return lines


def report_lines(dropped: Mapping[str, list[str]], notes: Iterable[str]) -> list[str]:
    """What a conversion dropped (``group -> source keys``) and decided, one line each."""
    lines = [f"dropped {len(keys)} tensor(s): {group}" for group, keys in dropped.items()]
    return lines + [f"note: {n}" for n in notes]


def ignore_rules(patterns: Iterable[str], names: Mapping[str, str], origin: str) -> list[tuple[str, str]]:
    """User ``--ignore`` regexes -> exact drop rules ``(regex, reason)`` for :func:`rules.apply_table`.

    Args:
      patterns: the regexes, matched (``re.match``) against the original and the normalised keys.
      names: normalised key -> original key.
      origin: how messages name the source.

    Raises:
      ConversionError: a pattern that is not a regex, or that matches no key (named, with the fix).
    """
    out = []
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as e:
            raise ConversionError(f"--ignore {pattern!r} is not a valid regular expression: {e}") from e
        hits = [k for k, orig in names.items() if rx.match(orig) or rx.match(k)]
        if not hits:
            raise ConversionError(f"--ignore {pattern!r} matches no key of {origin}; check the pattern.")
        out.extend((re.escape(k) + "$", f"matched --ignore {pattern!r}") for k in hits)
    return out


def output_path(out: str | Path, overwrite: bool) -> Path:
    """The absolute output directory, checked before any work: it may exist only with ``overwrite``."""
    out_path = Path(out).expanduser().absolute()
    if out_path.exists() and not overwrite:
        raise ConversionError(
            f"{out_path} already exists; pass --overwrite (overwrite=True) to replace it, or choose "
            "another output path."
        )
    return out_path


def write_output(
    save_fn: Callable[..., Any], model: Any, out_path: Path, *, metadata: Mapping[str, Any], overwrite: bool
) -> None:
    """``save_fn(model, out_path, metadata=..., overwrite=...)`` (atomic), file errors as ConversionError."""
    try:
        save_fn(model, out_path, metadata=metadata, overwrite=overwrite)
    except FileExistsError as e:
        raise ConversionError(str(e)) from e
    except OSError as e:
        raise ConversionError(f"cannot write {out_path}: {e}") from e


def file_records(files: Iterable[Path], *, sizes: bool = True) -> list[dict[str, Any]]:
    """``[{"name", "sha256", "bytes"}]`` of the source files, as a checkpoint's provenance records them
    (``sizes=False``: without ``bytes``)."""
    records = []
    for f in files:
        f = Path(f).expanduser()
        record: dict[str, Any] = {"name": f.name, "sha256": sha256_file(f)}
        if sizes:
            record["bytes"] = f.stat().st_size
        records.append(record)
    return records


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can store it: mappings and sequences kept (8 levels deep), non-finite floats
    and other objects as their ``str`` (e.g. a training config found in a source checkpoint)."""
    if depth > 8:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def text_model_metadata(
    fmt: str,
    source: Any,
    conv: Any,
    options: Mapping[str, Any],
    extra_files: Iterable[Any],
    bert: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The provenance a multi-modal checkpoint records (``metadata["source"]``): the source format, files
    and their sha256 (``extra_files``: the vocabulary and BERT config given as paths), the options used,
    the BERT config, what was dropped and noted, and the training config a released file holds."""
    used = {k: v for k, v in options.items() if v is not None and k not in ("verbose", "progress")}
    extra = [Path(p) for p in extra_files if isinstance(p, (str, Path))]
    record: dict[str, Any] = {
        "converter": "checkpoints_convert",
        "format": fmt,
        "path": source.label,
        "files": file_records(source.files) + file_records(extra, sizes=False),
        "options": json_safe(used),
        "text_config_file": json_safe(bert) if bert else None,
        "dropped": {g: len(k) for g, k in conv.dropped.items()},
        "notes": conv.notes,
    }
    cfg = source.state.get("config") if isinstance(source.state, Mapping) else None
    if isinstance(cfg, Mapping):
        record["training_config"] = json_safe(cfg)
    return {"source": record}

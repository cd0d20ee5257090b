"""What every converter shares: error reports, ``--ignore`` rules, the output directory, provenance.

The vision converter (:mod:`checkpoints_convert.core`) and the converters built on it (the UMT
retrieval one in :mod:`checkpoints_convert.retrieval`, ...) import these; this module imports no
converter, so converters never import each other to share a helper.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from checkpoints_convert import readers, rules
from checkpoints_convert.errors import ConversionError
from checkpoints_convert.rules import Table
from tldr_jax.checkpoint import flatten_tree, unflatten_tree
from tldr_jax.files import sha256_file

#: Entries listed per section of an error report (the rest are counted).
REPORT_LIMIT = 20

__all__ = [
    "REPORT_LIMIT",
    "TextModelConversion",
    "convert_file",
    "file_records",
    "invert_table",
    "map_tree",
    "read_json",
    "save_official_state_dict",
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


@dataclasses.dataclass
class TextModelConversion:
    """A finished multi-modal conversion: the converted ``model`` (vision + text parts + vocabulary), the
    vision part's :class:`~checkpoints_convert.core.Conversion`, what was dropped (``group -> source
    keys``) and noted, the source's name and tensor count, and the output directory once written.
    Converters subclass it with their ``summary()``."""

    model: Any
    vision: Any
    dropped: dict[str, list[str]]
    notes: list[str]
    origin: str
    num_tensors: int
    out: Path | None = None

    @property
    def params(self) -> Any:
        """The converted model (the name the vision converter's result uses)."""
        return self.model

    def report_lines(self) -> list[str]:
        """What was dropped and decided, one line each."""
        return report_lines(self.dropped, self.notes)

    def report(self, verbose: bool) -> TextModelConversion:
        """Print :meth:`report_lines` when ``verbose``; returns ``self``."""
        if verbose:
            for line in self.report_lines():
                print(line)
        return self


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


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``what`` names it in messages, e.g. ``"text config"``).

    Raises:
      ConversionError: a missing or unreadable file, or JSON that is not an object.
    """
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{what} {str(p)!r} not found; check the path.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"cannot read {what} {p}: {e}") from e
    if not isinstance(data, dict):
        raise ConversionError(f"{what} {p} is not a JSON object (a BERT config.json is).")
    return data


def map_tree(
    table: Table,
    state: Mapping[str, Any],
    names: Mapping[str, str],
    expected: Mapping[str, tuple[int, ...]],
    ignore: list[tuple[str, str]],
    what: str,
    origin: str,
    *,
    scalars: Iterable[str] = (),
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Map ``state`` (normalised key -> tensor; ``names``: normalised -> original key) with ``table`` onto
    exactly the ``expected`` tree (flat path -> shape); returns the nested tree and the drops
    (``group -> original keys``). ``scalars``: targets stored with one element that become shape ``()``.

    Raises:
      ConversionError: missing, unexpected, mis-shaped or duplicate keys, listed by original name.
    """
    mapped = rules.apply_table(
        table, state, extra_ignore=ignore, to_array=lambda k, v: readers.to_numpy(v, names[k])
    )
    for t in scalars:
        if t in mapped.arrays:
            mapped.arrays[t] = mapped.arrays[t].reshape(())
    missing = [
        f"{t} (from {' + '.join(k for k, _ in table.sources_for(t)) or '?'})"
        for t in expected
        if t not in mapped.arrays
    ]
    unexpected = [names[k] for k in mapped.unexpected] + [t for t in mapped.arrays if t not in expected]
    mismatched = [
        f"{'+'.join(names[s] for s in mapped.sources[t])}: {tuple(mapped.arrays[t].shape)} vs {expected[t]}"
        for t in expected
        if t in mapped.arrays and tuple(mapped.arrays[t].shape) != expected[t]
    ] + [f"{names[k]}: {why}" for k, why in mapped.bad]
    if missing or unexpected or mismatched or mapped.duplicates:
        lines = [f"cannot convert the {what} of {origin}:"]
        lines += section(f"Missing {what} weights", missing)
        lines += section(f"Unexpected {what} keys", unexpected)
        lines += section("Shape mismatches", mismatched)
        lines += section("Duplicate keys", [f"{a} and {b} -> {t}" for t, a, b in mapped.duplicates])
        lines.append(
            "Fix: pass the matching --text-config; drop unused keys explicitly with --ignore REGEX; "
            "re-download a truncated file."
        )
        raise ConversionError("\n".join(lines))
    tree = unflatten_tree({p: jnp.asarray(mapped.arrays[p]) for p in expected})
    return tree, {g: [names[k] for k in keys] for g, keys in mapped.dropped.items()}


def convert_file(
    src: str | Path,
    out: str | Path,
    *,
    fmt: str,
    vocab: str | Path | None,
    text_config: str | Path | Mapping[str, Any] | None,
    overwrite: bool,
    options: dict[str, Any],
    convert_state_dict: Callable[..., Any],
    save_fn: Callable[..., Any],
    no_vocab: str,
) -> Any:
    """The file-level body of a multi-modal converter (vision + BERT text parts + vocabulary): check the
    output path, read the vocabulary, the BERT config and the source, run ``convert_state_dict(state,
    vocab=, text_config=, origin=, **options)``, then write its ``.model`` with ``save_fn`` and the
    provenance of :func:`text_model_metadata` (format ``fmt``). Returns the conversion with ``.out`` set.

    Raises:
      ConversionError: no ``vocab`` (message ``no_vocab``), unreadable inputs, whatever the state-dict
        converter refuses, or an existing ``out`` without ``overwrite``.
    """
    from checkpoints_convert.bert import read_vocab

    if vocab is None:
        raise ConversionError(no_vocab)
    out_path = output_path(out, overwrite)
    voc = read_vocab(vocab)
    bert = read_json(text_config, "text config") if isinstance(text_config, (str, Path)) else text_config
    source = readers.read_source(src)
    options.pop("fmt", None)
    conv = convert_state_dict(source.state, vocab=voc, text_config=bert, origin=source.label, **options)
    metadata = text_model_metadata(fmt, source, conv, options, (vocab, text_config), bert)
    write_output(save_fn, conv.model, out_path, metadata=metadata, overwrite=overwrite)
    conv.out = out_path
    return conv


_INVERSE = {"id": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a.transpose(4, 3, 0, 1, 2)}


def invert_table(table: Table, tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The official ``{name: array}`` of a converted ``tree`` (the way back through ``table``'s one-source
    rules: Linear weights back to ``(out, in)``, conv kernels to ``(out, in, t, h, w)``).

    Raises:
      ValueError: a leaf no rule produces (names it).
    """
    out = {}
    for target, value in flatten_tree(tree).items():
        for rule in table.rules:
            m = rules._target_regex(rule.target).fullmatch(target)
            if m and rule.parts == 1:
                out[rule.source.format(**m.groupdict())] = np.array(
                    _INVERSE[rule.transform](np.asarray(value)), order="C"
                )
                break
        else:
            raise ValueError(f"no rule produces {target!r}; cannot write it in the official layout.")
    return out


def save_official_state_dict(
    state_dict: Mapping[str, Any], path: str | Path, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """``torch.save({"model": state_dict, **extra}, path)`` with the arrays as torch tensors (tests, demos,
    benchmarks write official-layout files with it)."""
    import torch

    sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
    path = Path(path)
    torch.save({"model": sd, **dict(extra or {})}, path)
    return path

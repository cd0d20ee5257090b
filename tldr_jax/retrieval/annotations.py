"""Reading retrieval annotations: the official UMT JSON files and JSON-lines caption files.

The official annotation file of a retrieval split (``msrvtt_ret_test1k.json``, ...) is a JSON list of
``{"video": "relative/path.mp4", "caption": "..." | ["...", ...]}``. The official evaluation dataset
(``VidTxtRetEvalDataset``) turns it into videos, texts and the two ground-truth maps:

* every caption is cleaned with :func:`~tldr_jax.text.tokenizer.pre_text` (lower-case;
  ``, . ' ! ? " ( ) * # : ;  ~`` removed; ``-`` and ``/`` become spaces; ``<person>`` becomes
  ``person``; runs of whitespace collapsed);
* paragraph retrieval (DiDeMo, ActivityNet) first joins an entry's caption list with spaces;
* by default an entry is one video with one or more captions (MSVD: several);
* with ``has_multi_vision_gt`` (SSv2) an entry is one caption whose ``video`` may list several videos,
  each appended as its own gallery item.

:func:`load_annotations` does exactly that; :func:`load_caption_lines` reads the simpler
``{"video": ..., "caption": ...}`` JSON-lines format of ``tldr-jax retrieve --captions``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tldr_jax.retrieval.presets import DatasetPreset, get_dataset
from tldr_jax.text.tokenizer import pre_text


@dataclasses.dataclass
class Annotations:
    """A retrieval test set.

    Attributes:
      videos: video paths (the gallery, in order).
      texts: the captions (cleaned unless ``clean=False``).
      txt2vid: the ground-truth video(s) of each text.
      vid2txt: the ground-truth text(s) of each video.
    """

    videos: list[str]
    texts: list[str]
    txt2vid: list[list[int]]
    vid2txt: list[list[int]]

    def __post_init__(self) -> None:
        if not self.videos or not self.texts:
            raise ValueError(
                f"the annotations hold {len(self.videos)} videos and {len(self.texts)} captions; both must "
                "be > 0."
            )


def _video_path(root: str | os.PathLike | None, rel: Any, where: str) -> str:
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"{where}: 'video' must be a non-empty path string; got {rel!r}.")
    return os.path.join(str(root), rel) if root is not None else rel


def _captions(entry: dict, where: str) -> list[str]:
    cap = entry.get("caption")
    caps = [cap] if isinstance(cap, str) else cap
    if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
        raise ValueError(f"{where}: 'caption' must be a string or a non-empty list of strings; got {cap!r}.")
    return caps


def parse_annotations(
    entries: list[Any],
    video_root: str | os.PathLike | None = None,
    *,
    dataset: str | DatasetPreset | None = None,
    is_paragraph_retrieval: bool | None = None,
    has_multi_vision_gt: bool | None = None,
    clean: bool = True,
    origin: str = "annotations",
) -> Annotations:
    """Build :class:`Annotations` from the entries of an official annotation file.

    ``dataset`` sets ``is_paragraph_retrieval`` / ``has_multi_vision_gt`` from its preset; explicit
    arguments win. ``clean=False`` keeps captions as written (no ``pre_text``).
    """
    preset = get_dataset(dataset) if dataset is not None else None
    para = (
        is_paragraph_retrieval
        if is_paragraph_retrieval is not None
        else bool(preset and preset.is_paragraph_retrieval)
    )
    multi_vid = (
        has_multi_vision_gt
        if has_multi_vision_gt is not None
        else bool(preset and preset.has_multi_vision_gt)
    )
    if not isinstance(entries, list):
        raise ValueError(f"{origin} must hold a JSON list of {{'video': ..., 'caption': ...}} objects.")
    fix = pre_text if clean else (lambda s: s)
    videos: list[str] = []
    texts: list[str] = []
    txt2vid: list[list[int]] = []
    vid2txt: list[list[int]] = []
    for i, entry in enumerate(entries):
        where = f"{origin} entry {i}"
        if (
            not isinstance(entry, dict)
            or "caption" not in entry
            or ("video" not in entry and "image" not in entry)
        ):
            raise ValueError(f"{where} is not an object with 'video' and 'caption' keys: {str(entry)[:80]}.")
        caps = _captions(entry, where)
        if para:
            caps = [" ".join(caps)]
        media = entry.get("video", entry.get("image"))
        if multi_vid:
            if len(caps) != 1:
                raise ValueError(
                    f"{where}: with several videos per caption an entry holds one caption; got {len(caps)}."
                )
            paths = media if isinstance(media, list) else [media]
            texts.append(fix(caps[0]))
            txt2vid.append([])
            for rel in paths:
                videos.append(_video_path(video_root, rel, where))
                txt2vid[-1].append(len(videos) - 1)
                vid2txt.append([len(texts) - 1])
        else:
            videos.append(_video_path(video_root, media, where))
            vid2txt.append([])
            for cap in caps:
                texts.append(fix(cap))
                vid2txt[-1].append(len(texts) - 1)
                txt2vid.append([len(videos) - 1])
    return Annotations(videos, texts, txt2vid, vid2txt)


def load_annotations(
    path: str | os.PathLike,
    video_root: str | os.PathLike | None = None,
    **options: Any,
) -> Annotations:
    """Read an official annotation JSON file (e.g. ``msrvtt_ret_test1k.json``); see :func:`parse_annotations`.

    ``video_root`` is prepended to every video path (the official ``data_root``).
    """
    p = Path(path).expanduser()
    try:
        entries = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {str(p)!r} not found; check the path.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} is not a JSON annotation file ({e}).") from e
    return parse_annotations(entries, video_root, origin=str(p), **options)


def load_caption_lines(
    path: str | os.PathLike, video_root: str | os.PathLike | None = None, *, clean: bool = True
) -> Annotations:
    """Read JSON lines ``{"video": ..., "caption": "..." | [...]}``; several lines may name one video.

    Videos are taken in order of first appearance; each caption is one text whose ground truth is its video.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"caption file {str(p)!r} not found; check the path.")
    order: dict[str, int] = {}
    grouped: list[dict[str, Any]] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f'{p} line {n} is not JSON ({e}); expected {{"video": ..., "caption": ...}}.'
            ) from e
        if not isinstance(entry, dict) or "video" not in entry or "caption" not in entry:
            raise ValueError(f"{p} line {n} needs 'video' and 'caption' keys; got {line[:80]!r}.")
        caps = _captions(entry, f"{p} line {n}")
        key = str(entry["video"])
        if key not in order:
            order[key] = len(grouped)
            grouped.append({"video": key, "caption": []})
        grouped[order[key]]["caption"].extend(caps)
    if not grouped:
        raise ValueError(f"{p} holds no captions; write one JSON object per line.")
    return parse_annotations(grouped, video_root, clean=clean, origin=str(p))


def match_videos(names: list[str], files: list[Path]) -> list[str]:
    """Resolve annotation video names against the files of a directory (by relative path, name or stem).

    Raises ``FileNotFoundError`` listing the names that match no file.
    """
    by_name: dict[str, Path] = {}
    for f in files:
        for key in (f.name, f.stem, str(f)):
            by_name.setdefault(key, f)
    out, missing = [], []
    for name in names:
        hit = by_name.get(name) or by_name.get(Path(name).name) or by_name.get(Path(name).stem)
        if hit is None:
            missing.append(name)
        else:
            out.append(str(hit))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} caption video(s) match no video file, e.g. {missing[:3]}; check --videos and "
            "the "
            "'video' names in the captions."
        )
    return out

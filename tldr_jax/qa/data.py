"""Video-QA and multiple-choice data: the official annotation files and the per-dataset conventions.

Read from the official configs (``multi_modality/exp/finetuning/qa_{msrvtt,msvd,anet}/b16_25m.py``,
``configs/qa*.py``, ``exp/finetuning/mc_msrvtt/b16_25m.py``):

=============  ====  ======  ====  =====  =====  ==============  ================================
preset         task  frames  k     max_q  max_a  vid-TLDR ``r``  test annotation
=============  ====  ======  ====  =====  =====  ==============  ================================
``msrvtt_qa``  QA    12      128   25     5      ``msrvtt_qa``   ``msrvtt_qa_test.json``
``msvd_qa``    QA    12      128   25     5      ``msvd_qa``     ``msvd_qa_test.json``
``anet_qa``    QA    12      128   25     5      none published  ``anet_qa_test.json``
``msrvtt_mc``  MC    12      --    --     --     ``msrvtt``      ``msrvtt_mc_test.json`` (32 tokens)
=============  ====  ======  ====  =====  =====  ==============  ================================

The answer lists are ``<dataset>_qa_answer_list.json``.

Every preset evaluates at 224 px with the middle frame of equal segments. vid-TLDR publishes schedules for
MSR-VTT-QA and MSVD-QA (UMT-B/16 and UMT-L/16); for ActivityNet-QA none, so the general default applies
(:func:`tldr_jax.schedule.default_r`); MSR-VTT-MC runs the MSR-VTT retrieval checkpoint, so its retrieval
schedule is the default.

Annotation formats (JSON lists): QA entries ``{"video", "question", "answer", "question_id", ...}``
(``answer`` a string; a list is kept as it is and, as in the official exact match, never equals a
prediction); answer lists: a list of strings; MC entries ``{"video", "caption": [5 strings], "answer":
index}``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class QAPreset:
    """How the official code evaluates video QA (or MSR-VTT multiple choice) on one dataset.

    Attributes:
      name: preset name.
      task: ``"qa"`` (answer ranking) or ``"mc"`` (multiple choice with a retrieval model).
      r: the vid-TLDR schedule preset to default to, or None where none is published.
      num_frames: frames per clip.
      img_size: frame height and width.
      k_test: answers re-scored per question (QA).
      max_q_len: question tokens (QA).
      max_a_len: answer tokens (QA).
      max_txt_l: caption tokens (multiple choice).
      test_annotation: the official test annotation file name.
      answer_list: the official answer list file name (QA).
    """

    name: str
    task: str = "qa"
    r: str | None = None
    num_frames: int = 12
    img_size: int = 224
    k_test: int = 128
    max_q_len: int = 25
    max_a_len: int = 5
    max_txt_l: int = 32
    test_annotation: str = ""
    answer_list: str = ""


#: The official QA evaluation settings by dataset name (:func:`get_preset`).
PRESETS: dict[str, QAPreset] = {
    p.name: p
    for p in (
        QAPreset("msrvtt_qa", r="msrvtt_qa", test_annotation="msrvtt_qa_test.json",
                 answer_list="msrvtt_qa_answer_list.json"),
        QAPreset("msvd_qa", r="msvd_qa", test_annotation="msvd_qa_test.json",
                 answer_list="msvd_qa_answer_list.json"),
        QAPreset("anet_qa", test_annotation="anet_qa_test.json", answer_list="anet_qa_answer_list.json"),
        QAPreset("msrvtt_mc", task="mc", r="msrvtt", test_annotation="msrvtt_mc_test.json"),
    )
}


def get_preset(name: str | QAPreset) -> QAPreset:
    """The preset called ``name``; ``ValueError`` naming the close matches otherwise."""
    if isinstance(name, QAPreset):
        return name
    key = str(name).lower().replace("-", "_")
    if key in PRESETS:
        return PRESETS[key]
    near = difflib.get_close_matches(key, list(PRESETS), n=3)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise ValueError(f"unknown QA / MC dataset {name!r}; known: {', '.join(PRESETS)}.{hint}")


def _read_list(path: str | Path, what: str) -> list[Any]:
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {p} does not exist; check the path.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {what} {p}: {e}") from e
    if not isinstance(data, list) or not data:
        raise ValueError(f"{what} {p} must be a non-empty JSON list; got {type(data).__name__}.")
    return data


def load_answer_list(path: str | Path) -> list[str]:
    """The official answer list (``*_qa_answer_list.json``: a JSON list of strings)."""
    answers = _read_list(path, "answer list")
    bad = next((i for i, a in enumerate(answers) if not isinstance(a, str)), None)
    if bad is not None:
        raise ValueError(f"answer list {path}: entry {bad} is a {type(answers[bad]).__name__}, not a string.")
    return answers


def _entries(path: str | Path, what: str, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    entries = _read_list(path, what)
    for i, e in enumerate(entries):
        missing = [k for k in keys if not isinstance(e, dict) or k not in e]
        if missing:
            raise ValueError(f"{what} {path}: entry {i} lacks {missing}; expected keys {list(keys)}.")
    return entries


def _video_paths(entries: list[dict[str, Any]], root: str | Path | None) -> tuple[list[str], np.ndarray]:
    """Unique video paths (``root`` joined, first-seen order) and each entry's index into them."""
    index: dict[str, int] = {}
    rows = []
    for e in entries:
        name = str(Path(root) / e["video"]) if root is not None else str(e["video"])
        rows.append(index.setdefault(name, len(index)))
    return list(index), np.asarray(rows, np.int64)


@dataclasses.dataclass
class QAAnnotations:
    """An official QA annotation file.

    Attributes:
      videos: the distinct video paths (``video_root`` joined), in first-seen order.
      questions: ``n`` raw questions; question_video: ``(n,)`` index into ``videos``.
      answers: ``n`` ground-truth answers, as stored; question_ids: ``n`` ids (the entry index when absent).
    """

    videos: list[str]
    questions: list[str]
    question_video: np.ndarray
    answers: list[Any]
    question_ids: list[Any]


def load_qa_annotations(path: str | Path, video_root: str | Path | None = None) -> QAAnnotations:
    """Read an official QA annotation file (``msrvtt_qa_test.json``, ...)."""
    entries = _entries(path, "QA annotation file", ("video", "question", "answer"))
    videos, rows = _video_paths(entries, video_root)
    return QAAnnotations(
        videos=videos,
        questions=[str(e["question"]) for e in entries],
        question_video=rows,
        answers=[e["answer"] for e in entries],
        question_ids=[e.get("question_id", i) for i, e in enumerate(entries)],
    )


@dataclasses.dataclass
class MCAnnotations:
    """An official multiple-choice file: one video per item, its candidate captions and the answer.

    Attributes:
      videos: ``n`` video paths (``video_root`` joined), one per item.
      captions: ``n`` rows of raw candidate captions; answers: ``(n,)`` the right caption's index.
    """

    videos: list[str]
    captions: list[list[str]]
    answers: np.ndarray


def load_mc_annotations(path: str | Path, video_root: str | Path | None = None) -> MCAnnotations:
    """Read the official ``msrvtt_mc_test.json``."""
    entries = _entries(path, "multiple-choice file", ("video", "caption", "answer"))
    root = Path(video_root) if video_root is not None else None
    return MCAnnotations(
        videos=[str(root / e["video"]) if root is not None else str(e["video"]) for e in entries],
        captions=[[str(c) for c in e["caption"]] for e in entries],
        answers=np.asarray([int(e["answer"]) for e in entries], np.int64),
    )

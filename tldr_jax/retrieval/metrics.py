"""Retrieval metrics as the official UMT ``itm_eval`` computes them, plus median and mean rank.

For every query row the candidates are ordered by ``np.argsort(scores)[::-1]`` (exactly the official
call, so ties, e.g. the ``-100`` entries outside the re-ranked top-k, are ordered the same way); a query
with several ground truths counts its best-ranked one. Names:

* ``txt_r1/5/10``: video -> text recall at 1/5/10 (%), ``txt_r_mean`` their mean;
* ``img_r1/5/10``: text -> video recall, ``img_r_mean`` their mean; ``r_mean`` the mean of the two means;
* added here (not in the official ``itm_eval``): ``txt_mdr`` / ``img_mdr`` median rank and
  ``txt_mnr`` / ``img_mnr`` mean rank, 1-based, as CLIP4Clip and mmaction2 report them
  (``median(rank0) + 1``, ``mean(rank0) + 1``).

Every value is rounded to 2 decimals, as the official code does.

:func:`dual_softmax` is the inference-time dual-softmax re-scoring that some papers report; the
official evaluation does not use it, so it is only ever applied on request and labelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: The official metric names, in the official order.
OFFICIAL_KEYS: tuple[str, ...] = (
    "txt_r1",
    "txt_r5",
    "txt_r10",
    "txt_r_mean",
    "img_r1",
    "img_r5",
    "img_r10",
    "img_r_mean",
    "r_mean",
)
#: Rank statistics added by tldr_jax.
RANK_KEYS: tuple[str, ...] = ("txt_mdr", "txt_mnr", "img_mdr", "img_mnr")

GroundTruth = Sequence[int] | Sequence[Sequence[int]] | np.ndarray | Mapping[int, Any]


def as_lists(gt: GroundTruth, n: int, what: str) -> list[list[int]]:
    """Ground truth of ``n`` queries as a list of index lists.

    Accepts ints (one answer per query), lists of ints, a 2-D array padded with ``-1`` (the golden
    ``img2txt`` layout) or a dict ``{query: int | list}`` (the official datasets' ``txt2img`` /
    ``img2txt``). Raises ``ValueError`` naming a query without any answer.
    """
    if isinstance(gt, Mapping):
        absent = [i for i in range(n) if i not in gt]
        if absent:
            raise ValueError(
                f"{what} has no entry for queries {absent[:5]}; give one entry per query 0..{n - 1}."
            )
        gt = [gt[i] for i in range(n)]
    rows = list(gt)
    if len(rows) != n:
        raise ValueError(
            f"{what} has {len(rows)} entries but there are {n} queries; give one entry per query."
        )
    out = []
    for i, row in enumerate(rows):
        ids = [int(v) for v in np.atleast_1d(np.asarray(row)).reshape(-1) if int(v) >= 0]
        if not ids:
            raise ValueError(f"{what}[{i}] lists no ground truth; every query needs at least one match.")
        out.append(ids)
    return out


def ranks(scores: np.ndarray, gt: list[list[int]]) -> np.ndarray:
    """0-based rank of the best-ranked ground truth of each row of ``scores (Q, C)``.

    Rows are ordered by ``np.argsort(row)[::-1]``, as the official ``itm_eval`` does.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != len(gt):
        raise ValueError(
            f"scores must be (queries, candidates) with {len(gt)} rows; got shape {scores.shape}."
        )
    out = np.empty(len(gt), np.int64)
    for q, row in enumerate(scores):
        order = np.argsort(row)[::-1]
        position = np.empty_like(order)
        position[order] = np.arange(len(order))
        bad = [g for g in gt[q] if not 0 <= g < len(row)]
        if bad:
            raise ValueError(
                f"ground truth {bad[0]} of query {q} is not a candidate index in [0, {len(row)})."
            )
        out[q] = min(int(position[g]) for g in gt[q])
    return out


def _recalls(rank0: np.ndarray, prefix: str) -> dict[str, float]:
    r = {f"{prefix}_r{k}": 100.0 * float(np.mean(rank0 < k)) for k in (1, 5, 10)}
    r[f"{prefix}_r_mean"] = (r[f"{prefix}_r1"] + r[f"{prefix}_r5"] + r[f"{prefix}_r10"]) / 3
    return r


def retrieval_metrics(
    i2t: np.ndarray, t2i: np.ndarray, txt2vid: GroundTruth, vid2txt: GroundTruth
) -> dict[str, float]:
    """The official ``itm_eval`` metrics plus median / mean ranks.

    Args:
      i2t: ``(n_videos, n_texts)`` scores, rows = video queries.
      t2i: ``(n_texts, n_videos)`` scores, rows = text queries.
      txt2vid: ground-truth video(s) of each text.
      vid2txt: ground-truth text(s) of each video.

    Returns:
      ``{name: value}`` with :data:`OFFICIAL_KEYS` then :data:`RANK_KEYS`, rounded to 2 decimals.
    """
    i2t, t2i = np.asarray(i2t), np.asarray(t2i)
    v2t = as_lists(vid2txt, i2t.shape[0], "vid2txt")
    t2v = as_lists(txt2vid, t2i.shape[0], "txt2vid")
    tr, ir = ranks(i2t, v2t), ranks(t2i, t2v)
    res = {**_recalls(tr, "txt"), **_recalls(ir, "img")}
    res["r_mean"] = (res["txt_r_mean"] + res["img_r_mean"]) / 2
    res.update(
        txt_mdr=float(np.median(tr)) + 1,
        txt_mnr=float(np.mean(tr)) + 1,
        img_mdr=float(np.median(ir)) + 1,
        img_mnr=float(np.mean(ir)) + 1,
    )
    return {k: round(res[k], 2) for k in (*OFFICIAL_KEYS, *RANK_KEYS)}


def official_only(metrics: Mapping[str, float]) -> dict[str, float]:
    """The subset of ``metrics`` the official ``itm_eval`` reports (for comparing with its output)."""
    return {k: metrics[k] for k in OFFICIAL_KEYS}


def dual_softmax(scores: np.ndarray, temperature: float = 0.01) -> np.ndarray:
    """Dual-softmax re-scoring (not part of the official evaluation; only on explicit request).

    Each score is multiplied by the softmax, over the *queries* (axis 0), of ``scores / temperature``:
    a candidate's score for a query counts more when that query is also the one that candidate
    prefers. ``scores`` is ``(queries, candidates)``; the same ``(Q, C)`` array comes back.
    """
    if not temperature > 0:
        raise ValueError(f"the dual-softmax temperature must be > 0; got {temperature!r}.")
    s = np.asarray(scores, np.float64)
    z = s / temperature
    z = np.exp(z - z.max(axis=0, keepdims=True))
    return (s * (z / z.sum(axis=0, keepdims=True))).astype(np.asarray(scores).dtype)

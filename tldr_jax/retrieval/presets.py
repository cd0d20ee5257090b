"""Dataset conventions of the official UMT / vid-TLDR retrieval evaluation, one preset per dataset.

Read from the official configs (``multi_modality/exp/finetuning/ret_*/b16_25m.py``; the
``configs/ret_*.py`` files of the repository are older and differ for ActivityNet, 64 tokens):

=================  ==========  =====  =========  ===========  ========  ====================================
preset             max_txt_l   frames paragraph  multi-text   multi-vid annotation file of the test split
=================  ==========  =====  =========  ===========  ========  ====================================
``msrvtt``         32          12     no         no           no        ``msrvtt_ret_test1k.json``
``msvd``           64          12     no         yes          no        ``msvd_ret_test.json``
``didemo``         64          12     yes        no           no        ``didemo_ret_test.json`` (first 30 s)
``activitynet``    150         12     yes        no           no        ``anet_ret_val.json``
``lsmdc``          96          12     no         no           no        ``lsmdc_ret_test_1000.json``
``ssv2_label``     25          12     no         no           yes       ``ssv2_ret_label_val_small.json``
``ssv2_template``  25          12     no         no           yes       ``ssv2_ret_template_val_small.json``
=================  ==========  =====  =========  ===========  ========  ====================================

Every preset evaluates at 224 px with the middle frame of 12 equal segments (``sample_type_test="middle"``),
``k_test = 128`` and the vid-TLDR schedule of the same name (``tldr_jax.PRESETS``). *Paragraph* retrieval
joins a video's sentences with spaces into one text; *multi-text* means several captions per video (the
best-ranked one counts); *multi-vid* means several videos per caption.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any


@dataclasses.dataclass(frozen=True)
class DatasetPreset:
    """How the official code evaluates retrieval on one dataset.

    Attributes:
      name: preset name; also the name of the vid-TLDR schedule (``r``) published for it.
      max_txt_l: tokens per text, ``[CLS]`` included.
      num_frames: frames per clip (``num_frames_test``).
      img_size: frame size (``image_res``).
      k_test: texts / videos re-ranked by the matching head per query.
      is_paragraph_retrieval: a video's caption list is joined into one paragraph.
      multi_txt_gt: several captions per video.
      has_multi_vision_gt: several videos per caption (the annotation's ``video`` is a list).
      trim_seconds: only the first seconds of each video are sampled (DiDeMo's ``trimmed30``), or None.
      test_annotation: the annotation file of the official test split.
    """

    name: str
    max_txt_l: int
    num_frames: int = 12
    img_size: int = 224
    k_test: int = 128
    is_paragraph_retrieval: bool = False
    multi_txt_gt: bool = False
    has_multi_vision_gt: bool = False
    trim_seconds: float | None = None
    test_annotation: str = ""

    @property
    def r(self) -> str:
        """The vid-TLDR schedule preset published for this dataset."""
        return self.name

    def eval_kwargs(self) -> dict[str, Any]:
        """``k``, ``r`` and ``max_length`` for :func:`tldr_jax.retrieval.evaluate`."""
        return {"k": self.k_test, "r": self.r, "max_length": self.max_txt_l}


#: The official retrieval evaluation settings by dataset name (:func:`get_dataset`).
DATASETS: dict[str, DatasetPreset] = {
    p.name: p
    for p in (
        DatasetPreset("msrvtt", 32, test_annotation="msrvtt_ret_test1k.json"),
        DatasetPreset("msvd", 64, multi_txt_gt=True, test_annotation="msvd_ret_test.json"),
        DatasetPreset(
            "didemo",
            64,
            is_paragraph_retrieval=True,
            trim_seconds=30.0,
            test_annotation="didemo_ret_test.json",
        ),
        DatasetPreset("activitynet", 150, is_paragraph_retrieval=True, test_annotation="anet_ret_val.json"),
        DatasetPreset("lsmdc", 96, test_annotation="lsmdc_ret_test_1000.json"),
        DatasetPreset(
            "ssv2_label", 25, has_multi_vision_gt=True, test_annotation="ssv2_ret_label_val_small.json"
        ),
        DatasetPreset(
            "ssv2_template", 25, has_multi_vision_gt=True, test_annotation="ssv2_ret_template_val_small.json"
        ),
    )
}


def get_dataset(name: str) -> DatasetPreset:
    """The preset called ``name``; ``ValueError`` naming the close matches otherwise."""
    if isinstance(name, DatasetPreset):
        return name
    if name in DATASETS:
        return DATASETS[name]
    near = difflib.get_close_matches(str(name), list(DATASETS), n=3)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise ValueError(f"unknown retrieval dataset {name!r}; known: {', '.join(DATASETS)}.{hint}")

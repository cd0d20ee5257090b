"""Official UMT video-QA checkpoints (``models/umt_qa.py::UMT_QA``) -> a tldr_jax QA directory.

``python -m checkpoints_convert qa_msrvtt_b16.pth OUT --format umt_qa --vocab vocab.txt
[--text-config config_bert.json] [--num-heads N --num-frames T --img-size S]`` writes a directory that
``tldr_jax.load`` returns as a :class:`tldr_jax.qa.QAModel`.

Keys read (``module.`` prefixes stripped; a ``{"model": ...}`` wrapper peeled, also from released files
holding the optimizer, scheduler and a pickled training config, which is read safely):

* ``vision_encoder.*``: the UMT vision encoder without ``pool_norm`` (the vision converter);
* ``text_encoder.{embeddings,encoder}.*``: the question encoder (the retrieval text tower's names and
  table, :data:`checkpoints_convert.bert.TEXT`, without its heads);
* ``text_decoder.bert.{embeddings,encoder}.*``: the decoder's embeddings and layers (the same table, read
  under ``text_decoder.bert.``; every layer has cross-attention);
* ``text_decoder.cls.predictions.{transform.dense, transform.LayerNorm, bias}``: the LM head;
  ``cls.predictions.decoder.weight`` is tied to the decoder's word embeddings and ``decoder.bias`` is
  ``bias`` itself: both are verified equal and dropped; the ``position_ids`` buffers are verified.

Text sizes come from the weights as for retrieval (``--text-config`` gives heads, LayerNorm epsilon and
the activation); the decoder must have ``num_layers - fusion_layer`` layers, as the official builder
makes it. The vision sizes the flags leave open (heads, frames, image size) are read from the training
config a released file holds, or from a ``--text-config`` that records them
(:mod:`checkpoints_convert.recorded`); a flag that contradicts them is refused in one line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from checkpoints_convert import core, formats, readers, rules
from checkpoints_convert.bert import TEXT, check_position_ids, infer_text_config
from checkpoints_convert.common import (
    TextModelConversion,
    convert_file,
    ignore_rules,
    invert_table,
    map_tree,
    save_official_state_dict,
)
from checkpoints_convert.errors import ConversionError
from checkpoints_convert.recorded import read_recorded
from checkpoints_convert.rules import Rule, Table, layernorm, linear

QUESTION_PREFIX = "text_encoder."
DECODER_PREFIX = "text_decoder.bert."
HEAD_PREFIX = "text_decoder.cls.predictions."
#: Where a key goes: the question encoder, the decoder, or (anything else) the vision converter.
_PARTS = {"question": re.compile(r"text_encoder\."), "decoder": re.compile(r"text_decoder\.")}

#: The decoder: its BERT part renamed from ``text_decoder.bert.`` to the text table's ``text_encoder.``,
#: and the LM head.
DECODER = Table(
    rules=(
        *TEXT.rules,
        Rule(f"{HEAD_PREFIX}bias", "head/bias"),
        *linear(f"{HEAD_PREFIX}transform.dense", "head/dense"),
        *layernorm(f"{HEAD_PREFIX}transform.LayerNorm", "head/norm"),
    ),
    ignore=(
        *TEXT.ignore,
        (
            re.escape(HEAD_PREFIX) + r"decoder\.weight$",
            "cls.predictions.decoder.weight (tied to the word embeddings)",
        ),
        (
            re.escape(HEAD_PREFIX) + r"decoder\.bias$",
            "cls.predictions.decoder.bias (the same tensor as its bias)",
        ),
    ),
)


@dataclasses.dataclass
class QAConversion(TextModelConversion):
    """A finished QA conversion (the vision part's :class:`~checkpoints_convert.core.Conversion` plus the
    question encoder and the decoder)."""

    def summary(self) -> str:
        """One line: source, parts, sizes, destination."""
        tc, vc = self.model.text_config, self.model.vision.config
        n_dropped = sum(len(v) for v in self.dropped.values())
        dest = f" -> {self.out}" if self.out is not None else ""
        vision = (
            f"{vc.name} [depth {vc.depth}, width {vc.embed_dim}, {vc.num_heads} heads, "
            f"{vc.num_frames} frames @ {vc.img_size}px]"
        )
        question = (
            f"BERT [{tc.num_layers} layers (fusion from {tc.fusion_layer}), width {tc.hidden_size}, "
            f"{tc.num_heads} heads, vocab {tc.vocab_size}]"
        )
        return (
            f"converted {self.origin} (umt_qa, {self.num_tensors} tensors, {n_dropped} dropped){dest}: "
            f"vision {vision}; question {question}; answer decoder "
            f"[{self.model.decoder_config.num_layers} layers]; {self.model.num_params() / 1e6:.2f}M params"
        )


def _split(raw: Mapping[str, Any], origin: str) -> dict[str, dict[str, str]]:
    """``{part: {normalised key: original}}`` for ``vision``, ``question`` and ``decoder``."""
    parts: dict[str, dict[str, str]] = {"vision": {}, "question": {}, "decoder": {}}
    for short, orig in formats.strip_ddp(raw.keys()).items():
        part = next((p for p, rx in _PARTS.items() if rx.match(short)), "vision")
        if short.startswith(DECODER_PREFIX):
            short = QUESTION_PREFIX + short[len(DECODER_PREFIX) :]
        parts[part][short] = orig
    if not parts["decoder"]:
        raise ConversionError(
            f"{origin} has no answer decoder (text_decoder.*): it is not a UMT-QA checkpoint. Convert a "
            "retrieval checkpoint without --format umt_qa, or a vision encoder without --vocab."
        )
    return parts


def _check_buffers(state: Mapping[str, Any], names: Mapping[str, str], origin: str) -> None:
    """The ``position_ids`` buffer is ``0, 1, 2, ...``; tied / shared head tensors equal their twins."""
    check_position_ids(state, origin, names)
    twins = {
        f"{HEAD_PREFIX}decoder.weight": "text_encoder.embeddings.word_embeddings.weight",
        f"{HEAD_PREFIX}decoder.bias": f"{HEAD_PREFIX}bias",
    }
    for key, twin in twins.items():
        if key in state and twin in state:
            a, b = readers.to_numpy(state[key], names[key]), readers.to_numpy(state[twin], names[twin])
            if a.shape != b.shape or not np.array_equal(a, b):
                raise ConversionError(
                    f"{origin}: {names[key]} differs from {names[twin]}, but the official decoder ties them "
                    "(one tensor); the file is corrupt or not from UMT_QA."
                )


def _text_parts(
    raw: Mapping[str, Any],
    parts: Mapping[str, Mapping[str, str]],
    bert: Mapping[str, Any] | None,
    user: Mapping[str, list[tuple[str, str]]],
    origin: str,
) -> tuple[dict[str, Any], Any, dict[str, list[str]], list[str]]:
    """The question and decoder trees, the TextConfig, drops and notes."""
    from tldr_jax.qa.model import QuestionEncoder
    from tldr_jax.text.decoder import AnswerDecoder, decoder_config, module_shapes

    states = {p: {k: raw[o] for k, o in parts[p].items()} for p in ("question", "decoder")}
    for p in states:
        _check_buffers(states[p], parts[p], origin)
    tc, notes = infer_text_config(states["question"], bert, origin)
    try:
        dc = decoder_config(tc)
    except ValueError as e:
        raise ConversionError(f"{origin}: {e}") from e
    trees, dropped = {}, {}
    for p, table, module, cfg in (
        ("question", TEXT, QuestionEncoder, tc),
        ("decoder", DECODER, AnswerDecoder, dc),
    ):
        what = "question encoder" if p == "question" else "answer decoder"
        trees[p], drops = map_tree(
            table, states[p], parts[p], module_shapes(module, cfg), user[p], what, origin
        )
        dropped.update({f"{g} [{p}]": keys for g, keys in drops.items()})
    return trees, tc, dropped, notes


def convert_qa_state_dict(
    state_dict: Mapping[str, Any],
    *,
    vocab: Any,
    text_config: Mapping[str, Any] | None = None,
    origin: str = "<state dict>",
    ignore: tuple[str, ...] = (),
    verbose: bool = True,
    **vision_options: Any,
) -> QAConversion:
    """Convert an in-memory official UMT-QA state dict (see the module docstring).

    Args:
      state_dict: ``{name: tensor}``, optionally wrapped (``{"model": ..., "config": ...}``).
      vocab: a :class:`~tldr_jax.text.tokenizer.Vocabulary` or a token list.
      text_config: the BERT config dict (``config_bert.json``), or None.
      ignore: regexes of keys to drop explicitly (any part).
      **vision_options: the vision converter's options (``num_heads``, ``num_frames``, ``img_size``, ...).
    """
    from tldr_jax.qa.model import QAModel, check_parts
    from tldr_jax.text.tokenizer import Vocabulary, check_vocab

    raw = formats.unwrap_state_dict(state_dict, origin)
    parts = _split(raw, origin)
    hits = {
        p: [x for x in ignore if any(re.match(x, k) or re.match(x, o) for k, o in parts[p].items())]
        for p in parts
    }
    unmatched = [x for x in ignore if not any(x in h for h in hits.values())]
    if unmatched:
        raise ConversionError(f"--ignore {unmatched[0]!r} matches no key of {origin}; check the pattern.")
    vision_state = {k: raw[o] for k, o in parts["vision"].items()}
    config = state_dict.get("config") if isinstance(state_dict, Mapping) else None
    recorded = read_recorded(config, text_config, origin=origin)  # defaults of heads, frames, image size
    vision = core.convert_state_dict_detailed(
        vision_state, "umt", origin=origin, ignore=hits["vision"], verbose=False, recorded=recorded,
        **vision_options,
    )
    user = {p: ignore_rules(hits[p], parts[p], origin) for p in ("question", "decoder")}
    trees, tc, dropped, text_notes = _text_parts(raw, parts, text_config, user, origin)
    vc = vision.params.config
    vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary(vocab)
    try:
        check_parts(vc.embed_dim, vc.pool_norm, vc.vision_proj_dim, tc)
        check_vocab(vocab, tc)
    except ValueError as e:
        raise ConversionError(f"{origin}: {e}") from e
    model = QAModel(vision=vision.params, text_config=tc, vocab=vocab, **trees)
    all_notes = [*vision.notes, *text_notes]
    conv = QAConversion(model, vision, {**vision.dropped, **dropped}, all_notes, origin, len(raw))
    return conv.report(verbose)


def convert_qa(
    src: str | Path,
    out: str | Path,
    *,
    vocab: str | Path | None = None,
    text_config: str | Path | Mapping[str, Any] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> QAConversion:
    """Convert an official UMT-QA checkpoint file into a QA directory (atomic).

    Raises:
      ConversionError: no ``vocab``, an unreadable source, missing / unexpected / mis-shaped keys, a text
        or training config that contradicts the weights or the flags, or an existing ``out`` without
        ``overwrite``.
    """
    from tldr_jax.qa.checkpoint import save as save_qa

    return convert_file(
        src, out, fmt="umt_qa", vocab=vocab, text_config=text_config, overwrite=overwrite,
        options=options, convert_state_dict=convert_qa_state_dict, save_fn=save_qa,
        no_vocab=(
            "a QA conversion needs the vocabulary the text side was trained with: pass --vocab vocab.txt "
            "(bert-base-uncased's for UMT-B)."
        ),
    )


# --------------------------------------------------------------------------------------------------
# The other way: a QAModel in the official key layout (tests, benchmarks, offline notebooks).
# --------------------------------------------------------------------------------------------------


def to_official_state_dict(model: Any) -> dict[str, np.ndarray]:
    """The ``UMT_QA.state_dict()`` layout of a QAModel (numpy arrays, ``(out, in)`` Linear weights, the
    ``position_ids`` buffers and the tied ``cls.predictions.decoder.{weight, bias}`` included). Also maps a
    gradient pytree of the model to official names."""
    sd = {f"vision_encoder.{k}": v for k, v in invert_table(rules.UMT, model.vision.tree).items()}
    sd.update(invert_table(TEXT, model.question))
    for key, value in invert_table(DECODER, model.decoder).items():
        sd[DECODER_PREFIX + key[len(QUESTION_PREFIX) :] if key.startswith(QUESTION_PREFIX) else key] = value
    positions = np.arange(model.text_config.max_position_embeddings, dtype=np.int64)[None]
    sd["text_encoder.embeddings.position_ids"] = positions
    sd[f"{DECODER_PREFIX}embeddings.position_ids"] = positions.copy()
    sd[f"{HEAD_PREFIX}decoder.weight"] = sd[f"{DECODER_PREFIX}embeddings.word_embeddings.weight"]
    sd[f"{HEAD_PREFIX}decoder.bias"] = sd[f"{HEAD_PREFIX}bias"]
    return sd


def save_official(model: Any, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """``torch.save({"model": state_dict, **extra}, path)`` in the official layout (tests, demos,
    benchmarks)."""
    return save_official_state_dict(to_official_state_dict(model), path, extra=extra)

"""Official UMT *retrieval* checkpoints (vision + text + heads) -> a tldr_jax retrieval directory.

``python -m checkpoints_convert umt_ret.pth OUT --vocab vocab.txt [--text-config config_bert.json]
[--num-heads N --num-frames T --img-size S]`` writes a directory that ``tldr_jax.load`` returns as a
:class:`tldr_jax.retrieval.RetrievalModel` (vision encoder, text tower, ``vision_proj``, ``text_proj``,
``itm_head``, ``temp`` and the vocabulary).

Layouts read (``module.`` prefixes stripped; a ``{"model": ...}`` wrapper peeled):

* fine-tuned retrieval (``UMT(is_pretrain=False).state_dict()``, e.g. ``ret_msrvtt_b16_25m.pth``):
  ``vision_encoder.*``, ``text_encoder.{embeddings,encoder}.*``, ``vision_proj``, ``text_proj``,
  ``itm_head``, ``temp``;
* pre-training (``BertForMaskedLM`` text tower, e.g. ``b16_25m.pth``): ``text_encoder.bert.*`` is mapped
  to the text tower exactly as the official code does for zero-shot evaluation and fine-tuning (it strips
  ``bert.``), with a note; the MLM head ``text_encoder.cls.*``, ``clip_decoder.*`` and ``clip_teacher.*``
  are dropped and listed. (The official loader strips ``bert.`` only when fine-tuning or with
  ``zero_shot``; evaluating a pre-training checkpoint otherwise leaves its text tower random. Here the
  text tower is always mapped or the conversion fails.)

Text sizes come from the weights (vocabulary, width, layers, MLP, positions, the first layer with
cross-attention = ``fusion_layer``, the width it reads = ``encoder_width``, ``embed_dim``); the BERT config
(``--text-config``) gives what weights cannot say: heads (default width / 64), LayerNorm epsilon (default
1e-12) and the activation (default exact GELU). A config that contradicts the weights is an error;
``fusion_layer`` / ``encoder_width`` in it are only noted when they differ, because the official builder
overrides them from the model config. Every key is mapped or on a printed drop list.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from checkpoints_convert import core, formats, rules
from checkpoints_convert.bert import (
    TEXT,
    TEXT_PREFIX,
    check_position_ids,
    infer_text_config,
)
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

PRETRAIN_PREFIX = "text_encoder.bert."
#: Top-level keys that belong to the text side of a UMT model (everything else goes to the vision converter).
TEXT_KEYS = re.compile(r"(text_encoder\.|text_proj\.|itm_head\.|temp$)")


@dataclasses.dataclass
class RetrievalConversion(TextModelConversion):
    """A finished retrieval conversion (the vision part's :class:`~checkpoints_convert.core.Conversion`
    plus the text side)."""

    def summary(self) -> str:
        """One line: source, towers, sizes, destination."""
        tc, vc = self.model.text_config, self.model.vision.config
        n_dropped = sum(len(v) for v in self.dropped.values())
        dest = f" -> {self.out}" if self.out is not None else ""
        return (
            f"converted {self.origin} (umt_retrieval, {self.num_tensors} tensors, {n_dropped} "
            f"dropped){dest}: "
            f"vision {vc.name} [depth {vc.depth}, width {vc.embed_dim}, {vc.num_heads} heads, "
            f"{vc.num_frames} "
            f"frames @ {vc.img_size}px]; text BERT [{tc.num_layers} layers (fusion from "
            f"{tc.fusion_layer}), width "
            f"{tc.hidden_size}, {tc.num_heads} heads, vocab {tc.vocab_size}]; ITC dim {tc.embed_dim}; "
            f"{self.model.num_params() / 1e6:.2f}M params{core.assumed_text(self.vision.assumed)}"
        )


def _normalise_text(keys: list[str], origin: str) -> tuple[dict[str, str], bool]:
    """``{normalised key: original}`` for the text keys (``module.`` stripped, ``bert.`` removed) and
    whether the pre-training layout was seen."""
    out: dict[str, str] = {}
    pretrain = False
    for short, orig in formats.strip_ddp(keys).items():
        if short.startswith(PRETRAIN_PREFIX):
            pretrain = True
            short = TEXT_PREFIX + short[len(PRETRAIN_PREFIX) :]
        if short in out:
            raise ConversionError(
                f"{origin} holds both {out[short]!r} and {orig!r} (pre-training and fine-tuned names of "
                "the same "
                "text weight); keep one layout."
            )
        out[short] = orig
    return out, pretrain


def _text_side(
    text_state: Mapping[str, Any],
    names: Mapping[str, str],
    bert: Mapping[str, Any] | None,
    origin: str,
    ignore: list[tuple[str, str]],
) -> tuple[dict[str, Any], Any, dict[str, list[str]], list[str]]:
    """Map the text keys; returns the tree, the TextConfig, the drops and notes (raises on any gap)."""
    from tldr_jax.text.bert import expected_text_shapes

    cfg, notes = infer_text_config(text_state, bert, origin)
    check_position_ids(text_state, origin)
    expected = expected_text_shapes(cfg)
    tree, dropped = map_tree(
        TEXT, text_state, names, expected, ignore, "text tower", origin, scalars=("temp",)
    )
    return tree, cfg, dropped, notes


def convert_retrieval_state_dict(
    state_dict: Mapping[str, Any],
    *,
    vocab: Any,
    text_config: Mapping[str, Any] | None = None,
    origin: str = "<state dict>",
    ignore: tuple[str, ...] = (),
    verbose: bool = True,
    **vision_options: Any,
) -> RetrievalConversion:
    """Convert an in-memory official UMT retrieval state dict (see the module docstring).

    Args:
      state_dict: ``{name: tensor}``, optionally wrapped (``{"model": ...}``).
      vocab: a :class:`~tldr_jax.text.tokenizer.Vocabulary` or a token list.
      text_config: the BERT config dict (``config_bert.json``), or None.
      ignore: regexes of keys to drop explicitly (either side).
      **vision_options: the vision converter's options (``num_heads``, ``num_frames``, ``img_size``, ...).
    """
    from tldr_jax.retrieval.model import RetrievalModel
    from tldr_jax.text.tokenizer import Vocabulary, check_vocab

    raw = formats.unwrap_state_dict(state_dict, origin)
    stripped = formats.strip_ddp(raw.keys())
    if any(short.startswith("text_decoder.") for short in stripped):
        raise ConversionError(
            f"{origin} holds an answer decoder (text_decoder.*): it is a UMT-QA checkpoint; convert it with "
            "--format umt_qa."
        )
    text_keys = [orig for short, orig in stripped.items() if TEXT_KEYS.match(short)]
    if not text_keys:
        raise ConversionError(
            f"{origin} holds no text tower (text_encoder.*, text_proj, itm_head): it is a vision-only "
            "checkpoint. "
            "Convert it without --vocab/--text-config."
        )
    names, pretrain = _normalise_text(text_keys, origin)
    text_state = {k: raw[o] for k, o in names.items()}
    vision_state = {k: v for k, v in raw.items() if k not in set(text_keys)}
    text_ignore = [p for p in ignore if any(re.match(p, k) or re.match(p, o) for k, o in names.items())]
    vision_ignore = [p for p in ignore if any(re.match(p, k) for k in formats.strip_ddp(vision_state))]
    unmatched = [p for p in ignore if p not in text_ignore and p not in vision_ignore]
    if unmatched:
        raise ConversionError(f"--ignore {unmatched[0]!r} matches no key of {origin}; check the pattern.")
    user = ignore_rules(text_ignore, names, origin)
    config = state_dict.get("config") if isinstance(state_dict, Mapping) else None
    recorded = read_recorded(config, text_config, origin=origin)  # the sizes' defaults (heads, frames, px)
    vision = core.convert_state_dict_detailed(
        vision_state, "umt", origin=origin, ignore=vision_ignore, verbose=False, recorded=recorded,
        **vision_options,
    )
    tree, tcfg, dropped, notes = _text_side(text_state, names, text_config, origin, user)
    vcfg = vision.params.config
    if tcfg.encoder_width != vcfg.embed_dim or tcfg.embed_dim != vcfg.vision_proj_dim:
        raise ConversionError(
            f"{origin}: the text tower reads {tcfg.encoder_width}-wide video tokens into a "
            f"{tcfg.embed_dim}-d ITC "
            f"space but the vision encoder is {vcfg.embed_dim} wide with vision_proj "
            f"{vcfg.vision_proj_dim or 'absent'};"
            " the towers do not belong together."
        )
    vocab = vocab if isinstance(vocab, Vocabulary) else Vocabulary(vocab)
    try:
        check_vocab(vocab, tcfg)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    if pretrain:
        notes.insert(
            0,
            "pre-training layout: text_encoder.bert.* mapped to the text tower (the official zero-shot / "
            "fine-tuning loaders strip 'bert.' the same way)",
        )
    model = RetrievalModel(vision=vision.params, text=tree, text_config=tcfg, vocab=vocab)
    all_dropped = {**vision.dropped, **dropped}
    conv = RetrievalConversion(model, vision, all_dropped, [*vision.notes, *notes], origin, len(raw))
    return conv.report(verbose)


def convert_retrieval(
    src: str | Path,
    out: str | Path,
    *,
    vocab: str | Path | None = None,
    text_config: str | Path | Mapping[str, Any] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> RetrievalConversion:
    """Convert an official UMT retrieval checkpoint file into a retrieval directory (atomic).

    Raises:
      ConversionError: no ``vocab``, an unreadable source, missing / unexpected / mis-shaped keys, a text
        config that contradicts the weights, or an existing ``out`` without ``overwrite``.
    """
    from tldr_jax.retrieval.checkpoint import save as save_retrieval

    return convert_file(
        src, out, fmt="umt_retrieval", vocab=vocab, text_config=text_config, overwrite=overwrite,
        options=options, convert_state_dict=convert_retrieval_state_dict, save_fn=save_retrieval,
        no_vocab=(
            "a retrieval conversion needs the vocabulary the text tower was trained with: pass --vocab "
            "vocab.txt (bert-base-uncased's for UMT-B), or omit --text-config to convert the vision "
            "encoder alone."
        ),
    )


# --------------------------------------------------------------------------------------------------
# The other way: a RetrievalModel in the official key layout (tests, benchmarks, offline notebooks).
# --------------------------------------------------------------------------------------------------


def to_official_state_dict(model: Any) -> dict[str, np.ndarray]:
    """The official ``UMT(is_pretrain=False).state_dict()`` layout of a RetrievalModel (numpy arrays,
    ``(out, in)`` Linear weights, ``position_ids`` buffer included). The vision encoder must have q/v
    biases."""
    vision = invert_table(rules.UMT, model.vision.tree)
    sd = {k if k.startswith("vision_proj") else f"vision_encoder.{k}": v for k, v in vision.items()}
    sd.update(invert_table(TEXT, model.text))
    positions = model.text_config.max_position_embeddings
    sd["text_encoder.embeddings.position_ids"] = np.arange(positions, dtype=np.int64)[None]
    return sd


def save_official(model: Any, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """``torch.save({"model": state_dict, **extra}, path)`` in the official layout (tests, demos,
    benchmarks)."""
    return save_official_state_dict(to_official_state_dict(model), path, extra=extra)

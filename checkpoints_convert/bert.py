"""The BERT text side of official UMT checkpoints, shared by the retrieval and QA converters.

The key table :data:`TEXT` (official ``text_encoder.*`` names after normalisation -> the tree of
:mod:`tldr_jax.text.bert`), :func:`infer_text_config` (the :class:`~tldr_jax.text.bert.TextConfig` read off
the weights and a ``config_bert.json``), the ``position_ids`` buffer check and the ``vocab.txt`` reader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from checkpoints_convert import readers
from checkpoints_convert.errors import ConversionError
from checkpoints_convert.rules import Rule, Table, layernorm, linear

TEXT_PREFIX = "text_encoder."
POSITION_IDS = "text_encoder.embeddings.position_ids"


def _bert_attention(src: str, dst: str) -> list[Rule]:
    return [
        *linear(f"{src}.self.query", f"{dst}/query"),
        *linear(f"{src}.self.key", f"{dst}/key"),
        *linear(f"{src}.self.value", f"{dst}/value"),
        *linear(f"{src}.output.dense", f"{dst}/dense"),
        *layernorm(f"{src}.output.LayerNorm", f"{dst}/norm"),
    ]


_L = "text_encoder.encoder.layer.{i}"

#: The text side of an official UMT checkpoint (keys after normalisation: ``text_encoder.bert.`` ->
#: ``text_encoder.``) -> the text tree of :mod:`tldr_jax.text.bert`.
TEXT = Table(
    rules=(
        Rule("text_encoder.embeddings.word_embeddings.weight", "embeddings/word/embedding"),
        Rule("text_encoder.embeddings.position_embeddings.weight", "embeddings/position/embedding"),
        Rule("text_encoder.embeddings.token_type_embeddings.weight", "embeddings/token_type/embedding"),
        *layernorm("text_encoder.embeddings.LayerNorm", "embeddings/norm"),
        *_bert_attention(f"{_L}.attention", "layer_{i}/attention"),
        *_bert_attention(f"{_L}.crossattention", "layer_{i}/crossattention"),
        *linear(f"{_L}.intermediate.dense", "layer_{i}/intermediate"),
        *linear(f"{_L}.output.dense", "layer_{i}/output"),
        *layernorm(f"{_L}.output.LayerNorm", "layer_{i}/output_norm"),
        *linear("text_proj", "text_proj"),
        *linear("itm_head", "itm_head"),
        Rule("temp", "temp"),
    ),
    ignore=(
        (r"text_encoder\.embeddings\.position_ids$", "text_encoder position_ids (arange buffer, verified)"),
        (r"text_encoder\.cls\.", "text_encoder.cls (masked-language-model head of pre-training)"),
        (r"text_encoder\.pooler\.", "text_encoder.pooler (BERT pooler, not used by UMT)"),
    ),
)

#: BERT-config fields read off the weights, with the config name they are checked against.
_FROM_WEIGHTS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
}
#: Fields the official builder overrides (from the model config), so a differing file value is only noted.
_OVERRIDDEN = {"fusion_layer": "fusion_layer", "encoder_width": "encoder_width"}

def _layer_indices(state: Mapping[str, Any], part: str) -> list[int]:
    rx = re.compile(rf"text_encoder\.encoder\.layer\.(\d+)\.{part}\.")
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def _shape(state: Mapping[str, Any], key: str, origin: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(
            f"{origin} has no {key!r}: its text tower is incomplete (or the file is not a UMT retrieval "
            "checkpoint). Convert the vision encoder alone by omitting --vocab/--text-config."
        )
    return tuple(np.shape(state[key]))


def infer_text_config(
    state: Mapping[str, Any], bert: Mapping[str, Any] | None, origin: str
) -> tuple[Any, list[str]]:
    """The :class:`~tldr_jax.retrieval.TextConfig` of normalised text ``state`` and notes on the choices.

    Raises:
      ConversionError: no cross-attention layers, or ``bert`` contradicting the weights.
    """
    from tldr_jax.text.bert import TextConfig

    bert = dict(bert or {})
    notes: list[str] = []
    vocab, hidden = _shape(state, "text_encoder.embeddings.word_embeddings.weight", origin)
    layers = _layer_indices(state, "attention")
    cross = _layer_indices(state, "crossattention")
    if not layers:
        raise ConversionError(f"{origin} has no text_encoder.encoder.layer.* weights; it has no text tower.")
    if not cross:
        raise ConversionError(
            f"{origin}: no text layer has cross-attention, so the model cannot score video-text pairs (ITM); "
            "it is not a UMT retrieval checkpoint."
        )
    num_layers = max(layers) + 1
    fusion = min(cross)
    if cross != list(range(fusion, num_layers)):
        raise ConversionError(
            f"{origin}: cross-attention in layers {cross}; expected every layer from {fusion} on."
        )
    fields = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_layers": num_layers,
        "intermediate_size": _shape(state, "text_encoder.encoder.layer.0.intermediate.dense.weight", origin)[
            0
        ],
        "max_position_embeddings": _shape(
            state, "text_encoder.embeddings.position_embeddings.weight", origin
        )[0],
        "type_vocab_size": _shape(state, "text_encoder.embeddings.token_type_embeddings.weight", origin)[0],
        "fusion_layer": fusion,
        "encoder_width": _shape(
            state, f"text_encoder.encoder.layer.{fusion}.crossattention.self.key.weight", origin
        )[1],
    }
    if "text_proj.weight" in state:  # a QA text tower has no ITC projection (checkpoints_convert.qa)
        fields["embed_dim"] = _shape(state, "text_proj.weight", origin)[0]
    clash = [
        f"{theirs}={bert[theirs]} (weights: {fields[ours]})"
        for ours, theirs in _FROM_WEIGHTS.items()
        if theirs in bert and int(bert[theirs]) != fields[ours]
    ]
    if clash:
        raise ConversionError(
            f"the text config does not belong to {origin}: {', '.join(clash)}. Pass the BERT config the "
            "model "
            "was trained with (UMT-B: bert-base-uncased, UMT-L: bert-large-uncased)."
        )
    for ours, theirs in _OVERRIDDEN.items():
        if theirs in bert and int(bert[theirs]) != fields[ours]:
            notes.append(
                f"text config {theirs}={bert[theirs]} ignored: the weights say {fields[ours]} (the official "
                "builder also overrides it)"
            )
    if "num_attention_heads" in bert:
        fields["num_heads"] = int(bert["num_attention_heads"])
    else:
        fields["num_heads"] = max(1, hidden // 64)
        notes.append(f"text heads not given (no --text-config): {fields['num_heads']} (width / 64, as BERT)")
    fields["layer_norm_eps"] = float(bert.get("layer_norm_eps", 1e-12))
    fields["hidden_act"] = str(bert.get("hidden_act", "gelu"))
    fields["pad_token_id"] = int(bert.get("pad_token_id", 0))
    try:
        return TextConfig(**fields).validate(), notes
    except ValueError as e:
        raise ConversionError(f"{origin}: {e}") from e


def check_position_ids(state: Mapping[str, Any], origin: str, names: Mapping[str, str] | None = None) -> None:
    """Refuse a ``text_encoder.embeddings.position_ids`` buffer (normalised ``state`` key; ``names`` maps
    it to the original name for the message) that is not ``0, 1, 2, ...``.

    Raises:
      ConversionError: the buffer differs from ``arange`` (the official model would read positions from
        it; tldr_jax uses ``0..L-1``).
    """
    key = POSITION_IDS
    if key in state:
        name = (names or {}).get(key, key)
        ids = readers.to_numpy(state[key], name).reshape(-1)
        if not np.array_equal(ids, np.arange(len(ids))):
            raise ConversionError(
                f"{origin}: {name} is not 0, 1, 2, ...; the official model would read positions from it and "
                "tldr_jax uses 0..L-1. The file is corrupt or not a UMT checkpoint."
            )


def read_vocab(path: str | Path) -> Any:
    """The :class:`~tldr_jax.text.tokenizer.Vocabulary` of a ``vocab.txt``."""
    from tldr_jax.text.tokenizer import Vocabulary

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConversionError(
            f"vocabulary {str(p)!r} not found; pass the vocab.txt of the BERT the model uses "
            "(bert-base-uncased for UMT-B)."
        )
    try:
        return Vocabulary.from_file(p)
    except (UnicodeDecodeError, ValueError) as e:
        raise ConversionError(f"cannot read the vocabulary {p}: {e}") from e

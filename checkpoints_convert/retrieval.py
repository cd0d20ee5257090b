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
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from checkpoints_convert import core, formats, readers, rules
from checkpoints_convert.common import (
    ignore_rules,
    output_path,
    report_lines,
    section,
    text_model_metadata,
    write_output,
)
from checkpoints_convert.errors import ConversionError
from checkpoints_convert.recorded import read_recorded
from checkpoints_convert.rules import Rule, Table, layernorm, linear
from tldr_jax.checkpoint import flatten_tree, unflatten_tree

TEXT_PREFIX = "text_encoder."
PRETRAIN_PREFIX = "text_encoder.bert."
#: Top-level keys that belong to the text side of a UMT model (everything else goes to the vision converter).
TEXT_KEYS = re.compile(r"(text_encoder\.|text_proj\.|itm_head\.|temp$)")


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


@dataclasses.dataclass
class RetrievalConversion:
    """A finished retrieval conversion (the vision part's :class:`~checkpoints_convert.core.Conversion`
    plus the text side)."""

    model: Any
    vision: core.Conversion
    dropped: dict[str, list[str]]
    notes: list[str]
    origin: str
    num_tensors: int
    out: Path | None = None

    @property
    def params(self) -> Any:
        """The converted :class:`~tldr_jax.retrieval.RetrievalModel`."""
        return self.model

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

    def report_lines(self) -> list[str]:
        """What was dropped and decided, one line each."""
        return report_lines(self.dropped, self.notes)


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


def _check_position_ids(state: Mapping[str, Any], origin: str) -> None:
    key = "text_encoder.embeddings.position_ids"
    if key in state:
        ids = readers.to_numpy(state[key], key).reshape(-1)
        if not np.array_equal(ids, np.arange(len(ids))):
            raise ConversionError(
                f"{origin}: {key} is not 0, 1, 2, ...; the official model would read positions from it and "
                "tldr_jax uses 0..L-1. The file is corrupt or not a UMT checkpoint."
            )


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
    _check_position_ids(text_state, origin)
    mapped = rules.apply_table(
        TEXT, text_state, extra_ignore=ignore, to_array=lambda k, v: readers.to_numpy(v, names[k])
    )
    expected = expected_text_shapes(cfg)
    if "temp" in mapped.arrays:
        mapped.arrays["temp"] = mapped.arrays["temp"].reshape(())
    missing = [
        f"{t} (from {' + '.join(k for k, _ in TEXT.sources_for(t)) or '?'})"
        for t in expected
        if t not in mapped.arrays
    ]
    unexpected = [names[k] for k in mapped.unexpected] + [t for t in mapped.arrays if t not in expected]
    mismatched = [
        f"{'+'.join(names[s] for s in mapped.sources[t])}: {tuple(mapped.arrays[t].shape)} vs {expected[t]}"
        for t in expected
        if t in mapped.arrays and tuple(mapped.arrays[t].shape) != expected[t]
    ]
    mismatched += [f"{names[k]}: {why}" for k, why in mapped.bad]
    if missing or unexpected or mismatched or mapped.duplicates:
        lines = [f"cannot convert the text tower of {origin}:"]
        lines += section("Missing text weights", missing)
        lines += section("Unexpected text keys", unexpected)
        lines += section("Shape mismatches", mismatched)
        lines += section("Duplicate keys", [f"{a} and {b} -> {t}" for t, a, b in mapped.duplicates])
        lines.append(
            "Fix: pass the matching --text-config; drop unused keys explicitly with --ignore REGEX; "
            "re-download a truncated file."
        )
        raise ConversionError("\n".join(lines))
    tree = unflatten_tree({p: jnp.asarray(mapped.arrays[p]) for p in expected})
    dropped = {g: [names[k] for k in keys] for g, keys in mapped.dropped.items()}
    return tree, cfg, dropped, notes


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
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
    if verbose:
        for line in conv.report_lines():
            print(line)
    return conv


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

    if vocab is None:
        raise ConversionError(
            "a retrieval conversion needs the vocabulary the text tower was trained with: pass --vocab "
            "vocab.txt "
            "(bert-base-uncased's for UMT-B), or omit --text-config to convert the vision encoder alone."
        )
    out_path = output_path(out, overwrite)
    voc = read_vocab(vocab)
    bert = _read_json(text_config, "text config") if isinstance(text_config, (str, Path)) else text_config
    source = readers.read_source(src)
    options.pop("fmt", None)
    conv = convert_retrieval_state_dict(
        source.state, vocab=voc, text_config=bert, origin=source.label, **options
    )
    metadata = text_model_metadata("umt_retrieval", source, conv, options, (vocab, text_config), bert)
    write_output(save_retrieval, conv.model, out_path, metadata=metadata, overwrite=overwrite)
    conv.out = out_path
    return conv


# --------------------------------------------------------------------------------------------------
# The other way: a RetrievalModel in the official key layout (tests, benchmarks, offline notebooks).
# --------------------------------------------------------------------------------------------------

_INVERSE = {"id": lambda a: a, "linear": lambda a: a.T, "conv": lambda a: a.transpose(4, 3, 0, 1, 2)}


def _invert(table: Table, tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
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


def to_official_state_dict(model: Any) -> dict[str, np.ndarray]:
    """The official ``UMT(is_pretrain=False).state_dict()`` layout of a RetrievalModel (numpy arrays,
    ``(out, in)`` Linear weights, ``position_ids`` buffer included). The vision encoder must have q/v
    biases."""
    vision = _invert(rules.UMT, model.vision.tree)
    sd = {k if k.startswith("vision_proj") else f"vision_encoder.{k}": v for k, v in vision.items()}
    sd.update(_invert(TEXT, model.text))
    positions = model.text_config.max_position_embeddings
    sd["text_encoder.embeddings.position_ids"] = np.arange(positions, dtype=np.int64)[None]
    return sd


def save_official(model: Any, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """``torch.save({"model": state_dict, **extra}, path)`` in the official layout (tests, demos,
    benchmarks)."""
    import torch

    sd = {k: torch.from_numpy(np.array(v)) for k, v in to_official_state_dict(model).items()}
    path = Path(path)
    torch.save({"model": sd, **dict(extra or {})}, path)
    return path

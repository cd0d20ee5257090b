"""Explicit rename tables from PyTorch state-dict keys to canonical tldr_jax parameter paths.

A :class:`Rule` maps one source key template (``{i}`` stands for a block index) to one target path
template, with a layout transform:

* ``"id"``: copied as is (biases, LayerNorm weights -> ``scale``, q/v biases, cls token, ...);
* ``"linear"``: ``nn.Linear.weight (out, in)`` -> ``kernel (in, out)``;
* ``"conv"``: ``Conv3d.weight (D, C, t, p, p)`` -> ``kernel (t, p, p, C, D)``.

Fused targets (HF's separate ``query``/``key``/``value`` projections -> ``attn/qkv``) are several
rules with ``parts=3`` and ``part=0, 1, 2``: the transformed parts are concatenated along the last
axis (``kernel (D, 3D)``, ``bias (3D,)``), which is the ``[q | k | v]`` order the encoder splits.

A :class:`Table` also lists the keys that are dropped on purpose (regex -> group description), so
that every source key is either mapped or knowingly ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------------
# Layout transforms.
# --------------------------------------------------------------------------------------------------


def t_identity(x: np.ndarray) -> np.ndarray:
    """Unchanged."""
    return x


def t_linear(w: np.ndarray) -> np.ndarray:
    """``nn.Linear.weight (out, in)`` -> Flax ``kernel (in, out)``."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D Linear weight (out, in), got shape {tuple(w.shape)}")
    return np.ascontiguousarray(w.T)


def t_conv(w: np.ndarray) -> np.ndarray:
    """``Conv3d.weight (O, I, t, h, w)`` -> Flax ``kernel (t, h, w, I, O)``."""
    if w.ndim != 5:
        raise ValueError(f"expected a 5-D Conv3d weight (out, in, t, h, w), got shape {tuple(w.shape)}")
    return np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0))


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "id": t_identity,
    "linear": t_linear,
    "conv": t_conv,
}


# --------------------------------------------------------------------------------------------------
# Rules and tables.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """One source key template -> one target path template.

    Attributes:
      source: e.g. ``"encoder.blocks.{i}.norm1.weight"``.
      target: e.g. ``"blocks_{i}/norm1/scale"``.
      transform: a key of :data:`TRANSFORMS`.
      part, parts: position of this piece in a fused target (``parts > 1``).
    """

    source: str
    target: str
    transform: str = "id"
    part: int = 0
    parts: int = 1


def _template_regex(template: str) -> re.Pattern[str]:
    pieces = template.split("{i}")
    return re.compile(r"(?P<i>\d+)".join(re.escape(p) for p in pieces))


@functools.cache
def _source_regex(template: str) -> re.Pattern[str]:
    return _template_regex(template)


@functools.cache
def _target_regex(template: str) -> re.Pattern[str]:
    return _template_regex(template)


def linear(src: str, dst: str, *, part: int = 0, parts: int = 1, bias: bool = True) -> list[Rule]:
    """Rules for an ``nn.Linear`` ``src.{weight,bias}`` -> ``dst/{kernel,bias}``."""
    rules = [Rule(f"{src}.weight", f"{dst}/kernel", "linear", part, parts)]
    if bias:
        rules.append(Rule(f"{src}.bias", f"{dst}/bias", "id", part, parts))
    return rules


def layernorm(src: str, dst: str) -> list[Rule]:
    """Rules for an ``nn.LayerNorm`` ``src.{weight,bias}`` -> ``dst/{scale,bias}``."""
    return [Rule(f"{src}.weight", f"{dst}/scale"), Rule(f"{src}.bias", f"{dst}/bias")]


def conv3d(src: str, dst: str) -> list[Rule]:
    """Rules for an ``nn.Conv3d`` ``src.{weight,bias}`` -> ``dst/{kernel,bias}``."""
    return [Rule(f"{src}.weight", f"{dst}/kernel", "conv"), Rule(f"{src}.bias", f"{dst}/bias")]


@dataclasses.dataclass(frozen=True)
class Table:
    """A source format's rename rules and its explicit drop list.

    Attributes:
      rules: the :class:`Rule` list (first match wins).
      ignore: ``(regex, group description)`` pairs; a key matching a regex (``re.match``) is dropped
        knowingly and reported under its group.
    """

    rules: tuple[Rule, ...]
    ignore: tuple[tuple[str, str], ...] = ()

    def match(self, key: str) -> tuple[Rule, str] | None:
        """The rule matching ``key`` and the concrete target path, or None."""
        for rule in self.rules:
            m = _source_regex(rule.source).fullmatch(key)
            if m:
                return rule, rule.target.format(**m.groupdict())
        return None

    def ignored(self, key: str, extra: Iterable[tuple[str, str]] = ()) -> str | None:
        """The drop-group description of ``key`` (``extra`` rules first), or None when not dropped."""
        for pattern, group in (*extra, *self.ignore):
            if re.match(pattern, key):
                return group
        return None

    def sources_for(self, target: str) -> list[tuple[str, int]]:
        """Source key names that fill ``target``: ``[(key, part), ...]`` (one naming per part)."""
        found: dict[int, str] = {}
        for rule in self.rules:
            m = _target_regex(rule.target).fullmatch(target)
            if m and rule.part not in found:
                found[rule.part] = rule.source.format(**m.groupdict())
        return sorted(((k, p) for p, k in found.items()), key=lambda kp: kp[1])


# --------------------------------------------------------------------------------------------------
# The tables.
# --------------------------------------------------------------------------------------------------


def _timm_block(prefix: str) -> list[Rule]:
    """A timm-style ViT block ``{prefix}blocks.{i}.*`` (official UMT / VideoMAE code)."""
    b = f"{prefix}blocks.{{i}}"
    t = "blocks_{i}"
    return [
        *layernorm(f"{b}.norm1", f"{t}/norm1"),
        Rule(f"{b}.attn.qkv.weight", f"{t}/attn/qkv/kernel", "linear"),
        Rule(f"{b}.attn.qkv.bias", f"{t}/attn/qkv/bias"),
        Rule(f"{b}.attn.q_bias", f"{t}/attn/q_bias"),
        Rule(f"{b}.attn.v_bias", f"{t}/attn/v_bias"),
        *linear(f"{b}.attn.proj", f"{t}/attn/proj"),
        *layernorm(f"{b}.norm2", f"{t}/norm2"),
        *linear(f"{b}.mlp.fc1", f"{t}/mlp/fc1"),
        *linear(f"{b}.mlp.fc2", f"{t}/mlp/fc2"),
    ]


#: Official UMT / vid-TLDR vision encoder (keys after stripping ``module.`` and ``vision_encoder.``).
UMT = Table(
    rules=(
        *conv3d("encoder.patch_embed.proj", "patch_embed/proj"),
        *_timm_block("encoder."),
        *layernorm("encoder.norm", "norm"),
        *layernorm("pool_norm", "pool_norm"),
        *linear("vision_proj", "vision_proj"),
    ),
    ignore=(
        (r"clip_teacher\.", "clip_teacher (frozen CLIP teacher used for UMT distillation)"),
        (r"clip_decoder\.", "clip_decoder (UMT distillation heads)"),
        (r"text_encoder\.", "text_encoder (BERT text tower)"),
        (r"text_decoder\.", "text_decoder (QA answer decoder)"),
        (r"text_proj\.", "text_proj (text retrieval projection)"),
        (r"itm_head\.", "itm_head (video-text matching head)"),
        (r"temp$", "temp (contrastive temperature)"),
    ),
)

#: Original VideoMAE / UMT single-modality fine-tuned models (``modeling_finetune.py``). A stored
#: ``pos_embed`` that is not the fixed sinusoid table becomes the learned ``pos_embed``; the fixed
#: table is dropped instead (:data:`SINCOS_POS_EMBED`), since tldr_jax recomputes it.
VIDEOMAE_PTH = Table(
    rules=(
        Rule("pos_embed", "pos_embed"),
        *conv3d("patch_embed.proj", "patch_embed/proj"),
        *_timm_block(""),
        *layernorm("fc_norm", "pool_norm"),
        *linear("head", "head"),
    ),
)

#: Drop rule for a stored ``pos_embed`` verified to be the fixed sinusoid table.
SINCOS_POS_EMBED = (r"pos_embed$", "pos_embed (fixed sinusoid table: verified, then recomputed by tldr_jax)")


def _hf_layer_videomae() -> list[Rule]:
    a = "encoder.layer.{i}.attention.attention"
    t = "blocks_{i}"
    return [
        Rule(f"{a}.query.weight", f"{t}/attn/qkv/kernel", "linear", 0, 3),
        Rule(f"{a}.key.weight", f"{t}/attn/qkv/kernel", "linear", 1, 3),
        Rule(f"{a}.value.weight", f"{t}/attn/qkv/kernel", "linear", 2, 3),
        Rule(f"{a}.q_bias", f"{t}/attn/q_bias"),
        Rule(f"{a}.v_bias", f"{t}/attn/v_bias"),
        # transformers >= 5 in-memory names of the same q/v biases
        Rule(f"{a}.query.bias", f"{t}/attn/q_bias"),
        Rule(f"{a}.value.bias", f"{t}/attn/v_bias"),
        *linear("encoder.layer.{i}.attention.output.dense", f"{t}/attn/proj"),
        *layernorm("encoder.layer.{i}.layernorm_before", f"{t}/norm1"),
        *layernorm("encoder.layer.{i}.layernorm_after", f"{t}/norm2"),
        *linear("encoder.layer.{i}.intermediate.dense", f"{t}/mlp/fc1"),
        *linear("encoder.layer.{i}.output.dense", f"{t}/mlp/fc2"),
    ]


#: HF ``VideoMAEForVideoClassification`` / ``VideoMAEModel`` (keys after stripping ``videomae.``).
HF_VIDEOMAE = Table(
    rules=(
        *conv3d("embeddings.patch_embeddings.projection", "patch_embed/proj"),
        *_hf_layer_videomae(),
        *layernorm("fc_norm", "pool_norm"),
        *linear("classifier", "head"),
    ),
    ignore=(
        (r"encoder_to_decoder\.", "encoder_to_decoder (VideoMAE pretraining decoder)"),
        (r"mask_token$", "mask_token (VideoMAE pretraining decoder)"),
        (r"decoder\.", "decoder (VideoMAE pretraining decoder)"),
    ),
)


def _hf_layer_vivit() -> list[Rule]:
    t = "blocks_{i}"
    legacy = "encoder.layer.{i}"  # names in saved checkpoints (all transformers versions)
    current = "layers.{i}"  # transformers >= 5 in-memory names
    return [
        *linear(f"{legacy}.attention.attention.query", f"{t}/attn/qkv", part=0, parts=3),
        *linear(f"{legacy}.attention.attention.key", f"{t}/attn/qkv", part=1, parts=3),
        *linear(f"{legacy}.attention.attention.value", f"{t}/attn/qkv", part=2, parts=3),
        *linear(f"{legacy}.attention.output.dense", f"{t}/attn/proj"),
        *layernorm(f"{legacy}.layernorm_before", f"{t}/norm1"),
        *layernorm(f"{legacy}.layernorm_after", f"{t}/norm2"),
        *linear(f"{legacy}.intermediate.dense", f"{t}/mlp/fc1"),
        *linear(f"{legacy}.output.dense", f"{t}/mlp/fc2"),
        *linear(f"{current}.attention.q_proj", f"{t}/attn/qkv", part=0, parts=3),
        *linear(f"{current}.attention.k_proj", f"{t}/attn/qkv", part=1, parts=3),
        *linear(f"{current}.attention.v_proj", f"{t}/attn/qkv", part=2, parts=3),
        *linear(f"{current}.attention.o_proj", f"{t}/attn/proj"),
        *layernorm(f"{current}.layernorm_before", f"{t}/norm1"),
        *layernorm(f"{current}.layernorm_after", f"{t}/norm2"),
        *linear(f"{current}.mlp.fc1", f"{t}/mlp/fc1"),
        *linear(f"{current}.mlp.fc2", f"{t}/mlp/fc2"),
    ]


#: HF ``VivitForVideoClassification`` / ``VivitModel`` (keys after stripping ``vivit.``).
HF_VIVIT = Table(
    rules=(
        Rule("embeddings.cls_token", "cls_token"),
        Rule("embeddings.position_embeddings", "pos_embed"),
        *conv3d("embeddings.patch_embeddings.projection", "patch_embed/proj"),
        *_hf_layer_vivit(),
        *layernorm("layernorm", "norm"),
        *linear("classifier", "head"),
    ),
    ignore=((r"pooler\.", "pooler (VivitModel's tanh pooler; tldr_jax pools the CLS token without it)"),),
)


# --------------------------------------------------------------------------------------------------
# Applying a table.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Mapped:
    """Result of :func:`apply_table` (all keys are the normalised source keys).

    Attributes:
      arrays: target path -> transformed array.
      sources: target path -> the source keys it was built from.
      dropped: drop-group description -> source keys.
      unexpected: source keys neither mapped nor on the drop list.
      duplicates: ``(target, first source, second source)`` for targets filled twice.
      incomplete: fused target -> source keys of its missing parts.
      bad: ``(source key, reason)`` for tensors whose layout transform failed (wrong rank) or whose
        fused parts disagree in shape.
    """

    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    sources: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    dropped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    incomplete: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    bad: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def apply_table(
    table: Table,
    state: Mapping[str, np.ndarray],
    *,
    extra_ignore: Iterable[tuple[str, str]] = (),
    to_array: Callable[[str, Any], np.ndarray] | None = None,
    progress: Callable[[Iterable[str]], Iterable[str]] | None = None,
) -> Mapped:
    """Rename and transform every tensor of ``state`` with ``table``.

    Args:
      table: the format's :class:`Table`.
      state: normalised source key -> tensor or array.
      extra_ignore: more ``(regex, group)`` drop rules (user ``--ignore`` patterns, a removed head).
      to_array: ``(key, value) -> np.ndarray`` (default ``np.asarray``), called once per mapped key.
      progress: optional callable wrapping the key iterator (e.g. a ``tqdm`` partial).

    Returns:
      :class:`Mapped`.
    """
    extra = tuple(extra_ignore)
    out = Mapped()
    pending: dict[str, dict[int, tuple[str, np.ndarray]]] = {}
    parts_of: dict[str, Rule] = {}
    keys: Iterable[str] = state.keys()
    if progress is not None:
        keys = progress(keys)
    for key in keys:
        hit = table.match(key)
        if hit is None:
            group = table.ignored(key, extra)
            if group is None:
                out.unexpected.append(key)
            else:
                out.dropped.setdefault(group, []).append(key)
            continue
        rule, target = hit
        group = next((g for p, g in extra if re.match(p, key)), None)
        if group is not None:  # a mapped key the user or options drop explicitly
            out.dropped.setdefault(group, []).append(key)
            continue
        try:
            array = to_array(key, state[key]) if to_array else np.asarray(state[key])
            value = TRANSFORMS[rule.transform](array)
        except ValueError as e:
            out.bad.append((key, str(e)))
            continue
        if rule.parts == 1:
            if target in out.arrays:
                out.duplicates.append((target, out.sources[target][0], key))
                continue
            out.arrays[target] = value
            out.sources[target] = (key,)
            continue
        slot = pending.setdefault(target, {})
        parts_of[target] = rule
        if rule.part in slot:
            out.duplicates.append((target, slot[rule.part][0], key))
            continue
        slot[rule.part] = (key, value)
    for target, slot in pending.items():
        _assemble(table, target, slot, parts_of[target].parts, out)
    return out


def _assemble(
    table: Table, target: str, slot: dict[int, tuple[str, np.ndarray]], parts: int, out: Mapped
) -> None:
    missing = [k for k, p in table.sources_for(target) if p not in slot and p < parts]
    if missing:
        out.incomplete[target] = missing
        return
    pieces = [slot[p] for p in range(parts)]
    shapes = {tuple(v.shape) for _, v in pieces}
    if len(shapes) != 1:
        detail = ", ".join(f"{k} {tuple(v.shape)}" for k, v in pieces)
        out.bad.append((pieces[0][0], f"fused parts of {target} disagree in shape: {detail}"))
        return
    out.arrays[target] = np.concatenate([v for _, v in pieces], axis=-1)
    out.sources[target] = tuple(k for k, _ in pieces)

"""The retrieval model pytree: the UMT vision encoder (:class:`tldr_jax.Params`) plus the text tower.

``RetrievalModel`` is what ``tldr_jax.load`` returns for a retrieval directory and what every function
of :mod:`tldr_jax.retrieval` takes. Its array leaves are the vision tree and the text tree, so
``jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model)`` casts the whole model; the
architecture (vision ``ArchConfig``, :class:`~tldr_jax.retrieval.text.TextConfig`) and the vocabulary
are static metadata.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

import tldr_jax
from tldr_jax.retrieval.text import TextConfig, TextTower

Array = jax.Array


class Vocabulary:
    """A WordPiece vocabulary (token of each id), hashed once by content so that it can be static
    pytree metadata without re-hashing 30k strings on every jitted call."""

    def __init__(self, tokens: Sequence[str]):
        self.tokens: tuple[str, ...] = tuple(str(t) for t in tokens)
        if not self.tokens:
            raise ValueError("the vocabulary is empty; pass the lines of the model's vocab.txt.")
        if len(set(self.tokens)) != len(self.tokens):
            seen: set[str] = set()
            dup = next(t for t in self.tokens if t in seen or seen.add(t))  # type: ignore[func-returns-value]
            raise ValueError(
                f"the vocabulary lists {dup!r} twice; each token must appear once (one per line)."
            )
        self.digest = hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()

    @classmethod
    def from_file(cls, path: Any) -> Vocabulary:
        """Read a BERT ``vocab.txt`` (one token per line, id = line index)."""
        with open(path, encoding="utf-8") as f:
            return cls([line.rstrip("\n").rstrip("\r") for line in f if line.strip("\r\n") != ""])

    def __len__(self) -> int:
        return len(self.tokens)

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.digest == self.digest

    def __repr__(self) -> str:
        return f"Vocabulary({len(self.tokens)} tokens, sha256 {self.digest[:12]})"

    def id_of(self, token: str) -> int:
        """The id of ``token``; ``KeyError`` naming it when absent."""
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary") from None

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


@struct.dataclass
class RetrievalModel:
    """A complete UMT retrieval model.

    Attributes:
      vision: the video encoder as :class:`tldr_jax.Params` (its config has ``vision_proj_dim``).
      text: the text tower's parameter tree (see :mod:`tldr_jax.retrieval.text` for the names).
      text_config: the :class:`TextConfig` (static).
      vocab: the :class:`Vocabulary` (static), used by :func:`tldr_jax.retrieval.tokenize`.
    """

    vision: tldr_jax.Params
    text: dict[str, Any]
    text_config: TextConfig = struct.field(pytree_node=False)
    vocab: Vocabulary = struct.field(pytree_node=False)

    @property
    def dtype(self) -> Any:
        """Dtype of the text tower's weights (``float64`` after casting under ``jax.enable_x64``)."""
        return self.text["text_proj"]["kernel"].dtype

    def num_params(self) -> int:
        """Total parameters of both towers."""
        return self.vision.num_params() + int(
            sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.text))
        )

    def astype(self, dtype: Any) -> RetrievalModel:
        """Every floating leaf cast to ``dtype`` (use ``float64`` inside ``jax.enable_x64(True)``)."""

        def cast(a: Any) -> Any:
            return jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a

        return jax.tree_util.tree_map(cast, self)


@functools.lru_cache(maxsize=32)
def text_graphdef(cfg: TextConfig) -> nnx.GraphDef:
    """The (cached) NNX graph definition of a text tower, built abstractly."""
    abstract = nnx.eval_shape(lambda: TextTower(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    return graphdef


def build_text(cfg: TextConfig, tree: dict[str, Any]) -> TextTower:
    """The NNX text tower holding ``tree`` (works eagerly and under tracing)."""
    return nnx.merge(text_graphdef(cfg), tree)


@functools.lru_cache(maxsize=32)
def _text_shapes(cfg: TextConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from tldr_jax.checkpoint import flatten_tree

    abstract = jax.eval_shape(
        lambda: nnx.to_pure_dict(nnx.state(TextTower(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    )
    return tuple((p, tuple(x.shape)) for p, x in flatten_tree(abstract).items())


def expected_text_shapes(cfg: TextConfig) -> dict[str, tuple[int, ...]]:
    """Flat ``{path: shape}`` of the text tree a :class:`TextConfig` needs (nothing is allocated)."""
    return dict(_text_shapes(cfg))


def init_text(rng: int | Array, cfg: TextConfig, *, temp: float = 0.07) -> dict[str, Any]:
    """A random text tree (Flax default initialisers; for tests and synthetic benchmarks)."""
    key = jax.random.key(int(rng)) if isinstance(rng, (int, np.integer)) else rng
    return _init_text(cfg, key, float(temp))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_text(cfg: TextConfig, key: Array, temp: float) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.state(TextTower(cfg, rngs=nnx.Rngs(params=key), temp=temp), nnx.Param))


def default_vocab(size: int) -> Vocabulary:
    """A placeholder vocabulary of ``size`` tokens: the five BERT specials, then ``tok5`` ... (tests)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if size < len(specials):
        raise ValueError(
            f"a vocabulary needs at least {len(specials)} tokens (the BERT specials); got {size}."
        )
    return Vocabulary(specials + [f"tok{i}" for i in range(len(specials), size)])


def init(
    rng: int = 0,
    arch: str = "umt_b16",
    *,
    text_config: TextConfig | None = None,
    vocab: Vocabulary | Sequence[str] | None = None,
    temp: float = 0.07,
    **vision_overrides: Any,
) -> RetrievalModel:
    """A randomly initialised retrieval model (for tests, notebooks and synthetic benchmarks).

    Args:
      rng: int seed.
      arch: the vision architecture name (``"umt_b16"``, ``"umt_l16"``).
      text_config: text tower sizes (default: BERT-base with UMT-B's fusion layer 9, widths matched to
        the vision encoder and ``vision_proj_dim``).
      vocab: the vocabulary (default: a placeholder of ``text_config.vocab_size`` tokens).
      temp: the stored contrastive temperature.
      **vision_overrides: ``tldr_jax.init`` overrides (``depth=2, embed_dim=64, img_size=32, ...``);
        ``vision_proj_dim`` defaults to ``text_config.embed_dim``.
    """
    from tldr_jax.configs import get_config

    tc = (text_config or TextConfig()).validate()
    vision_overrides.setdefault("vision_proj_dim", tc.embed_dim)
    cfg = get_config(arch, **vision_overrides)
    if tc.encoder_width != cfg.embed_dim or tc.embed_dim != cfg.vision_proj_dim:
        raise ValueError(
            f"text_config does not fit the vision encoder: encoder_width {tc.encoder_width} vs vision width "
            f"{cfg.embed_dim}, embed_dim {tc.embed_dim} vs vision_proj_dim {cfg.vision_proj_dim}; make "
            "them equal."
        )
    if vocab is None:
        vocab = default_vocab(tc.vocab_size)
    elif not isinstance(vocab, Vocabulary):
        vocab = Vocabulary(vocab)
    check_vocab(vocab, tc)
    vision = tldr_jax.init(int(rng), cfg)
    return RetrievalModel(
        vision=vision, text=init_text(int(rng) + 1, tc, temp=temp), text_config=tc, vocab=vocab
    )


def check_vocab(vocab: Vocabulary, cfg: TextConfig) -> None:
    """The vocabulary matches the word-embedding table and has ``[CLS]``, ``[PAD]`` and ``[UNK]``."""
    if len(vocab) != cfg.vocab_size:
        raise ValueError(
            f"the vocabulary has {len(vocab)} tokens but the text tower's word embeddings have "
            f"{cfg.vocab_size} rows; pass the vocab.txt the model was trained with."
        )
    missing = [t for t in ("[CLS]", "[PAD]", "[UNK]") if t not in vocab._index]
    if missing:
        raise ValueError(
            f"the vocabulary lacks the BERT special tokens {missing}; it is not a BERT vocab.txt."
        )
    if vocab.id_of("[PAD]") != cfg.pad_token_id:
        raise ValueError(
            f"[PAD] has id {vocab.id_of('[PAD]')} in the vocabulary but pad_token_id is {cfg.pad_token_id} "
            "in the text config; they must agree."
        )

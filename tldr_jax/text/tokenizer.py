"""The UMT text side's vocabulary, the official caption cleaning and tokenisation (``tokenizers``).

The official ``BertTokenizer`` (``models/backbones/bert/tokenization_bert.py``) lower-cases, strips
accents, splits on whitespace and punctuation, runs WordPiece over the vocabulary, and for a single
sentence returns ``[CLS] X`` **without** ``[SEP]`` (its ``build_inputs_with_special_tokens``); with
``padding="max_length", truncation=True`` a text keeps ``max_length - 1`` word pieces, padded with
``[PAD]`` (mask 0). ``tokenizers.BertWordPieceTokenizer`` with the same normaliser settings and a
``[CLS] $A`` template gives exactly these ids and masks (tested against the official tokenizer's
output in ``tests/test_text_tokenizer.py``).

The official *datasets* clean captions and questions before tokenising (:func:`pre_text`: lower-case,
drop ``, . ' ! ? " ( ) * # : ; ~``, ``-`` and ``/`` to spaces); :mod:`tldr_jax.retrieval.annotations`
applies it when it reads annotation files, :func:`tokenize` does not.

Every function here takes a :class:`Vocabulary` or any model carrying one as ``.vocab`` (a
``RetrievalModel``, the QA model); a model's ``text_config.max_position_embeddings``, when it has one,
bounds ``max_length``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import BertWordPieceTokenizer
from tokenizers.processors import TemplateProcessing

if TYPE_CHECKING:  # the tokenizer itself needs no JAX; only the type of check_vocab's config
    from tldr_jax.text.bert import TextConfig

#: Characters of a query shown in headers and messages (:func:`shorten`).
SHOWN_QUERY_CHARS = 60

#: The BERT special tokens a vocabulary must hold.
REQUIRED_SPECIALS = ("[CLS]", "[PAD]", "[UNK]")

_PUNCT = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


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

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def id_of(self, token: str) -> int:
        """The id of ``token``; ``KeyError`` naming it when absent."""
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary") from None

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}


def default_vocab(size: int) -> Vocabulary:
    """A placeholder vocabulary of ``size`` tokens: the five BERT specials, then ``tok5`` ... (tests)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if size < len(specials):
        raise ValueError(
            f"a vocabulary needs at least {len(specials)} tokens (the BERT specials); got {size}."
        )
    return Vocabulary(specials + [f"tok{i}" for i in range(len(specials), size)])


def check_vocab(vocab: Vocabulary, cfg: TextConfig) -> None:
    """The vocabulary matches the word-embedding table and has ``[CLS]``, ``[PAD]`` and ``[UNK]``."""
    if len(vocab) != cfg.vocab_size:
        raise ValueError(
            f"the vocabulary has {len(vocab)} tokens but the text tower's word embeddings have "
            f"{cfg.vocab_size} rows; pass the vocab.txt the model was trained with."
        )
    missing = [t for t in REQUIRED_SPECIALS if t not in vocab]
    if missing:
        raise ValueError(
            f"the vocabulary lacks the BERT special tokens {missing}; it is not a BERT vocab.txt."
        )
    if vocab.id_of("[PAD]") != cfg.pad_token_id:
        raise ValueError(
            f"[PAD] has id {vocab.id_of('[PAD]')} in the vocabulary but pad_token_id is {cfg.pad_token_id} "
            "in the text config; they must agree."
        )


def pre_text(text: str, max_words: int | None = None) -> str:
    """Clean a caption or question as the official datasets do before tokenising.

    Lower-case; ``, . ' ! ? " ( ) * # : ; ~`` removed; ``-`` and ``/`` become spaces; ``<person>``
    becomes ``person``; runs of whitespace collapsed; with ``max_words``, the first that many words kept.
    """
    text = _PUNCT.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).rstrip("\n").strip(" ")
    if max_words:
        words = text.split(" ")
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    return text


def vocabulary_of(source: Any) -> Vocabulary:
    """The :class:`Vocabulary` itself, or a model's ``.vocab``; ``TypeError`` naming the type otherwise."""
    vocab = source if isinstance(source, Vocabulary) else getattr(source, "vocab", None)
    if not isinstance(vocab, Vocabulary):
        raise TypeError(
            "tokenize needs a Vocabulary or a model carrying one as .vocab (a RetrievalModel, a QA model); "
            f"got {type(source).__name__}."
        )
    return vocab


@functools.lru_cache(maxsize=8)
def _tokenizer(vocab: Vocabulary, max_length: int | None) -> Any:
    """A ``tokenizers.Tokenizer`` (lower-case, strip accents, ``[CLS] $A``, truncate, pad) per vocabulary
    and length (``None``: neither truncated nor padded, to count word pieces)."""
    table = {t: i for i, t in enumerate(vocab.tokens)}
    tok = BertWordPieceTokenizer(
        table,
        unk_token="[UNK]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=True,
        lowercase=True,
        wordpieces_prefix="##",
    )
    tok.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", table["[CLS]"])])
    if max_length is not None:
        tok.enable_truncation(max_length=max_length)
        tok.enable_padding(length=max_length, pad_id=table["[PAD]"], pad_token="[PAD]")
    return tok


def _check_length(source: Any, max_length: Any) -> int:
    if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 2:
        raise ValueError(
            f"max_length must be an int >= 2 ([CLS] plus at least one token); got {max_length!r}."
        )
    positions = getattr(getattr(source, "text_config", None), "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ValueError(
            f"max_length {max_length} exceeds the text tower's {positions} "
            "position embeddings; use a smaller max_length."
        )
    return int(max_length)


def tokenize(source: Any, texts: str | Sequence[str], max_length: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks of ``texts``, exactly as the official UMT evaluation makes them.

    Args:
      source: a :class:`Vocabulary`, or a model carrying one as ``.vocab`` (``RetrievalModel``, the QA
        model); a model's ``text_config.max_position_embeddings`` bounds ``max_length``.
      texts: a string or a sequence of strings.
      max_length: tokens per text including ``[CLS]`` (MSRVTT 32; see
        :data:`~tldr_jax.retrieval.presets.DATASETS`).

    Returns:
      ``ids (n, max_length)`` and ``mask (n, max_length)``, int32 numpy arrays.
    """
    vocab = vocabulary_of(source)
    n = _check_length(source, max_length)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}.")
    if not texts:
        return np.zeros((0, n), np.int32), np.zeros((0, n), np.int32)
    enc = _tokenizer(vocab, n).encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], np.int32)
    mask = np.asarray([e.attention_mask for e in enc], np.int32)
    return ids, mask


class QueryTruncatedWarning(UserWarning):
    """A query holds more word pieces than the text tower reads; the first ones were kept."""


def shorten(text: str, width: int = SHOWN_QUERY_CHARS) -> str:
    """``text`` as shown in headers and messages: at most ``width`` characters, then ``...`` and its
    length."""
    return text if len(text) <= width else f"{text[:width]}... ({len(text)} characters)"


def check_query(query: Any, source: Any = None, *, clean: bool = True, max_length: int | None = None) -> str:
    """The text of a search query as it will be tokenised; one-line errors for a query that cannot be
    searched (the same for ``search()``, ``tldr-jax search`` and ``tldr-jax retrieve --query``).

    Args:
      query: the query as typed.
      source: a :class:`Vocabulary` or a model carrying one; None checks the text only (before a model is
        loaded).
      clean: apply the official caption cleaning (:func:`pre_text`) first; False keeps the text as written.
      max_length: with ``source``, the tokens the text tower reads (``[CLS]`` included): a longer query
        warns (:class:`QueryTruncatedWarning`) how many word pieces were kept.

    Returns:
      the cleaned query (``pre_text(query)``, or ``query`` when ``clean`` is False).

    Raises:
      TypeError: ``query`` is not a string (search one text per call).
      ValueError: nothing searchable is left after cleaning (``""``, ``"!!!"``), or with ``source`` every
        word piece is ``[UNK]`` (emoji only).
    """
    if not isinstance(query, str):
        raise TypeError(
            f"the query must be a string; got {type(query).__name__} ({shorten(repr(query))}). Search one "
            "text per call."
        )
    text = pre_text(query) if clean else query
    how = "after the official caption cleaning (lower-case, punctuation removed)" if clean else "as written"
    if not text.strip():
        raise ValueError(f"the query {shorten(query)!r} is empty {how}: nothing to search for; give words.")
    if source is None:
        return text
    vocab = vocabulary_of(source)
    pieces = _tokenizer(vocab, None).encode(text).ids[1:]  # [CLS] dropped
    if all(i == vocab.id_of("[UNK]") for i in pieces):
        raise ValueError(
            f"the query {shorten(query)!r} holds no word the model's vocabulary knows {how} (every piece "
            "is [UNK]): nothing to search for; give words."
        )
    if max_length is not None:
        n = _check_length(source, max_length)
        if len(pieces) > n - 1:
            warnings.warn(
                f"the query {shorten(query)!r} has {len(pieces)} word pieces; the text tower reads {n} "
                f"tokens ([CLS] included), so the first {n - 1} were kept ({len(pieces) - n + 1} dropped).",
                QueryTruncatedWarning, stacklevel=2,
            )
    return text


def decode_pieces(source: Any, ids: np.ndarray) -> list[str]:
    """The word pieces of each row of ``ids (n, L)`` joined by spaces (for reading; padding included).

    ``source`` is a :class:`Vocabulary` or a model carrying one as ``.vocab``.
    """
    vocab = vocabulary_of(source)
    return [" ".join(vocab.tokens[int(i)] for i in row) for row in np.asarray(ids)]

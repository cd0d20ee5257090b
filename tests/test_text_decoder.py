"""The QA answer decoder (``tldr_jax.text.decoder``): sizes, causal masking, the tied LM head, the chunked
vocabulary log-sum-exp and the answer loss, on a tiny random decoder (float64 where values are compared)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tldr_jax.text.bert import TextConfig, padding_bias
from tldr_jax.text.decoder import (
    AnswerDecoder,
    build_module,
    causal_bias,
    chunked_logsumexp,
    decoder_config,
    init_module,
    module_shapes,
)

TEXT = TextConfig(
    vocab_size=37,
    hidden_size=16,
    num_layers=5,
    num_heads=2,
    intermediate_size=24,
    max_position_embeddings=12,
    fusion_layer=3,
    encoder_width=16,
    embed_dim=8,
)


def test_decoder_config_mirrors_the_official_builder():
    dc = decoder_config(TEXT)
    assert (dc.num_layers, dc.fusion_layer) == (2, 0)  # num_layers - fusion_layer, all with cross-attention
    assert dataclasses.replace(dc, num_layers=5, fusion_layer=3) == TEXT
    with pytest.raises(ValueError, match="fusion_layer must be < num_layers"):
        decoder_config(dataclasses.replace(TEXT, fusion_layer=5))
    with pytest.raises(ValueError, match="encoder_width=24"):
        decoder_config(dataclasses.replace(TEXT, encoder_width=24))


def test_the_tree_has_one_vocabulary_table_the_head_reuses():
    shapes = module_shapes(AnswerDecoder, decoder_config(TEXT))
    assert shapes["head/bias"] == (37,) and shapes["embeddings/word/embedding"] == (37, 16)
    assert shapes["layer_1/crossattention/key/kernel"] == (16, 16)
    assert not [p for p, s in shapes.items() if p.startswith("head/") and s == (16, 37)]  # tied: no 2nd table


@pytest.fixture(scope="module")
def decoder64():
    with jax.enable_x64(True):
        tree = init_module(AnswerDecoder, decoder_config(TEXT), 3)
        tree = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)
        tree["head"]["bias"] = jnp.linspace(-1.0, 1.0, 37)
        return tree


def _run(tree, ids, mask, states, qmask):
    dec = build_module(AnswerDecoder, decoder_config(TEXT), tree)
    return dec, dec.hidden(ids, mask, dec.cross_keys_values(states), padding_bias(qmask, states.dtype))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([[2, 7, 9, 3, 0, 0], [2, 11, 3, 0, 0, 0]])
    mask = (ids != 0).astype(np.int32)
    states = jnp.asarray(rng.normal(size=(2, 4, 16)))
    qmask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    return ids, mask, states, qmask


def test_self_attention_is_causal_and_ignores_padding_and_cross_attention_ignores_padded_questions(decoder64):
    ids, mask, states, qmask = _inputs()
    with jax.enable_x64(True):
        _, base = _run(decoder64, ids, mask, states, qmask)
        later = ids.copy()
        later[0, 2] = 20  # a later token: the positions before it are unchanged
        _, out = _run(decoder64, later, mask, states, qmask)
        np.testing.assert_allclose(out[0, :2], base[0, :2], rtol=0, atol=1e-13)
        assert np.abs(out[0, 2:4] - base[0, 2:4]).max() > 1e-3
        pad = ids.copy()
        pad[1, 4] = 30  # a padded token (mask 0): no real position sees it
        _, out = _run(decoder64, pad, mask, states, qmask)
        np.testing.assert_allclose(out[1, :3], base[1, :3], rtol=0, atol=1e-13)
        moved = states.at[1, 3].add(5.0)  # a padded question position
        _, out = _run(decoder64, ids, mask, moved, qmask)
        np.testing.assert_allclose(out, base, rtol=0, atol=1e-13)


def test_causal_bias_is_the_official_extended_mask():
    bias = np.asarray(causal_bias(jnp.array([[1, 1, 0]]), jnp.float32))
    allowed = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(bias[0, 0], (1 - allowed) * -10000.0)


def test_shared_question_keys_values_equal_repeated_question_states(decoder64):
    """k candidates read one copy of the question's keys and values, as if the states were tiled."""
    ids, mask, states, qmask = _inputs()
    with jax.enable_x64(True):
        dec = build_module(AnswerDecoder, decoder_config(TEXT), decoder64)
        cand = np.stack([ids, ids[::-1]], axis=1)  # (n, k=2, La)
        cmask = (cand != 0).astype(np.int32)
        bias = padding_bias(qmask, states.dtype)
        shared = [(k[:, None], v[:, None]) for k, v in dec.cross_keys_values(states)]
        out = dec.hidden(cand, cmask, shared, bias[:, None])
        tiled = jnp.repeat(states, 2, axis=0)
        flat = dec.hidden(
            cand.reshape(4, -1),
            cmask.reshape(4, -1),
            dec.cross_keys_values(tiled),
            jnp.repeat(bias, 2, axis=0),
        )
        np.testing.assert_allclose(out.reshape(4, 6, 16), flat, rtol=0, atol=1e-13)


@pytest.mark.parametrize("chunk", [1, 5, 16, 36, 37, 100])
def test_chunked_logsumexp_equals_the_full_one_in_value_and_gradient(chunk):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        feats, table, bias = (jnp.asarray(rng.normal(size=s)) for s in ((3, 2, 16), (37, 16), (37,)))

        def full(f, t, b):
            return jnp.sum(jax.nn.logsumexp(f @ t.T + b, axis=-1) * jnp.arange(1.0, 7.0).reshape(3, 2))

        def chunked(f, t, b):
            return jnp.sum(chunked_logsumexp(f, t, b, chunk) * jnp.arange(1.0, 7.0).reshape(3, 2))

        np.testing.assert_allclose(chunked(feats, table, bias), full(feats, table, bias), rtol=1e-14)
        for got, want in zip(
            jax.grad(chunked, (0, 1, 2))(feats, table, bias), jax.grad(full, (0, 1, 2))(feats, table, bias)
        ):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


def test_answer_loss_is_the_summed_next_token_cross_entropy_without_pad_targets(decoder64):
    ids, mask, states, qmask = _inputs()
    with jax.enable_x64(True):
        dec, x = _run(decoder64, ids, mask, states, qmask)
        logits = dec.logits(x)  # tied projection: the word-embedding table
        table = decoder64["embeddings"]["word"]["embedding"]
        np.testing.assert_allclose(
            logits, dec.head.transform(x) @ table.T + decoder64["head"]["bias"], rtol=0, atol=1e-13
        )
        logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
        want = [
            -sum(float(logp[b, t, ids[b, t + 1]]) for t in range(5) if ids[b, t + 1] != 0) for b in range(2)
        ]
        for chunk in (4, 2048):
            np.testing.assert_allclose(dec.answer_loss(x, ids, 0, chunk), want, rtol=0, atol=1e-12)

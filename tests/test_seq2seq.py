"""Encoder-decoder: attention masks, decoding (greedy, beam, jit vs a Python loop), masked losses."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import heads
from jaxrnn.seq2seq import Seq2Seq

SRC = jnp.array([[3, 4, 5, 6, 7, 8], [5, 4, 3, 0, 0, 0], [9, 9, 0, 0, 0, 0]])
SRC_LEN = jnp.array([6, 3, 2])


def model_and_params(attention="bahdanau", cell="gru", vocab=12, **kw):
    model = Seq2Seq(vocab, vocab, hidden_size=16, embed_size=8, attention=attention, cell=cell, **kw)
    return model, model.init(jax.random.key(0))


@pytest.mark.parametrize("attention,cell", [("bahdanau", "gru"), ("luong", "lstm"), ("bahdanau", "lstm")])
def test_attention_sums_to_one_on_valid_positions_and_is_zero_on_padding(attention, cell):
    model, params = model_and_params(attention, cell, encoder_layers=2)
    _, attn = model.apply(params, SRC, SRC_LEN, jnp.ones((3, 5), int))
    valid = np.arange(6)[None, :] < np.asarray(SRC_LEN)[:, None]
    np.testing.assert_allclose(np.asarray(attn).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(attn)[~np.broadcast_to(valid[:, None], attn.shape)], 0.0)


@pytest.mark.parametrize("attention", [None, "bahdanau", "luong"])
def test_padded_source_tokens_change_nothing(attention):
    model, params = model_and_params(attention)
    tgt = jnp.ones((3, 4), int)
    other = SRC.at[1, 3:].set(11).at[2, 2:].set(7)  # new values in the padding only
    a = model.apply(params, SRC, SRC_LEN, tgt)
    b = model.apply(params, other, SRC_LEN, tgt)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_masked_loss_ignores_padding():
    model, params = model_and_params()
    tgt_in = jnp.array([[1, 3, 4, 5], [1, 6, 0, 0], [1, 7, 8, 0]])
    tgt_out = jnp.array([[3, 4, 5, 2], [6, 2, 0, 0], [7, 8, 2, 0]])
    tgt_len = jnp.array([4, 2, 3])
    base = model.loss(params, SRC, SRC_LEN, tgt_in, tgt_out, tgt_len)
    garbage_out = tgt_out.at[1, 2:].set(9).at[2, 3].set(11)
    garbage_in = tgt_in.at[1, 2:].set(5)  # inputs after the end are never reached by valid outputs
    assert float(model.loss(params, SRC, SRC_LEN, tgt_in, garbage_out, tgt_len)) == pytest.approx(float(base), abs=1e-7)
    assert float(model.loss(params, SRC, SRC_LEN, garbage_in, tgt_out, tgt_len)) == pytest.approx(float(base), abs=1e-7)
    # and a padded target is really left out: the loss equals the mean over valid tokens
    logits, _ = model.apply(params, SRC, SRC_LEN, tgt_in)
    nll = -jax.nn.log_softmax(logits)
    per_token = [float(nll[b, t, tgt_out[b, t]]) for b in range(3) for t in range(int(tgt_len[b]))]
    assert float(base) == pytest.approx(np.mean(per_token), rel=1e-5)


def test_masked_mse_and_pooling_ignore_padding():
    preds = jax.random.normal(jax.random.key(0), (2, 5, 3))
    targets = jax.random.normal(jax.random.key(1), (2, 5, 3))
    lengths = jnp.array([5, 2])
    changed = targets.at[1, 2:].set(100.0)
    assert float(heads.masked_mse(preds, targets, lengths)) == float(heads.masked_mse(preds, changed, lengths))
    ys = preds.at[1, 2:].set(1e3)
    np.testing.assert_allclose(heads.mean_pool(ys, lengths)[1], preds[1, :2].mean(0), rtol=1e-6)
    # NaN or inf at padded steps, in targets or in predictions, reach neither the loss nor its gradient.
    nan_targets, nan_preds = targets.at[1, 2:].set(jnp.nan), preds.at[1, 2:].set(jnp.inf)
    grad = jax.grad(heads.masked_mse)
    np.testing.assert_allclose(grad(nan_preds, nan_targets, lengths), grad(preds, targets, lengths).at[1, 2:].set(0.0))
    logits = jax.random.normal(jax.random.key(2), (2, 5, 4))
    labels = jnp.array([[0, 1, 2, 3, 0], [1, 2, 99, -5, 7]])  # padded labels out of range
    nan_logits = logits.at[1, 2:].set(jnp.nan)
    assert float(heads.masked_cross_entropy(nan_logits, labels, lengths)) == float(
        heads.masked_cross_entropy(logits, labels, lengths))
    g = jax.grad(heads.masked_cross_entropy)(nan_logits, labels, lengths)
    np.testing.assert_allclose(g, jax.grad(heads.masked_cross_entropy)(logits, labels, lengths).at[1, 2:].set(0.0),
                               atol=1e-7)
    np.testing.assert_allclose(heads.last_valid(ys, lengths)[1], preds[1, 1])
    np.testing.assert_array_equal(heads.last_valid(ys, jnp.array([0, 2]))[0], 0.0)


@pytest.mark.parametrize("attention", [None, "bahdanau", "luong"])
def test_beam_of_one_is_greedy(attention):
    model, params = model_and_params(attention)
    greedy = model.greedy(params, SRC, SRC_LEN, 7, 1, 2)
    beam = model.beam_search(params, SRC, SRC_LEN, 7, 1, 2, beam_size=1)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    np.testing.assert_allclose(beam.log_prob, greedy.log_prob, rtol=1e-5)
    np.testing.assert_allclose(beam.attention, greedy.attention, atol=1e-6)


def test_jit_decoding_matches_a_python_loop():
    model, params = model_and_params("bahdanau", "lstm")
    jitted = jax.jit(model.greedy, static_argnums=(3, 4, 5))(params, SRC, SRC_LEN, 6, 1, 2)
    enc, carry = model.encode(params, SRC, SRC_LEN)
    token, done, tokens = np.ones(3, int), np.zeros(3, bool), []
    for _ in range(6):
        carry, logits, _ = model.step(params, enc, carry, jnp.asarray(token))
        token = np.where(done, 2, np.asarray(logits).argmax(-1))
        done |= token == 2
        tokens.append(token)
    np.testing.assert_array_equal(jitted.tokens, np.stack(tokens, 1))


def test_exhaustive_beam_finds_the_most_likely_sequence():
    V, L = 3, 3  # tokens 0..2; 1 starts, 2 ends
    model, params = model_and_params("bahdanau", vocab=V)
    src, src_len = SRC[:, :2] % V, jnp.array([2, 2, 1])
    beam = model.beam_search(params, src, src_len, L, 1, 2, beam_size=V**L, length_penalty=0.0)
    apply = jax.jit(model.apply)
    best = np.full(3, -np.inf)
    for seq in itertools.product(range(V), repeat=L):
        seq = np.array(seq)
        tgt_in = jnp.asarray(np.tile(np.concatenate([[1], seq[:-1]]), (3, 1)))
        logp = jax.nn.log_softmax(apply(params, src, src_len, tgt_in)[0])
        n = int(np.argmax(seq == 2)) + 1 if (seq == 2).any() else L  # score up to and including the end
        score = np.asarray(sum(logp[:, t, seq[t]] for t in range(n)))
        best = np.maximum(best, score)
    np.testing.assert_allclose(beam.log_prob, best, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="attention: expected one of"):
        Seq2Seq(5, 5, attention="dot")
    model, params = model_and_params()
    with pytest.raises(ValueError, match=r"src: expected token ids of shape \(B, S\)"):
        model.apply(params, SRC[0], SRC_LEN, jnp.ones((3, 2), int))


def test_cross_entropy_is_optaxs_to_the_last_bit():
    """The losses compute the cross-entropy themselves (the core imports no optax), as optax does
    (to the last bit with optax 0.2.8; a tolerance of a few ulp allows for other versions)."""
    import optax

    logits = 30 * jax.random.normal(jax.random.key(0), (3, 4, 11))
    labels = jax.random.randint(jax.random.key(1), (3, 4), 0, 11)
    want = lambda l: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(l, labels))
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=5e-7, atol=0)
    close(heads.cross_entropy(logits, labels), want(logits))
    close(jax.grad(heads.cross_entropy)(logits, labels), jax.grad(want)(logits))
    lengths = jnp.array([4, 2, 0])
    close(heads.masked_cross_entropy(logits, labels, lengths), heads.masked_mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, labels), heads.sequence_mask(lengths, 4)))

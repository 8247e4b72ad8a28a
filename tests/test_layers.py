"""The stacked layer: residual connections, dropout, unbatched use."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

B, T, I, H = 3, 6, 4, 4


def test_residual_adds_each_layers_input_and_keeps_padding_zero():
    cell = jaxrnn.gru(H)
    plain = jaxrnn.RNN(cell, num_layers=2)
    residual = jaxrnn.RNN(cell, num_layers=2, residual=True)
    params = plain.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array([6, 3, 0])
    ys, _ = residual.apply(params, xs, lengths=lengths)
    # by hand: y1 = scan(x) + x, y2 = scan(y1) + y1, padded steps zero
    valid = (jnp.arange(T)[None] < lengths[:, None])[..., None]
    y1 = (jaxrnn.scan(cell, params[0]["fwd"], xs, lengths=lengths)[0] + xs) * valid
    y2 = (jaxrnn.scan(cell, params[1]["fwd"], y1, lengths=lengths)[0] + y1) * valid
    np.testing.assert_allclose(ys, y2, atol=1e-6)


def test_dropout_only_with_key_and_only_between_layers():
    layer = jaxrnn.RNN(jaxrnn.lstm(H), num_layers=2, dropout=0.5)
    single = jaxrnn.RNN(jaxrnn.lstm(H), num_layers=1, dropout=0.5)
    params = layer.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    eval_a, _ = layer.apply(params, xs)
    eval_b, _ = layer.apply(params, xs, key=None)
    train_a, _ = layer.apply(params, xs, key=jax.random.key(2))
    train_b, _ = layer.apply(params, xs, key=jax.random.key(3))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, train_b)
    # a one-layer stack has no "between": dropout never applies
    p1 = params[:1]
    np.testing.assert_array_equal(single.apply(p1, xs, key=jax.random.key(2))[0], single.apply(p1, xs)[0])


def test_unbatched_layer_equals_batch_of_one():
    layer = jaxrnn.RNN(jaxrnn.lstm(H), num_layers=2, bidirectional=True)
    params = layer.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    ys, state = layer.apply(params, xs, lengths=jnp.array([6, 4, 2]))
    one, one_state = layer.apply(params, xs[1], lengths=jnp.array(4))
    np.testing.assert_allclose(one, ys[1], atol=1e-6)
    np.testing.assert_allclose(one_state.c, state.c[:, 1], atol=1e-6)


def test_layer_is_jittable_and_differentiable():
    layer = jaxrnn.RNN(jaxrnn.gru(H), num_layers=2, bidirectional=True, dropout=0.1)
    params = layer.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    loss = jax.jit(lambda p, k: jnp.mean(layer.apply(p, xs, lengths=jnp.array([6, 3, 1]), key=k)[0] ** 2))
    grads = jax.grad(loss)(params, jax.random.key(0))
    assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in jax.tree_util.tree_leaves(grads))


def test_padding_with_nan_reaches_no_output_or_gradient_of_a_residual_bidirectional_layer():
    rnn = jaxrnn.RNN(jaxrnn.lstm(2), bidirectional=True, residual=True)
    params = rnn.init(jax.random.key(0), I)  # I = 2H: the residual applies
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array([6, 3, 0])
    padding = ~(jnp.arange(T)[None, :] < lengths[:, None])[..., None]
    run = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(rnn.apply(p, x, lengths=lengths)[0] ** 2)))
    (value, grads), (expected, expected_grads) = run(params, jnp.where(padding, jnp.nan, xs)), run(params, jnp.where(padding, 0.0, xs))
    assert float(value) == float(expected)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_apply_passes_scan_options_to_every_layer(monkeypatch):
    rnn = jaxrnn.RNN(jaxrnn.lstm(H), num_layers=2, bidirectional=True)
    params = rnn.init(jax.random.key(0), I)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return jaxrnn.unroll.scan(*args, **kwargs)

    monkeypatch.setattr(jaxrnn.layers, "scan", spy)
    ys, _ = rnn.apply(params, xs, lengths=jnp.array([6, 3, 0]), checkpoint_every=4, backward="autodiff")
    assert len(calls) == 4 and all(c["checkpoint_every"] == 4 and c["backward"] == "autodiff" for c in calls)
    np.testing.assert_allclose(ys, rnn.apply(params, xs, lengths=jnp.array([6, 3, 0]))[0], atol=1e-6)
    with np.testing.assert_raises_regex(TypeError, r"unexpected options \['chunk'\]"):
        rnn.apply(params, xs, chunk=4)

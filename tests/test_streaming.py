"""Streaming inference equals the full-sequence scan, and a stream survives save/restore."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import heads, streaming


@pytest.mark.parametrize("kind,layers,residual", [("lstm", 2, False), ("gru", 1, False), ("vanilla", 3, True),
                                                  ("lru", 2, True)])
def test_stepping_equals_the_scan(kind, layers, residual):
    rnn = jaxrnn.RNN(jaxrnn.CELLS[kind](8), num_layers=layers, residual=residual)
    params = rnn.init(jax.random.key(0), 8)
    xs = jax.random.normal(jax.random.key(1), (3, 12, 8))
    full, final = rnn.apply(params, xs)
    step = jax.jit(lambda s, x: streaming.step(rnn, params, s, x))
    state, outs = streaming.start(rnn, 3), []
    for t in range(12):
        state, y = step(state, xs[:, t])
        outs.append(y)
    np.testing.assert_allclose(jnp.stack(outs, 1), full, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state.carry, final)


def test_saved_stream_resumes_where_it_stopped(tmp_path):
    rnn = jaxrnn.RNN(jaxrnn.lstm(6), num_layers=2)
    params = rnn.init(jax.random.key(0), 4)
    xs = jax.random.normal(jax.random.key(1), (2, 10, 4))
    full, _ = rnn.apply(params, xs)
    state = streaming.start(rnn, 2)
    for t in range(6):
        state, _ = streaming.step(rnn, params, state, xs[:, t])
    streaming.save(tmp_path / "stream", state)
    restored = streaming.restore(tmp_path / "stream", streaming.start(rnn, 2))  # e.g. in a new process
    assert int(restored.steps) == 6
    outs = []
    for t in range(6, 10):
        restored, y = streaming.step(rnn, params, restored, xs[:, t])
        outs.append(y)
    np.testing.assert_allclose(jnp.stack(outs, 1), full[:, 6:], atol=1e-5)


def test_bidirectional_cannot_stream():
    rnn = jaxrnn.RNN(jaxrnn.gru(4), bidirectional=True)
    with pytest.raises(ValueError, match="rnn: a bidirectional RNN needs the whole sequence"):
        streaming.start(rnn, 2)


def test_generate_from_a_vector_equals_feeding_the_outputs_back_by_hand():
    cell = jaxrnn.gru(5)
    params = cell.init(jax.random.key(0), 5)
    h0 = jnp.tanh(jax.random.normal(jax.random.key(1), (2, 5)))
    ys, _ = heads.generate(cell, params, h0, jnp.zeros((2, 5)), 4, lambda y: y)
    h, x = h0, jnp.zeros((2, 5))
    for t in range(4):
        h, y = cell.recur(params, h, cell.project(params, x))
        np.testing.assert_allclose(ys[:, t], y, atol=1e-6)
        x = y


def test_step_checks_the_input_shape_and_names_x_t():
    rnn = jaxrnn.RNN(jaxrnn.lstm(6), num_layers=2)
    params = rnn.init(jax.random.key(0), 3)
    state = streaming.start(rnn, 2)
    with pytest.raises(ValueError, match=r"x_t: expected shape \(B, I\) = \(2, 3\) .*got shape \(2, 5\)"):
        streaming.step(rnn, params, state, jnp.ones((2, 5)))  # wrong feature size
    with pytest.raises(ValueError, match=r"x_t: .* = \(2, 3\) \(B from the stream state.*got shape \(4, 3\)"):
        streaming.step(rnn, params, state, jnp.ones((4, 3)))  # batch not the state's
    with pytest.raises(ValueError, match=r"x_t: expected shape \(B, I\) = \(2, 3\).*got shape \(2, 1, 3\)"):
        streaming.step(rnn, params, state, jnp.ones((2, 1, 3)))  # a sequence, not one step
    with pytest.raises(ValueError, match=r"x_t: expected shape \(B, I\) = \(2, 3\).*got shape \(3,\)"):
        jax.jit(lambda s, x: streaming.step(rnn, params, s, x))(state, jnp.ones(3))  # checked under jit too
    unbatched = streaming.start(rnn)
    assert streaming.step(rnn, params, unbatched, jnp.ones(3))[1].shape == (6,)
    with pytest.raises(ValueError, match=r"x_t: expected shape \(I,\) = \(3,\) \(an unbatched stream"):
        streaming.step(rnn, params, unbatched, jnp.ones((1, 3)))


def test_save_refuses_an_existing_path(tmp_path):
    rnn = jaxrnn.RNN(jaxrnn.gru(4))
    streaming.save(tmp_path / "s", streaming.start(rnn, 1))
    with pytest.raises(FileExistsError, match="path: .* already exists"):
        streaming.save(tmp_path / "s", streaming.start(rnn, 1))

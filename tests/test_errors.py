"""Bad input gives a clear error naming the argument, never a silent wrong answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn

H, I = 4, 3


@pytest.fixture
def lstm():
    cell = jaxrnn.lstm(H)
    return cell, cell.init(jax.random.key(0), I)


def test_xs_of_wrong_rank(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"xs: expected rank 3 \(B, T, features\).*got shape \(2, 3, 4, 3\)"):
        jaxrnn.scan(cell, params, jnp.ones((2, 3, 4, 3)))
    with pytest.raises(ValueError, match=r"xs: expected rank 3 \(T, B, features\).*rank 1"):
        jaxrnn.scan(cell, params, jnp.ones((3,)), time_major=True)


def test_feature_size_that_does_not_match_params(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"xs: expected feature size 3 .*feature size 5"):
        jaxrnn.scan(cell, params, jnp.ones((2, 6, 5)))


def test_lengths_wrong_shape_dtype_and_range(lstm):
    cell, params = lstm
    xs = jnp.ones((2, 6, I))
    with pytest.raises(ValueError, match=r"lengths: expected shape \(B,\) = \(2,\).*got shape \(2, 1\)"):
        jaxrnn.scan(cell, params, xs, lengths=jnp.ones((2, 1), jnp.int32))
    with pytest.raises(TypeError, match="lengths: expected an integer dtype, got float32"):
        jaxrnn.scan(cell, params, xs, lengths=jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"lengths: values must lie in \[0, T\] = \[0, 6\], got min 0 and max 7"):
        jaxrnn.scan(cell, params, xs, lengths=jnp.array([0, 7]))
    with pytest.raises(ValueError, match="got min -1"):
        jaxrnn.scan(cell, params, xs, lengths=jnp.array([-1, 3]))


def test_lengths_range_not_checked_under_jit_but_shape_is(lstm):
    cell, params = lstm
    run = jax.jit(lambda x, n: jaxrnn.scan(cell, params, x, lengths=n)[0])
    assert run(jnp.ones((2, 6, I)), jnp.array([6, 2])).shape == (2, 6, H)
    with pytest.raises(ValueError, match="lengths: expected shape"):
        run(jnp.ones((2, 6, I)), jnp.array([6, 2, 1]))


def test_resets_of_wrong_shape(lstm):
    cell, params = lstm
    with pytest.raises(ValueError, match=r"resets: expected shape \(B, T\) = \(2, 6\), got shape \(6, 2\)"):
        jaxrnn.scan(cell, params, jnp.ones((2, 6, I)), resets=np.zeros((6, 2), bool))
    with pytest.raises(TypeError, match="resets: expected booleans"):
        jaxrnn.scan(cell, params, jnp.ones((2, 6, I)), resets=np.zeros((2, 6), np.float32))


def test_initial_carry_of_wrong_structure_or_shape(lstm):
    cell, params = lstm
    xs = jnp.ones((2, 6, I))
    with pytest.raises(ValueError, match=r"initial_carry: expected LSTMState with leaf shapes \[\(2, 4\), \(2, 4\)\], got array"):
        jaxrnn.scan(cell, params, xs, initial_carry=jnp.zeros((2, H)))
    with pytest.raises(ValueError, match=r"initial_carry: .*got LSTMState with leaf shapes \[\(3, 4\), \(3, 4\)\]"):
        jaxrnn.scan(cell, params, xs, initial_carry=cell.initial_carry(3))


@pytest.mark.parametrize("factory", [jaxrnn.vanilla, jaxrnn.lstm, jaxrnn.gru])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_hidden_size_must_be_positive_int(factory, bad):
    with pytest.raises((ValueError, TypeError), match="hidden_size: expected a positive int"):
        factory(bad)


def test_unknown_activation_and_init_scheme():
    with pytest.raises(ValueError, match=r"activation: expected one of \('tanh', 'relu', 'identity'\), got 'sigmoid'"):
        jaxrnn.vanilla(4, activation="sigmoid")
    with pytest.raises(ValueError, match="init: expected one of"):
        jaxrnn.lstm(4, init="xavier")


def test_params_from_a_different_cell(lstm):
    _, lstm_params = lstm
    gru = jaxrnn.gru(H)
    with pytest.raises(ValueError, match="params: expected gru cell parameters.*different cell"):
        jaxrnn.scan(gru, lstm_params, jnp.ones((2, 6, I)))
    with pytest.raises(ValueError, match="params: expected lstm cell parameters"):
        jaxrnn.scan(jaxrnn.lstm(H + 1), lstm_params, jnp.ones((2, 6, I)))
    with pytest.raises(TypeError, match="params: expected the dict"):
        jaxrnn.scan(gru, [1, 2], jnp.ones((2, 6, I)))


def test_layer_errors():
    layer = jaxrnn.RNN(jaxrnn.gru(H), num_layers=2, bidirectional=True)
    params = layer.init(jax.random.key(0), I)
    with pytest.raises(ValueError, match="params: expected 2 layers"):
        layer.apply(params[:1], jnp.ones((2, 5, I)))
    with pytest.raises(ValueError, match=r"initial_state: expected array of shape \(4, 2, 4\)"):
        layer.apply(params, jnp.ones((2, 5, I)), initial_state=jnp.zeros((2, 2, H)))
    with pytest.raises(ValueError, match="num_layers: expected a positive int"):
        jaxrnn.RNN(jaxrnn.gru(H), num_layers=0)
    with pytest.raises(ValueError, match=r"dropout: expected a rate in \[0, 1\)"):
        jaxrnn.RNN(jaxrnn.gru(H), dropout=1.5)

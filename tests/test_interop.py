"""Equivalence with torch.nn.RNN/LSTM/GRU and flax.linen cells, both directions."""

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxrnn

torch.manual_seed(0)
B, T, I, H = 4, 6, 3, 5
KINDS = {
    "rnn-tanh": lambda **kw: torch.nn.RNN(I, H, nonlinearity="tanh", **kw),
    "rnn-relu": lambda **kw: torch.nn.RNN(I, H, nonlinearity="relu", **kw),
    "lstm": lambda **kw: torch.nn.LSTM(I, H, **kw),
    "gru": lambda **kw: torch.nn.GRU(I, H, **kw),
}
# Every kind x layers x direction, with bias / batch_first alternating so both
# values of each meet every kind.
CASES = [
    (kind, layers, bidir, (n % 2 == 0), (n // 2 % 2 == 0))
    for n, (kind, layers, bidir) in enumerate(itertools.product(KINDS, (1, 2), (False, True)))
]


def torch_run(module, x, lengths, h0):
    """torch's outputs, with pack_padded_sequence semantics when lengths are given."""
    with torch.no_grad():
        if lengths is None:
            out, state = module(x, h0)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                x, torch.tensor(lengths), batch_first=module.batch_first, enforce_sorted=False
            )
            out, state = module(packed, h0)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    return out.numpy(), state


def as_state(module, state):
    if isinstance(module, torch.nn.LSTM):
        return jaxrnn.LSTMState(h=jnp.asarray(state[0].numpy()), c=jnp.asarray(state[1].numpy()))
    return jnp.asarray(state.numpy())


@pytest.mark.parametrize("kind,layers,bidir,bias,batch_first", CASES)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_from_torch_matches_torch(kind, layers, bidir, bias, batch_first, with_lengths):
    module = KINDS[kind](num_layers=layers, bidirectional=bidir, bias=bias, batch_first=batch_first)
    if bias:  # torch's init already draws non-zero biases; make them larger to be sure
        with torch.no_grad():
            for name, p in module.named_parameters():
                if "bias" in name:
                    p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(B, T, I) if batch_first else torch.randn(T, B, I)
    lengths = [6, 2, 5, 1] if with_lengths else None
    D = 2 if bidir else 1
    h0 = torch.randn(layers * D, B, H)
    h0 = (h0, torch.randn(layers * D, B, H)) if kind == "lstm" else h0
    ref_out, ref_state = torch_run(module, x, lengths, h0)

    layer, params = jaxrnn.from_torch(module)
    out, state = layer.apply(
        params, jnp.asarray(x.numpy()), lengths=None if lengths is None else jnp.array(lengths),
        initial_state=as_state(module, h0),
    )
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state, as_state(module, ref_state)
    )


@pytest.mark.parametrize("factory", [jaxrnn.vanilla, jaxrnn.lstm, jaxrnn.gru])
@pytest.mark.parametrize("bidir", [False, True])
def test_to_torch_round_trip(factory, bidir):
    layer = jaxrnn.RNN(factory(H), num_layers=2, bidirectional=bidir)
    params = jax.tree_util.tree_map(
        lambda p: p + 0.3, layer.init(jax.random.key(0), I)  # non-zero biases
    )
    module = jaxrnn.to_torch(layer, params)
    x = np.random.default_rng(0).normal(size=(B, T, I)).astype(np.float32)
    lengths = [6, 3, 1, 4]
    ref_out, ref_state = torch_run(module, torch.from_numpy(x), lengths, None)
    out, state = layer.apply(params, jnp.asarray(x), lengths=jnp.array(lengths))
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), state, as_state(module, ref_state)
    )
    # and back again: the same function
    layer2, params2 = jaxrnn.from_torch(module)
    out2, _ = layer2.apply(params2, jnp.asarray(x), lengths=jnp.array(lengths))
    np.testing.assert_allclose(out2, out, atol=1e-6)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="module"):
        jaxrnn.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="proj_size"):
        jaxrnn.from_torch(torch.nn.LSTM(2, 4, proj_size=2))


def test_cells_with_replaced_functions_do_not_convert():
    cell = jaxrnn.gru(H)
    changed = cell._replace(elementwise=lambda params, h, xp_t, hh_t: (h, h))
    params = cell.init(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="layer.cell: its functions were replaced"):
        jaxrnn.to_torch(jaxrnn.RNN(changed), [{"fwd": params}])
    with pytest.raises(ValueError, match="cell: its functions were replaced"):
        jaxrnn.to_flax(changed, params)
    # the carry's layout decides its conversion, not the cell's name
    lstm_named, h = jaxrnn.vanilla(H)._replace(kind="lstm"), jnp.zeros((1, H))
    assert jaxrnn.carry_to_flax(lstm_named, h) is h and jaxrnn.carry_from_flax(lstm_named, h) is h
    changed_lstm = jaxrnn.lstm(H)._replace(elementwise=jaxrnn.lstm(H).elementwise)
    state = jaxrnn.LSTMState(h, h + 1)
    chex.assert_trees_all_equal(jaxrnn.carry_from_flax(changed_lstm, jaxrnn.carry_to_flax(changed_lstm, state)), state)
    jaxrnn.to_flax(cell._replace(init=None), params)  # init is no part of what a step computes
    # converted cells are stock: the fast paths take them
    assert jaxrnn.cells.is_stock(jaxrnn.from_torch(torch.nn.GRU(2, H))[0].cell)
    assert jaxrnn.cells.is_stock(jaxrnn.from_flax(nn.GRUCell(H), {"params": jaxrnn.to_flax(cell, params)[1]["params"]})[0])


FLAX_CELLS = {
    "LSTMCell": lambda: nn.LSTMCell(H),
    "OptimizedLSTMCell": lambda: nn.OptimizedLSTMCell(H),
    "GRUCell": lambda: nn.GRUCell(H),
    "SimpleCell-tanh": lambda: nn.SimpleCell(H),
    "SimpleCell-relu": lambda: nn.SimpleCell(H, activation_fn=nn.relu),
}


def randomized(variables, key):
    """Every flax parameter random and non-zero (flax inits biases to zero)."""
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("name", list(FLAX_CELLS))
def test_from_flax_and_to_flax_match_flax_rnn(name):
    flax_cell = FLAX_CELLS[name]()
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    model = nn.RNN(flax_cell, return_carry=True)
    variables = randomized(model.init(jax.random.key(0), xs), jax.random.key(2))
    lengths = jnp.array([6, 2, 5, 1])
    ref_carry, ref_out = model.apply(variables, xs, seq_lengths=lengths)

    cell, params = jaxrnn.from_flax(flax_cell, variables["params"]["cell"])
    out, carry = jaxrnn.scan(cell, params, xs, lengths=lengths)
    valid = (jnp.arange(T)[None] < lengths[:, None])[..., None]
    np.testing.assert_allclose(out * valid, ref_out * valid, atol=1e-5)  # flax leaves padding unmasked
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), carry, jaxrnn.carry_from_flax(cell, ref_carry)
    )

    back_cell, back_vars = jaxrnn.to_flax(cell, params, optimized_lstm=name == "OptimizedLSTMCell")
    assert type(back_cell) is type(flax_cell)
    _, back_out = nn.RNN(back_cell, return_carry=True).apply({"params": {"cell": back_vars["params"]}}, xs)
    np.testing.assert_allclose(back_out, model.apply(variables, xs)[1], atol=1e-5)


@pytest.mark.parametrize("factory", [jaxrnn.vanilla, jaxrnn.lstm, jaxrnn.gru])
def test_jaxrnn_cell_inside_flax_rnn(factory):
    cell = factory(H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    model = nn.RNN(jaxrnn.linen.Recurrent(cell), return_carry=True)
    variables = model.init(jax.random.key(0), xs)
    params = randomized(variables, jax.random.key(3))
    carry, out = model.apply(params, xs)
    ref_out, ref_carry = jaxrnn.scan(cell, params["params"]["cell"]["cell"], xs)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), carry, ref_carry)


def test_linen_rnn_module_equals_functional_layer():
    cell = jaxrnn.lstm(H)
    model = jaxrnn.linen.RNN(cell, num_layers=2, bidirectional=True, dropout=0.5)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    lengths = jnp.array([6, 2, 5, 1])
    variables = model.init(jax.random.key(0), xs)
    layer = jaxrnn.RNN(cell, num_layers=2, bidirectional=True, dropout=0.5)
    out, state = model.apply(variables, xs, lengths=lengths)
    ref, ref_state = layer.apply(variables["params"]["rnn"], xs, lengths=lengths)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    dropped, _ = model.apply(variables, xs, lengths=lengths, deterministic=False, rngs={"dropout": jax.random.key(5)})
    assert not np.allclose(dropped, out)  # dropout between the layers acts in training mode
    resets = jnp.zeros((B, T), bool).at[0, 3].set(True)
    chex.assert_trees_all_close(model.apply(variables, xs, resets=resets, checkpoint_every=2),
                                layer.apply(variables["params"]["rnn"], xs, resets=resets), atol=1e-6)
    with pytest.raises(TypeError, match="unexpected options"):
        model.apply(variables, xs, chunk=2)

"""jaxrnn.nnx: the cell inside flax.nnx.RNN, the layer as an nnx.Module, training, checkpoints, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx

import jaxrnn
from jaxrnn import diagnostics
from jaxrnn import nnx as rnn_nnx
from conftest import CELL_FACTORIES, random_params

B, T, I, H = 3, 5, 2, 4
LENGTHS = jnp.array([5, 2, 3])  # nnx.RNN takes the last carry at lengths - 1: no zero lengths


def inputs(seed=1, shape=(B, T, I)):
    return jax.random.normal(jax.random.key(seed), shape)


def close(a, b, atol=1e-5):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol), a, b)


def layer_params(layer, seed=3):
    """Functional params of ``layer`` with every entry random (non-zero biases)."""
    params = layer.init(jax.random.key(seed), I)
    return [
        {d: random_params(layer.cell, jax.random.fold_in(jax.random.key(seed), 2 * k + j), p["w_i"].shape[0])
         for j, (d, p) in enumerate(lp.items())}
        for k, lp in enumerate(params)
    ]


@pytest.mark.parametrize("kind", ["lstm", "gru"])  # a NamedTuple carry and an array carry
def test_cell_in_nnx_rnn_matches_scan(kind):
    cell = CELL_FACTORIES[kind](H)
    recurrent = rnn_nnx.Recurrent(cell, I, rngs=nnx.Rngs(0))
    params = random_params(cell, jax.random.key(2), I)
    recurrent.params = params
    xs = inputs()
    # the params are the functional dict: plain arrays, cell.init's keys and shapes
    assert recurrent.params.keys() == cell.init(jax.random.key(0), I).keys()
    assert all(type(v) is type(jnp.zeros(1)) for v in recurrent.params.values())
    assert isinstance(recurrent, nnx.RNNCellBase) and recurrent.num_feature_axes == 1

    carry, ys = nnx.RNN(recurrent, return_carry=True)(xs)
    ref_ys, ref_carry = jaxrnn.scan(cell, params, xs)
    close(ys, ref_ys)
    close(carry, ref_carry)

    # padded rows: the valid steps and the carry at each row's last valid step
    mask = jaxrnn.unroll.sequence_mask(LENGTHS, T)[..., None]
    carry, ys = nnx.RNN(recurrent, return_carry=True)(xs, seq_lengths=LENGTHS)
    ref_ys, ref_carry = jaxrnn.scan(cell, params, xs, lengths=LENGTHS)
    close(jnp.where(mask, ys, 0.0), ref_ys)
    close(carry, ref_carry)
    # ... and backwards over each row's valid part (flax's flip_sequences = jaxrnn's reverse)
    carry, ys = nnx.RNN(recurrent, return_carry=True, reverse=True, keep_order=True)(xs, seq_lengths=LENGTHS)
    ref_ys, ref_carry = jaxrnn.scan(cell, params, xs, lengths=LENGTHS, reverse=True)
    close(jnp.where(mask, ys, 0.0), ref_ys)
    close(carry, ref_carry)


def test_cell_params_go_to_the_diagnostics():
    recurrent = rnn_nnx.Recurrent(jaxrnn.vanilla(H, "identity"), I, rngs=nnx.Rngs(0))
    w_h = 0.5 * jnp.eye(H)
    recurrent.params = {**recurrent.params, "w_h": w_h}
    profile = diagnostics.gradient_profile(recurrent.cell, recurrent.params, inputs(), lambda ys: ys[:, -1].sum())
    # a linear RNN with W_h = I/2: the gradient halves with every step back from the loss
    steps = jnp.diff(profile.log10_norm, axis=1)
    np.testing.assert_allclose(steps, jnp.full_like(steps, jnp.log10(2.0)), atol=1e-4)


def test_cell_initialize_carry():
    recurrent = rnn_nnx.Recurrent(jaxrnn.lstm(H), I, rngs=nnx.Rngs(0))
    carry = recurrent.initialize_carry((B, 7, I))
    assert isinstance(carry, jaxrnn.LSTMState) and carry.h.shape == carry.c.shape == (B, 7, H)
    assert not carry.h.any()
    drawn = recurrent.initialize_carry((B, I), nnx.Rngs(carry=1), jax.nn.initializers.normal())
    assert drawn.h.shape == (B, H) and drawn.h.any() and not jnp.allclose(drawn.h, drawn.c)
    with pytest.raises(ValueError, match="rngs"):
        recurrent.initialize_carry((B, I), None, jax.nn.initializers.normal())


# One layer configuration, and one cell object, for the tests below, so that they share compiled
# functions (a cell's functions are closures: two calls of jaxrnn.gru(H) make unequal cells, hence
# unequal nnx graphdefs, hence a new compilation under nnx.jit).
LAYER = jaxrnn.RNN(jaxrnn.gru(H), num_layers=2, bidirectional=True, dropout=0.5)


def make_model(seed=0, **kwargs):
    return rnn_nnx.RNN(LAYER.cell, I, num_layers=2, bidirectional=True, dropout=0.5, rngs=nnx.Rngs(seed), **kwargs)


@nnx.jit
def forward(model, xs, lengths):
    return model(xs, lengths=lengths, unroll=1)  # unroll=1 compiles faster


@jax.jit
def functional_apply(params, xs, lengths, key=None):
    return LAYER.apply(params, xs, lengths=lengths, key=key, unroll=1)


def test_layer_matches_functional_apply_and_torch():
    model = make_model(deterministic=True)
    # the params are layer.init's layout, leaf for leaf, plain arrays
    init = LAYER.init(jax.random.key(0), I)
    assert jax.tree_util.tree_structure(model.params) == jax.tree_util.tree_structure(init)
    assert jax.tree_util.tree_map(jnp.shape, model.params) == jax.tree_util.tree_map(jnp.shape, init)
    assert type(model.params) is list and type(model.params[0]["fwd"]) is dict
    assert list(model.params[1]["bwd"]) == list(init[1]["bwd"])  # even the key order
    is_var = lambda x: isinstance(x, nnx.Variable)
    assert all(isinstance(v, nnx.Param) for v in jax.tree_util.tree_leaves(model.weights, is_leaf=is_var))
    assert not any(isinstance(v, nnx.Variable) for v in jax.tree_util.tree_leaves(model.params, is_leaf=is_var))

    params = layer_params(LAYER)
    model.params = params
    close(model.params, params, atol=0)
    xs = inputs()
    ys, state = forward(model, xs, LENGTHS)
    ref_ys, ref_state = functional_apply(params, xs, LENGTHS)
    close(ys, ref_ys, atol=1e-6)
    close(state, ref_state, atol=1e-6)

    # the same params, handed to torch as they are, compute the same outputs
    module = jaxrnn.to_torch(model.layer, model.params).eval()
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.from_numpy(np.array(xs)), torch.tensor(np.asarray(LENGTHS)), batch_first=True, enforce_sorted=False
        )
        out, h_n = module(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    close(ys, out.numpy())
    close(state, h_n.numpy())


def test_params_setter_checks_shapes():
    model = rnn_nnx.RNN(jaxrnn.lstm(H), I, num_layers=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input_size=2\).*got \{'w_i': \(3"):
        model.params = jaxrnn.RNN(jaxrnn.lstm(H), num_layers=2).init(jax.random.key(0), 3)
    with pytest.raises(ValueError, match="structured"):
        model.params = jaxrnn.RNN(jaxrnn.lstm(H), num_layers=1).init(jax.random.key(0), I)
    cell = rnn_nnx.Recurrent(jaxrnn.gru(H), I, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="gru"):
        cell.params = jaxrnn.gru(H + 1).init(jax.random.key(0), I)
    model.params = params = jaxrnn.RNN(jaxrnn.lstm(H), num_layers=2).init(jax.random.key(5), I)
    close(model.params, params, atol=0)


def test_trains_under_nnx_jit_with_the_functional_gradient():
    model = make_model(deterministic=True)
    xs, target = inputs(1), jnp.tanh(inputs(2, (B, T, 2 * H)))
    loss_of = lambda ys: jnp.mean((ys - target) ** 2)
    lr = 2.0
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda model: loss_of(model(xs, lengths=LENGTHS, unroll=1)[0]))(model)
        optimizer.update(model, grads)
        return loss, grads

    before = model.params
    loss, grads = train_step(model, optimizer)
    # nnx's gradient is jax.grad of the functional loss, in the functional layout
    ref = jax.jit(jax.grad(lambda p: loss_of(functional_apply(p, xs, LENGTHS)[0])))(before)
    grads = rnn_nnx.functional(grads)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref)
    close(grads, ref, atol=1e-6)
    # and the optimiser wrote its update into the module's Params
    close(model.params, jax.tree_util.tree_map(lambda p, g: p - lr * g, before, ref), atol=1e-6)

    losses = [float(loss)] + [float(train_step(model, optimizer)[0]) for _ in range(5)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.85 * losses[0], losses


def test_checkpoint_round_trip(tmp_path):
    model, fresh = make_model(0), make_model(1)
    xs = inputs()
    forward(model, xs, LENGTHS)  # advance the dropout stream: its count is part of the state too
    assert not jnp.allclose(forward(model, xs, LENGTHS)[0], forward(fresh, xs, LENGTHS)[0])

    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(tmp_path / "state", nnx.state(model))
        checkpointer.wait_until_finished()
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, nnx.state(fresh))
        nnx.update(fresh, checkpointer.restore(tmp_path / "state", abstract))
    finally:
        checkpointer.close()

    close(fresh.params, model.params, atol=0)
    close(forward(fresh, xs, LENGTHS), forward(model, xs, LENGTHS), atol=0)  # the same dropout masks too
    model.eval()
    fresh.eval()
    close(forward(fresh, xs, LENGTHS), forward(model, xs, LENGTHS), atol=0)


def test_dropout_train_and_eval():
    model = make_model(0)
    xs = inputs()
    reference, _ = functional_apply(model.params, xs, LENGTHS)  # no key: no dropout

    assert model.deterministic is False  # nnx's default: train mode
    first, second = forward(model, xs, LENGTHS)[0], forward(model, xs, LENGTHS)[0]
    assert not jnp.allclose(first, second)  # a new key from the stream on each call
    assert not jnp.allclose(first, reference) and not jnp.allclose(second, reference)
    # rngs given to the call take precedence: a key is used as the functional apply uses it
    key = jax.random.key(9)
    with_key = nnx.jit(lambda model, key: model(xs, lengths=LENGTHS, rngs=key, unroll=1)[0])
    close(with_key(model, key), functional_apply(model.params, xs, LENGTHS, key)[0], atol=1e-6)

    close(forward(nnx.view(model, deterministic=True), xs, LENGTHS)[0], reference, atol=1e-6)
    model.eval()
    assert model.deterministic is True
    close(forward(model, xs, LENGTHS)[0], reference, atol=1e-6)
    model.train()
    assert model.deterministic is False
    assert not jnp.allclose(forward(model, xs, LENGTHS)[0], reference)


def test_dropout_eager_uses_the_dropout_stream():
    xs = inputs()
    layer = jaxrnn.RNN(jaxrnn.vanilla(H), num_layers=2, dropout=0.5)
    model = rnn_nnx.RNN(jaxrnn.vanilla(H), I, num_layers=2, dropout=0.5, rngs=nnx.Rngs(0, dropout=5))
    # the first key of the forked "dropout" stream, as the module draws it
    key = nnx.Rngs(0, dropout=5).dropout.fork()()
    close(model(xs)[0], layer.apply(model.params, xs, key=key)[0], atol=1e-6)
    # an nnx.Rngs given to the call: its "dropout" stream
    key = nnx.Rngs(dropout=2).dropout()
    close(model(xs, rngs=nnx.Rngs(dropout=2))[0], layer.apply(model.params, xs, key=key)[0], atol=1e-6)
    # deterministic=True given to the call turns dropout off; the other arguments go through to apply
    h0 = 0.5 * inputs(4, (2, B, H))
    resets = jnp.zeros((B, T), bool).at[1, 2].set(True)
    close(
        model(xs, deterministic=True, initial_state=h0, resets=resets),
        layer.apply(model.params, xs, initial_state=h0, resets=resets),
        atol=1e-6,
    )

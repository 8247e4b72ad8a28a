"""Cells: equations, initialisers, dtypes and gradients of one step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from conftest import random_inputs, random_params


def test_vanilla_step_matches_equation():
    cell = jaxrnn.vanilla(5, "tanh")
    p = random_params(cell, jax.random.key(0), 3)
    h, x = random_inputs(jax.random.key(1), 2, 5), random_inputs(jax.random.key(2), 2, 3)
    new, y = cell.step(p, h, x)
    np.testing.assert_allclose(new, np.tanh(x @ p["w_i"] + h @ p["w_h"] + p["b"]), atol=1e-6)
    np.testing.assert_array_equal(new, y)


def test_lstm_step_matches_equation_gate_order_ifgo():
    H = 4
    cell = jaxrnn.lstm(H)
    p = random_params(cell, jax.random.key(0), 3)
    h, c = random_inputs(jax.random.key(1), 2, H), random_inputs(jax.random.key(2), 2, H)
    x = random_inputs(jax.random.key(3), 2, 3)
    z = x @ p["w_i"] + h @ p["w_h"] + p["b"]
    sig = lambda a: 1 / (1 + np.exp(-a))
    i, f, g, o = sig(z[:, :H]), sig(z[:, H : 2 * H]), np.tanh(z[:, 2 * H : 3 * H]), sig(z[:, 3 * H :])
    state, y = cell.step(p, jaxrnn.LSTMState(h, c), x)
    np.testing.assert_allclose(state.c, f * c + i * g, atol=1e-6)
    np.testing.assert_allclose(state.h, o * np.tanh(f * c + i * g), atol=1e-6)
    np.testing.assert_array_equal(y, state.h)


def test_gru_step_matches_cudnn_equation_with_separate_b_hn():
    H = 4
    cell = jaxrnn.gru(H)
    p = random_params(cell, jax.random.key(0), 3)
    h, x = random_inputs(jax.random.key(1), 2, H), random_inputs(jax.random.key(2), 2, 3)
    xi, hh = x @ p["w_i"] + p["b"], h @ p["w_h"]
    sig = lambda a: 1 / (1 + np.exp(-a))
    r, z = sig(xi[:, :H] + hh[:, :H]), sig(xi[:, H : 2 * H] + hh[:, H : 2 * H])
    n = np.tanh(xi[:, 2 * H :] + r * (hh[:, 2 * H :] + p["b_hn"]))
    new, _ = cell.step(p, h, x)
    np.testing.assert_allclose(new, (1 - z) * n + z * h, atol=1e-6)


def test_default_init_orthogonal_per_gate_and_forget_bias():
    H = 6
    p = jaxrnn.lstm(H, forget_bias=1.0).init(jax.random.key(0), 3)
    for g in range(4):
        block = p["w_h"][:, g * H : (g + 1) * H]
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    np.testing.assert_array_equal(p["b"][H : 2 * H], 1.0)
    np.testing.assert_array_equal(p["b"][:H], 0.0)
    np.testing.assert_array_equal(p["b"][2 * H :], 0.0)


def test_torch_init_bounds():
    H = 16
    k = 1 / np.sqrt(H)
    p = jaxrnn.gru(H, init="torch").init(jax.random.key(0), 5)
    for name in ("w_i", "w_h", "b_hn"):
        assert np.abs(p[name]).max() <= k
        assert np.abs(p[name]).max() > 0.8 * k  # a uniform that fills its range
    # r, z biases are b_ih + b_hh (two draws), n's b_in is one draw.
    assert np.abs(p["b"][: 2 * H]).max() <= 2 * k
    assert np.abs(p["b"][2 * H :]).max() <= k


def test_custom_initialisers_irnn():
    cell = jaxrnn.vanilla(4, "relu", recurrent_init=jaxrnn.cells.identity_init())
    np.testing.assert_array_equal(cell.init(jax.random.key(0), 2)["w_h"], np.eye(4))


def test_no_bias():
    cell = jaxrnn.gru(4, use_bias=False)
    assert set(cell.init(jax.random.key(0), 2)) == {"w_i", "w_h"}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("factory", [jaxrnn.vanilla, jaxrnn.lstm, jaxrnn.gru])
def test_dtype_and_param_dtype(factory, dtype):
    low = factory(4, dtype=dtype, param_dtype=jnp.float32)
    p = low.init(jax.random.key(0), 3)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p))
    ys, carry = jaxrnn.scan(low, p, jnp.ones((2, 5, 3)))
    assert ys.dtype == dtype
    assert all(x.dtype == dtype for x in jax.tree_util.tree_leaves(carry))
    ref, _ = jaxrnn.scan(factory(4), p, jnp.ones((2, 5, 3)))
    np.testing.assert_allclose(np.asarray(ys, np.float32), ref, atol=0.05)
    assert factory(4, param_dtype=jnp.bfloat16).init(jax.random.key(0), 3)["w_h"].dtype == jnp.bfloat16


def test_check_grads_on_each_cell_step(make_cell):
    cell = make_cell(3)
    p = random_params(cell, jax.random.key(0), 2)
    carry = jax.tree_util.tree_map(lambda z: z + 0.3, cell.initial_carry(2))
    x = random_inputs(jax.random.key(1), 2, 2)
    f = lambda p, c, x: cell.step(p, c, x)[1]
    check_grads(f, (p, carry, x), order=1, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)


def test_cells_are_immutable_records():
    cell = jaxrnn.lstm(4)
    with pytest.raises(AttributeError):
        cell.hidden_size = 5
    assert cell.option("forget_bias") == 1.0
    chex.assert_type(cell.init(jax.random.key(0), 2)["w_i"], jnp.float32)


@pytest.mark.parametrize("factory", [
    jaxrnn.gru, lambda h: jaxrnn.gru(h, use_bias=False), jaxrnn.lstm, jaxrnn.vanilla,
], ids=["gru", "gru-no-bias", "lstm", "vanilla"])
def test_step_vjp_equals_autodiff_of_elementwise(factory):
    """The fused backward's per-step derivative (hand-derived for the GRU) against jax.vjp."""
    H, B = 4, 3
    cell = factory(H)
    params = random_params(cell, jax.random.key(0), 2)
    rest = {k: v for k, v in params.items() if k not in ("w_i", "w_h", "b")}
    k = iter(jax.random.split(jax.random.key(1), 8))
    like_carry = lambda: jax.tree_util.tree_map(lambda z: random_inputs(next(k), *z.shape), cell.initial_carry(B))
    carry, d_carry = like_carry(), like_carry()
    xp, hh = (random_inputs(next(k), B, cell.num_gates * H) for _ in range(2))
    d_h = random_inputs(next(k), B, H)

    step_vjp = cell.elementwise_vjp()
    new, h, saved = step_vjp.keep(rest, carry, xp, hh)
    chex.assert_trees_all_close((new, h), cell.elementwise(rest, carry, xp, hh), atol=1e-6)
    got = step_vjp.backward(rest, carry, saved, d_carry, d_h)
    want = jax.vjp(cell.elementwise, rest, carry, xp, hh)[1]((d_carry, d_h))
    chex.assert_trees_all_close(got, want, atol=1e-5)


def test_a_cell_with_replaced_math_never_takes_the_stock_fast_path():
    """A cell changed with ``_replace`` computes its own functions on every path, the CPU's default included."""
    for stock in (jaxrnn.lstm(8), jaxrnn.gru(8)):
        def elementwise(params, carry, xp_t, hh_t, stock=stock):  # the stock step, its outputs halved
            new, h = stock.elementwise(params, carry, xp_t, hh_t)
            new = jax.tree_util.tree_map(lambda v: 0.5 * v, new)
            return new, 0.5 * h

        cell = stock._replace(elementwise=elementwise)  # recur, step and the backward follow it
        assert jaxrnn.cells.is_stock(stock) and not jaxrnn.cells.is_stock(cell)
        params = random_params(cell, jax.random.key(0), 3)
        xs = random_inputs(jax.random.key(1), 16, 5, 3)
        if jaxrnn.native.unavailable_reason() is None:  # the stock cell would run natively here
            assert jaxrnn.native.unsupported(stock, params, 16, jnp.float32, steps=5) is None
        auto, xla = jaxrnn.scan(cell, params, xs), jaxrnn.scan(cell, params, xs, kernel="xla")
        chex.assert_trees_all_close(auto, xla, atol=1e-6)
        assert not np.allclose(auto[0], jaxrnn.scan(stock, params, xs)[0], atol=1e-2)
        with pytest.raises(ValueError, match="kernel='native' cannot run this call: .*replaced"):
            jaxrnn.scan(cell, params, xs, kernel="native")
        # the same through every derived function: a step by hand, and the fused backward pass
        carry = cell.initial_carry(16)
        for t in range(5):
            carry, y = cell.step(params, carry, xs[:, t])
        chex.assert_trees_all_close((auto[0][:, -1], auto[1]), (y, carry), atol=1e-5)
        loss = lambda p, backward: jnp.sum(jnp.sin(jaxrnn.scan(cell, p, xs, backward=backward)[0]))
        chex.assert_trees_all_close(jax.grad(loss)(params, "fused"), jax.grad(loss)(params, "autodiff"), atol=1e-5)


def test_the_record_holds_what_a_cell_is_and_derives_the_rest():
    """No field can disagree with another: recur and step are methods, the GRU's hand-derived
    backward is used only with the elementwise part it was derived for."""
    assert "recur" not in jaxrnn.Cell._fields and "step" not in jaxrnn.Cell._fields
    with pytest.raises(ValueError):
        jaxrnn.lstm(4)._replace(recur=lambda *a: a)
    gru = jaxrnn.gru(4)
    assert gru.elementwise_vjp() is gru.step_vjp  # its own, for its own elementwise
    replaced = gru._replace(elementwise=jaxrnn.gru(4).elementwise)  # same math, another cell's function
    assert replaced.elementwise_vjp() is not gru.step_vjp
    own = jaxrnn.cells.autodiff_step_vjp(replaced.elementwise)  # one written by the user is used as given
    assert replaced._replace(step_vjp=own).elementwise_vjp() is own
    assert jaxrnn.lstm(4).step_vjp is None and not jaxrnn.cells.is_stock(gru._replace(step_vjp=None))


def test_is_stock_sees_through_renamed_options_and_wrapped_functions():
    import functools

    cell = jaxrnn.gru(4)
    wrap = lambda f: functools.wraps(f)(lambda *a, **k: f(*a, **k))  # copies f's __dict__ and name
    math = ("initial_carry", "project", "elementwise", "hidden", "param_shapes")
    wrapped = cell._replace(**{n: wrap(getattr(cell, n)) for n in math},
                            step_vjp=jaxrnn.StepVJP(*map(wrap, cell.step_vjp)))
    for changed in (cell._replace(options=()), cell._replace(hidden_size=5), cell._replace(kind="lstm"), wrapped,
                    cell._replace(project=len)):
        assert not jaxrnn.cells.is_stock(changed)
    assert jaxrnn.cells.is_stock(cell._replace(init=None, gates=None))
    # a cell the fast-path check cannot even read still runs, on the loop
    params = cell.init(jax.random.key(0), 3)
    ys, _ = jaxrnn.scan(cell._replace(options=()), params, jnp.ones((16, 5, 3)))
    np.testing.assert_allclose(ys, jaxrnn.scan(cell, params, jnp.ones((16, 5, 3)), kernel="xla")[0], atol=1e-6)


def test_a_custom_cell_may_read_any_parameter_on_every_path():
    """A cell whose projection reads a parameter of its own and whose elementwise part reads ``b``:
    the fused backward (per-step and hoisted projection, checkpointed chunks) gives it every
    parameter and equals JAX's own derivative of the loop."""
    stock = jaxrnn.vanilla(4)
    cell = stock._replace(
        kind="scaled",
        param_shapes=lambda i: {**stock.param_shapes(i), "g": (4,)},
        init=lambda key, i: {**stock.init(key, i), "g": jnp.full((4,), 1.5)},
        project=lambda p, xs: (xs @ p["w_i"]) * p["g"] + p["b"],
        elementwise=lambda p, h, xp, hh: (lambda h: (h, h))(jnp.tanh(xp + hh - 0.5 * p["b"] + 0.1 * p["w_h"][0])),
    )
    params = random_params(cell, jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 5, 7, 3)
    loss = lambda p, **options: jnp.sum(jnp.sin(jaxrnn.scan(cell, p, xs, **options)[0]))
    want = loss(params, backward="autodiff"), jax.grad(lambda p: loss(p, backward="autodiff"))(params)
    for options in ({}, {"projection": "hoisted"}, {"checkpoint_every": 3}, {"checkpoint_every": 3, "projection": "hoisted"}):
        got = loss(params, **options), jax.grad(lambda p: loss(p, **options))(params)
        chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_fused_backward_takes_a_carry_in_another_dtype_and_checks_a_cells_own_step_vjp():
    """A bfloat16 cell whose carry is float32: the step's matmul runs in bfloat16 and its cotangent
    returns to the carry in float32. A hand-written StepVJP naming a parameter the elementwise part
    does not get is an error, not a gradient silently dropped."""
    stock = jaxrnn.vanilla(4, dtype=jnp.bfloat16)
    cell = stock._replace(
        initial_carry=lambda batch_size=None: jnp.zeros((4,) if batch_size is None else (batch_size, 4), jnp.float32),
        elementwise=lambda p, h, xp, hh: (lambda new: (new, new.astype(jnp.bfloat16)))(
            0.5 * h + 0.5 * jnp.tanh(xp + hh).astype(jnp.float32)),
    )
    params = cell.init(jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 2, 6, 3)
    loss = lambda p, backward: jnp.sum(jaxrnn.scan(cell, p, xs, backward=backward)[0].astype(jnp.float32) ** 2)
    chex.assert_trees_all_close(jax.grad(loss)(params, "fused"), jax.grad(loss)(params, "autodiff"), atol=1e-2, rtol=1e-2)

    gru = jaxrnn.gru(4)
    own = gru.step_vjp._replace(backward=lambda *a: ({"b_nh": jnp.zeros(4)}, *gru.step_vjp.backward(*a)[1:]))
    with pytest.raises(ValueError, match=r"step_vjp: its backward gave gradients for \['b_nh'\]"):
        jax.grad(lambda p: jnp.sum(jaxrnn.scan(gru._replace(step_vjp=own), p, xs)[0]))(gru.init(jax.random.key(0), 3))

"""Gradient-flow diagnostics, checked against analytic values and plain autodiff."""

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import diagnostics as D
from conftest import random_params


def last_step_loss(ys):
    return jnp.sum(jnp.sin(ys[:, -1]))


def every_step_loss(ys):
    return jnp.sum(jnp.cos(ys) * jnp.arange(ys.shape[1])[None, :, None])


@pytest.mark.parametrize("rho", [0.5, 0.8, 1.25])
def test_linear_rnn_decay_equals_log10_spectral_radius(rho):
    cell = jaxrnn.vanilla(16, "identity", recurrent_init=jax.nn.initializers.orthogonal(scale=rho))
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (2, 120, 2))
    prof = D.gradient_profile(cell, params, xs, lambda ys: jnp.sum(ys[:, -1] ** 2))
    decay = D.summarize(prof.log10_norm).decay_per_step
    assert decay == pytest.approx(np.log10(rho), rel=0.02)


def slow_profile(cell, params, xs, loss_fn, lengths=None):
    """One jax.grad per step t: the loss as a function of a perturbation of s_t."""
    B, T, _ = xs.shape
    norms = np.full((B, T), np.nan)
    for t in range(T):
        def loss_of_delta(delta):
            carry = cell.initial_carry(B)
            ys = []
            for k in range(T):
                new, y = cell.step(params, carry, xs[:, k])
                if lengths is not None:
                    valid = (k < lengths)[:, None]
                    new = jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), new, carry)
                if k == t:
                    new = jax.tree_util.tree_map(jnp.add, new, delta)
                h = new.h if isinstance(new, jaxrnn.LSTMState) else new
                ys.append(h if lengths is None else jnp.where((k < lengths)[:, None], h, 0.0))
                carry = new
            return loss_fn(jnp.stack(ys, axis=1))

        g = jax.grad(loss_of_delta)(cell.initial_carry(B))
        norms[:, t] = np.sqrt(sum(np.sum(np.square(x), -1) for x in jax.tree_util.tree_leaves(g)))
    if lengths is not None:
        norms[np.arange(T)[None] >= np.asarray(lengths)[:, None]] = np.nan
    return np.log10(norms)


@pytest.mark.parametrize("factory", [jaxrnn.vanilla, jaxrnn.lstm, jaxrnn.gru])
@pytest.mark.parametrize("loss_fn", [last_step_loss, every_step_loss], ids=["last", "every"])
def test_one_pass_profile_equals_one_grad_per_step(factory, loss_fn):
    cell = factory(4)
    params = random_params(cell, jax.random.key(0), 3)
    xs = jax.random.normal(jax.random.key(1), (2, 6, 3))
    lengths = jnp.array([6, 4]) if loss_fn is every_step_loss else None
    prof = D.gradient_profile(cell, params, xs, loss_fn, lengths=lengths)
    np.testing.assert_allclose(prof.log10_norm, slow_profile(cell, params, xs, loss_fn, lengths), atol=1e-5)


def test_profile_is_exact_far_below_float32_range():
    """T = 600 vanilla tanh: plain float32 autodiff gives exact zeros; the profile matches float64."""
    cell = jaxrnn.vanilla(16)
    params = cell.init(jax.random.key(0), 1)
    xs = jax.random.normal(jax.random.key(1), (2, 600, 1))
    loss = lambda ys: jnp.sum(ys[:, -1])
    prof = D.gradient_profile(cell, params, xs, loss)
    plain32 = D.probe_gradients(cell, params, xs, loss)
    assert np.all(np.isfinite(prof.log10_norm))
    zeros = np.asarray(jnp.all(plain32 == 0, axis=-1))
    assert zeros.sum() > 100  # float32 lost these steps entirely...
    assert np.all(prof.plain_underflow[zeros])  # ...and the profile says so
    assert not np.any(prof.plain_underflow[np.asarray(prof.log10_norm) > -30])
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        cell64 = jaxrnn.vanilla(16, dtype=jnp.float64)
        g64 = D.probe_gradients(cell64, p64, jnp.asarray(xs, jnp.float64), loss)
        ref = np.log10(np.linalg.norm(np.asarray(g64), axis=-1))
    assert ref.min() < -45  # below float32's smallest subnormal
    np.testing.assert_allclose(prof.log10_norm, ref, atol=2e-3)


@pytest.mark.parametrize("factory", [jaxrnn.vanilla, jaxrnn.lstm, jaxrnn.gru])
def test_jacobian_singular_values_equal_dense_svd(factory):
    cell = factory(3)
    params = random_params(cell, jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (5, 2))  # unbatched
    sigma = D.jacobian_spectral_norms(cell, params, xs, num_iters=300)
    carry, expected = cell.initial_carry(None), []
    for x_t in xs:
        flat, unravel = ravel_pytree(carry)
        J = jax.jacobian(lambda c: ravel_pytree(cell.step(params, unravel(c), x_t)[0])[0])(flat)
        expected.append(np.linalg.svd(np.asarray(J), compute_uv=False)[0])
        carry, _ = cell.step(params, carry, x_t)
    np.testing.assert_allclose(sigma, expected, rtol=1e-3)


def test_vanilla_decays_faster_than_lstm_forget_bias_one_at_T100():
    xs = jax.random.normal(jax.random.key(1), (8, 100, 4))
    decays = {}
    for name, cell in {"vanilla": jaxrnn.vanilla(32), "lstm": jaxrnn.lstm(32, forget_bias=1.0)}.items():
        params = cell.init(jax.random.key(0), 4)
        prof = D.gradient_profile(cell, params, xs, lambda ys: jnp.sum(ys[:, -1]))
        decays[name] = D.summarize(prof.log10_norm)
    # Measured here: vanilla about -0.06 log10 per step, LSTM about -0.02.
    assert decays["vanilla"].decay_per_step < decays["lstm"].decay_per_step - 0.02
    assert decays["vanilla"].effective_horizon < decays["lstm"].effective_horizon


def test_summarize_definitions_on_a_known_profile():
    y = -0.1 * np.arange(50)[::-1]  # log10 norm at distance d is -0.1 d
    s = D.summarize(y)
    assert s.decay_per_step == pytest.approx(-0.1)
    assert s.log10_ratio == pytest.approx(-4.9)
    assert s.effective_horizon == 31  # first d with -0.1 d < -3
    assert D.summarize(np.zeros(10)).effective_horizon == float("inf")


def test_state_statistics_saturation_and_gates():
    cell = jaxrnn.vanilla(8)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (3, 10, 2))
    loud = dict(params, w_i=params["w_i"] * 100.0)
    stats = D.state_statistics(cell, loud, xs, lengths=jnp.array([10, 5, 2]))
    assert stats["saturated"].shape == (3, 10)
    assert np.nanmean(stats["saturated"]) > 0.8  # huge inputs saturate tanh
    assert np.isnan(stats["h_norm"][1, 5:]).all() and not np.isnan(stats["h_norm"][1, :5]).any()
    quiet = D.state_statistics(cell, dict(params, w_i=params["w_i"] * 0.01), xs)
    assert np.mean(quiet["saturated"]) == 0.0
    lstm = jaxrnn.lstm(8)
    s = D.state_statistics(lstm, lstm.init(jax.random.key(0), 2), xs)
    assert {"forget_mean", "input_saturated", "output_mean"} <= set(s)
    assert 0.6 < float(np.mean(s["forget_mean"])) < 0.85  # sigmoid(1 + small) at init


def test_loss_per_step_ignores_padding():
    losses = jnp.array([[1.0, 2.0, 3.0], [5.0, 100.0, 100.0]])
    np.testing.assert_allclose(D.loss_per_step(losses, jnp.array([3, 1])), [3.0, 2.0, 3.0])
    np.testing.assert_allclose(D.loss_per_step(losses), [3.0, 51.0, 51.5])


def test_diagnostics_jit():
    cell = jaxrnn.gru(4)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (2, 9, 2))
    f = jax.jit(D.gradient_profile, static_argnums=(0, 3))
    np.testing.assert_allclose(
        f(cell, params, xs, last_step_loss).log10_norm,
        D.gradient_profile(cell, params, xs, last_step_loss).log10_norm, atol=1e-6,
    )


def test_unbatched_diagnostics_take_every_argument_scan_takes():
    """One (T, I) sequence with (T,) resets and an (H,) carry equals the batch of one."""
    cell = jaxrnn.lstm(4)
    params = cell.init(jax.random.key(0), 2)
    xs = jax.random.normal(jax.random.key(1), (9, 2))
    resets = jnp.zeros(9, bool).at[4].set(True)
    carry = jaxrnn.LSTMState(jnp.full(4, 0.3), jnp.full(4, -0.2))
    one = D.gradient_profile(cell, params, xs, last_step_loss, resets=resets, initial_carry=carry, lengths=7)
    batch = D.gradient_profile(cell, params, xs[None], last_step_loss, resets=resets[None],
                               initial_carry=jax.tree_util.tree_map(lambda v: v[None], carry), lengths=jnp.array([7]))
    np.testing.assert_allclose(one.log10_norm, batch.log10_norm[0], atol=1e-6)
    stats = D.state_statistics(cell, params, xs, initial_carry=carry, lengths=7)
    np.testing.assert_allclose(stats["h_norm"], D.state_statistics(cell, params, xs[None], lengths=jnp.array([7]),
                               initial_carry=jax.tree_util.tree_map(lambda v: v[None], carry))["h_norm"][0], atol=1e-6)
    with np.testing.assert_raises_regex(ValueError, r"resets: expected shape \(T,\) = \(9,\)"):
        D.gradient_profile(cell, params, xs, last_step_loss, resets=resets[None])

"""The linear cells (minGRU, minLSTM, LRU) and their parallel prefix scan against the loop."""

import itertools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn import linear
from conftest import random_inputs, random_params

LINEAR = {"mingru": jaxrnn.mingru, "minlstm": jaxrnn.minlstm, "lru": jaxrnn.lru}


def make(kind, units, **kwargs):
    """A linear cell of ``units`` units: the LRU's are complex, each two of its carry's width."""
    return LINEAR[kind](2 * units if kind == "lru" else units, **kwargs)

# jaxrnn.scan, compiled: eagerly, the associative scan runs op by op, seconds a call
scan = jax.jit(jaxrnn.scan, static_argnums=0, static_argnames=("parallel", "reverse", "time_major", "kernel",
                                                                 "checkpoint_every"))


def masks(key, B, T, kind):
    """``lengths`` with 0 and T among them, and ``resets`` at random steps (step 0 included), as asked."""
    lengths = jnp.array([T, 0, *np.random.RandomState(0).randint(0, T + 1, B)][:B]) if "lengths" in kind else None
    resets = jax.random.bernoulli(key, 0.25, (B, T)).at[:, 0].set(True) if "resets" in kind else None
    return {k: v for k, v in (("lengths", lengths), ("resets", resets)) if v is not None}


def run_both(cell, params, xs, h0, **kwargs):
    """Values and gradients (params, inputs, initial carry) of a weighted sum of the outputs and final carry,
    by the loop and by the associative scan."""
    w = jax.random.normal(jax.random.key(9), xs.shape[:2] + (cell.hidden_size,), xs.dtype)

    def loss(p, x, h, parallel):
        ys, final = jaxrnn.scan(cell, p, x, initial_carry=h, parallel=parallel, **kwargs)
        return jnp.sum(ys * w) + jnp.sum(jnp.sin(final)), (ys, final)

    both = jax.jit(lambda p, x, h: [jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(p, x, h, parallel)[::-1]
                                    for parallel in (None, "associative")])
    return both(params, xs, h0)


SIZES = [(1, 1, 1), (3, 2, 7), (3, 37, 7), (17, 37, 33)]
MASKS = ["none", "lengths", "resets", "lengths+resets"]


def _by_default(kind, size, mask, reverse) -> bool:
    """Every size, mask and direction with -m slow; by default, the minGRU with every mask at once at an
    awkward size, reversed, and the minLSTM unmasked at the largest."""
    if kind == "mingru":
        return (size, mask, reverse) == ((3, 37, 7), "lengths+resets", True)
    if kind == "lru":  # by default in float64 with the same masks (and against its equations)
        return False
    return (size, mask, reverse) == ((17, 37, 33), "none", False)


CASES = [pytest.param(*case[:1], *case[1], *case[2:], marks=() if _by_default(*case) else pytest.mark.slow)
         for case in itertools.product(LINEAR, SIZES, MASKS, (False, True))]


@pytest.mark.parametrize("kind, B, T, H, mask, reverse", CASES)
def test_the_associative_scan_equals_the_loop(kind, B, T, H, mask, reverse):
    cell = make(kind, H)
    params = random_params(cell, jax.random.key(0), 5, scale=1.0)
    xs = random_inputs(jax.random.key(1), B, T, 5)
    h0 = random_inputs(jax.random.key(2), B, cell.hidden_size)
    loop, parallel = run_both(cell, params, xs, h0, reverse=reverse, **masks(jax.random.key(3), B, T, mask))
    chex.assert_trees_all_close(parallel, loop, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mingru", pytest.param("minlstm", marks=pytest.mark.slow), "lru"])
def test_the_associative_scan_equals_the_loop_in_float64(kind):
    with jax.enable_x64(True):
        cell = make(kind, 6, dtype=jnp.float64, param_dtype=jnp.float64)
        params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), random_params(cell, jax.random.key(0), 3))
        xs = random_inputs(jax.random.key(1), 3, 30, 3).astype(jnp.float64)
        h0 = random_inputs(jax.random.key(2), 3, cell.hidden_size).astype(jnp.float64)
        kwargs = {"lengths": jnp.array([30, 0, 17]), "resets": jnp.zeros((3, 30), bool).at[0, 10].set(True)}
        loop, parallel = run_both(cell, params, xs, h0, **kwargs)
        chex.assert_trees_all_close(parallel, loop, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind, modes", [("mingru", ("rev",)), pytest.param("mingru", ("fwd",), marks=pytest.mark.slow),
                                         pytest.param("minlstm", ("fwd", "rev"), marks=pytest.mark.slow),
                                         ("lru", ("rev",)), pytest.param("lru", ("fwd",), marks=pytest.mark.slow)])
def test_check_grads_on_the_associative_scan(kind, modes):
    cell = make(kind, 3)
    params = random_params(cell, jax.random.key(0), 2)
    xs = random_inputs(jax.random.key(1), 2, 6, 2)
    h0 = random_inputs(jax.random.key(2), 2, cell.hidden_size)
    resets = jnp.zeros((2, 6), bool).at[1, 2].set(True)
    f = jax.jit(lambda p, x, h: jaxrnn.scan(cell, p, x, initial_carry=h, lengths=jnp.array([6, 4]), resets=resets,
                                            parallel="associative"))
    check_grads(f, (params, xs, h0), order=1, modes=modes, atol=1e-2, rtol=1e-2)


def test_padding_never_reaches_the_associative_scan():
    """NaN, inf or huge values in the padding change neither values nor gradients."""
    cell = jaxrnn.minlstm(4)
    params = random_params(cell, jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 3, 7, 3)
    lengths = jnp.array([7, 2, 0])
    padding = ~(jnp.arange(7)[None, :] < lengths[:, None])[..., None]
    grads = jax.jit(jax.grad(lambda p, x: jnp.sum(jaxrnn.scan(cell, p, x, lengths=lengths, parallel="associative")[0]),
                             argnums=(0, 1)))
    expected = grads(params, jnp.where(padding, 0.0, xs))
    for poison in (np.nan, np.inf, 3e38):
        got = grads(params, jnp.where(padding, poison, xs))
        chex.assert_trees_all_equal(got, expected)


def test_the_recurrence_with_constant_decay_and_each_method():
    """a of shape (H,) broadcasts; h_t = a^t h0 + sum_k a^(t-k) b_k by hand."""
    a = jnp.array([0.5, -1.0, 1.0])
    b = random_inputs(jax.random.key(0), 9, 2, 3)
    h0 = random_inputs(jax.random.key(1), 2, 3)
    by_hand, h = [], h0
    for t in range(9):
        h = a * h + b[t]
        by_hand.append(h)
    for method in linear.METHODS:
        np.testing.assert_allclose(linear.recurrence(a, b, h0, method=method), jnp.stack(by_hand), rtol=1e-6)
    with pytest.raises(ValueError, match="method: expected one of"):
        linear.recurrence(a, b, h0, method="parallel")


def test_linear_cells_have_no_recurrent_weights_and_are_stock():
    for kind, constructor in LINEAR.items():
        cell = constructor(4)
        params = cell.init(jax.random.key(0), 3)
        assert "w_h" not in params and cell.hh(params, cell.initial_carry(2), jnp.zeros((2, 8))).shape == (2, 0)
        assert jaxrnn.cells.is_stock(cell)
        assert not jaxrnn.cells.is_stock(cell._replace(linear=constructor(4).linear))
        assert "the cell is" in jaxrnn.native.unsupported(cell, params, 32, "float32", steps=100)
        assert jaxrnn.CELLS[kind] is constructor


def test_the_minlstm_gates_are_normalised_where_both_underflow():
    cell = jaxrnn.minlstm(2)
    xp = jnp.array([[-200.0, -120.0, -200.0, -130.0, 1.0, 1.0]])  # f and i ~ e^-200, e^-120...
    f, i = cell.gates({}, None, xp, None).values()
    np.testing.assert_allclose(f + i, 1.0, rtol=1e-6)
    assert bool(jnp.isfinite(f).all()) and float(f[0, 1]) > 0.99  # f = e^-120 against i = e^-130


def test_parallel_errors_name_the_argument():
    params = jaxrnn.lstm(3).init(jax.random.key(0), 2)
    xs = jnp.ones((2, 4, 2))
    with pytest.raises(ValueError, match="parallel='associative': the lstm cell is not linear"):
        jaxrnn.scan(jaxrnn.lstm(3), params, xs, parallel="associative")
    cell = jaxrnn.mingru(3)
    params = cell.init(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="parallel: expected one of"):
        jaxrnn.scan(cell, params, xs, parallel="newton")
    with pytest.raises(ValueError, match="checkpoint_every=2"):
        jaxrnn.scan(cell, params, xs, parallel="associative", checkpoint_every=2)


def test_a_linear_cells_gradient_decays_by_log10_a_per_step():
    """With one unit, dL/dh_(t-1) = a_t dL/dh_t: the measured profile falls by exactly log10 |a_t| per step
    (the gradient-flow benchmark's linear rows rest on this; the LRU's complex a_t turns the gradient's
    (Re, Im) pair and scales it by |a_t|)."""
    from jaxrnn import diagnostics

    for kind in LINEAR:
        cell = make(kind, 1)
        params = random_params(cell, jax.random.key(0), 2, scale=1.0)
        xs = random_inputs(jax.random.key(1), 3, 40, 2)
        prof = diagnostics.gradient_profile(cell, params, xs, lambda ys: jnp.sum(ys[:, -1]))
        log10_a = jnp.log10(jnp.abs(cell.linear(params, cell.project(params, xs))[0]))[..., 0]  # (B, T)
        np.testing.assert_allclose(prof.log10_norm[:, :-1] - prof.log10_norm[:, 1:], log10_a[:, 1:], atol=1e-4)


def test_the_associative_scan_unbatched():
    cell = jaxrnn.minlstm(4)
    params = random_params(cell, jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 9, 3)
    one_row = {"lengths": 7, "resets": jnp.zeros((9,), bool).at[4].set(True)}
    one = scan(cell, params, xs, **one_row, parallel="associative")
    chex.assert_trees_all_close(one, scan(cell, params, xs, **one_row), rtol=1e-5, atol=1e-6)


def test_a_non_finite_packed_sequence_does_not_reach_the_next():
    """A NaN or inf at a valid step of one packed sequence stays in it: after the next reset the scan's values
    are the loop's (a zero coefficient at the reset would carry 0 * NaN on)."""
    cell = jaxrnn.mingru(3)
    params = random_params(cell, jax.random.key(0), 2)
    xs = random_inputs(jax.random.key(1), 2, 8, 2)
    resets = jnp.zeros((2, 8), bool).at[:, 4].set(True)
    for poison in (np.nan, np.inf):
        bad = xs.at[:, 2].set(poison)
        loop = scan(cell, params, bad, resets=resets)
        par = scan(cell, params, bad, resets=resets, parallel="associative")
        assert bool(jnp.isfinite(loop[0][:, 4:]).all()) and bool(jnp.isfinite(par[0][:, 4:]).all())
        np.testing.assert_allclose(par[0][:, 4:], loop[0][:, 4:], rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(par[1], loop[1], rtol=1e-5, atol=1e-6)


def test_both_methods_of_the_recurrence_agree_on_masks_dtypes_and_shapes():
    a = random_inputs(jax.random.key(0), 6, 2, 3).astype(jnp.bfloat16)
    b = random_inputs(jax.random.key(1), 6, 2, 3).astype(jnp.bfloat16)
    h0 = jnp.ones((3,), jnp.float32)  # broadcast over the batch, cast to the coefficients' dtype
    masks = {"valid": jnp.arange(6)[:, None] < jnp.array([6, 3]), "resets": jnp.zeros((6, 2), bool).at[2, 0].set(True)}
    seq = linear.recurrence(a, b, h0, method="sequential", **masks)
    par = linear.recurrence(a, b, h0, **masks)
    assert seq.dtype == par.dtype == jnp.bfloat16 and seq.shape == par.shape == (6, 2, 3)
    np.testing.assert_allclose(par.astype(jnp.float32), seq.astype(jnp.float32), rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match=r"valid: expected shape \(6, 2\) \(T, B\), got \(6,\)"):
        linear.recurrence(a, b, h0, valid=jnp.ones(6, bool))


def test_the_associative_scan_on_empty_sequences_and_batches_and_under_vmap():
    cell = jaxrnn.mingru(4)
    params = random_params(cell, jax.random.key(0), 3)
    h0 = random_inputs(jax.random.key(1), 2, 4)
    ys, final = scan(cell, params, jnp.zeros((2, 0, 3)), initial_carry=h0, parallel="associative")
    assert ys.shape == (2, 0, 4) and bool((final == h0).all())
    ys, final = scan(cell, params, jnp.zeros((0, 5, 3)), parallel="associative")
    assert ys.shape == (0, 5, 4) and final.shape == (0, 4)
    xs = random_inputs(jax.random.key(2), 3, 7, 3)
    lengths = jnp.array([7, 2, 0])
    one = lambda x, n: scan(cell, params, x, lengths=n, parallel="associative")
    chex.assert_trees_all_close(jax.vmap(one)(xs, lengths), scan(cell, params, xs, lengths=lengths),
                                rtol=1e-5, atol=1e-6)


def test_the_associative_scan_keeps_a_bfloat16_cell_in_bfloat16():
    cell = jaxrnn.minlstm(8, dtype=jnp.bfloat16)
    params = random_params(cell, jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 2, 20, 3)
    ys, final = scan(cell, params, xs, lengths=jnp.array([20, 9]), parallel="associative")
    loop, _ = scan(cell, params, xs, lengths=jnp.array([20, 9]))
    assert ys.dtype == final.dtype == loop.dtype == jnp.bfloat16
    np.testing.assert_allclose(ys.astype(jnp.float32), loop.astype(jnp.float32), atol=3e-2)


def test_the_associative_scan_time_major_with_lengths_equals_the_loop():
    cell = jaxrnn.mingru(5)
    params = random_params(cell, jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 9, 3, 3)  # (T, B, I)
    kwargs = {"lengths": jnp.array([9, 4, 0]), "time_major": True, "reverse": True}
    chex.assert_trees_all_close(scan(cell, params, xs, parallel="associative", **kwargs),
                                scan(cell, params, xs, **kwargs), rtol=1e-5, atol=1e-6)


def test_a_replaced_elementwise_is_not_solved_as_the_old_cell():
    stock = jaxrnn.mingru(3)
    params = stock.init(jax.random.key(0), 2)
    xs = jnp.ones((2, 4, 2))
    def half(p, h, xp, hh):
        new = 0.5 * stock.elementwise(p, h, xp, hh)[0]
        return new, new

    halved = stock._replace(elementwise=half)
    assert not jaxrnn.cells.linear_matches(halved) and jaxrnn.cells.linear_matches(stock)
    with pytest.raises(ValueError, match="elementwise was replaced"):
        jaxrnn.scan(halved, params, xs, parallel="associative")
    both = halved._replace(linear=lambda p, xp: tuple(0.5 * v for v in stock.linear(p, xp)))  # the user's own: trusted
    chex.assert_trees_all_close(jaxrnn.scan(both, params, xs, parallel="associative"), jaxrnn.scan(both, params, xs),
                                rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kernel='native'"):
        jaxrnn.scan(stock, params, xs, parallel="associative", kernel="native")


def test_linear_cells_do_not_convert_to_torch_or_flax():
    cell = jaxrnn.mingru(3)
    with pytest.raises(ValueError, match="flax has no mingru cell"):
        jaxrnn.to_flax(cell, cell.init(jax.random.key(0), 2))
    rnn = jaxrnn.RNN(cell)
    with pytest.raises(ValueError, match="torch.nn has no mingru cell"):
        jaxrnn.to_torch(rnn, rnn.init(jax.random.key(0), 2))


def test_the_parallel_benchmark_smoke(tmp_path, capsys):
    from jaxrnn.programs import parallel

    out = tmp_path / "p.json"
    parallel.main(["--cells", "mingru", "--batch", "2", "--hidden", "3", "--lengths", "4", "--mode", "fwd",
                   "--repeats", "1", "--block", "2", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert set(row["ms"]) == {"loop", "associative", "jaxrnn gru", "flax"} and row["mode"] == "fwd"
    assert out.with_suffix(".png").stat().st_size > 0
    assert "lengths at which a parallel method beat the loop" in capsys.readouterr().out
    parallel.main(["--cells", "gru", "--batch", "2", "--hidden", "3", "--lengths", "4", "--mode", "fwd",
                   "--repeats", "1", "--block", "2", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert set(row["ms"]) == {"loop", "deer", "quasi-deer", "jaxrnn gru", "flax"}
    assert all(v["converged"] and v["iterations"] <= 4 for v in row["iterations"].values())


def test_the_lru_is_its_equations():
    """z_t = lambda z_(t-1) + exp(gamma) (x_t B) in numpy's complex128, lambda = exp(-exp(nu) + i exp(theta)),
    B = w_i's halves as real and imaginary parts; the carry and output are [Re z, Im z]."""
    cell = jaxrnn.lru(6)
    params = random_params(cell, jax.random.key(0), 2)
    xs, h0 = random_inputs(jax.random.key(1), 2, 9, 2), random_inputs(jax.random.key(2), 2, 6)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    B = p["w_i"][:, :3] + 1j * p["w_i"][:, 3:]
    z, expected = np.asarray(h0[:, :3], np.float64) + 1j * np.asarray(h0[:, 3:], np.float64), []
    for t in range(9):
        z = lam * z + np.exp(p["gamma_log"]) * (np.asarray(xs[:, t], np.float64) @ B)
        expected.append(np.concatenate([z.real, z.imag], axis=-1))
    for parallel in (None, "associative"):
        ys, final = scan(cell, params, xs, initial_carry=h0, parallel=parallel)
        np.testing.assert_allclose(ys, np.stack(expected, axis=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(final, expected[-1], rtol=1e-5, atol=1e-5)


def test_the_lru_initialisation_keeps_the_state_at_its_inputs_scale():
    """|lambda| on the ring by area (|lambda|^2 uniform), phases in [0, max_phase], and gamma = log sqrt(1 -
    |lambda|^2): under white-noise input the state's mean |z|^2 is the input's, E|x B|^2, even at |lambda| ~ 1."""
    cell = jaxrnn.lru(4000, r_min=0.5, r_max=0.9, max_phase=1.0)
    params = cell.init(jax.random.key(0), 2)
    r2 = np.exp(-2 * np.exp(np.asarray(params["nu_log"], np.float64)))
    phase = np.exp(np.asarray(params["theta_log"]))
    assert 0.25 <= r2.min() and r2.max() <= 0.81 and 0.0 <= phase.min() and phase.max() <= 1.0
    # by area: mean |lambda|^2 0.53 (uniform in |lambda| would give 0.503)
    np.testing.assert_allclose([r2.mean(), phase.mean()], [(0.25 + 0.81) / 2, 0.5], atol=0.01)
    np.testing.assert_allclose(np.exp(2 * np.asarray(params["gamma_log"], np.float64)), 1 - r2, rtol=1e-5)
    np.testing.assert_allclose(np.std(params["w_i"]), 1 / np.sqrt(2 * 2), rtol=0.05)
    slow = jaxrnn.lru(8, r_min=0.99, r_max=0.995)
    params = slow.init(jax.random.key(1), 2)
    xs = jax.random.normal(jax.random.key(2), (64, 1500, 2))
    ys, _ = scan(slow, params, xs, parallel="associative")
    z2 = ys[:, 500:, :4] ** 2 + ys[:, 500:, 4:] ** 2  # past the transient: the variance 1 - |lambda|^(2t) > 0.9999
    xb2 = jnp.sum(params["w_i"][:, :4] ** 2 + params["w_i"][:, 4:] ** 2, axis=0)  # E|x B|^2 for x ~ N(0, I)
    np.testing.assert_allclose(jnp.mean(z2, axis=(0, 1)), xb2, rtol=0.25)


def test_newton_solves_the_lru_as_the_loop_does():
    """DEER's Jacobian of the LRU's step is its (Re, Im) rotation-and-scaling, exact: one iteration (quasi-DEER
    keeps the diagonal only and takes more: test_newton.py's float64 cases, -m slow)."""
    from jaxrnn import newton

    cell = jaxrnn.lru(4)
    params = random_params(cell, jax.random.key(0), 2)
    xs = random_inputs(jax.random.key(1), 2, 12, 2)
    loop = scan(cell, params, xs)
    ys, final, report = newton.solve(cell, params, xs, method="deer")
    assert bool(report.converged) and int(report.iterations) <= 2, report
    chex.assert_trees_all_close((ys, final), loop, rtol=1e-5, atol=1e-5)


def test_lru_arguments_are_checked_by_name():
    with pytest.raises(ValueError, match="hidden_size: expected an even number.*got 5"):
        jaxrnn.lru(5)
    with pytest.raises(ValueError, match="r_min, r_max: expected 0 <= r_min < r_max <= 1, got r_min=0.9, r_max=0.5"):
        jaxrnn.lru(4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="max_phase: expected a positive angle, got 0"):
        jaxrnn.lru(4, max_phase=0)


@pytest.mark.parametrize("kind", ["mingru", pytest.param("minlstm", marks=pytest.mark.slow), "lru"])
def test_layers_and_bidirectional_with_the_associative_scan(kind):
    rnn = jaxrnn.RNN(make(kind, 3), num_layers=2, bidirectional=True)
    params = rnn.init(jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 3, 9, 3)
    lengths = jnp.array([9, 3, 0])
    chex.assert_trees_all_close(rnn.apply(params, xs, lengths=lengths, parallel="associative"),
                                rnn.apply(params, xs, lengths=lengths), rtol=1e-5, atol=1e-5)


def test_the_lru_in_bfloat16():
    """Computed in complex64, kept in bfloat16; its eigenvalues drawn in float32 (in bfloat16, |lambda| near 1
    would round to a few values, some to 1)."""
    cell = jaxrnn.lru(256, r_min=0.99, r_max=0.999, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), 3)
    modulus = jnp.exp(-jnp.exp(params["nu_log"].astype(jnp.float32)))
    assert params["nu_log"].dtype == jnp.bfloat16 and bool((modulus < 1).all()) and len(set(modulus.tolist())) > 20
    xs = random_inputs(jax.random.key(1), 3, 9, 3)
    ys, final = scan(cell, params, xs, parallel="associative")
    loop, _ = scan(cell, params, xs)
    assert ys.dtype == final.dtype == loop.dtype == jnp.bfloat16
    np.testing.assert_allclose(ys.astype(jnp.float32), loop.astype(jnp.float32), atol=3e-2)
    with pytest.raises(ValueError, match=r"h0: complex coefficients of width 2 act on a real carry \[Re, Im\] of "
                                         r"width 4, got shape \(2,\)"):
        linear.recurrence(jnp.ones((5, 1, 2), jnp.complex64), jnp.ones((5, 1, 2), jnp.complex64), jnp.zeros(2))


def test_programs_refuse_an_odd_lru_in_one_line_before_any_work(tmp_path, capsys):
    from jaxrnn.programs import cli, parallel

    even = "hidden_size: expected an even number"
    for argv, run in ((["gradient-flow", "--cells", "lru", "--hidden-size", "7", "--out", str(tmp_path / "g")], cli.main),
                      (["long-range", "--models", "lru", "--hidden", "5", "--out", str(tmp_path / "l")], cli.main),
                      (["--cells", "lru", "--hidden", "8", "3", "--json", str(tmp_path / "p.json")], parallel.main)):
        with pytest.raises(SystemExit) as exit_:
            run(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and " for lru: " in err[0] and even in err[0], err
    assert not any(tmp_path.iterdir())  # no run folder, no record

"""Newton's method over the whole sequence (DEER, quasi-DEER, ELK) against the loop."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn import newton
from conftest import random_inputs, random_params

METHODS = newton.METHODS


def float64_cell(kind, H):
    return getattr(jaxrnn, kind)(H, dtype=jnp.float64, param_dtype=jnp.float64)


def problem(kind, B=3, T=23, H=5, I=3, dtype=jnp.float64, masked=True, scale=1.0):
    """A cell, its parameters, inputs, an initial carry and masks (lengths with 0 and T, resets at step 0 and
    at random) in ``dtype``."""
    cell = float64_cell(kind, H) if dtype == jnp.float64 else getattr(jaxrnn, kind)(H)
    cast = lambda tree: jax.tree_util.tree_map(lambda v: v.astype(dtype), tree)
    params = cast(random_params(cell, jax.random.key(0), I, scale=scale))
    xs = cast(random_inputs(jax.random.key(1), B, T, I))
    leaves, treedef = jax.tree_util.tree_flatten(cell.initial_carry(B))
    keys = jax.random.split(jax.random.key(2), len(leaves))
    h0 = treedef.unflatten([cast(random_inputs(k, *leaf.shape)) for k, leaf in zip(keys, leaves)])
    masks = dict(lengths=jnp.array([T, 0, T // 2][:B]),
                 resets=jax.random.bernoulli(jax.random.key(4), 0.2, (B, T)).at[:, 0].set(True)) if masked else {}
    return cell, params, xs, h0, masks


def loss_and_grads(run, cell, params, xs, h0):
    """A weighted sum of the outputs and the final carry, and its gradients in the parameters, the inputs and
    the initial carry; ``run(params, xs, h0) -> (ys, final_carry)``."""
    w = jax.random.normal(jax.random.key(9), xs.shape[:2] + (cell.hidden_size,), xs.dtype)

    def loss(p, x, h):
        ys, final = run(p, x, h)
        return jnp.sum(ys * w) + sum(jnp.sum(jnp.sin(v)) for v in jax.tree_util.tree_leaves(final))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, xs, h0)


def test_the_affine_scan_and_the_kalman_smoother_solve_their_problems():
    """affine(): the recurrence step by step; kalman_smooth(): the least-squares problem of an ELK step,
    solved densely."""
    rng = np.random.default_rng(0)
    T, D, damping = 6, 3, 0.7
    for alg, F in ((newton._Dense, rng.normal(size=(T, D, D))), (newton._Diagonal, rng.normal(size=(T, D)))):
        Fm = F if F.ndim == 3 else np.stack([np.diag(f) for f in F])
        c, y, s0 = rng.normal(size=(T, D)), rng.normal(size=(T, D)), rng.normal(size=D)
        rows, rhs, s, loop = [], [], s0, []
        for t in range(T):
            dyn = np.zeros((D, T * D))
            dyn[:, t * D:(t + 1) * D] = np.eye(D)
            if t:
                dyn[:, (t - 1) * D:t * D] -= Fm[t]
            obs = np.zeros((D, T * D))
            obs[:, t * D:(t + 1) * D] = np.sqrt(damping) * np.eye(D)
            rows += [dyn, obs]
            rhs += [c[t] + (Fm[0] @ s0 if t == 0 else 0), np.sqrt(damping) * y[t]]
            s = Fm[t] @ s + c[t]
            loop.append(s)
        best = np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0].reshape(T, D)
        with jax.enable_x64(True):
            args = [jnp.asarray(v) for v in (F, c, s0)]
            np.testing.assert_allclose(newton.affine(alg, *args), np.array(loop), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(newton.kalman_smooth(alg, *args, jnp.asarray(y), damping), best,
                                       rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind, method", [
    pytest.param(kind, method, marks=() if (kind, method) == ("lstm", "deer") else pytest.mark.slow)
    for kind in ("vanilla", "gru", "lstm", "lru") for method in METHODS])
def test_newton_equals_the_loop_in_float64(kind, method):
    """Values and gradients to 1e-10, with lengths (0 and T among them), resets, reverse and an initial carry
    (by default the LSTM by DEER; the float32 test runs quasi-ELK, the others quasi-DEER; the LRU's
    default test is in test_linear.py)."""
    with jax.enable_x64(True):
        cell, params, xs, h0, masks = problem(kind, H=6 if kind == "lru" else 5)
        run = lambda parallel: lambda p, x, h: jaxrnn.scan(cell, p, x, initial_carry=h, reverse=True,
                                                           parallel=parallel, kernel="xla", **masks)
        loop = loss_and_grads(run(None), cell, params, xs, h0)
        ys, carry, report = newton.solve(cell, params, xs, initial_carry=h0, reverse=True, method=method, **masks)
        assert bool(report.converged) and not bool(report.fell_back), report  # Newton's, not the fallback's
        chex.assert_trees_all_close((ys, carry), run(None)(params, xs, h0), rtol=1e-10, atol=1e-10)
        chex.assert_trees_all_close(loss_and_grads(run(method), cell, params, xs, h0), loop, rtol=1e-10, atol=1e-10)


def test_newton_equals_the_loop_in_float32():
    """Float32, the default tolerance, unmasked, chunked (a short chunk first): values and gradients to 1e-5."""
    cell, params, xs, h0, _ = problem("gru", B=4, T=60, H=16, dtype=jnp.float32, masked=False, scale=0.5)
    loop = loss_and_grads(lambda p, x, h: jaxrnn.scan(cell, p, x, initial_carry=h, kernel="xla"), cell, params, xs, h0)
    solved = loss_and_grads(lambda p, x, h: newton.solve(cell, p, x, initial_carry=h, method="quasi-elk",
                                                         chunk=25)[:2], cell, params, xs, h0)
    chex.assert_trees_all_close(solved, loop, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_check_grads(method):
    with jax.enable_x64(True):
        cell, params, xs, h0, masks = problem("gru", B=2, T=7, H=3)
        f = lambda p, x, h: newton.solve(cell, p, x, initial_carry=h, method=method, tol=1e-13, **masks)[0]
        check_grads(f, (params, xs, h0), order=1, modes=["rev"])


def test_an_unconverged_solve_says_so_or_falls_back():
    cell, params, xs, h0, masks = problem("lstm", dtype=jnp.float32)
    ys_loop, carry_loop = jaxrnn.scan(cell, params, xs, initial_carry=h0, kernel="xla", **masks)
    solve = jax.jit(lambda x, fallback: newton.solve(cell, params, x, initial_carry=h0, max_iters=1,
                                                     fallback=fallback, **masks), static_argnums=1)
    _, _, report = solve(xs, False)
    assert int(report.iterations) == 1 and not bool(report.converged) and not bool(report.fell_back)
    assert float(report.residual) > 1e-3
    ys, carry, report = solve(xs, True)
    assert bool(report.fell_back) and not bool(report.converged)
    chex.assert_trees_all_close((ys, carry), (ys_loop, carry_loop), rtol=1e-6, atol=1e-6)
    # A non-finite input never converges (its residual is inf); the fallback then gives what
    # the loop gives, NaN where the loop has NaN.
    bad = xs.at[0, 3, 1].set(jnp.nan)
    ys, _, report = solve(bad, True)
    assert bool(report.fell_back) and int(report.iterations) <= 1
    np.testing.assert_array_equal(np.isnan(ys), np.isnan(jaxrnn.scan(cell, params, bad, initial_carry=h0,
                                                                      kernel="xla", **masks)[0]))


def test_a_warm_start_from_the_solution_takes_no_iteration():
    cell, params, xs, h0, masks = problem("gru", dtype=jnp.float32)
    solve = jax.jit(lambda guess: newton.solve(cell, params, xs, initial_carry=h0, guess=guess, **masks))
    cold = solve(None)[2]
    warm = solve(cold.states)[2]
    assert int(cold.iterations) > 0 and int(warm.iterations) == 0 and bool(warm.converged)


def test_errors_name_the_argument():
    cell, params, xs, _, _ = problem("gru", dtype=jnp.float32, masked=False)
    for kwargs, words in ((dict(method="newton"), "method"), (dict(max_iters=0), "max_iters"),
                          (dict(damping=0.0), "damping"), (dict(chunk=-1), "chunk"),
                          (dict(guess=jnp.zeros((4, 3, 5))), "guess: expected shape (T, B, D) = (23, 3, 5)")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            newton.solve(cell, params, xs, **kwargs)
    for kwargs, words in ((dict(damping=float("inf")), "damping"), (dict(tol=float("nan")), "tol")):
        with pytest.raises(ValueError, match=words):
            newton.solve(cell, params, xs, **kwargs)
    with pytest.raises(ValueError, match=r"guess: expected shape \(T, D\) = \(23, 5\)"):
        newton.solve(cell, params, xs[0], guess=jnp.zeros((23, 1, 5)))
    for kwargs in (dict(checkpoint_every=4), dict(kernel="native")):
        with pytest.raises(ValueError, match=list(kwargs)[0]):
            jaxrnn.scan(cell, params, xs, parallel="deer", **kwargs)


def test_scan_runs_newton_in_every_layout():
    """jaxrnn.scan(parallel=...) against the loop: time-major (and T = 1), one unbatched sequence, T = 0, B = 0."""
    cell = jaxrnn.gru(3)
    params = random_params(cell, jax.random.key(0), 2)
    xs = random_inputs(jax.random.key(1), 2, 6, 2)
    for x, kwargs in ((jnp.swapaxes(xs, 0, 1)[:1], dict(time_major=True)), (xs[0], {}), (xs[:, :0], {}),
                      (xs[:0], {})):
        chex.assert_trees_all_close(jaxrnn.scan(cell, params, x, parallel="quasi-deer", **kwargs),
                                    jaxrnn.scan(cell, params, x, kernel="xla", **kwargs), rtol=1e-5, atol=1e-5)


def test_the_inverse_pivots():
    m = jax.random.normal(jax.random.key(0), (2, 3, 4, 4)).at[0, 0].set(jnp.eye(4)[jnp.array([2, 0, 3, 1])])
    np.testing.assert_allclose(newton._inverse(m), np.linalg.inv(np.asarray(m)), rtol=1e-4, atol=1e-4)


def test_an_overflowing_step_is_dropped():
    """The vanilla cell at spectral radius 4 (chaotic): DEER overflows at its first step from zero, which is
    dropped, not returned; ELK's damping keeps every iterate finite."""
    cell = jaxrnn.vanilla(8)
    params = cell.init(jax.random.key(0), 4)
    w = np.asarray(params["w_h"])
    params = dict(params, w_h=jnp.asarray(w * 4 / np.max(np.abs(np.linalg.eigvals(w)))))
    xs = jax.random.normal(jax.random.key(1), (4, 100, 4))
    for method in ("deer", "elk"):
        _, _, report = jax.jit(lambda x: newton.solve(cell, params, x, method=method, max_iters=3))(xs)
        assert np.isfinite(float(report.residual)) and bool(jnp.isfinite(report.states).all()), (method, report)


def test_the_iterations_program_smoke(tmp_path, capsys):
    from jaxrnn.programs import newton_iterations

    out = tmp_path / "n.json"
    newton_iterations.main(["--cells", "gru", "--lengths", "4", "--radii", "1", "--radius-length", "4",
                            "--scales", "1", "--scale-rho", "1", "--scale-length", "4", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert set(row["methods"]) == set(METHODS) and row["methods"]["deer"]["iterations"] <= 4
    assert out.with_suffix(".png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_:
        newton_iterations.main(["--radii", "nan"])
    assert exit_.value.code == 2 and "--radii" in capsys.readouterr().err


def test_the_chunked_memory_program_smoke(tmp_path, capsys):
    """Chunked DEER's values and gradients match the loop's (three chunks, the first short), and XLA plans
    less memory for it than for the unchunked solve; a folder for --json is refused before any work."""
    from jaxrnn.programs import newton_memory

    out = tmp_path / "m.json"
    small = ["--hidden", "4", "--batch", "2", "--length", "40", "--chunk", "16"]
    newton_memory.main(["--methods", "deer", *small, "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["converged"] and row["max_abs_diff"] < 1e-5 and row["max_rel_grad_diff"] < 1e-4
    assert row["forward_temp_gb"] < row["unchunked_forward_temp_gb"]
    capsys.readouterr()
    for bad in (["--chunk", "0", "--json", str(tmp_path / "x.json")], [*small, "--json", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_:
            newton_memory.main(bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]

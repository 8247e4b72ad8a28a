r"""Nonlinear cells evaluated for all steps at once, by Newton's method: DEER, quasi-DEER and ELK.

A layer's carries ``s_1 .. s_T`` are the solution of T equations
``s_t = f(s_(t-1), x_t)``, ``s_0`` given. Newton's method linearises them
about a guess ``s^k`` of the whole trajectory:

.. math::

   s_t = J_t s_{t-1} + (f_t - J_t s^k_{t-1}), \qquad
   f_t = f(s^k_{t-1}, x_t), \quad J_t = \partial f / \partial s \,(s^k_{t-1}, x_t),

a *linear* recurrence, which a parallel prefix scan solves in O(log T)
sequential depth (:mod:`jaxrnn.linear`); its solution is ``s^(k+1)``.

- ``"deer"`` (Lim et al. 2023): ``J_t`` whole, D x D (D: the carry's size,
  2H for an LSTM): each composition in the scan is a matmul, O(T D^3) work
  and O(T D^2) memory.
- ``"quasi-deer"`` (Gonzalez et al. 2024): ``J_t``'s diagonal only, so the
  scan is elementwise, O(T D); more iterations, each cheaper. (The diagonal
  is read off the whole Jacobian of each step, D forward-mode products and
  O(T B D^2) memory while it is formed, as DEER's is: what it saves is the
  scan's work and what the scan keeps.)
- ``"elk"`` and ``"quasi-elk"`` (Gonzalez et al. 2024): Levenberg-Marquardt.
  The step minimises
  ``sum_t |s_t - f_t - J_t (s_(t-1) - s^k_(t-1))|^2 + damping * sum_t |s_t - s^k_t|^2``:
  the smoothed mean of a linear-Gaussian model with unit process noise and
  the previous iterate as observations of variance ``1 / damping``, which a
  Kalman filter and smoother compute as two more prefix scans (Särkkä and
  García-Fernández 2021). The damping keeps each step within a trust region,
  where DEER's linearised trajectory, a product of T Jacobians, can overflow
  when they expand (spectral radius of ``W_h`` above one). As in
  Levenberg-Marquardt, the damping is divided by 10 after a step that lowers
  the squared residual and multiplied by 10 after one that raises it; every
  finite step is taken, and one that overflows is dropped (it counts as an
  iteration).

Whatever the Jacobian, a fixed point of the iteration solves
``s_t = f(s_(t-1), x_t)``: the approximation changes how fast the answer is
found, not the answer. The iteration stops when the residual
``max_t |f(s_(t-1), x_t) - s_t| / (1 + |f(s_(t-1), x_t)|)`` is at most ``tol``, or after ``max_iters``
steps, or when a DEER step overflows (it is dropped: the iterate before it
is returned); in exact arithmetic DEER and quasi-DEER end within T
iterations (each makes at least one more step exact), which ELK's damped
steps do not promise. :class:`Report` says what happened; an
unconverged solve is either reported as such or, with ``fallback=True``,
replaced by the sequential loop's trajectory (then ``fell_back`` is true).

Gradients are the implicit function's, not those of the iterations: at the
solution the cotangents ``lambda_t = g_t + J_(t+1)^T lambda_(t+1)`` are a
linear recurrence backwards in time, solved by the same prefix scan with the
whole Jacobians (whatever the method), and one vector-Jacobian product of
``f`` over all steps at once gives the parameters', inputs' and initial
carry's. Memory for it is O(T D^2) per chunk: ``chunk`` bounds both passes.

Example::

  >>> import jax, jax.numpy as jnp, jaxrnn
  >>> from jaxrnn import newton
  >>> cell = jaxrnn.gru(8)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> xs = jax.random.normal(jax.random.key(1), (2, 50, 3))
  >>> ys, h, report = newton.solve(cell, params, xs, method="deer")
  >>> bool(report.converged), bool(jnp.allclose(ys, jaxrnn.scan(cell, params, xs)[0], atol=1e-5))
  (True, True)
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks, chunks, linear, unroll
from jaxrnn.cells import Carry, Cell, Params

Array = jax.Array

METHODS = unroll.NEWTON_METHODS  # "deer", "quasi-deer", "elk", "quasi-elk": jaxrnn.scan's too


class Report(NamedTuple):
    """What a solve did.

    Attributes:
      iterations: () int32, the Newton steps taken (with ``chunk``, the most
        any chunk took).
      converged: () bool, whether the residual reached ``tol`` (in every chunk).
      residual: () the Newton iterate's residual (the module's docstring
        says which), before any fallback replaced it; inf if it holds a NaN.
      fell_back: () bool, whether the sequential loop's trajectory replaced an
        unconverged one (``fallback=True``).
      states: (T, B, D) the carries ((T, D) for an unbatched input),
        flattened (the carry's leaves side by side) and time-major in
        processing order: pass them as ``guess`` to start the next solve from
        them.
    """

    iterations: Array
    converged: Array
    residual: Array
    fell_back: Array
    states: Array


class _Diagonal:
    """Jacobians kept as their diagonals (..., D): every product elementwise."""

    @staticmethod
    def mm(a, b):
        return a * b

    mv = staticmethod(linear.apply)

    @staticmethod
    def t(a):
        return a

    @staticmethod
    def inv(m):
        return 1 / m

    @staticmethod
    def eye_like(a):
        return jnp.ones_like(a)


class _Dense:
    """Jacobians kept whole (..., D, D)."""

    @staticmethod
    def mm(a, b):
        return a @ b

    mv = staticmethod(linear.apply)

    @staticmethod
    def t(a):
        return jnp.swapaxes(a, -1, -2)

    @staticmethod
    def inv(m):
        return _inverse(m)

    @staticmethod
    def eye_like(a):
        return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


def _inverse(m: Array) -> Array:
    """Inverses of (..., D, D) matrices by Gauss-Jordan elimination with partial pivoting, in plain array
    operations.

    Not ``jnp.linalg.inv`` or ``solve``: inside the Newton loop, the CPU runtime of jaxlib 0.10.2 hangs (every
    thread idle) on their LAPACK calls at T = 1000 (ELK's filter and smoother, B = 4, D = 8). The matrices
    inverted here are I plus a product of positive semi-definite ones (eigenvalues >= 1).
    """
    D = m.shape[-1]
    rows = jnp.arange(D)
    aug = jnp.concatenate([m, jnp.broadcast_to(jnp.eye(D, dtype=m.dtype), m.shape)], axis=-1)

    def eliminate(k, aug):
        column = jnp.where(rows >= k, jnp.abs(aug[..., :, k]), -1)
        p = jnp.argmax(column, axis=-1)[..., None]  # the pivot's row, swapped with row k
        order = jnp.where(rows == k, p, jnp.where(rows == p, k, rows))
        aug = jnp.take_along_axis(aug, order[..., None], axis=-2)
        pivot_row = aug[..., k, :] / aug[..., k, k][..., None]
        factors = jnp.where(rows == k, 0, aug[..., :, k])
        aug = aug - factors[..., None] * pivot_row[..., None, :]
        return jnp.where((rows == k)[:, None], pivot_row[..., None, :], aug)

    return jax.lax.fori_loop(0, D, eliminate, aug)[..., D:]


def affine(alg, a: Array, b: Array, s0: Array) -> Array:
    """Every ``s_t = a_t s_(t-1) + b_t`` (t along axis 0) from ``s0``, by a prefix scan over the affine maps
    (:func:`jaxrnn.linear.compose`; ``a`` a diagonal or a matrix)."""
    b = b.at[0].add(alg.mv(a[0], s0))  # step 0's map applied to s0: the prefixes' offsets are the states
    return jax.lax.associative_scan(linear.compose, (a, b), axis=0)[1]


def kalman_smooth(alg, F: Array, c: Array, s0: Array, y: Array, damping: Array | float) -> Array:
    """The means of ``s_t`` given ``s_t = F_t s_(t-1) + c_t + N(0, I)`` from a known ``s0`` and observations
    ``y_t = s_t + N(0, I / damping)``, t along axis 0: the minimiser of
    ``sum |s_t - F_t s_(t-1) - c_t|^2 + damping sum |s_t - y_t|^2``.

    The filter is the parallel one of Särkkä and García-Fernández (2021): each
    step is an element ``(A, b, C, eta, J)`` of an associative operator whose
    prefixes hold the filtered means ``b`` and covariances ``C``; the smoother's
    means are then an affine recurrence backwards in time. With unit process
    noise the gain is the scalar ``k = damping / (1 + damping)``.
    """
    q = 1.0 / (1.0 + damping)
    k = damping * q  # the gain Q (Q + R)^-1 with Q = I, R = I / damping; also (Q + R)^-1; 1 - k is q
    # Step 0 starts from a known s0 (no covariance): its element is the general one with F = 0, c = F_0 s0 + c_0.
    F0 = F.at[0].set(jnp.zeros_like(F[0]))
    c0 = c.at[0].add(alg.mv(F[0], s0))
    eye = alg.eye_like(F)
    A = q * F0
    b = c0 + k * (y - c0)
    C = q * eye
    eta = k * alg.mv(alg.t(F0), y - c0)
    J = k * alg.mm(alg.t(F0), F0)

    def combine(first, second):
        A1, b1, C1, e1, J1 = first
        A2, b2, C2, e2, J2 = second
        eye_ = alg.eye_like(A1)
        inv = alg.inv(eye_ + alg.mm(C1, J2))  # C and J are symmetric, so (I + J2 C1)^-1 is its transpose
        AM = alg.mm(A2, inv)  # A2 (I + C1 J2)^-1
        ATN = alg.mm(alg.t(A1), alg.t(inv))  # A1^T (I + J2 C1)^-1
        return (
            alg.mm(AM, A1),
            alg.mv(AM, b1 + alg.mv(C1, e2)) + b2,
            alg.mm(alg.mm(AM, C1), alg.t(A2)) + C2,
            alg.mv(ATN, e2 - alg.mv(J2, b1)) + e1,
            alg.mm(alg.mm(ATN, J2), A1) + J1,
        )

    _, m, P, _, _ = jax.lax.associative_scan(combine, (A, b, C, eta, J), axis=0)
    # Rauch-Tung-Striebel: x_t = E_t x_(t+1) + g_t, E_t = P_t F_(t+1)^T (F_(t+1) P_t F_(t+1)^T + I)^-1, x_T = m_T.
    Fn, cn, Pt, mt = F[1:], c[1:], P[:-1], m[:-1]
    FP = alg.mm(Fn, Pt)
    E = alg.t(alg.mm(alg.inv(alg.mm(FP, alg.t(Fn)) + alg.eye_like(FP)), FP))
    g = mt - alg.mv(E, alg.mv(Fn, mt) + cn)
    # Backwards in time, as affine() runs forwards: z_0 = m_(T-1), z_j = E_(T-1-j) z_(j-1) + g_(T-1-j).
    a_back = jnp.concatenate([jnp.zeros_like(F[:1]), jnp.flip(E, 0)], axis=0)
    b_back = jnp.concatenate([m[-1:], jnp.flip(g, 0)], axis=0)
    return jnp.flip(affine(alg, a_back, b_back, jnp.zeros_like(m[0])), 0)


# f(theta, row, s, x) -> s_next: one row's step, s (D,); theta is shared by every row (the parameters), row is
# the row's own (its initial carry), x the step's inputs. Everything here is written for that signature.
Step = Callable[[Any, Any, Array, Any], Array]


class _Options(NamedTuple):
    method: str
    tol: float
    max_iters: int
    damping: float
    fallback: bool


def _over_steps(fn: Callable) -> Callable:
    """A per-row ``fn(theta, row, s, x)`` over (T, B) leading axes of ``s`` and ``x`` (``row``: (B, ...))."""
    return jax.vmap(jax.vmap(fn, in_axes=(None, 0, 0, 0)), in_axes=(None, None, 0, 0))


def _jacobian(f: Step, dense: bool) -> Callable:
    """``J(theta, row, s, x)``: the step's Jacobian in ``s`` over (T, B): (T, B, D, D), or its diagonal (T, B, D)."""
    whole = jax.jacfwd(f, argnums=2)
    return _over_steps(whole if dense else lambda *a: jnp.diagonal(whole(*a)))


def _residual(fS: Array, S: Array) -> Array:
    """``max |f(s_(t-1)) - s_t| / (1 + |f(s_(t-1))|)``: absolute near zero, relative for large carries (an
    LSTM's cell state), whose rounding grows with them. Inf if any is NaN: XLA's CPU max reduction may skip
    NaN (it returned -inf for an all-NaN array of 32,000), which would pass any tolerance."""
    d = jnp.abs(fS - S) / (1 + jnp.abs(fS))
    return jnp.max(jnp.where(jnp.isnan(d), jnp.inf, d), initial=0.0)


def _previous(s0: Array, S: Array) -> Array:
    """The carry each step starts from: ``s0``, then every state but the last."""
    return jnp.concatenate([s0[None], S[:-1]], axis=0)


def _iterate(f: Step, opts: _Options, theta, row, s0: Array, xs, guess: Array):
    """Newton's iterations from ``guess``: ``(S, iterations, converged, residual, fell_back)``."""
    dense = opts.method in ("deer", "elk")
    alg = _Dense if dense else _Diagonal
    f_all, jac = _over_steps(f), _jacobian(f, dense)

    elk = opts.method.endswith("elk")

    def body(state):
        k, S, fS, r, damping, _ = state
        Sp = _previous(s0, S)
        J = jac(theta, row, Sp, xs)
        c = fS - alg.mv(J, Sp)
        new = kalman_smooth(alg, J, c, s0, S, damping) if elk else affine(alg, J, c, s0)
        f_new = f_all(theta, row, _previous(s0, new), xs)
        r_new = _residual(f_new, new)
        overflowed = ~jnp.isfinite(r_new)  # the step is dropped: the iterate before it is the answer so far
        keep = lambda a, b: jnp.where(overflowed, b, a)
        if not elk:  # DEER would only repeat the same step: the loop stops
            return k + 1, keep(new, S), keep(f_new, fS), keep(r_new, r), damping, overflowed
        # The trust region adapts as Levenberg-Marquardt's does, the damping divided by 10 after a step that
        # lowered the squared residual and multiplied by 10 after one that raised it; but every finite step is
        # taken (dropping the ones that raise it stalled in measured cases where taking them converged:
        # docs/parallel.md), and only an overflowed one is dropped.
        lowered = jnp.sum(jnp.square(f_new - new)) < jnp.sum(jnp.square(fS - S))
        damping = jnp.clip(jnp.where(lowered, damping / 10, damping * 10), 1e-8, 1e8)  # inf / inf would be NaN
        return k + 1, keep(new, S), keep(f_new, fS), keep(r_new, r), damping, overflowed

    def cond(state):  # a non-finite residual (a NaN input, or no step yet that did not overflow) stops it too
        k, _, _, r, _, overflowed = state
        going = (k < opts.max_iters) & (r > opts.tol) & jnp.isfinite(r)
        return going if elk else going & ~overflowed

    f0 = f_all(theta, row, _previous(s0, guess), xs)
    r0 = _residual(f0, guess)
    state = (jnp.zeros((), jnp.int32), guess, f0, r0, jnp.asarray(opts.damping, s0.dtype), ~jnp.isfinite(r0))
    k, S, _, r, _, _ = jax.lax.while_loop(cond, body, state)
    converged = r <= opts.tol
    fell_back = jnp.asarray(False)
    if opts.fallback:
        def sequential():
            step = jax.vmap(f, in_axes=(None, 0, 0, 0))
            return jax.lax.scan(lambda s, x: (step(theta, row, s, x),) * 2, s0, xs)[1]

        fell_back = ~converged
        S = jax.lax.cond(converged, lambda: S, sequential)
    return S, k, converged, r, fell_back


def _solve_fwd(f, opts, theta, row, s0, xs, guess):
    out = _iterate(f, opts, theta, row, s0, xs, guess)
    return out, (theta, row, s0, xs, out[0])


def _solve_bwd(f, opts, residuals, cotangents):
    """The implicit function's VJP: ``lambda_t = g_t + J_(t+1)^T lambda_(t+1)`` by a prefix scan backwards in
    time, then one VJP of the step over all steps with the cotangents ``lambda``."""
    theta, row, s0, xs, S = residuals
    g = cotangents[0]
    Sp = _previous(s0, S)
    # The Jacobians of steps 1 .. T-1 (step 0's reaches only s0, whose cotangent the VJP below gives).
    J = _jacobian(f, dense=True)(theta, row, S[:-1], jax.tree_util.tree_map(lambda v: v[1:], xs))
    # Backwards, as affine() runs forwards: mu_j = lambda_(T-1-j) = J_(T-j)^T mu_(j-1) + g_(T-1-j), mu_0 = g_(T-1).
    a = jnp.concatenate([jnp.zeros((1,) + J.shape[1:], J.dtype), jnp.flip(_Dense.t(J), 0)])
    lam = jnp.flip(affine(_Dense, a, jnp.flip(g, 0), jnp.zeros_like(s0)), 0)
    _, pull = jax.vjp(_over_steps(f), theta, row, Sp, xs)
    d_theta, d_row, d_Sp, d_xs = pull(lam)
    return d_theta, d_row, d_Sp[0], d_xs, jnp.zeros_like(S)


# The solve, differentiated as an implicit function (the iterations are not differentiated).
_solve = jax.custom_vjp(_iterate, nondiff_argnums=(0, 1))
_solve.defvjp(_solve_fwd, _solve_bwd)


def solve_states(f: Step, theta, row, s0: Array, xs, guess: Array, *, method: str = "deer", tol: float,
                 max_iters: int = 100, damping: float = 1.0, chunk: int | None = None,
                 fallback: bool = False) -> Report:
    """The trajectory ``s_t = f(theta, row, s_(t-1), x_t)`` from ``s0`` (B, D), time-major, in chunks of
    ``chunk`` steps (each solved from the last state of the one before; the whole sequence by default)."""
    opts = _Options(method, float(tol), int(max_iters), float(damping), bool(fallback))
    guess = jax.lax.stop_gradient(guess)
    T = guess.shape[0]
    if chunk is None or chunk >= T:
        S, k, ok, r, fell = _solve(f, opts, theta, row, s0, xs, guess)
        return Report(k, ok, r, fell, S)
    head, n, size = chunks.layout(T, chunk)  # the short chunk first, as checkpoint_every cuts a sequence
    runs, s = [], s0
    if head:
        runs.append(_solve(f, opts, theta, row, s0, *jax.tree_util.tree_map(lambda v: v[:head], (xs, guess))))
        s = runs[0][0][-1]

    def one(s, chunk_inputs):
        out = _solve(f, opts, theta, row, s, *chunk_inputs)
        return out[0][-1], out

    whole = jax.tree_util.tree_map(lambda v: v[head:].reshape((n, size) + v.shape[1:]), (xs, guess))
    S, k, ok, r, fell = jax.lax.scan(one, s, whole)[1]
    runs.append((S.reshape((n * size,) + S.shape[2:]), k, ok, r, fell))
    # Over the chunks; the bools as integers: they pass through the differentiated scan, and JAX has no
    # derivative rule for reduce_and there.
    flags = lambda i: jnp.concatenate([jnp.ravel(run[i]).astype(jnp.int32) for run in runs])
    return Report(flags(1).max(), flags(2).min() == 1, jnp.max(jnp.concatenate([jnp.ravel(run[3]) for run in runs])),
                  flags(4).max() == 1, jnp.concatenate([run[0] for run in runs], axis=0))


def _flatten(carry: Carry) -> Array:
    """A carry's leaves (..., H_i) side by side: (..., D)."""
    return jnp.concatenate(jax.tree_util.tree_leaves(carry), axis=-1)


def _unflatten(s: Array, like: Carry) -> Carry:
    """The carry shaped as ``like`` (its leaves' last axes give the split) from its flattened form."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    cuts = list(itertools.accumulate(leaf.shape[-1] for leaf in leaves))[:-1]
    return jax.tree_util.tree_unflatten(treedef, jnp.split(s, cuts, axis=-1))


def _unbatched_guess(guess, T: int, cell: Cell) -> Array:
    """An unbatched solve's (T, D) ``guess``, checked in that shape, with its batch axis of one."""
    D = _flatten(cell.initial_carry(None)).shape[-1]
    _checks.check_shape("guess", guess, (T, D), "(T, D)", " (D: the carry's leaves side by side, as report.states "
                        "holds them)")
    return jnp.asarray(guess)[:, None]


def solve(
    cell: Cell,
    params: Params,
    xs: Array,
    *,
    method: str = "deer",
    initial_carry: Carry | None = None,
    lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    tol: float | None = None,
    max_iters: int = 100,
    damping: float = 1.0,
    guess: Array | None = None,
    chunk: int | None = None,
    fallback: bool = False,
) -> tuple[Array, Carry, Report]:
    """Run ``cell`` over a sequence as :func:`jaxrnn.scan` does, every step at once by Newton's method.

    Arguments:
      cell, params, xs, initial_carry, lengths, resets, reverse, time_major:
        as :func:`jaxrnn.scan` (padded steps and resets are part of the step
        function whose fixed point is solved for, so they cost nothing more).
      method: ``"deer"``, ``"quasi-deer"``, ``"elk"`` or ``"quasi-elk"`` (the
        module's docstring says what each trades).
      tol: the largest residual accepted, ``|f(s_(t-1), x_t) - s_t|`` over
        ``1 + |f(s_(t-1), x_t)|``; by default 16 ulp of 1 in the carry's
        dtype (1.9e-6 in float32, 3.6e-15 in float64), four times what
        rounding leaves of a GRU's or an LSTM's at T = 10,000 in float32
        (docs/parallel.md).
      max_iters: Newton steps at most (per chunk).
      damping: ELK's first trust-region weight (``"elk"``, ``"quasi-elk"``):
        the larger, the shorter the first step; then adapted step by step.
        Unused by DEER.
      guess: (T, B, D) a starting trajectory, such as a previous solve's
        ``report.states`` (a warm start for training, where parameters change
        little from one step to the next); by default the initial carry at
        every step. Not differentiated.
      chunk: solve this many steps at a time, each chunk from the last state
        of the one before: memory O(chunk B D^2) instead of O(T B D^2), at
        the cost of ceil(T / chunk) sequential solves.
      fallback: where a chunk does not converge, take the sequential loop's
        trajectory for it (``report.fell_back``); otherwise the unconverged
        iterate is returned and ``report.converged`` is false. Under
        ``jax.vmap`` the choice becomes a select: both run.

    Differentiable in reverse mode (a custom VJP), not in forward mode.

    Returns:
      ``(ys, final_carry, report)``: ``ys`` and ``final_carry`` as
      :func:`jaxrnn.scan`'s, and a :class:`Report`.
    """
    _checks.check_choice("method", method, METHODS)
    _checks.check_positive_int("max_iters", max_iters)
    if chunk is not None:
        _checks.check_positive_int("chunk", chunk)
    if not (math.isfinite(damping) and damping > 0):
        raise ValueError(f"damping: expected a finite positive number, got {damping!r}")
    if tol is not None and not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
    xs = jnp.asarray(xs)
    if xs.ndim == 2:  # one unbatched sequence: a batch of one
        ys, carry, report = solve(
            cell, params, xs[None], **unroll.batch_of_one(cell, xs, initial_carry=initial_carry, lengths=lengths,
                                                          resets=resets),
            method=method, reverse=reverse, tol=tol, max_iters=max_iters, damping=damping,
            guess=None if guess is None else _unbatched_guess(guess, xs.shape[0], cell), chunk=chunk,
            fallback=fallback)
        return ys[0], jax.tree_util.tree_map(lambda v: v[0], carry), report._replace(states=report.states[:, 0])
    prep = unroll.prepare(cell, params, xs, initial_carry=initial_carry, lengths=lengths, resets=resets,
                          reverse=reverse, time_major=time_major)
    T, B = prep.xp.shape[:2]
    s0 = _flatten(prep.initial_carry)
    if tol is None:
        tol = 16 * float(jnp.finfo(s0.dtype).eps)
    if guess is None:
        guess = jnp.broadcast_to(s0, (T,) + s0.shape)
    else:
        _checks.check_shape("guess", guess, (T, B, s0.shape[-1]), "(T, B, D)",
                            " (D: the carry's leaves side by side, as report.states holds them)")
        guess = jnp.asarray(guess, s0.dtype)
    if T == 0:
        ys, carry = unroll.scan(cell, params, xs, initial_carry=initial_carry, lengths=lengths, resets=resets,
                                reverse=reverse, time_major=time_major, kernel="xla")
        zero = jnp.zeros((), jnp.int32)
        return ys, carry, Report(zero, jnp.asarray(True), jnp.zeros((), s0.dtype), jnp.asarray(False), guess)
    row_like = jax.tree_util.tree_map(lambda v: v[:1], prep.initial_carry)

    def f(p, carry0, s, x):  # one row: its batch axis of one added for the cell's step, and taken off again
        body = unroll.make_body(cell, p, prep._replace(initial_carry=_unflatten(carry0[None], row_like)))
        x = jax.tree_util.tree_map(lambda v: v[None], x)
        return _flatten(body(_unflatten(s[None], row_like), x)[0])[0]

    inputs = (prep.xp, prep.valid, prep.resets)
    report = solve_states(f, params, s0, s0, inputs, guess, method=method, tol=tol, max_iters=max_iters,
                          damping=damping, chunk=chunk, fallback=fallback)
    S = report.states
    body = unroll.make_body(cell, params, prep)
    ys = jax.vmap(lambda s, x: body(_unflatten(s, prep.initial_carry), x)[1])(_previous(s0, S), inputs)
    final_carry = _unflatten(S[-1], prep.initial_carry)
    ys, final_carry = unroll._finish(ys, final_carry, prep, reverse, time_major)
    return ys, final_carry, report

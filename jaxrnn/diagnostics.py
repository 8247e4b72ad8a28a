r"""Instruments for gradient flow through time: pure, jit-able, cheap enough for training.

Backpropagation through time multiplies the gradient by one Jacobian per step,

.. math::

    \frac{\partial L}{\partial s_{t-1}} = J_t^\top \frac{\partial L}{\partial s_t}
        + \frac{\partial L}{\partial y_{t-1}}, \qquad J_t = \frac{\partial s_t}{\partial s_{t-1}},

where ``s_t`` is the recurrent state (``h`` for vanilla and GRU, ``(h, c)`` for
LSTM). A vanilla tanh RNN has ``J_t = W_h^\top diag(1 - h_t^2)``: its norm is at
most that of ``W_h``, so the product shrinks geometrically and the gradient of
a loss at step T "forgets" step 1. The LSTM's memory cell has
``\partial c_t / \partial c_{t-1} = diag(f_t)``, which stays near the identity
while the forget gate is open; the GRU's ``z`` gate does the same for ``h``.

The functions here measure that:

* :func:`gradient_profile`: ``log10 ||dL/ds_t||`` for every t in ONE backward
  pass, renormalised at every step so it stays exact far below float32's
  range (a plain float32 backward pass underflows to exactly 0 about 100-1000
  steps back for a vanilla RNN).
* :func:`jacobian_spectral_norms`: the largest singular value of every
  ``J_t``, by power iteration with ``jvp``/``vjp`` (no dense Jacobians).
* :func:`state_statistics`: state norms and saturation of units and gates.
* :func:`loss_per_step`: the masked mean loss at each step.
* :func:`summarize`: decay per step and effective horizon of a profile.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import Carry, Cell, Params
from jaxrnn.unroll import batch_of_one, make_body, prepare, sequence_mask

Array = jax.Array

#: Where a plain float32 backward pass loses the gradient: 100x above float32's
#: smallest normal number (1.2e-38). XLA flushes subnormals to zero, and a
#: vector whose norm is near 1e-37 has entries below 1e-38, so plain autodiff
#: returns exact zeros there (measured: zeros from norm 1e-37.08 down).
FLOAT32_UNDERFLOW_LOG10 = float(np.log10(np.finfo(np.float32).tiny)) + 2.0


class GradientProfile(NamedTuple):
    """``log10 ||dL/ds_t||`` per example and step.

    Attributes:
      log10_norm: (B, T); NaN at padded steps; -inf only where the gradient is
        truly zero (e.g. steps after the last loss term).
      plain_underflow: (B, T) booleans, true where the norm is below
        ``10**FLOAT32_UNDERFLOW_LOG10`` (1.2e-36): a plain float32 backward
        pass would have reported 0 there, or a value with few correct digits.
    """

    log10_norm: Array
    plain_underflow: Array


def _row_norm(tree) -> Array:
    """The norm of each batch row across all leaves of a (B, ...) pytree."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x), axis=-1) for x in jax.tree_util.tree_leaves(tree)))


def _scale_rows(tree, factor: Array):
    return jax.tree_util.tree_map(lambda x: x * factor[:, None].astype(x.dtype), tree)


def _unit(tree) -> tuple:
    """Split each row into a unit vector and its log10 norm (a zero row: 0 and -inf)."""
    n = _row_norm(tree)
    return _scale_rows(tree, jnp.where(n > 0, 1 / n, 0.0)), jnp.log10(n)


def _place_output(cell: Cell, carry_like: Carry, dy: Array) -> Carry:
    """A carry-shaped cotangent holding ``dy`` where the output ``cell.hidden(carry)`` sits:
    the transpose of ``cell.hidden``."""
    _, hidden_vjp = jax.vjp(cell.hidden, carry_like)
    return hidden_vjp(dy)[0]


def _batched(fn):
    """Let a (B, T, ...) diagnostic accept one unbatched (T, I) sequence too (see :func:`jaxrnn.unroll.batch_of_one`)."""

    @functools.wraps(fn)
    def wrapper(cell, params, xs, *args, **kwargs):
        xs = jnp.asarray(xs)
        if xs.ndim != 2:
            return fn(cell, params, xs, *args, **kwargs)
        per_row = {k: kwargs.pop(k) for k in ("lengths", "resets", "initial_carry") if k in kwargs}
        batched = batch_of_one(cell, xs, **per_row)
        out = fn(cell, params, xs[None], *args, **{k: batched[k] for k in per_row}, **kwargs)
        return jax.tree_util.tree_map(lambda a: a[0], out)

    return wrapper


def _forward(cell, params, xs, lengths, resets, initial_carry):
    """Run the scan keeping every state: returns (prep, states before each step, ys), time-major."""
    prep = prepare(cell, params, xs, initial_carry=initial_carry, lengths=lengths, resets=resets)
    body = make_body(cell, params, prep)

    def keep_prev(carry, inputs):
        new_carry, y = body(carry, inputs)
        return new_carry, (carry, y)

    _, (prev, ys) = jax.lax.scan(keep_prev, prep.initial_carry, (prep.xp, prep.valid, prep.resets))
    return prep, body, prev, ys


@_batched
def gradient_profile(
    cell: Cell,
    params: Params,
    xs: Array,
    loss_fn: Callable[[Array], Array],
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
) -> GradientProfile:
    r"""``log10 ||dL/ds_t||`` for every step t, in one forward and one backward pass.

    ``s_t`` is the full recurrent state after step t (``h_t``; for LSTM ``(h_t, c_t)``
    concatenated), and ``dL/ds_t`` is the total derivative: every path from
    ``s_t`` to the loss. The backward pass is written out as a reverse scan of
    ``vjp`` s of the step, and the cotangent is renormalised at every step,
    carrying its scale as a running log10, so the result is exact (to float32
    relative precision) however small or large the gradient gets.

    Cost: one forward scan that stores the states, one reverse scan with a
    ``vjp`` per step: O(T) time and memory, about 1.5x a forward+backward pass
    (``benchmarks/gradient_flow.py`` prints the measured ratio at T = 10,000).

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> from jaxrnn import diagnostics
      >>> cell = jaxrnn.vanilla(32)
      >>> params = cell.init(jax.random.key(0), 1)
      >>> xs = jax.random.normal(jax.random.key(1), (4, 2000, 1))
      >>> loss = lambda ys: jnp.sum(ys[:, -1])            # a loss on the last step
      >>> prof = diagnostics.gradient_profile(cell, params, xs, loss)
      >>> prof.log10_norm.shape
      (4, 2000)
      >>> bool(prof.plain_underflow[:, 0].all()), bool(jnp.isfinite(prof.log10_norm).all())
      (True, True)

    Arguments:
      cell, params: the model.
      xs: (B, T, I) inputs, or (T, I).
      loss_fn: ``loss_fn(ys) -> scalar`` on the outputs ``ys`` (B, T, H), the
        layout :func:`jaxrnn.scan` returns (close over readout params and
        targets). A loss on the last step only, or on every step, or anything
        else differentiable.
      lengths, resets, initial_carry: as for :func:`jaxrnn.scan`.

    Returns:
      A :class:`GradientProfile` of (B, T) arrays.
    """
    prep, body, prev, ys = _forward(cell, params, xs, lengths, resets, initial_carry)
    dys = jax.grad(lambda ys_tm: loss_fn(jnp.swapaxes(ys_tm, 0, 1)))(ys)  # (T, B, H)
    if prep.valid is not None:
        dys = jnp.where(prep.valid[..., None], dys, 0.0)
    B = dys.shape[1]

    def back(state, inputs):
        a, s = state  # the cotangent from steps > t is a * 10**s, with ||a|| = 1 (or a = 0)
        carry_prev, xp_t, valid_t, reset_t, dy_t = inputs
        # Add dL/dy_t in log space: with both terms as unit vectors times 10**(scale - m),
        # m the larger scale, no factor exceeds 1, so nothing overflows.
        d, s_d = _unit(_place_output(cell, a, dy_t))
        m = jnp.maximum(s, s_d)
        m = jnp.where(jnp.isfinite(m), m, 0.0)
        total = jax.tree_util.tree_map(
            lambda x, y: x * (10.0 ** (s - m))[:, None] + y * (10.0 ** (s_d - m))[:, None], a, d
        )
        a, s_total = _unit(total)
        s = m + s_total
        log10_norm_t = s
        # Propagate to s_{t-1}: J_t^T a, through the same (masked, resetting) step as the forward pass.
        _, vjp = jax.vjp(lambda c: body(c, (xp_t, valid_t, reset_t))[0], carry_prev)
        a, s_step = _unit(vjp(a)[0])
        s = s + s_step
        return (a, s), log10_norm_t

    zero = jax.tree_util.tree_map(lambda x: jnp.zeros_like(x[0]), prev)
    start = (zero, jnp.full((B,), -jnp.inf, dys.dtype))
    _, log10_norm = jax.lax.scan(back, start, (prev, prep.xp, prep.valid, prep.resets, dys), reverse=True)
    if prep.valid is not None:
        log10_norm = jnp.where(prep.valid, log10_norm, jnp.nan)
    log10_norm = log10_norm.T
    return GradientProfile(log10_norm, log10_norm < FLOAT32_UNDERFLOW_LOG10)


@_batched
def probe_gradients(
    cell: Cell,
    params: Params,
    xs: Array,
    loss_fn: Callable[[Array], Array],
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
) -> Carry:
    """``dL/ds_t`` for every t by plain float32 autodiff: the probe method.

    A zero "probe" is added to the state after every step inside the scan, and
    ``jax.grad`` with respect to the probes gives all ``dL/ds_t`` in one
    backward pass. Exact while the gradients stay inside float32's range; for
    long vanilla RNNs they underflow to 0, which :func:`gradient_profile`
    avoids. Returns the gradients as a carry-shaped pytree of (B, T, ...) arrays.
    """
    prep = prepare(cell, params, xs, initial_carry=initial_carry, lengths=lengths, resets=resets)
    body = make_body(cell, params, prep)
    T = prep.xp.shape[0]

    def loss_of_probes(probes):
        def step(carry, inputs):
            probe, *rest = inputs
            new_carry, _ = body(carry, tuple(rest))
            new_carry = jax.tree_util.tree_map(jnp.add, new_carry, probe)
            valid_t = rest[1]
            h = cell.hidden(new_carry)  # the output, probe included
            return new_carry, (h if valid_t is None else jnp.where(valid_t[:, None], h, 0.0))

        _, ys = jax.lax.scan(step, prep.initial_carry, (probes, prep.xp, prep.valid, prep.resets))
        return loss_fn(jnp.swapaxes(ys, 0, 1))

    probes = jax.tree_util.tree_map(lambda c: jnp.zeros((T,) + c.shape, c.dtype), prep.initial_carry)
    grads = jax.grad(loss_of_probes)(probes)
    return jax.tree_util.tree_map(lambda g: jnp.swapaxes(g, 0, 1), grads)


@_batched
def jacobian_spectral_norms(
    cell: Cell,
    params: Params,
    xs: Array,
    *,
    lengths: Array | None = None,
    initial_carry: Carry | None = None,
    num_iters: int = 50,
    key: Array | None = None,
) -> Array:
    r"""The largest singular value of every step's Jacobian ``J_t = ds_t / ds_{t-1}``.

    Power iteration on ``J_t^\top J_t`` with one ``jvp`` and one ``vjp`` per
    iteration, vmapped over time: no dense Jacobian is ever formed, so the cost
    is ``num_iters`` x (a forward and a backward step) per t, all in parallel.
    ``prod_t sigma_max(J_t)`` bounds how much the gradient can grow over a span.

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.lstm(8)
      >>> params = cell.init(jax.random.key(0), 2)
      >>> sigma = jaxrnn.diagnostics.jacobian_spectral_norms(cell, params, jax.numpy.ones((3, 20, 2)))
      >>> sigma.shape
      (3, 20)

    Returns:
      (B, T) singular values (NaN at padded steps).
    """
    prep, _, prev, _ = _forward(cell, params, xs, lengths, None, initial_carry)
    key = jax.random.key(0) if key is None else key
    v0 = jax.tree_util.tree_map(lambda x: jax.random.normal(key, x.shape[1:], x.dtype), prev)

    def sigma_max(carry_prev, xp_t):
        f = lambda c: cell.recur(params, c, xp_t)[0]
        _, vjp = jax.vjp(f, carry_prev)

        def iterate(_, v):
            v = _scale_rows(v, 1 / _row_norm(v))
            (w,) = vjp(jax.jvp(f, (carry_prev,), (v,))[1])
            return w

        v = jax.lax.fori_loop(0, num_iters, iterate, v0)
        v = _scale_rows(v, 1 / _row_norm(v))
        return _row_norm(jax.jvp(f, (carry_prev,), (v,))[1])

    sigma = jax.vmap(sigma_max)(prev, prep.xp)  # (T, B)
    if prep.valid is not None:
        sigma = jnp.where(prep.valid, sigma, jnp.nan)
    return sigma.T


@_batched
def state_statistics(
    cell: Cell,
    params: Params,
    xs: Array,
    *,
    lengths: Array | None = None,
    initial_carry: Carry | None = None,
    threshold: float = 0.99,
) -> dict[str, Array]:
    """Per-step state norms and saturation, each (B, T) (NaN at padded steps).

    Keys: ``"h_norm"`` (``||h_t||``), ``"saturated"`` (fraction of units with
    ``|h| > threshold``: tanh units there pass almost no gradient), and for
    gated cells, per gate, ``"<gate>_mean"`` and ``"<gate>_saturated"`` (the
    fraction of the gate's units below ``1 - threshold`` or above
    ``threshold``, i.e. shut or wide open).
    """
    prep, _, prev, ys = _forward(cell, params, xs, lengths, None, initial_carry)
    stats = {
        "h_norm": jnp.linalg.norm(ys, axis=-1),
        "saturated": jnp.mean(jnp.abs(ys) > threshold, axis=-1),
    }
    gates = jax.vmap(lambda c, xp: cell.gate_values(params, c, xp))(prev, prep.xp)
    for name, g in gates.items():
        stats[f"{name}_mean"] = jnp.mean(g, axis=-1)
        stats[f"{name}_saturated"] = jnp.mean((g < 1 - threshold) | (g > threshold), axis=-1)
    if prep.valid is not None:
        stats = {k: jnp.where(prep.valid, v, jnp.nan) for k, v in stats.items()}
    return {k: v.T for k, v in stats.items()}


def loss_per_step(losses: Array, lengths: Array | None = None) -> Array:
    """The mean over the batch of a (B, T) per-step loss, counting valid steps only.

    Returns (T,); NaN at steps no sequence reaches.
    """
    losses = jnp.asarray(losses)
    if lengths is None:
        return jnp.mean(losses, axis=0)
    valid = sequence_mask(lengths, losses.shape[1])
    return jnp.sum(jnp.where(valid, losses, 0.0), axis=0) / jnp.sum(valid, axis=0)


class ProfileSummary(NamedTuple):
    """What a gradient profile says, in three numbers.

    Attributes:
      decay_per_step: the least-squares slope of ``log10 ||dL/ds_{T-d}||``
        against the distance ``d`` from the loss: log10 units per step.
        ``-0.1`` means the gradient shrinks 10x every 10 steps; positive means
        it grows (explodes). For a linear RNN whose ``W_h`` has all singular
        values ``rho`` it is exactly ``log10(rho)``.
      log10_ratio: ``log10(||dL/ds_1|| / ||dL/ds_T||)``: how much weaker the
        gradient reaching the first step is than at the loss.
      effective_horizon: the smallest distance ``d`` at which the norm is
        below 1e-3 of its value at the loss (``d = 0``); ``inf`` if it never
        falls that far within the sequence.
    """

    decay_per_step: float
    log10_ratio: float
    effective_horizon: float


def summarize(log10_norm: Array) -> ProfileSummary:
    """Summarize a profile of a loss on the LAST step: (T,) or (B, T), averaged over B in log space.

    Computed on the host with NumPy (call it outside ``jit``). Non-finite
    entries (padding) are left out of the fit.
    """
    y = np.asarray(log10_norm, np.float64)
    if y.ndim == 2:
        with np.errstate(invalid="ignore"):
            y = np.nanmean(np.where(np.isfinite(y), y, np.nan), axis=0)
    distance = np.arange(len(y))[::-1].astype(np.float64)  # step T-1 is distance 0
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return ProfileSummary(float("nan"), float("nan"), float("nan"))
    d, v = distance[ok], y[ok]
    slope = float(np.polyfit(d, v, 1)[0])
    at_loss = v[np.argmin(d)]
    below = d[v < at_loss - 3.0]
    return ProfileSummary(
        decay_per_step=slope,
        log10_ratio=float(v[np.argmax(d)] - at_loss),
        effective_horizon=float(below.min()) if below.size else float("inf"),
    )

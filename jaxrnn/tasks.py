"""Synthetic sequence tasks with long-range dependencies: pure, jit-able, keyed by a PRNG key."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks

Array = jax.Array


class Batch(NamedTuple):
    """Inputs (B, T, features) and targets."""

    xs: Array
    targets: Array


#: MSE of always predicting 1.0, the best memoryless guess: Var(U1 + U2) = 2/12.
ADDING_BASELINE_MSE = 1.0 / 6.0


def adding(key: Array, batch_size: int, length: int) -> Batch:
    """The adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016 form).

    Each step carries two channels: a value ``u_t ~ U[0, 1]`` and a marker
    ``m_t`` in {0, 1}. Exactly two steps are marked, one uniformly in the
    first half of the sequence and one in the second half; the target is the
    sum of the two marked values. A model that ignores the markers does best
    by predicting 1.0, with MSE 1/6 ≈ 0.167 (:data:`ADDING_BASELINE_MSE`);
    the task is usually called solved below MSE 0.01 (about 6% of baseline).

    The first marker can lie up to T-1 steps before the output, so the
    gradient that teaches the model to remember it must cross that distance.

    Example::

      >>> import jax, jaxrnn
      >>> xs, y = jaxrnn.tasks.adding(jax.random.key(0), 4, 50)
      >>> xs.shape, y.shape, int(xs[0, :, 1].sum())
      ((4, 50, 2), (4,), 2)

    Returns:
      :class:`Batch` with xs (B, T, 2) and targets (B,).
    """
    _checks.check_positive_int("batch_size", batch_size)
    if length < 2:
        raise ValueError(f"length: expected at least 2 steps, got {length}")
    k_u, k_1, k_2 = jax.random.split(key, 3)
    values = jax.random.uniform(k_u, (batch_size, length))
    half = length // 2
    first = jax.random.randint(k_1, (batch_size,), 0, half)
    second = jax.random.randint(k_2, (batch_size,), half, length)
    steps = jnp.arange(length)[None]
    markers = (steps == first[:, None]) | (steps == second[:, None])
    targets = jnp.sum(jnp.where(markers, values, 0.0), axis=1)
    return Batch(jnp.stack([values, markers.astype(values.dtype)], axis=-1), targets)

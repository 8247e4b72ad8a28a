r"""Heads and losses for the shapes of sequence problems, all padding-aware.

* many-to-one: :func:`last_valid` (the output at each row's last valid step)
  or :func:`mean_pool`, then a classifier; :func:`cross_entropy`.
* many-to-many: per-step logits and :func:`masked_cross_entropy` /
  :func:`masked_mse`, which average over valid steps only, so whatever sits in
  the padding (inputs, outputs or targets) changes nothing.
* one-to-many: :func:`generate` unrolls a cell from a vector (its initial
  carry), feeding each output back as the next input.

Example (many-to-one with lengths)::

  >>> import jax, jax.numpy as jnp, jaxrnn
  >>> from jaxrnn import heads
  >>> cell = jaxrnn.gru(16)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> xs, lengths = jnp.ones((2, 7, 3)), jnp.array([7, 4])
  >>> ys, _ = jaxrnn.scan(cell, params, xs, lengths=lengths)
  >>> feats = heads.last_valid(ys, lengths)      # (B, H): step 6 of row 0, step 3 of row 1
  >>> bool(jnp.allclose(feats[1], ys[1, 3])), heads.mean_pool(ys, lengths).shape
  (True, (2, 16))
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxrnn.cells import Carry, Cell, Params
from jaxrnn.unroll import sequence_mask  # noqa: F401  (part of this module's API: masks for the losses)

Array = jax.Array


def last_valid(ys: Array, lengths: Array | None = None) -> Array:
    """(B, T, F) -> (B, F): the output at step ``lengths[b] - 1`` (the last step without lengths).

    A row of length 0 gives zeros (``jaxrnn.scan`` leaves its outputs zero).
    """
    if lengths is None:
        return ys[:, -1]
    index = jnp.clip(jnp.asarray(lengths) - 1, 0, ys.shape[1] - 1)
    picked = jnp.take_along_axis(ys, index[:, None, None], axis=1)[:, 0]
    return jnp.where((jnp.asarray(lengths) > 0)[:, None], picked, 0.0)


def mean_pool(ys: Array, lengths: Array | None = None) -> Array:
    """(B, T, F) -> (B, F): the mean over valid steps (zeros for length 0)."""
    if lengths is None:
        return ys.mean(axis=1)
    mask = sequence_mask(lengths, ys.shape[1])[..., None]
    return jnp.sum(jnp.where(mask, ys, 0.0), axis=1) / jnp.maximum(mask.sum(axis=1), 1)


def _softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """``-log softmax(logits)[label]`` at every position: (..., C), (...) -> (...).

    Computed as optax's ``softmax_cross_entropy_with_integer_labels`` does (the
    normaliser minus the label's logit, never the whole log-softmax), to the last bit.
    """
    label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - label_logits


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of (..., C) logits against (...) integer labels (every leading axis averaged)."""
    return jnp.mean(_softmax_cross_entropy(logits, labels))


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of ``values`` (B, T) over the true entries of ``mask`` (B, T); 0 if none."""
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def masked_cross_entropy(logits: Array, targets: Array, lengths: Array | None = None,
                         mask: Array | None = None) -> Array:
    r"""Per-step cross-entropy averaged over valid steps only.

    .. math:: L = \frac{\sum_{b,t} m_{bt} \, (-\log p_\theta(y_{bt} \mid x))}{\sum_{b,t} m_{bt}}

    Arguments:
      logits: (B, T, C).
      targets: (B, T) integers; values at padded steps are ignored (any value).
      lengths: (B,) valid lengths; or give ``mask`` (B, T) directly.
    """
    if mask is None:
        mask = jnp.ones(targets.shape, bool) if lengths is None else sequence_mask(lengths, targets.shape[1])
    # Padded steps may hold anything (targets out of range, NaN logits): both are replaced
    # before the loss is computed, so nothing from them reaches the value or the gradient.
    safe = jnp.where(mask, targets, 0)
    logits = jnp.where(mask[..., None], logits, jnp.zeros((), logits.dtype))
    return masked_mean(_softmax_cross_entropy(logits, safe), mask)


def masked_mse(predictions: Array, targets: Array, lengths: Array | None = None,
               mask: Array | None = None) -> Array:
    """Squared error averaged over valid steps (and features) only; predictions/targets (B, T[, F])."""
    if mask is None:
        mask = jnp.ones(targets.shape[:2], bool) if lengths is None else sequence_mask(lengths, targets.shape[1])
    # Masked before squaring: the square's derivative at a NaN target times a zero cotangent is NaN.
    diff = predictions - targets
    err = jnp.where(mask.reshape(mask.shape + (1,) * (diff.ndim - 2)), diff, jnp.zeros((), diff.dtype)) ** 2
    err = err.reshape(err.shape[:2] + (-1,)).mean(-1)
    return masked_mean(err, mask)


def generate(
    cell: Cell,
    params: Params,
    initial_carry: Carry,
    first_input: Array,
    steps: int,
    next_input: Callable[[Array], Array],
) -> tuple[Array, Carry]:
    """One-to-many: unroll ``cell`` from a carry for ``steps`` steps, feeding outputs back.

    Step t reads x_t (``first_input`` at t = 0, then ``next_input(y_{t-1})``,
    e.g. the embedding of the argmax of a readout, or the output itself) and
    emits y_t. The initial carry is where the "one" goes in: map a vector to
    it with any layer (e.g. ``tanh(v @ W)``).

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> cell = jaxrnn.vanilla(4)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> ys, h = jaxrnn.heads.generate(cell, params, jnp.ones((2, 4)), jnp.zeros((2, 4)), 5, lambda y: y)
      >>> ys.shape
      (2, 5, 4)

    Returns:
      ``(ys, final_carry)``: ys (B, steps, H).
    """

    def step(state, _):
        carry, x = state
        carry, y = cell.step(params, carry, x)
        return (carry, next_input(y)), y

    (carry, _), ys = jax.lax.scan(step, (initial_carry, first_input), None, length=steps)
    return jnp.swapaxes(ys, 0, 1), carry

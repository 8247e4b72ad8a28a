r"""Linear recurrences ``h_t = a_t * h_(t-1) + b_t``, step by step or by a parallel prefix scan.

A step of a linear recurrence is the affine map ``h -> a h + b``, and two steps
compose into one: first ``(a1, b1)``, then ``(a2, b2)``, is
``(a2 a1, a2 b1 + b2)``. Composition is associative, so
``jax.lax.associative_scan`` computes every prefix ``(A_t, B_t)`` of T steps in
O(log T) sequential depth (O(T) work), and ``h_t = A_t h_0 + B_t``. The loop
computes the same values in T dependent steps; the two differ only in the
order of their roundings.

The masks of :func:`jaxrnn.scan` fit in the same scan: a padded step (past a
row's length) is the identity ``(1, 0)``, which leaves the carry as the row's
last valid step made it, and a step that starts afresh from the initial carry
(a reset) is the constant map ``h -> a_t h_0 + b_t``, marked as such so that
composing it with what came before keeps it whole (a flag, not a zero
coefficient: ``0 * NaN`` would carry a non-finite value from one packed
sequence into the next, where the loop starts clean).

Complex coefficients (the LRU's diagonal ``lambda``) act on a real carry that
holds the real parts of the complex state in its first half and the imaginary
parts in its second (:func:`as_complex`, :func:`as_real`): every function here
takes that carry as it is and computes in complex numbers in between.

Example::

  >>> import jax.numpy as jnp
  >>> from jaxrnn import linear
  >>> a, b = jnp.full((4, 1, 2), 0.5), jnp.ones((4, 1, 2))
  >>> linear.recurrence(a, b, jnp.zeros((1, 2)))[:, 0, 0].tolist()
  [1.0, 1.5, 1.75, 1.875]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _checks

Array = jax.Array

METHODS = ("sequential", "associative")


def apply(a: Array, h: Array) -> Array:
    """``a h``: elementwise, or, when ``a`` has one axis more than ``h``, a matrix (..., D, D) times ``h``."""
    return (a @ h[..., None])[..., 0] if a.ndim == h.ndim + 1 else a * h


def as_complex(h: Array) -> Array:
    """The complex state a real carry ``[Re z, Im z]`` (..., 2N) holds: (..., N)."""
    n = h.shape[-1] // 2
    h = h.astype(jnp.promote_types(h.dtype, jnp.float32))  # complex parts are float32 or float64
    return jax.lax.complex(h[..., :n], h[..., n:])


def as_real(z: Array, dtype) -> Array:
    """The real carry ``[Re z, Im z]`` (..., 2N) of a complex state (..., N), in ``dtype``."""
    return jnp.concatenate([z.real, z.imag], axis=-1).astype(dtype)


def step(a: Array, b: Array, h: Array) -> Array:
    """One step ``a h + b`` on the carry ``h``; with complex ``a`` and ``b``, on the complex state it holds."""
    if jnp.iscomplexobj(a) or jnp.iscomplexobj(b):
        return as_real(a * as_complex(h) + b, h.dtype)
    return a * h + b


def compose(first: tuple[Array, ...], second: tuple[Array, ...]) -> tuple[Array, ...]:
    """The steps ``first`` then ``second``, each ``(a, b)`` for ``h -> a h + b``, or ``(a, b, starts)``
    with ``starts`` true where the step (or a step of it) starts afresh: then ``b`` is its whole result.

    ``a`` multiplies elementwise, or, with one axis more than ``b``, is a matrix (..., D, D) applied to
    ``b``'s last axis (the Jacobians of :mod:`jaxrnn.newton`)."""
    a1, b1, *s1 = first
    a2, b2, *s2 = second
    a, b = (a2 @ a1 if a2.ndim == b2.ndim + 1 else a2 * a1), apply(a2, b1) + b2
    if not s2:
        return a, b
    return jnp.where(s2[0], a2, a), jnp.where(s2[0], b2, b), s1[0] | s2[0]


def recurrence(
    a: Array,
    b: Array,
    h0: Array,
    *,
    valid: Array | None = None,
    resets: Array | None = None,
    method: str = "associative",
) -> Array:
    """Every ``h_t`` of ``h_t = a_t * h_(t-1) + b_t`` from ``h_0``, time-major.

    Arguments:
      a, b: (T, B, H) coefficients (``a`` may broadcast to ``b``'s shape:
        (H,) for a recurrence whose decay does not depend on the step); or
        complex (T, B, N), acting on the complex state that a real carry of
        width H = 2N holds (:func:`as_complex`).
      h0: the carry before step 0, (B, H) or broadcastable to it (for
        complex coefficients, its last axis the carry's whole width 2N).
      valid: (T, B) booleans, false at padded steps, which leave the carry as
        it was.
      resets: (T, B) booleans: the step starts from ``h0`` instead of the
        carry before it.
      method: ``"associative"`` (a parallel prefix scan) or ``"sequential"``
        (a ``lax.scan`` loop, as :func:`jaxrnn.scan`'s).

    Returns:
      (T, B, H) in the dtype of ``a`` and ``b`` together (of ``h0``, for
      complex coefficients): the carry after each step (at a padded step, the
      carry it left as it was; outputs that should be zero there are the
      caller's to mask).
    """
    _checks.check_choice("method", method, METHODS)
    h0 = jnp.asarray(h0)
    if (jnp.iscomplexobj(a) or jnp.iscomplexobj(b)) and not jnp.iscomplexobj(h0):
        if h0.ndim == 0 or h0.shape[-1] != 2 * jnp.shape(b)[-1]:
            raise ValueError(f"h0: complex coefficients of width {jnp.shape(b)[-1]} act on a real carry [Re, Im] "
                             f"of width {2 * jnp.shape(b)[-1]}, got shape {h0.shape}")
        hs = recurrence(a, b, as_complex(h0), valid=valid, resets=resets, method=method)
        return as_real(hs, h0.dtype)
    dtype = jnp.result_type(a, b)
    b = jnp.asarray(b, dtype)
    a = jnp.broadcast_to(jnp.asarray(a, dtype), b.shape)
    h0 = jnp.broadcast_to(jnp.asarray(h0, dtype), b.shape[1:])
    for name, mask in (("valid", valid), ("resets", resets)):
        if mask is not None and jnp.shape(mask) != b.shape[:2]:
            raise ValueError(f"{name}: expected shape {b.shape[:2]} (T, B), got {jnp.shape(mask)}")
    if method == "sequential":
        def step(h, inputs):
            a_t, b_t, valid_t, reset_t = inputs
            new = a_t * (h if reset_t is None else jnp.where(reset_t[:, None], h0, h)) + b_t
            new = new if valid_t is None else jnp.where(valid_t[:, None], new, h)
            return new, new

        return jax.lax.scan(step, h0, (a, b, valid, resets))[1]
    if resets is not None:  # the step's whole result: a_t h0 + b_t (a_t read only where it is used)
        r = resets[..., None]
        b = jnp.where(r, jnp.where(r, a, jnp.zeros((), dtype)) * h0 + b, b)
    if valid is not None:  # the identity
        v = valid[..., None]
        a = jnp.where(v, a, jnp.ones((), dtype))
        b = jnp.where(v, b, jnp.zeros((), dtype))
        resets = None if resets is None else resets & valid
    if resets is None:
        A, B = jax.lax.associative_scan(compose, (a, b), axis=0)
        return A * h0 + B
    A, B, started = jax.lax.associative_scan(compose, (a, b, jnp.broadcast_to(resets[..., None], b.shape)), axis=0)
    return jnp.where(started, B, A * h0 + B)

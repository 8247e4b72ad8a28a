"""Argument checks shared by the public functions.

Every error names the argument, what was expected and what was given, so a
user reading the message never has to open the source to learn which shape is
wrong. Checks run at trace time on static shapes; value checks (``lengths``
inside ``[0, T]``) run only when the value is concrete, i.e. outside ``jit``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def shape_str(tree: Any) -> str:
    """A short description of a pytree of arrays: its structure and leaf shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef.num_leaves == 1 and not treedef.children():
        return f"array of shape {tuple(np.shape(leaves[0]))}"
    shapes = ", ".join(str(tuple(np.shape(x))) for x in leaves)
    return f"{type(tree).__name__} with leaf shapes [{shapes}]"


def is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive int, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def check_shape(name: str, x: Any, expected: tuple[int, ...], layout: str, why: str = "") -> None:
    """``x`` must have shape ``expected``; ``layout`` names its axes, e.g. ``"(B, I)"``."""
    shape = tuple(np.shape(x))
    if shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {layout} = {tuple(expected)}{why}, got shape {shape}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def check_lengths(lengths: Any, batch: int, time: int) -> jax.Array:
    """``lengths`` must be an integer vector of shape (B,) with values in [0, T]."""
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,):
        raise ValueError(
            f"lengths: expected shape (B,) = ({batch},), one length per sequence, "
            f"got shape {lengths.shape}"
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    if is_concrete(lengths) and batch:  # NumPy: a concrete array closed over inside jit is still checkable
        lo, hi = int(np.min(np.asarray(lengths))), int(np.max(np.asarray(lengths)))
        if lo < 0 or hi > time:
            raise ValueError(
                f"lengths: values must lie in [0, T] = [0, {time}], got min {lo} and max {hi}"
            )
    return lengths


def check_resets(resets: Any, expected_shape: tuple[int, ...], layout: str) -> jax.Array:
    resets = jnp.asarray(resets)
    check_shape("resets", resets, expected_shape, layout)
    if not (resets.dtype == jnp.bool_ or jnp.issubdtype(resets.dtype, jnp.integer)):
        raise TypeError(f"resets: expected booleans, got dtype {resets.dtype}")
    return resets.astype(jnp.bool_)


def check_same_structure(name: str, given: Any, expected: Any) -> None:
    """``given`` must have the pytree structure and leaf shapes of ``expected``."""
    given_def = jax.tree_util.tree_structure(given)
    expected_def = jax.tree_util.tree_structure(expected)
    ok = given_def == expected_def and all(
        np.shape(g) == np.shape(e)
        for g, e in zip(jax.tree_util.tree_leaves(given), jax.tree_util.tree_leaves(expected))
    )
    if not ok:
        raise ValueError(f"{name}: expected {shape_str(expected)}, got {shape_str(given)}")

"""Argument checks shared by the public functions.

Every error names the argument, what was expected and what was given, so a
user reading the message never has to open the source to learn which shape is
wrong. Checks run at trace time on static shapes; value checks (``lengths``
inside ``[0, T]``) run only when the value is concrete, i.e. outside ``jit``.
"""

from __future__ import annotations

import argparse
import copy
import math
from typing import Any, Callable

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


# --------------------------------------------------------------------------- command-line errors


class UsageError(ValueError):
    """A command was given something it cannot use: a bad flag value, a missing or unusable file
    or folder, a text too short. ``jaxrnn`` prints the message as one line,
    ``jaxrnn <command>: error: <message>``, and exits with status 2 (no traceback)."""


def _arg_type(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str, name: str):
    """An argparse ``type=``: ``convert`` the text, and accept it if ``ok``; otherwise argparse's
    one-line ``argument --flag: expected <expected>, got '<text>'``."""

    def parse(text: str):
        try:
            value = convert(text)
        except (TypeError, ValueError):
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


def int_at_least(minimum: int, *, multiple_of: int = 1):
    """An argparse ``type=`` for ints ``>= minimum`` (and a multiple of ``multiple_of``)."""
    expected = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f"an int >= {minimum}")
    if multiple_of > 1:
        expected += f" that is a multiple of {multiple_of}"
    return _arg_type(int, lambda v: v >= minimum and v % multiple_of == 0, expected, "int")


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             high_open: bool = False):
    """An argparse ``type=`` for finite floats within the given bounds (open or closed)."""
    if low == 0 and high is None:
        expected = "a finite number > 0" if low_open else "a finite number >= 0"
    elif low is None and high is None:
        expected = "a finite number"
    else:
        expected = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    def ok(v: float) -> bool:
        return (math.isfinite(v)
                and (low is None or (v > low if low_open else v >= low))
                and (high is None or (v < high if high_open else v <= high)))

    return _arg_type(float, ok, expected, "float")


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0, low_open=True)
nonnegative_float = float_in(0)
rate = float_in(0, 1, high_open=True)  # a dropout rate


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with an error as one line on stderr, ``<prog>: error: <message>``, and status 2
    (plain argparse prints its usage first). ``--help`` shows the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default, ``(default: X)``, except where there is none to
    show: flags (store_true), options without a default, and those whose help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or action.default in (None, "") or action.default is argparse.SUPPRESS
                or action.nargs == 0 or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)".lstrip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._get_help_string(action):  # argparse shows no help line without a help
            action = copy.copy(action)
            action.help = self._get_help_string(action)
        return super()._format_action(action)

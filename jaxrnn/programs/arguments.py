"""Command-line arguments for the programs: a parser whose errors are one line, ``--help`` with
defaults, and argparse ``type=`` checks that say what they expected.

:class:`UsageError` is what a command raises for anything the user must change (a bad value, a
missing file); :mod:`jaxrnn.programs.cli` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import copy
import math
from typing import Any, Callable, Mapping, Sequence


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


def check_cells(makers: Mapping[str, Callable[[int], Any]], sizes: Sequence[int], flag: str) -> None:
    """Make each cell of ``makers`` (name -> hidden size -> cell) at each hidden size of ``sizes`` before
    a command's long work: a size a cell refuses (the LRU takes even ones) is a :class:`UsageError`
    naming ``flag``, not a traceback minutes later."""
    for name, make in makers.items():
        for size in sizes:
            try:
                make(size)
            except ValueError as e:
                raise UsageError(f"{flag} {size} for {name}: {e}") from None


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0, low_open=True)
nonnegative_float = float_in(0)
rate = float_in(0, 1, high_open=True)  # a dropout rate


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with an error as one line on stderr, ``<prog>: error: <message>``, and status 2
    (plain argparse prints its usage first). ``--help`` shows the usage and every default
    (:class:`HelpFormatter`, unless another ``formatter_class`` is given)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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

"""jaxrnn: recurrent networks for JAX, as pure functions.

Cells (:func:`vanilla`, :func:`lstm`, :func:`gru`, and the linear
:func:`mingru`, :func:`minlstm` and :func:`lru`) are records of pure functions; :func:`scan`
unrolls any of them (a linear one also all steps at once, by
:mod:`jaxrnn.linear`'s parallel prefix scan, any one by :mod:`jaxrnn.newton`'s
Newton iterations); :class:`RNN` stacks them;
:mod:`jaxrnn.diagnostics` measures how gradients flow back through time;
:mod:`jaxrnn.heads` (losses for every sequence shape), :mod:`jaxrnn.seq2seq`
(encoder-decoder with attention) and :mod:`jaxrnn.streaming` build on them;
:mod:`jaxrnn.linen` and :mod:`jaxrnn.nnx` wrap them as flax modules;
:mod:`jaxrnn.tasks` holds the long-range benchmark tasks; :mod:`jaxrnn.native` runs
the LSTM, the GRU and the vanilla cell as one compiled CPU kernel each, which :func:`scan` uses where it
can.
:mod:`jaxrnn.programs` holds the programs behind the ``jaxrnn`` command, built on
this public API alone; nothing here imports them.
"""

from jaxrnn import native
from jaxrnn.cells import (CELLS, Cell, LSTMState, StepVJP, chrono_init, gru, identity_init, lru, lstm,
                          mingru, minlstm, vanilla)
from jaxrnn.interop import carry_from_flax, carry_to_flax, from_flax, from_torch, to_flax, to_torch
from jaxrnn.layers import RNN
from jaxrnn.unroll import scan

__version__ = "0.1.0"

# Submodules loaded on first use (PEP 562), so that `import jaxrnn` loads jax and numpy only:
# linen needs flax, training optax, checkpoints orbax (tests/test_imports.py holds this).
# `jaxrnn.linen.RNN` and `from jaxrnn import linen` both work as before. They stay out of __all__:
# `from jaxrnn import *` would load them all, and bind `nnx` and `linen` over flax's own names.
_LAZY_SUBMODULES = ("checkpoints", "diagnostics", "heads", "linen", "newton", "nnx", "seq2seq", "streaming", "tasks",
                    "training")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")  # also binds it here: called once per name
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))


__all__ = [
    "CELLS",
    "Cell",
    "StepVJP",
    "LSTMState",
    "RNN",
    "carry_from_flax",
    "carry_to_flax",
    "chrono_init",
    "from_flax",
    "from_torch",
    "gru",
    "identity_init",
    "lru",
    "lstm",
    "mingru",
    "minlstm",
    "native",
    "scan",
    "to_flax",
    "to_torch",
    "vanilla",
]

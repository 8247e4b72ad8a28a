"""jaxrnn: recurrent networks for JAX, as pure functions.

Cells (:func:`vanilla`, :func:`lstm`, :func:`gru`) are records of pure
functions; :func:`scan` unrolls any of them; :class:`RNN` stacks them;
:mod:`jaxrnn.diagnostics` measures how gradients flow back through time.
"""

from jaxrnn import linen
from jaxrnn.cells import CELLS, Cell, LSTMState, gru, lstm, vanilla
from jaxrnn.interop import carry_from_flax, carry_to_flax, from_flax, from_torch, to_flax, to_torch
from jaxrnn.layers import RNN
from jaxrnn.unroll import scan

__version__ = "0.1.0"

__all__ = [
    "CELLS",
    "Cell",
    "LSTMState",
    "RNN",
    "carry_from_flax",
    "carry_to_flax",
    "from_flax",
    "from_torch",
    "gru",
    "linen",
    "lstm",
    "scan",
    "to_flax",
    "to_torch",
    "vanilla",
]

"""jaxrnn: recurrent networks for JAX, as pure functions.

Cells (:func:`vanilla`, :func:`lstm`, :func:`gru`) are records of pure
functions; :func:`scan` unrolls any of them; :class:`RNN` stacks them;
:mod:`jaxrnn.diagnostics` measures how gradients flow back through time;
:mod:`jaxrnn.heads` (losses for every sequence shape), :mod:`jaxrnn.seq2seq`
(encoder-decoder with attention) and :mod:`jaxrnn.streaming` build on them;
:mod:`jaxrnn.tasks` holds the long-range benchmark tasks; :mod:`jaxrnn.native` runs
the LSTM and GRU as one compiled CPU kernel each, which :func:`scan` uses where it can.
"""

from jaxrnn import heads, linen, native, seq2seq, streaming, tasks
from jaxrnn.cells import CELLS, Cell, LSTMState, StepVJP, chrono_init, gru, identity_init, lstm, vanilla
from jaxrnn.interop import carry_from_flax, carry_to_flax, from_flax, from_torch, to_flax, to_torch
from jaxrnn.layers import RNN
from jaxrnn.unroll import scan

__version__ = "0.1.0"

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
    "heads",
    "identity_init",
    "linen",
    "lstm",
    "native",
    "scan",
    "seq2seq",
    "streaming",
    "tasks",
    "to_flax",
    "to_torch",
    "vanilla",
]

"""Stacked and bidirectional recurrent layers built from one cell.

The layout of parameters and states follows ``torch.nn.LSTM`` so that the two
map one to one (:mod:`jaxrnn.interop`): ``params[layer]["fwd" | "bwd"]`` holds
one cell's parameters, and a state stacks one carry per (layer, direction) on a
leading axis of size ``num_layers * num_directions``, ordered
``layer0-fwd, layer0-bwd, layer1-fwd, ...``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells import Carry, Cell
from jaxrnn.unroll import scan, sequence_mask

Array = jax.Array
LayerParams = list[dict[str, dict[str, Array]]]


@dataclasses.dataclass(frozen=True)
class RNN:
    r"""A multi-layer, optionally bidirectional recurrent layer.

    Layer ``l`` reads the outputs of layer ``l-1`` (forward and backward halves
    concatenated when bidirectional)::

        y^0 = xs
        y^l = [scan(cell, y^{l-1}) ; scan(cell, y^{l-1}, reverse=True)]   (l = 1..L)
        y^l = dropout(y^l) + (y^{l-1} if residual)                         (between layers)

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> rnn = jaxrnn.RNN(jaxrnn.lstm(32), num_layers=2, bidirectional=True, dropout=0.1)
      >>> params = rnn.init(jax.random.key(0), 8)
      >>> xs = jnp.ones((4, 20, 8))
      >>> ys, state = rnn.apply(params, xs, lengths=jnp.array([20, 5, 1, 9]))
      >>> ys.shape, state.h.shape                 # like torch: (L * D, B, H)
      ((4, 20, 64), (4, 4, 32))

    Attributes:
      cell: the cell used in every layer and direction.
      num_layers: L >= 1.
      bidirectional: run a second, reversed cell per layer (padding-aware with
        ``lengths``); outputs are (..., 2H).
      dropout: rate of dropout on the outputs of every layer except the last
        (as in torch); applied only when ``apply`` is given a ``key``.
      residual: add each layer's input to its output where the widths match
        (always from layer 2 on; layer 1 too when ``input_size == D * H``).
      time_major: layout of inputs and outputs, (T, B, I) instead of (B, T, I).
    """

    cell: Cell
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    residual: bool = False
    time_major: bool = False

    def __post_init__(self):
        _checks.check_positive_int("num_layers", self.num_layers)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a rate in [0, 1), got {self.dropout}")

    @property
    def directions(self) -> tuple[str, ...]:
        return ("fwd", "bwd") if self.bidirectional else ("fwd",)

    @property
    def output_size(self) -> int:
        return self.cell.hidden_size * len(self.directions)

    def init(self, key: Array, input_size: int) -> LayerParams:
        """Parameters: a list with one ``{"fwd": ..., "bwd": ...}`` dict per layer."""
        _checks.check_positive_int("input_size", input_size)
        params = []
        for layer in range(self.num_layers):
            size = input_size if layer == 0 else self.output_size
            keys = jax.random.split(jax.random.fold_in(key, layer), len(self.directions))
            params.append({d: self.cell.init(k, size) for d, k in zip(self.directions, keys)})
        return params

    def initial_state(self, batch_size: int | None = None) -> Carry:
        """Zeros, stacked (L * D, B, H) per carry leaf."""
        return _stack([self.cell.initial_carry(batch_size)] * (self.num_layers * len(self.directions)))

    def apply(
        self,
        params: LayerParams,
        xs: Array,
        *,
        lengths: Array | None = None,
        resets: Array | None = None,
        initial_state: Carry | None = None,
        key: Array | None = None,
        **scan_options: Any,
    ) -> tuple[Array, Carry]:
        """Run the stack.

        Arguments:
          params: from :meth:`init`.
          xs: (B, T, I) (or (T, B, I) if ``time_major``), or (T, I) unbatched.
          lengths: (B,) valid lengths of right-padded rows.
          resets: (B, T) booleans: reset every layer's state to ``initial_state``
            before step t (independent sequences packed in one row), as in
            :func:`jaxrnn.scan`.
          initial_state: (L * D, B, H) per carry leaf, as :meth:`initial_state`.
          key: a PRNG key; enables dropout (leave None for inference).
          scan_options: passed to each layer's :func:`jaxrnn.scan`: ``unroll``,
            ``backward``, ``checkpoint_every`` (the memory option), ``projection``,
            ``kernel`` and ``parallel`` (a linear cell's steps all at once).

        Returns:
          ``(outputs, final_state)``: outputs (B, T, D * H); final_state
          stacked like ``initial_state``, each carry taken at its row's last
          valid step.
        """
        unknown = set(scan_options) - set(SCAN_OPTIONS)
        if unknown:
            raise TypeError(f"apply: unexpected options {sorted(unknown)}; scan's options are {SCAN_OPTIONS}")
        xs = jnp.asarray(xs)
        if len(params) != self.num_layers:
            raise ValueError(
                f"params: expected {self.num_layers} layers (num_layers={self.num_layers}), got {len(params)}"
            )
        batch = None if xs.ndim == 2 else xs.shape[1 if self.time_major else 0]
        if initial_state is not None:
            _checks.check_same_structure("initial_state", initial_state, self.initial_state(batch))
        finals = []
        ys = xs
        for layer, layer_params in enumerate(params):
            if set(layer_params) != set(self.directions):
                raise ValueError(
                    f"params[{layer}]: expected directions {self.directions} "
                    f"(bidirectional={self.bidirectional}), got {tuple(layer_params)}"
                )
            outs = []
            for d, direction in enumerate(self.directions):
                index = layer * len(self.directions) + d
                carry0 = None if initial_state is None else _index(initial_state, index)
                out, final = scan(
                    self.cell, layer_params[direction], ys, initial_carry=carry0,
                    lengths=lengths, resets=resets, reverse=direction == "bwd", time_major=self.time_major,
                    **scan_options,
                )
                outs.append(out)
                finals.append(final)
            out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
            if layer < self.num_layers - 1 and self.dropout > 0.0 and key is not None:
                keep = jax.random.bernoulli(jax.random.fold_in(key, layer), 1.0 - self.dropout, out.shape)
                out = jnp.where(keep, out / (1.0 - self.dropout), 0.0)
            if self.residual and out.shape == ys.shape:
                out = out + ys
                if lengths is not None:  # padded outputs stay zero, as without residual
                    time = out.shape[0 if out.ndim == 2 or self.time_major else 1]
                    valid = sequence_mask(lengths, time, time_major=self.time_major)
                    out = jnp.where(valid[..., None], out, jnp.zeros((), out.dtype))
            ys = out
        return ys, _stack(finals)


# scan's options that apply sets nothing for itself: one per layer would be the same (read from scan).
SCAN_OPTIONS = tuple(
    name for name, p in inspect.signature(scan).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name not in ("initial_carry", "lengths", "resets", "reverse", "time_major")
)


def _stack(carries: list[Carry]) -> Carry:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *carries)


def _index(state: Carry, i: int) -> Carry:
    return jax.tree_util.tree_map(lambda x: x[i], state)

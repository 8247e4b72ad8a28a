"""flax.linen wrappers: jaxrnn cells inside ``flax.linen.RNN``, and the stacked layer as a Module.

Both keep the parameters exactly as the functional API makes them (under one
flax param each), so a model trained through flax can be handed to
``jaxrnn.scan``, ``jaxrnn.diagnostics`` or ``jaxrnn.to_torch`` unchanged.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrnn.cells import Cell
from jaxrnn.layers import RNN as _RNN


class Recurrent(nn.RNNCellBase):
    """A jaxrnn :class:`~jaxrnn.Cell` as a flax ``RNNCellBase``, usable in ``flax.linen.RNN``.

    Example::

      >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxrnn
      >>> model = nn.RNN(jaxrnn.linen.Recurrent(jaxrnn.lstm(16)))
      >>> variables = model.init(jax.random.key(0), jnp.ones((2, 7, 3)))
      >>> model.apply(variables, jnp.ones((2, 7, 3))).shape
      (2, 7, 16)

    The parameters are ``variables["params"]["cell"]``, a jaxrnn params dict.
    Inside ``flax.linen.RNN`` each step projects its own input; for the faster
    hoisted projection use :class:`RNN` below (or :func:`jaxrnn.scan`).
    """

    cell: Cell

    @nn.compact
    def __call__(self, carry: Any, inputs: jax.Array):
        params = self.param("cell", lambda key: self.cell.init(key, inputs.shape[-1]))
        return self.cell.step(params, carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> Any:
        del rng  # the initial carry is zeros
        batch_dims = tuple(input_shape[:-1])
        return jax.tree_util.tree_map(
            lambda z: jnp.broadcast_to(z, batch_dims + z.shape), self.cell.initial_carry(None)
        )

    @property
    def num_feature_axes(self) -> int:
        return 1


class RNN(nn.Module):
    """:class:`jaxrnn.RNN` (stacked, bidirectional, dropout, residual) as a flax Module.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> model = jaxrnn.linen.RNN(jaxrnn.gru(16), num_layers=2, bidirectional=True, dropout=0.2)
      >>> xs = jnp.ones((2, 7, 3))
      >>> variables = model.init(jax.random.key(0), xs)
      >>> ys, state = model.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(1)})
      >>> ys.shape, state.shape
      ((2, 7, 32), (4, 2, 16))

    Dropout needs ``deterministic=False`` and a ``"dropout"`` rng, as in flax.
    """

    cell: Cell
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    residual: bool = False
    time_major: bool = False

    @nn.compact
    def __call__(self, xs, *, lengths=None, resets=None, initial_state=None, deterministic: bool = True,
                 **scan_options):
        """``xs``, ``lengths``, ``resets``, ``initial_state`` and ``scan_options`` (``checkpoint_every``, ...)
        as for :meth:`jaxrnn.RNN.apply`."""
        layer = _RNN(self.cell, self.num_layers, self.bidirectional, self.dropout, self.residual, self.time_major)
        params = self.param("rnn", lambda key: layer.init(key, xs.shape[-1]))
        key = None if deterministic or self.dropout == 0.0 else self.make_rng("dropout")
        return layer.apply(params, xs, lengths=lengths, resets=resets, initial_state=initial_state, key=key,
                           **scan_options)

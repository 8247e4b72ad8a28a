"""flax.nnx wrappers: jaxrnn cells inside ``flax.nnx.RNN``, and the stacked layer as an ``nnx.Module``.

Both keep the parameters exactly as the functional API makes them, one
``nnx.Param`` per array, laid out as ``cell.init`` (a dict) or
``jaxrnn.RNN.init`` (a list of ``{"fwd": ..., "bwd": ...}`` dicts) returns
them, under the attribute ``weights``. The ``params`` property reads them
back as that plain pytree of arrays (and assigning to it writes them), so a
model trained through flax can be handed to :func:`jaxrnn.scan`,
:mod:`jaxrnn.diagnostics` or :func:`jaxrnn.to_torch` unchanged.

This module imports flax; ``import jaxrnn`` does not load it. Import it as
``import jaxrnn.nnx`` or ``from jaxrnn import nnx as rnn_nnx``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrnn import _checks
from jaxrnn.cells import Carry, Cell, Params
from jaxrnn.layers import RNN as _RNN
from jaxrnn.layers import LayerParams

Array = jax.Array


def _wrap(tree: Any) -> Any:
    """Plain lists / dicts of arrays -> ``nnx.List`` / ``nnx.Dict`` of ``nnx.Param``."""
    if isinstance(tree, dict):
        return nnx.Dict({k: _wrap(v) for k, v in tree.items()})
    if isinstance(tree, (list, tuple)):
        return nnx.List([_wrap(v) for v in tree])
    return nnx.Param(jnp.asarray(tree))


def _unwrap(tree: Any) -> Any:
    """The inverse of :func:`_wrap`: plain lists and dicts of the arrays the Params hold."""
    if isinstance(tree, nnx.Variable):
        return tree.get_value()
    if isinstance(tree, (nnx.Dict, dict)):
        return {k: _unwrap(tree[k]) for k in tree}
    if isinstance(tree, (nnx.List, list, tuple)):
        return [_unwrap(v) for v in tree]
    raise TypeError(f"unexpected {type(tree).__name__} among the weights")


def _assign(weights: Any, params: Any, name: str) -> None:
    """Write the arrays of ``params`` into the Params of ``weights``; same structure and shapes required."""
    held = _unwrap(weights)
    if jax.tree_util.tree_structure(held) != jax.tree_util.tree_structure(params):
        raise ValueError(
            f"{name}: expected parameters structured as {jax.tree_util.tree_structure(held)}, "
            f"got {jax.tree_util.tree_structure(params)}"
        )
    shapes = lambda t: jax.tree_util.tree_map(jnp.shape, t)
    if shapes(held) != shapes(params):
        raise ValueError(f"{name}: expected parameter shapes {shapes(held)}, got {shapes(params)}")
    _set(weights, params)


def _set(weights: Any, params: Any) -> None:
    """Walk ``weights`` and ``params`` together (by key and index, never by leaf order)."""
    if isinstance(weights, nnx.Variable):
        weights.set_value(jnp.asarray(params, weights.get_value().dtype))
    elif isinstance(weights, nnx.Dict):
        for k in weights:
            _set(weights[k], params[k])
    else:
        for w, p in zip(weights, params):
            _set(w, p)


def _flatten_state(tree: Any) -> Any:
    """``weights`` as they come out of ``nnx.state`` / ``nnx.grad`` (int keys for list items) -> plain pytree."""
    if isinstance(tree, nnx.Variable):
        return tree.get_value()
    if hasattr(tree, "items"):
        items = dict(tree.items())
        if items and all(isinstance(k, int) for k in items):
            return [_flatten_state(items[i]) for i in range(len(items))]
        return {k: _flatten_state(v) for k, v in items.items()}
    if isinstance(tree, (list, tuple)):
        return [_flatten_state(v) for v in tree]
    return tree


def functional(state: Any) -> Any:
    """The functional pytree in an ``nnx.State`` (or its pure dict) of one of this module's models.

    ``state`` is what ``nnx.state(model)``, ``nnx.state(model, nnx.Param)``
    or ``nnx.grad`` return for a :class:`Recurrent` or :class:`RNN`; the
    result is its ``weights`` as ``cell.init`` / ``jaxrnn.RNN.init`` lay them
    out: gradients in the same layout as ``jax.grad`` of the functional loss.

    Example::

      >>> import jaxrnn, jaxrnn.nnx
      >>> from flax import nnx
      >>> model = jaxrnn.nnx.RNN(jaxrnn.gru(4), 3, num_layers=2, rngs=nnx.Rngs(0))
      >>> p = jaxrnn.nnx.functional(nnx.state(model, nnx.Param))
      >>> type(p).__name__, len(p), sorted(p[0]["fwd"]), p[1]["fwd"]["w_i"].shape
      ('list', 2, ['b', 'b_hn', 'w_h', 'w_i'], (4, 12))

    The same for gradients: ``functional(nnx.grad(loss)(model))`` is
    ``jax.grad`` of the functional loss at ``model.params``.
    """
    if hasattr(state, "items") and "weights" in dict(state.items()):
        state = dict(state.items())["weights"]
    return _flatten_state(state)


class Recurrent(nnx.RNNCellBase):
    """A jaxrnn :class:`~jaxrnn.Cell` as an nnx ``RNNCellBase``, usable in ``flax.nnx.RNN``.

    Each call is one step, ``cell.step(params, carry, x_t) -> (carry, y_t)``.

    Example::

      >>> import jax.numpy as jnp, jaxrnn, jaxrnn.nnx
      >>> from flax import nnx
      >>> cell = jaxrnn.nnx.Recurrent(jaxrnn.lstm(16), 3, rngs=nnx.Rngs(0))
      >>> model = nnx.RNN(cell)
      >>> model(jnp.ones((2, 7, 3))).shape
      (2, 7, 16)
      >>> ys, state = jaxrnn.scan(cell.cell, cell.params, jnp.ones((2, 7, 3)))   # the same model
      >>> bool(jnp.allclose(ys, model(jnp.ones((2, 7, 3))), atol=1e-6))
      True

    The parameters are ``cell.weights``, one ``nnx.Param`` per entry of
    ``cell.cell.init(key, input_size)``; ``cell.params`` is that plain dict.
    Inside ``flax.nnx.RNN`` each step projects its own input; for the faster
    hoisted projection (and the native CPU kernels) use :class:`RNN` below
    (or :func:`jaxrnn.scan`). The carry is jaxrnn's (an LSTM's is
    :class:`~jaxrnn.LSTMState` ``(h, c)``, not flax's ``(c, h)``).

    Arguments:
      cell: the jaxrnn cell.
      input_size: I, the width of ``x_t``.
      rngs: ``rngs.params()`` draws the key for ``cell.init``.

    Attributes:
      cell: the jaxrnn cell (static).
      input_size: I.
      weights: ``nnx.Dict`` of ``nnx.Param``, keyed as ``cell.init``'s dict.
    """

    def __init__(self, cell: Cell, input_size: int, *, rngs: nnx.Rngs):
        _checks.check_positive_int("input_size", input_size)
        self.cell = cell
        self.input_size = input_size
        self.weights = _wrap(cell.init(rngs.params(), input_size))

    @property
    def params(self) -> Params:
        """The parameters as a plain dict of arrays, as ``cell.init`` makes them."""
        return _unwrap(self.weights)

    def set_params(self, params: Params) -> None:
        """Write ``params`` (a dict as ``cell.init`` makes) into the ``nnx.Param`` s.

        ``recurrent.params = params`` does the same. The arrays are cast to
        the dtypes the Params hold.
        """
        self.cell.check_params(params, self.input_size)
        _assign(self.weights, params, "params")

    def __setattr__(self, name: str, value: Any) -> None:
        # nnx.Module's __setattr__ does not call property setters.
        if name == "params":
            self.set_params(value)
        else:
            super().__setattr__(name, value)

    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        return self.cell.step(self.params, carry, inputs)

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        carry_init: Any = None,
    ) -> Carry:
        """The carry before the first step for inputs of ``input_shape`` (..., I): zeros by default.

        ``carry_init(key, shape, dtype)`` (a flax initializer) draws each carry
        leaf instead; it needs ``rngs`` (its ``carry`` stream).
        """
        batch_dims = tuple(input_shape[:-1])
        zeros = self.cell.initial_carry(None)
        if carry_init is None:
            return jax.tree_util.tree_map(lambda z: jnp.broadcast_to(z, batch_dims + z.shape), zeros)
        if isinstance(rngs, nnx.Rngs):
            rngs = rngs.carry
        if rngs is None:
            raise ValueError("rngs: carry_init needs rngs to draw the initial carry from")
        return jax.tree_util.tree_map(lambda z: carry_init(rngs(), batch_dims + z.shape, z.dtype), zeros)

    @property
    def num_feature_axes(self) -> int:
        return 1


class RNN(nnx.Module):
    """:class:`jaxrnn.RNN` (stacked, bidirectional, dropout, residual) as an ``nnx.Module``.

    Calling it runs ``jaxrnn.RNN.apply`` on its parameters, so it takes the
    same fast paths (the native CPU kernels, the fused backward pass) and
    returns ``(outputs, final_state)`` like it.

    Example::

      >>> import jax.numpy as jnp, jaxrnn, jaxrnn.nnx
      >>> from flax import nnx
      >>> model = jaxrnn.nnx.RNN(jaxrnn.gru(16), 3, num_layers=2, dropout=0.2, rngs=nnx.Rngs(0))
      >>> xs = jnp.ones((2, 7, 3))
      >>> ys, state = model(xs)                   # train mode: dropout between the layers
      >>> ys.shape, state.shape                   # state: (num_layers * directions, B, H)
      ((2, 7, 16), (2, 2, 16))
      >>> model.eval()                            # no dropout: the functional layer, as is
      >>> bool(jnp.allclose(model(xs)[0], model.layer.apply(model.params, xs)[0]))
      True

    Dropout follows ``nnx.Dropout``: it is on while ``deterministic`` is
    False (``model.train()``, the default) and off after ``model.eval()``
    (or ``nnx.view(model, deterministic=True)``, or a call with
    ``deterministic=True``); its keys come from the ``dropout`` stream of the
    ``rngs`` given at construction (forked; ``default`` if there is none), or
    from ``rngs`` given to the call.

    Arguments:
      cell: the cell used in every layer and direction.
      input_size: I, the width of the inputs.
      num_layers, bidirectional, dropout, residual, time_major: as for
        :class:`jaxrnn.RNN`.
      deterministic: start in eval mode (no dropout).
      rngs: ``rngs.params()`` draws the key for ``jaxrnn.RNN.init``; the
        ``dropout`` stream is kept (forked) when ``dropout > 0``.

    Attributes:
      layer: the functional :class:`jaxrnn.RNN` (static).
      input_size: I.
      weights: ``nnx.List`` (one per layer) of ``nnx.Dict`` (``"fwd"``,
        ``"bwd"``) of ``nnx.Dict`` of ``nnx.Param``: ``layer.init``'s layout.
      deterministic: whether dropout is off.
      rngs: the forked dropout ``RngStream`` (None without dropout).

    Under ``nnx.jit`` the cell is part of the static graph: models built from
    the same cell object share compilations, while two ``jaxrnn.gru(16)``
    calls make two cells (their functions are distinct closures) and so two.
    """

    def __init__(
        self,
        cell: Cell,
        input_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        residual: bool = False,
        time_major: bool = False,
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ):
        _checks.check_positive_int("input_size", input_size)
        self.layer = _RNN(cell, num_layers, bidirectional, dropout, residual, time_major)
        self.input_size = input_size
        self.weights = _wrap(self.layer.init(rngs.params(), input_size))
        self.deterministic = deterministic
        self.rngs = rngs.dropout.fork() if dropout > 0.0 else nnx.data(None)

    @property
    def cell(self) -> Cell:
        return self.layer.cell

    @property
    def params(self) -> LayerParams:
        """The parameters as the plain list of dicts of arrays ``layer.init`` makes."""
        return _unwrap(self.weights)

    def set_params(self, params: LayerParams) -> None:
        """Write ``params`` (as ``layer.init`` makes them) into the ``nnx.Param`` s.

        ``model.params = params`` does the same, e.g. with a torch module's
        weights: ``model.params = jaxrnn.from_torch(module)[1]``. The arrays
        are cast to the dtypes the Params hold.
        """
        if isinstance(params, (list, tuple)):
            for k, layer_params in enumerate(params):
                size = self.input_size if k == 0 else self.layer.output_size
                for p in dict(layer_params).values():
                    self.cell.check_params(p, size)
        _assign(self.weights, list(params) if isinstance(params, tuple) else params, "params")

    def __setattr__(self, name: str, value: Any) -> None:
        # nnx.Module's __setattr__ does not call property setters.
        if name == "params":
            self.set_params(value)
        else:
            super().__setattr__(name, value)

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: ``deterministic=True`` turns dropout off."""
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(
        self,
        xs: Array,
        *,
        lengths: Array | None = None,
        resets: Array | None = None,
        initial_state: Carry | None = None,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | Array | None = None,
        **scan_options,
    ) -> tuple[Array, Carry]:
        """Run the stack: ``layer.apply(params, xs, ..., key=<a dropout key in train mode>)``.

        Arguments:
          xs, lengths, resets, initial_state, scan_options: as for :meth:`jaxrnn.RNN.apply`
            (``checkpoint_every``, ``unroll``, ...).
          deterministic: overrides the attribute for this call.
          rngs: where the dropout key comes from for this call (an ``nnx.Rngs``,
            whose ``dropout`` stream is used, an ``RngStream`` or a key);
            the stored stream by default.

        Returns:
          ``(outputs, final_state)``, as :meth:`jaxrnn.RNN.apply`.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        key = None
        if not deterministic and self.layer.dropout > 0.0:
            rngs = self.rngs if rngs is None else rngs
            if isinstance(rngs, nnx.Rngs):
                key = rngs.dropout()
            elif isinstance(rngs, nnx.RngStream):
                key = rngs()
            elif isinstance(rngs, jax.Array):
                key = rngs
            else:
                raise TypeError(f"rngs: expected an nnx.Rngs, RngStream or key, got {type(rngs).__name__}")
        return self.layer.apply(
            self.params, xs, lengths=lengths, resets=resets, initial_state=initial_state, key=key, **scan_options
        )

"""Streaming inference: one step (a token, a frame) at a time, the state carried between calls.

A :class:`jaxrnn.RNN` run over a whole sequence and the same RNN fed one step
at a time through :func:`step` give the same outputs (``tests/test_streaming.py``);
the stream holds only its state, O(layers x B x H) memory whatever its length.
The state is a plain pytree: :func:`save` and :func:`restore` write it with
orbax, so a stream can stop in one process and go on in another.

Example::

  >>> import jax, jax.numpy as jnp, jaxrnn
  >>> from jaxrnn import streaming
  >>> rnn = jaxrnn.RNN(jaxrnn.lstm(8), num_layers=2)
  >>> params = rnn.init(jax.random.key(0), 3)
  >>> xs = jax.random.normal(jax.random.key(1), (2, 5, 3))
  >>> state = streaming.start(rnn, batch_size=2)
  >>> outs = []
  >>> for t in range(5):                       # e.g. frames arriving from a microphone
  ...     state, y = streaming.step(rnn, params, state, xs[:, t])
  ...     outs.append(y)
  >>> full, _ = rnn.apply(params, xs)
  >>> bool(jnp.allclose(jnp.stack(outs, 1), full, atol=1e-5)), int(state.steps)
  (True, 5)
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells import Carry
from jaxrnn.layers import RNN, LayerParams, _index, _stack

Array = jax.Array


class StreamState(NamedTuple):
    """A stream between two steps: the carries stacked as :meth:`RNN.initial_state`, and a step count."""

    carry: Carry
    steps: Array


def _check_unidirectional(rnn: RNN) -> None:
    if rnn.bidirectional:
        raise ValueError("rnn: a bidirectional RNN needs the whole sequence; streaming needs bidirectional=False")


def _check_input(params: LayerParams, state: StreamState, x_t: Array) -> None:
    """x_t must be (B, I): B from the stream's state, I from the first layer's input weights."""
    leaves = jax.tree_util.tree_leaves(state.carry)
    try:
        w_i = params[0]["fwd"]["w_i"]
    except (IndexError, KeyError, TypeError):
        return  # not the params of a jaxrnn.RNN: the cell's own checks speak
    if not leaves:
        return
    batch = tuple(leaves[0].shape[1:-1])  # carry leaves are (layers, B, H), or (layers, H) unbatched
    features = w_i.shape[0]
    layout, why = ("(B, I)", f" (B from the stream state, I from params[0]['fwd']['w_i'] of shape "
                             f"{tuple(w_i.shape)})") if batch else \
                  ("(I,)", f" (an unbatched stream; I from params[0]['fwd']['w_i'] of shape {tuple(w_i.shape)})")
    _checks.check_shape("x_t", x_t, batch + (features,), layout, why)


def start(rnn: RNN, batch_size: int | None = None, initial_state: Carry | None = None) -> StreamState:
    """A fresh stream (zero state unless ``initial_state`` is given)."""
    _check_unidirectional(rnn)
    carry = rnn.initial_state(batch_size) if initial_state is None else initial_state
    return StreamState(carry, jnp.zeros((), jnp.int32))


def step(rnn: RNN, params: LayerParams, state: StreamState, x_t: Array) -> tuple[StreamState, Array]:
    """Advance every layer by one step: x_t (B, I) (or (I,) unbatched) -> y_t (B, H).

    Inference only (no dropout). Jit it once and call it per step.
    """
    _check_unidirectional(rnn)
    carries, y = [], jnp.asarray(x_t)
    _check_input(params, state, y)
    for layer, layer_params in enumerate(params):
        p = layer_params["fwd"]
        carry, out = rnn.cell.step(p, _index(state.carry, layer), y)
        if rnn.residual and out.shape == y.shape:
            out = out + y
        carries.append(carry)
        y = out
    return StreamState(_stack(carries), state.steps + 1), y


def save(path: str | pathlib.Path, state: StreamState) -> None:
    """Write a stream's state to ``path`` (a new folder) with orbax.

    The write is synchronous (a stream's state is small): when it fails (a
    folder that cannot be written, a full disk) the error is raised here and
    no background thread is left behind.
    """
    path = pathlib.Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"path: {path} already exists; streaming.save writes a new folder")
    from jaxrnn import checkpoints  # here, not at the top: `import jaxrnn` stays jax and numpy only

    checkpoints.save_tree(path, state._asdict())


def restore(path: str | pathlib.Path, like: StreamState) -> StreamState:
    """Read a state written by :func:`save`; ``like`` (e.g. :func:`start`'s result) gives its structure."""
    path = pathlib.Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"path: {path} is not a folder written by streaming.save")
    from jaxrnn import checkpoints  # see save

    return StreamState(**checkpoints.restore_tree(path, like._asdict()))

"""Exact weight mapping to and from PyTorch and flax.linen.

PyTorch stores ``weight_ih_l{k}`` as (G*H, I) and two biases ``b_ih``, ``b_hh``;
we store ``w_i`` as (I, G*H) and one bias ``b = b_ih + b_hh`` (the two are only
ever summed), except GRU's ``b_hn``, which sits inside ``r * (h W_hn + b_hn)``
and so is kept apart. Going back, ``to_torch`` puts the whole sum in ``b_ih``
and zeros in ``b_hh`` (plus ``b_hn`` in GRU's n-slice of ``b_hh``): a different
split, the same function.

flax.linen cells keep one Dense per gate (``ii, if, ig, io, hi, ...``); we
concatenate them in gate order. flax's LSTM carry is ``(c, h)``, ours is
``LSTMState(h, c)``: :func:`carry_from_flax` / :func:`carry_to_flax` convert.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.cells import Cell, LSTMState, gru, is_stock, lstm, vanilla
from jaxrnn.layers import RNN, LayerParams

_TORCH_KINDS = {"RNN": "vanilla", "LSTM": "lstm", "GRU": "gru"}
_FLAX_GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


# --------------------------------------------------------------------------- torch


def from_torch(module: Any) -> tuple[RNN, LayerParams]:
    """Convert a ``torch.nn.RNN`` / ``LSTM`` / ``GRU`` into ``(layer, params)``.

    ``layer.apply(params, xs, lengths=...)`` then equals torch's ``(output, h_n)``
    (``(output, (h_n, c_n))`` for LSTM, our state being ``LSTMState(h, c)``),
    with ``pack_padded_sequence`` semantics when ``lengths`` is given. The layer
    keeps torch's layout: ``time_major = not batch_first``.

    Example::

      >>> import torch, jax.numpy as jnp, jaxrnn
      >>> net = torch.nn.GRU(4, 8, num_layers=2, bidirectional=True, batch_first=True)
      >>> layer, params = jaxrnn.from_torch(net)
      >>> ys, h_n = layer.apply(params, jnp.ones((3, 5, 4)))
      >>> ys.shape, h_n.shape
      ((3, 5, 16), (4, 3, 8))
    """
    kind = _TORCH_KINDS.get(type(module).__name__)
    if kind is None:
        raise TypeError(f"module: expected torch.nn.RNN, LSTM or GRU, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module: LSTM with proj_size={module.proj_size} is not supported (expected 0)")
    H = module.hidden_size
    if kind == "vanilla":
        cell = vanilla(H, activation=module.nonlinearity, use_bias=module.bias)
    elif kind == "lstm":
        cell = lstm(H, forget_bias=0.0, use_bias=module.bias)
    else:
        cell = gru(H, use_bias=module.bias)
    layer = RNN(
        cell, num_layers=module.num_layers, bidirectional=module.bidirectional,
        dropout=float(module.dropout), time_major=not module.batch_first,
    )
    weights = {name: jnp.asarray(p.detach().cpu().numpy()) for name, p in module.named_parameters()}
    params = []
    for k in range(module.num_layers):
        layer_params = {}
        for direction, suffix in zip(layer.directions, ("", "_reverse")):
            p = {"w_i": weights[f"weight_ih_l{k}{suffix}"].T, "w_h": weights[f"weight_hh_l{k}{suffix}"].T}
            if module.bias:
                b_ih, b_hh = weights[f"bias_ih_l{k}{suffix}"], weights[f"bias_hh_l{k}{suffix}"]
                if kind == "gru":
                    p["b"] = b_ih.at[: 2 * H].add(b_hh[: 2 * H])
                    p["b_hn"] = b_hh[2 * H :]
                else:
                    p["b"] = b_ih + b_hh
            layer_params[direction] = p
        params.append(layer_params)
    return layer, params


def to_torch(layer: RNN, params: LayerParams) -> Any:
    """Build the ``torch.nn`` module that computes what ``layer.apply(params, ·)`` computes."""
    import torch

    cell = layer.cell
    _check_stock("layer.cell", cell, "torch.nn")
    if layer.residual:
        raise ValueError("layer: residual=True has no torch.nn equivalent")
    H, use_bias = cell.hidden_size, cell.option("use_bias")
    input_size = int(params[0]["fwd"]["w_i"].shape[0])
    common = dict(
        input_size=input_size, hidden_size=H, num_layers=layer.num_layers, bias=use_bias,
        batch_first=not layer.time_major, dropout=layer.dropout, bidirectional=layer.bidirectional,
    )
    if cell.kind == "vanilla":
        activation = cell.option("activation")
        if activation not in ("tanh", "relu"):
            raise ValueError(f"layer: activation {activation!r} has no torch.nn.RNN equivalent (tanh, relu)")
        module = torch.nn.RNN(nonlinearity=activation, **common)
    else:
        module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell.kind](**common)
    tensor = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
    with torch.no_grad():
        for k, layer_params in enumerate(params):
            for direction, suffix in zip(layer.directions, ("", "_reverse")):
                p = layer_params[direction]
                getattr(module, f"weight_ih_l{k}{suffix}").copy_(tensor(p["w_i"].T))
                getattr(module, f"weight_hh_l{k}{suffix}").copy_(tensor(p["w_h"].T))
                if use_bias:
                    b_hh = np.zeros(cell.num_gates * H, np.float32)
                    if cell.kind == "gru":
                        b_hh[2 * H :] = np.asarray(p["b_hn"])
                    getattr(module, f"bias_ih_l{k}{suffix}").copy_(tensor(p["b"]))
                    getattr(module, f"bias_hh_l{k}{suffix}").copy_(tensor(b_hh))
    return module


# --------------------------------------------------------------------------- flax


def from_flax(flax_cell: Any, variables: Any) -> tuple[Cell, dict[str, jax.Array]]:
    """Convert a flax.linen ``LSTMCell`` / ``OptimizedLSTMCell`` / ``GRUCell`` /
    ``SimpleCell`` and its variables into ``(cell, params)`` of equal outputs."""
    import flax.linen as nn

    p = variables.get("params", variables)
    H = flax_cell.features
    name = type(flax_cell).__name__
    if isinstance(flax_cell, (nn.LSTMCell, nn.OptimizedLSTMCell)):
        _require_default_activations(flax_cell)
        gates = _FLAX_GATES["lstm"]
        params = {
            "w_i": _cat([p[f"i{g}"]["kernel"] for g in gates]),
            "w_h": _cat([p[f"h{g}"]["kernel"] for g in gates]),
            "b": _cat([p[f"h{g}"]["bias"] for g in gates]),
        }
        return lstm(H, forget_bias=0.0), params
    if isinstance(flax_cell, nn.GRUCell):
        _require_default_activations(flax_cell)
        gates = _FLAX_GATES["gru"]
        params = {
            "w_i": _cat([p[f"i{g}"]["kernel"] for g in gates]),
            "w_h": _cat([p[f"h{g}"]["kernel"] for g in gates]),
            "b": _cat([p[f"i{g}"]["bias"] for g in gates]),
            "b_hn": jnp.asarray(p["hn"]["bias"]),
        }
        return gru(H), params
    if isinstance(flax_cell, nn.SimpleCell):
        if flax_cell.residual:
            raise ValueError("flax_cell: SimpleCell(residual=True) is not supported")
        activation = {jnp.tanh: "tanh", nn.tanh: "tanh", jax.nn.relu: "relu", nn.relu: "relu"}.get(
            flax_cell.activation_fn
        )
        if activation is None:
            raise ValueError(f"flax_cell: activation_fn {flax_cell.activation_fn} is not tanh or relu")
        params = {"w_i": p["i"]["kernel"], "w_h": p["h"]["kernel"], "b": p["i"]["bias"]}
        return vanilla(H, activation), {k: jnp.asarray(v) for k, v in params.items()}
    raise TypeError(f"flax_cell: expected LSTMCell, OptimizedLSTMCell, GRUCell or SimpleCell, got {name}")


def _check_stock(name: str, cell: Cell, library: str) -> None:
    if not is_stock(cell):
        raise ValueError(
            f"{name}: its functions were replaced (jaxrnn.cells.is_stock is false), so no {library} cell is "
            f"known to compute what it computes; only cells as jaxrnn.vanilla, lstm and gru make them convert"
        )
    if cell.kind not in ("vanilla", "lstm", "gru"):
        raise ValueError(f"{name}: {library} has no {cell.kind} cell; only jaxrnn.vanilla, lstm and gru convert")


def to_flax(cell: Cell, params: dict[str, jax.Array], *, optimized_lstm: bool = False) -> tuple[Any, dict]:
    """The flax.linen cell and ``{"params": ...}`` variables equal to ``(cell, params)``."""
    import flax.linen as nn

    _check_stock("cell", cell, "flax")
    H = cell.hidden_size
    b = params.get("b", jnp.zeros(cell.num_gates * H, params["w_i"].dtype))
    split = lambda a: jnp.split(a, cell.num_gates, axis=-1)
    if cell.kind == "lstm":
        gates = _FLAX_GATES["lstm"]
        p = {f"i{g}": {"kernel": k} for g, k in zip(gates, split(params["w_i"]))}
        p |= {f"h{g}": {"kernel": k, "bias": bb} for g, k, bb in zip(gates, split(params["w_h"]), split(b))}
        flax_cell = (nn.OptimizedLSTMCell if optimized_lstm else nn.LSTMCell)(H)
    elif cell.kind == "gru":
        gates = _FLAX_GATES["gru"]
        b_hn = params.get("b_hn", jnp.zeros(H, params["w_i"].dtype))
        p = {f"i{g}": {"kernel": k, "bias": bb} for g, k, bb in zip(gates, split(params["w_i"]), split(b))}
        p |= {f"h{g}": {"kernel": k} for g, k in zip(gates, split(params["w_h"]))}
        p["hn"]["bias"] = b_hn
        flax_cell = nn.GRUCell(H)
    else:
        activation = cell.option("activation")
        if activation not in ("tanh", "relu"):
            raise ValueError(f"cell: activation {activation!r} has no flax SimpleCell equivalent")
        p = {"i": {"kernel": params["w_i"], "bias": b}, "h": {"kernel": params["w_h"]}}
        flax_cell = nn.SimpleCell(H, activation_fn={"tanh": nn.tanh, "relu": nn.relu}[activation])
    return flax_cell, {"params": p}


def _lstm_carry(cell: Cell) -> bool:
    """Whether the cell's carry is an LSTMState: its layout, whatever the cell is called."""
    return isinstance(jax.eval_shape(cell.initial_carry), LSTMState)


def carry_from_flax(cell: Cell, carry: Any) -> Any:
    """flax's LSTM carry ``(c, h)`` -> ``LSTMState(h, c)`` for a cell whose carry is one; others unchanged."""
    return LSTMState(h=carry[1], c=carry[0]) if _lstm_carry(cell) else carry


def carry_to_flax(cell: Cell, carry: Any) -> Any:
    """``LSTMState(h, c)`` -> flax's ``(c, h)`` for a cell whose carry is one; others unchanged."""
    return (carry.c, carry.h) if _lstm_carry(cell) else carry


def _cat(arrays) -> jax.Array:
    return jnp.concatenate([jnp.asarray(a) for a in arrays], axis=-1)


def _require_default_activations(flax_cell: Any) -> None:
    import flax.linen as nn

    if flax_cell.gate_fn not in (nn.sigmoid, jax.nn.sigmoid) or flax_cell.activation_fn not in (nn.tanh, jnp.tanh):
        raise ValueError(
            f"flax_cell: expected gate_fn=sigmoid and activation_fn=tanh, got "
            f"{flax_cell.gate_fn} and {flax_cell.activation_fn}"
        )

r"""Recurrent cells as records of pure functions.

A :class:`Cell` is to a recurrent network what optax's ``GradientTransformation``
is to an optimizer: an immutable record of pure functions, with no hidden state.
The parameters live in a plain dict you pass around; the carry is an array (or a
small NamedTuple of arrays) you pass around.

Every cell splits its step in two, so that the unroll can do the expensive part
once::

    xp = cell.project(params, xs)            # x_t W_i + b for ALL t: one matmul
    carry, h_t = cell.recur(params, carry, xp[t])   # one fused h W_h matmul per step

``cell.recur`` is derived: ``elementwise(params, carry, xp_t, hidden(carry) @
w_h)``, everything of a step but its matmul. ``cell.step(params, carry, x_t)``
composes projection and recurrence for a single step.

Parameters of every cell are ``{"w_i": (I, G*H), "w_h": (H, G*H), "b": (G*H,)}``
with the ``G`` gate blocks side by side along the last axis (GRU adds
``"b_hn": (H,)``; the linear cells, :func:`mingru`, :func:`minlstm` and
:func:`lru`, have no ``w_h``, and the LRU adds its eigenvalues' parameters). Inputs multiply from the left: ``x @ w_i``. PyTorch keeps two
biases, ``b_ih + b_hh``; wherever they are only ever summed we keep the sum, so
``b`` is one vector (see :mod:`jaxrnn.interop`).
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.linear import step as linear_step

Array = jax.Array
Params = dict[str, Array]
Carry = Any
Initializer = Callable[[Array, tuple[int, ...], Any], Array]

ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    # No nonlinearity: the backward pass multiplies by W_h^T exactly, which makes
    # the decay of gradients analytic (used to check the diagnostics).
    "identity": lambda x: x,
}
INIT_SCHEMES = ("default", "torch")


class LSTMState(NamedTuple):
    """The carry of an LSTM: hidden state ``h`` and memory cell ``c``, each (..., H).

    Note the order: PyTorch returns ``(h_n, c_n)`` and so do we; flax's LSTM
    cells use ``(c, h)``.
    """

    h: Array
    c: Array


class StepVJP(NamedTuple):
    """How the unroll's fused backward pass differentiates a cell's elementwise part.

    Attributes:
      keep: ``keep(params, carry, xp_t, hh_t) -> (carry, h_t, saved)``: the
        forward of ``elementwise``, plus ``saved``, whatever ``backward`` needs
        (kept for every step, so the smaller the better).
      backward: ``backward(params, carry_prev, saved, d_carry, d_h) ->
        (d_params, d_carry_prev, d_xp, d_hh)``: the cotangents of
        ``elementwise``'s inputs given those of its two outputs, each summed
        over the batch for ``d_params``. Linear in ``(d_carry, d_h)``.

    :func:`autodiff_step_vjp` works for any cell; a cell may hand-derive one
    that keeps its activations instead, as the GRU does.
    """

    keep: Callable[..., tuple[Carry, Array, Any]]
    backward: Callable[..., tuple[Params, Carry, Array, Array]]


def autodiff_step_vjp(elementwise: Callable) -> StepVJP:
    """Keep the step's inputs ``(xp_t, hh_t)`` and differentiate ``elementwise`` with ``jax.vjp``.

    The backward pass recomputes the step's activations from them.
    """

    def keep(params, carry, xp_t, hh_t):
        new, h = elementwise(params, carry, xp_t, hh_t)
        return new, h, (xp_t, hh_t)

    def backward(params, carry_prev, saved, d_carry, d_h):
        _, vjp = jax.vjp(elementwise, params, carry_prev, *saved)
        return vjp((d_carry, d_h))

    return StepVJP(keep, backward)


def _no_gates(params: Params, carry: Carry, xp_t: Array, hh_t: Array) -> dict[str, Array]:
    return {}


class Cell(NamedTuple):
    """A recurrent cell: an immutable record of pure functions, what the cell *is*.

    The record holds the parts no other part determines: the shapes, the
    initialisation, the input projection, the elementwise part of a step, the
    carry. Everything else is derived from those, as methods, so it cannot
    disagree with them: one step given the projected input (:meth:`recur`), one
    step on a raw input (:meth:`step`), the step's derivative for the fused
    backward pass (:meth:`elementwise_vjp`).

    Attributes:
      kind: the cell's name, ``"vanilla"``, ``"lstm"``, ``"gru"`` or any other;
        it names the cell in messages and selects nothing (the fast paths ask
        :func:`is_stock`).
      hidden_size: H, the size of ``h_t``.
      num_gates: G, the number of H-wide blocks in the fused projections.
      param_shapes: ``param_shapes(input_size) -> {name: shape}``.
      init: ``init(key, input_size) -> params``.
      project: ``project(params, xs) -> xp``, the input projection
        ``xs @ w_i + b`` of shape (..., G*H); any number of leading axes.
      elementwise: ``elementwise(params, carry, xp_t, hh_t) -> (carry, h_t)``,
        everything of a step but the recurrent matmul ``hh_t = hidden(carry)
        @ w_h``. The unroll's backward pass differentiates this part per step
        and computes ``dW_h`` for all steps at once (:mod:`jaxrnn.unroll`). It
        may read any parameter (GRU's reads ``b_hn``).
      initial_carry: ``initial_carry(batch_size=None) -> carry``; zeros of shape
        (batch_size, H), or (H,) when ``batch_size`` is None.
      hidden: ``hidden(carry) -> h``, the part of the carry that multiplies ``w_h``.
      gates: ``gates(params, carry, xp_t, hh_t) -> {name: activation}``, the
        gate values of a step, for diagnostics (none by default).
      step_vjp: optionally, a hand-derived :class:`StepVJP` of ``elementwise``
        (the GRU has one); None differentiates ``elementwise`` with
        ``jax.vjp``. See :meth:`elementwise_vjp` for when it is used.
      options: the constructor's options as ``(name, value)`` pairs.
      linear: for a cell whose carry is linear in the previous one,
        ``linear(params, xp) -> (a, b)``: the coefficients of
        ``h_t = a_t * h_(t-1) + b_t`` from the projected inputs alone (any
        leading axes), which :func:`jaxrnn.scan` can solve for all steps at
        once (``parallel="associative"``). Complex ``a`` and ``b`` (..., H/2)
        act on the complex state whose real and imaginary parts the carry
        holds side by side (:func:`jaxrnn.linear.as_complex`; the LRU). Such a
        cell has no ``w_h``: its ``elementwise`` is that update
        (:func:`jaxrnn.linear.step`) and ignores ``hh_t``, which is empty.
        None (the vanilla cell, the LSTM, the GRU): not linear.

    Example: a custom cell is the stock one with its elementwise part replaced;
    every derived function follows it::

      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> stock = jaxrnn.vanilla(4)
      >>> leaky = stock._replace(kind="leaky", elementwise=lambda p, h, xp, hh: (
      ...     (h := 0.5 * h + 0.5 * jnp.tanh(xp + hh)), h))
      >>> params = leaky.init(jax.random.key(0), 3)
      >>> h, y = leaky.step(params, leaky.initial_carry(2), jnp.ones((2, 3)))
      >>> bool(jnp.allclose(h, 0.5 * jnp.tanh(jnp.ones((2, 3)) @ params["w_i"] + params["b"])))
      True
    """

    kind: str
    hidden_size: int
    num_gates: int
    param_shapes: Callable[[int], dict[str, tuple[int, ...]]]
    init: Callable[[Array, int], Params]
    project: Callable[[Params, Array], Array]
    elementwise: Callable[[Params, Carry, Array, Array], tuple[Carry, Array]]
    initial_carry: Callable[..., Carry]
    hidden: Callable[[Carry], Array]
    gates: Callable[[Params, Carry, Array, Array], dict[str, Array]] = _no_gates
    step_vjp: StepVJP | None = None
    options: tuple[tuple[str, Any], ...] = ()
    linear: Callable[[Params, Array], tuple[Array, Array]] | None = None

    def hh(self, params: Params, carry: Carry, xp_t: Array) -> Array:
        """The step's one matmul, ``hidden(carry) @ w_h``, in the dtype of the projected input ``xp_t``;
        empty, (..., 0), for a cell without recurrent weights (a linear one)."""
        dtype = jnp.result_type(xp_t)
        h = self.hidden(carry)
        if "w_h" not in params:
            return jnp.zeros(h.shape[:-1] + (0,), dtype)
        return h.astype(dtype) @ params["w_h"].astype(dtype)

    def recur(self, params: Params, carry: Carry, xp_t: Array) -> tuple[Carry, Array]:
        """One step given the projected input ``xp_t`` (..., G*H): ``elementwise(carry, xp_t, hh)``."""
        return self.elementwise(params, carry, xp_t, self.hh(params, carry, xp_t))

    def step(self, params: Params, carry: Carry, x_t: Array) -> tuple[Carry, Array]:
        """One step on a raw input ``x_t`` (..., I): ``recur(project(x_t))``."""
        return self.recur(params, carry, self.project(params, x_t))

    def gate_values(self, params: Params, carry: Carry, xp_t: Array) -> dict[str, Array]:
        """The gate activations of one step given the projected input (empty for a cell without gates)."""
        return self.gates(params, carry, xp_t, self.hh(params, carry, xp_t)) if self.gates else {}

    def elementwise_vjp(self) -> StepVJP:
        """How the fused backward pass differentiates :attr:`elementwise`.

        The cell's own ``step_vjp`` when it was written for this
        ``elementwise``; otherwise (none given, or ``elementwise`` replaced on a
        constructed cell whose ``step_vjp`` was derived for the old one)
        :func:`autodiff_step_vjp`, which is right for any ``elementwise``.
        """
        if self.step_vjp is None:
            return autodiff_step_vjp(self.elementwise)
        made_for = _origin(self.step_vjp.keep)
        if made_for is not None and made_for is not _origin(self.elementwise):
            return autodiff_step_vjp(self.elementwise)
        return self.step_vjp

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    def check_params(self, params: Any, input_size: int | None = None) -> None:
        """Raise if ``params`` were not made for this cell (and ``input_size``)."""
        if not isinstance(params, Mapping):
            raise TypeError(
                f"params: expected the dict made by {self.kind}(...).init, got {type(params).__name__}"
            )
        size = input_size if input_size is not None else _input_size_of(params)
        expected = self.param_shapes(size)
        given = {k: tuple(jnp.shape(v)) for k, v in params.items()}
        if given != expected:
            raise ValueError(
                f"params: expected {self.kind} cell parameters (hidden_size={self.hidden_size}, "
                f"input_size={size}) with shapes {expected}, got {given}; "
                "were these params made by a different cell?"
            )


def _input_size_of(params: Mapping[str, Any]) -> int:
    w_i = params.get("w_i")
    return int(jnp.shape(w_i)[0]) if w_i is not None and jnp.ndim(w_i) == 2 else -1


def _per_gate(init: Initializer, key: Array, shape: tuple[int, int], gates: int, dtype) -> Array:
    """Initialise each H-wide gate block on its own (orthogonal per gate, say)."""
    keys = jax.random.split(key, gates)
    # Draw in float32 and cast: orthogonal init needs a QR, which has no bf16 kernel.
    return jnp.concatenate([init(k, shape, jnp.float32) for k in keys], axis=-1).astype(dtype)


def _make_cell(
    kind: str,
    hidden_size: int,
    num_gates: int,
    elementwise: Callable,
    gates: Callable,
    *,
    use_bias: bool,
    init: str,
    kernel_init: Initializer | None,
    recurrent_init: Initializer | None,
    bias_offsets: dict[int, float],
    dtype: Any,
    param_dtype: Any,
    options: tuple[tuple[str, Any], ...],
    separate_hn_bias: bool = False,
    step_vjp: Callable[[Any], StepVJP] | None = None,
    memory_cell: bool = False,
    linear: Callable | None = None,
    extra_init: Callable[[Array], Params] | None = None,
) -> Cell:
    """Everything the cells share: shapes, initialisation, projection, carry.

    ``step_vjp(dtype)`` hand-derives the elementwise part's derivative; without
    it the fused backward pass differentiates ``elementwise`` with ``jax.vjp``.
    ``memory_cell``: the carry is an :class:`LSTMState` ``(h, c)``, else ``h``.
    ``linear(params, xp, dtype) -> (a, b)``: a cell linear in its carry, with no
    ``w_h``; its ``elementwise`` (pass None) is ``h_t = a_t * h_(t-1) + b_t``.
    ``extra_init(key) -> params``: parameters beyond the projections (the LRU's),
    in ``param_dtype``; their shapes are read from it.
    """
    H, G = hidden_size, num_gates
    _checks.check_choice("init", init, INIT_SCHEMES)
    extra_shapes = {} if extra_init is None else {
        name: v.shape for name, v in jax.eval_shape(extra_init, jax.random.key(0)).items()}
    if linear is not None:
        def elementwise(params, h, xp_t, hh_t, dtype):
            h = linear_step(*linear(params, xp_t, dtype), h)
            return h, h

    def param_shapes(input_size: int) -> dict[str, tuple[int, ...]]:
        shapes = {"w_i": (input_size, G * H)} | ({} if linear else {"w_h": (H, G * H)})
        if use_bias:
            shapes["b"] = (G * H,)
            if separate_hn_bias:
                shapes["b_hn"] = (H,)
        return shapes | extra_shapes

    def init_fn(key: Array, input_size: int) -> Params:
        _checks.check_positive_int("input_size", input_size)
        k_i, k_h, k_b1, k_b2, k_hn = jax.random.split(key, 5)
        if init == "torch":
            # torch.nn.RNN/LSTM/GRU: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)).
            # torch's two biases b_ih + b_hh are summed wherever we keep one b.
            uniform = _torch_uniform(H)
            k_in, k_rec = kernel_init or uniform, recurrent_init or uniform
        else:
            k_in = kernel_init or jax.nn.initializers.glorot_uniform()
            k_rec = recurrent_init or jax.nn.initializers.orthogonal()
        params = {"w_i": _per_gate(k_in, k_i, (input_size, H), G, param_dtype)}
        if linear is None:
            params["w_h"] = _per_gate(k_rec, k_h, (H, H), G, param_dtype)
        if use_bias:
            if init == "torch":
                uniform = _torch_uniform(H)
                b = uniform(k_b1, (G * H,), param_dtype)
                summed = G * H - (H if separate_hn_bias else 0)  # GRU's b_in has no b_hh twin
                b = b.at[:summed].add(uniform(k_b2, (summed,), param_dtype))
            else:
                b = jnp.zeros((G * H,), param_dtype)
            for gate, offset in bias_offsets.items():
                b = b.at[gate * H : (gate + 1) * H].add(offset)
            params["b"] = b
            if separate_hn_bias:
                params["b_hn"] = (
                    _torch_uniform(H)(k_hn, (H,), param_dtype)
                    if init == "torch"
                    else jnp.zeros((H,), param_dtype)
                )
        # a key of their own, folded in: the other cells' draws stay as they were
        return params | (extra_init(jax.random.fold_in(key, 5)) if extra_init else {})

    def initial_carry(batch_size: int | None = None) -> Carry:
        shape = (H,) if batch_size is None else (batch_size, H)
        zeros = jnp.zeros(shape, dtype)
        return LSTMState(zeros, zeros) if memory_cell else zeros

    def hidden(carry: Carry) -> Array:
        return carry.h if memory_cell else carry

    def project(params: Params, xs: Array) -> Array:
        xp = jnp.asarray(xs, dtype) @ params["w_i"].astype(dtype)
        return xp + params["b"].astype(dtype) if use_bias else xp

    cell = Cell(
        kind=kind,
        hidden_size=H,
        num_gates=G,
        param_shapes=param_shapes,
        init=init_fn,
        project=project,
        elementwise=lambda params, carry, xp_t, hh_t: elementwise(params, carry, xp_t, hh_t, dtype),
        initial_carry=initial_carry,
        hidden=hidden,
        gates=lambda params, carry, xp_t, hh_t: gates(params, carry, xp_t, hh_t, dtype),
        step_vjp=step_vjp(dtype) if step_vjp else None,
        options=options + (("use_bias", use_bias), ("init", init), ("dtype", dtype)),
        linear=None if linear is None else lambda params, xp: linear(params, xp, dtype),
    )
    origin = _Origin(kind, H, G, cell.options, hand_vjp=step_vjp is not None)
    for fn in _math(cell):
        _ORIGINS[fn] = origin
    return cell


# Each constructed cell's functions -> what they were made for. Kept here, not on the functions:
# functools.wraps (and jax's wrappers) copy a function's __dict__, so a wrapper would pass as stock.
_ORIGINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _origin(fn: Any) -> _Origin | None:
    try:
        return _ORIGINS.get(fn)
    except TypeError:  # not weakly referenceable (a builtin, say): no constructor made it
        return None


class _Origin:
    """What a constructor made a cell's functions for; compared by identity, one per constructed cell."""

    def __init__(self, kind: str, hidden_size: int, num_gates: int, options: tuple, *, hand_vjp: bool):
        self.record = (kind, hidden_size, num_gates, options, hand_vjp)


def _math(cell: Cell) -> tuple[Callable, ...]:
    """The functions that decide what a cell computes and how it is differentiated
    (``init`` and ``gates`` do not)."""
    vjp = () if cell.step_vjp is None else (cell.step_vjp.keep, cell.step_vjp.backward)
    linear = () if cell.linear is None else (cell.linear,)
    return (cell.param_shapes, cell.project, cell.elementwise, cell.initial_carry, cell.hidden, *vjp, *linear)


def linear_matches(cell: Cell) -> bool:
    """Whether ``cell.linear`` computes what ``cell.elementwise`` does: false once a constructor's
    ``elementwise`` was replaced and its ``linear`` kept (the parallel scan would solve the old cell); true
    for a ``linear`` of the user's own, which is trusted."""
    made_for = _origin(cell.linear)
    return made_for is None or made_for is _origin(cell.elementwise)


def is_stock(cell: Cell) -> bool:
    """Whether ``cell`` computes exactly what its constructor made it compute.

    True for any cell made by :func:`vanilla`, :func:`lstm`, :func:`gru`, :func:`mingru`, :func:`minlstm` or
    :func:`lru`,
    also after ``_replace`` of ``init`` or ``gates``; false once any function
    that takes part in a step (``project``, ``elementwise``, ``hidden``,
    ``step_vjp``, ...) was replaced or removed, or ``kind``, ``hidden_size``,
    ``num_gates`` or ``options`` no longer match those functions. The fast
    paths that implement a cell's math a second time (:mod:`jaxrnn.native`,
    the :mod:`jaxrnn.interop` layouts) are taken only for stock cells: a
    cell's name says nothing about what its functions compute.

    Example::

      >>> import jaxrnn
      >>> cell = jaxrnn.lstm(8)
      >>> jaxrnn.cells.is_stock(cell), jaxrnn.cells.is_stock(cell._replace(init=None))
      (True, True)
      >>> jaxrnn.cells.is_stock(cell._replace(elementwise=jaxrnn.lstm(8).elementwise))
      False
    """
    origin = _origin(cell.project)
    return (
        origin is not None
        and all(_origin(fn) is origin for fn in _math(cell))
        and origin.record == (cell.kind, cell.hidden_size, cell.num_gates, cell.options, cell.step_vjp is not None)
    )


def identity_init(scale: float = 1.0) -> Initializer:
    """``scale * I`` for a square recurrent block (the IRNN of Le et al. 2015)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"identity_init: expected a square shape, got {shape}")
        return scale * jnp.eye(shape[0], dtype=dtype)

    return init


def chrono_init(key: Array, params: Params, max_timescale: float) -> Params:
    r"""LSTM biases for dependencies up to ``max_timescale`` steps (Tallec & Ollivier 2018).

    .. math::

        b_f = \log u, \; u \sim U[1, T_{max} - 1], \qquad b_i = -b_f

    so unit j forgets on a time scale of about ``u_j`` steps, spread over the
    range the task needs, instead of every unit starting near one scale (a
    forget bias of 1 keeps a unit's memory for about e = 2.7 steps at init).

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.lstm(4)
      >>> params = jaxrnn.chrono_init(jax.random.key(1), cell.init(jax.random.key(0), 2), 750)
      >>> b = params["b"].reshape(4, 4)  # gates i, f, g, o
      >>> bool((b[1] >= 0).all() and (b[0] == -b[1]).all())
      True

    Arguments:
      key: PRNG key.
      params: an LSTM's parameters (``b`` of shape (4H,), gates i, f, g, o).
      max_timescale: T_max, the longest dependency expected (> 2).

    Returns:
      ``params`` with new input and forget gate biases; everything else kept.
    """
    if "b" not in params or params["b"].shape[0] % 4:
        raise ValueError("params: chrono_init needs an LSTM's params with a bias b of shape (4H,)")
    if not max_timescale > 2:
        raise ValueError(f"max_timescale: expected more than 2 steps, got {max_timescale!r}")
    H = params["b"].shape[0] // 4
    b_f = jnp.log(jax.random.uniform(key, (H,), params["b"].dtype, 1.0, max_timescale - 1.0))
    return {**params, "b": params["b"].at[:H].set(-b_f).at[H : 2 * H].set(b_f)}


def _torch_uniform(hidden_size: int) -> Initializer:
    bound = 1.0 / hidden_size**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def vanilla(
    hidden_size: int,
    activation: str = "tanh",
    *,
    use_bias: bool = True,
    init: str = "default",
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The Elman RNN cell, as ``torch.nn.RNN``:

    .. math::

        h_t = \phi(x_t W_i + h_{t-1} W_h + b), \qquad \phi \in \{\tanh, \mathrm{relu}, \mathrm{id}\}

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.vanilla(16)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> ys, h_T = jaxrnn.scan(cell, params, jax.numpy.ones((2, 5, 3)))
      >>> ys.shape, h_T.shape
      ((2, 5, 16), (2, 16))

    Arguments:
      hidden_size: H, the width of ``h_t``.
      activation: ``"tanh"`` (default), ``"relu"`` or ``"identity"`` (a linear
        RNN, whose gradients decay exactly by the spectral radius of ``W_h``).
      use_bias: whether the cell has ``b``.
      init: ``"default"``: Glorot-uniform ``W_i``, orthogonal ``W_h``, zero
        bias. ``"torch"``: PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` for every
        weight, and for ``b`` the sum of two such draws (torch's b_ih + b_hh).
      kernel_init, recurrent_init: initialisers ``(key, shape, dtype)`` that
        override the scheme for ``W_i`` / ``W_h``, e.g.
        ``jax.nn.initializers.orthogonal(scale=rho)`` for a recurrent matrix of
        spectral radius ``rho``, or :func:`identity_init` with
        ``activation="relu"`` for the IRNN of Le et al. 2015.
      dtype: the dtype of the computation and the carry.
      param_dtype: the dtype of the parameters ``init`` makes.

    Returns:
      A :class:`Cell` whose carry is ``h`` of shape (B, H).
    """
    _checks.check_positive_int("hidden_size", hidden_size)
    _checks.check_choice("activation", activation, tuple(ACTIVATIONS))
    phi = ACTIVATIONS[activation]

    def elementwise(params, h, xp_t, hh_t, dtype):
        h = phi(xp_t + hh_t)
        return h, h

    return _make_cell(
        "vanilla", hidden_size, 1, elementwise, lambda *_: {},
        use_bias=use_bias, init=init, kernel_init=kernel_init, recurrent_init=recurrent_init,
        bias_offsets={}, dtype=dtype, param_dtype=param_dtype,
        options=(("activation", activation),),
    )


def lstm(
    hidden_size: int,
    forget_bias: float = 1.0,
    *,
    use_bias: bool = True,
    init: str = "default",
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate), as ``torch.nn.LSTM``:

    .. math::

        \begin{array}{ll}
        [\tilde\imath, \tilde f, \tilde g, \tilde o] = x_t W_i + h_{t-1} W_h + b \\
        i = \sigma(\tilde\imath), \; f = \sigma(\tilde f), \; g = \tanh(\tilde g), \; o = \sigma(\tilde o) \\
        c_t = f \odot c_{t-1} + i \odot g \\
        h_t = o \odot \tanh(c_t)
        \end{array}

    Gate order along the fused axis is ``i, f, g, o`` (PyTorch's and flax's).
    The memory cell ``c`` is the gradient highway: ``dc_t/dc_{t-1} = diag(f)``,
    so with ``f`` near 1 the backward signal passes unscaled. That is why the
    forget bias defaults to 1 (Gers et al. 2000; Jozefowicz et al. 2015).

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.lstm(16)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> ys, state = jaxrnn.scan(cell, params, jax.numpy.ones((2, 5, 3)))
      >>> ys.shape, state.h.shape, state.c.shape
      ((2, 5, 16), (2, 16), (2, 16))

    Arguments:
      hidden_size: H.
      forget_bias: added to the forget gate's slice of ``b`` at init (both
        schemes; use ``0.0`` with ``init="torch"`` to reproduce torch exactly).
      use_bias, init, kernel_init, recurrent_init, dtype, param_dtype: as for
        :func:`vanilla`; initialisers apply per gate block (orthogonal per gate).

    Returns:
      A :class:`Cell` whose carry is :class:`LSTMState` ``(h, c)``.
    """
    _checks.check_positive_int("hidden_size", hidden_size)
    H = hidden_size

    def preactivations(xp_t, hh_t):
        z = xp_t + hh_t
        return jax.nn.sigmoid(z[..., : 2 * H]), jnp.tanh(z[..., 2 * H : 3 * H]), jax.nn.sigmoid(z[..., 3 * H :])

    def elementwise(params, state, xp_t, hh_t, dtype):
        i_f, g, o = preactivations(xp_t, hh_t)
        c = i_f[..., H:] * state.c + i_f[..., :H] * g
        h = o * jnp.tanh(c)
        return LSTMState(h, c), h

    def gates(params, state, xp_t, hh_t, dtype):
        i_f, _, o = preactivations(xp_t, hh_t)
        return {"input": i_f[..., :H], "forget": i_f[..., H:], "output": o}

    return _make_cell(
        "lstm", hidden_size, 4, elementwise, gates,
        use_bias=use_bias, init=init, kernel_init=kernel_init, recurrent_init=recurrent_init,
        bias_offsets={1: forget_bias} if forget_bias else {}, dtype=dtype, param_dtype=param_dtype,
        options=(("forget_bias", forget_bias),), memory_cell=True,
    )


def gru(
    hidden_size: int,
    *,
    use_bias: bool = True,
    init: str = "default",
    kernel_init: Initializer | None = None,
    recurrent_init: Initializer | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The GRU cell (Cho et al. 2014) in the PyTorch/cuDNN form:

    .. math::

        \begin{array}{ll}
        r = \sigma(x_t W_{ir} + h_{t-1} W_{hr} + b_r) \\
        z = \sigma(x_t W_{iz} + h_{t-1} W_{hz} + b_z) \\
        n = \tanh(x_t W_{in} + b_{in} + r \odot (h_{t-1} W_{hn} + b_{hn})) \\
        h_t = (1 - z) \odot n + z \odot h_{t-1}
        \end{array}

    The reset gate multiplies *after* the hidden matmul, and that product has
    its own bias ``b_hn`` (``params["b_hn"]``), which is why it cannot be folded
    into ``b``. Gate order along the fused axis is ``r, z, n``. The update gate
    ``z`` interpolates: with ``z`` near 1, ``dh_t/dh_{t-1}`` is near identity.

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.gru(16)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> ys, h_T = jaxrnn.scan(cell, params, jax.numpy.ones((2, 5, 3)))
      >>> ys.shape
      (2, 5, 16)

    Arguments:
      hidden_size, use_bias, init, kernel_init, recurrent_init, dtype,
      param_dtype: as for :func:`vanilla`.

    Returns:
      A :class:`Cell` whose carry is ``h`` of shape (B, H).
    """
    _checks.check_positive_int("hidden_size", hidden_size)
    H = hidden_size

    def parts(params, xp_t, hh, dtype):
        hn = hh[..., 2 * H :]
        if use_bias:
            hn = hn + params["b_hn"].astype(dtype)
        rz = jax.nn.sigmoid(xp_t[..., : 2 * H] + hh[..., : 2 * H])
        n = jnp.tanh(xp_t[..., 2 * H :] + rz[..., :H] * hn)
        return rz, n, hn

    def step(params, h, xp_t, hh_t, dtype):
        """The new h and the activations the hand-derived backward keeps."""
        rz, n, hn = parts(params, xp_t, hh_t, dtype)
        h = n + rz[..., H:] * (h - n)  # = (1 - z) n + z h, one multiply fewer
        return h, (rz, n, hn)

    def elementwise(params, h, xp_t, hh_t, dtype):
        h, _ = step(params, h, xp_t, hh_t, dtype)
        return h, h

    def gates(params, h, xp_t, hh_t, dtype):
        rz, _, _ = parts(params, xp_t, hh_t, dtype)
        return {"reset": rz[..., :H], "update": rz[..., H:]}

    def step_vjp(dtype) -> StepVJP:
        """Keeps the activations r, z, n and ``hn = h W_hn + b_hn`` (4H a step
        instead of the 6H of ``xp_t, hh_t``), so the backward pass evaluates no
        sigmoid or tanh again. With ``a_*`` the pre-activations and ``dh`` the
        gradient reaching ``h_t``::

            a_n' = dh (1 - z) (1 - n^2)       d xp = [a_r', a_z', a_n']
            a_z' = dh (h_{t-1} - n) z (1 - z)  d hh = [a_r', a_z', a_n' r]
            a_r' = a_n' hn r (1 - r)          d h_{t-1} = dh z   (+ d hh W_h^T, by the unroll)
        """

        def keep(params, h, xp_t, hh_t):
            h, saved = step(params, h, xp_t, hh_t, dtype)
            return h, h, saved

        def backward(params, h_prev, saved, d_carry, d_h):
            rz, n, hn = saved
            r, z = rz[..., :H], rz[..., H:]
            dh = d_carry + d_h
            da_n = dh * (1 - z) * (1 - n * n)
            da_z = dh * (h_prev - n) * z * (1 - z)
            da_r = da_n * hn * r * (1 - r)
            d_hn = da_n * r
            d_params = {"b_hn": d_hn.reshape(-1, H).sum(0).astype(params["b_hn"].dtype)} if use_bias else {}
            d_xp = jnp.concatenate([da_r, da_z, da_n], axis=-1)
            d_hh = jnp.concatenate([da_r, da_z, d_hn], axis=-1)
            return d_params, dh * z, d_xp, d_hh

        return StepVJP(keep, backward)

    return _make_cell(
        "gru", hidden_size, 3, elementwise, gates,
        use_bias=use_bias, init=init, kernel_init=kernel_init, recurrent_init=recurrent_init,
        bias_offsets={}, dtype=dtype, param_dtype=param_dtype, options=(),
        separate_hn_bias=True, step_vjp=step_vjp,
    )


def _g(v: Array) -> Array:
    """minGRU's candidate activation: v + 1/2 for v >= 0, sigmoid(v) below; positive and continuous."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


CANDIDATES: Mapping[str, Callable[[Array], Array]] = {"g": _g, "identity": ACTIVATIONS["identity"],
                                                      "tanh": ACTIVATIONS["tanh"]}


def mingru(
    hidden_size: int,
    *,
    candidate: str = "g",
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The minGRU (Feng et al. 2024, "Were RNNs all we needed?"): a GRU whose gate and candidate read
    only ``x_t``, so that ``h_t`` is linear in ``h_{t-1}``:

    .. math::

        \begin{array}{ll}
        z_t = \sigma(x_t W_z + b_z) \\
        \tilde h_t = g(x_t W_{\tilde h} + b_{\tilde h}), \quad g(v) = v + \tfrac12 \ (v \ge 0), \ \sigma(v) \ (v < 0) \\
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t
        \end{array}

    Without ``h_{t-1}`` in the gates, all steps' coefficients come from one
    matmul over the sequence, and ``jaxrnn.scan(..., parallel="associative")``
    solves the recurrence in O(log T) sequential depth; the sequential loop
    gives the same values. What it trades: the gates cannot react to the state,
    so a layer can only gate what its input shows (stack layers for more).

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.mingru(16)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jax.numpy.ones((2, 50, 3))
      >>> ys, h = jaxrnn.scan(cell, params, xs)
      >>> ys_p, h_p = jaxrnn.scan(cell, params, xs, parallel="associative")
      >>> bool(jax.numpy.allclose(ys, ys_p, rtol=1e-5, atol=1e-6))
      True

    Arguments:
      hidden_size: H.
      candidate: the candidate's activation: ``"g"`` (the paper's, positive
        everywhere, which its log-space form of the scan needs), ``"identity"``
        (the paper's plain form) or ``"tanh"``.
      use_bias, kernel_init, dtype, param_dtype: as for :func:`vanilla`:
        Glorot-uniform input weights, zero bias (the cell has no recurrent
        weights ``w_h``, and no PyTorch counterpart whose scheme ``init``
        could follow). Gate order along ``w_i``'s fused axis: ``z``, ``h~``.

    Returns:
      A :class:`Cell` whose carry is ``h`` of shape (B, H), with ``linear``
      set: ``a_t = 1 - z_t``, ``b_t = z_t h~_t``.
    """
    _checks.check_positive_int("hidden_size", hidden_size)
    _checks.check_choice("candidate", candidate, tuple(CANDIDATES))
    H, phi = hidden_size, CANDIDATES[candidate]

    def linear(params, xp, dtype):
        v = xp[..., :H]
        return jax.nn.sigmoid(-v), jax.nn.sigmoid(v) * phi(xp[..., H:])  # 1 - z as sigmoid(-v): no cancellation

    def gates(params, h, xp_t, hh_t, dtype):
        return {"update": jax.nn.sigmoid(xp_t[..., :H])}

    return _make_cell(
        "mingru", hidden_size, 2, None, gates,
        use_bias=use_bias, init="default", kernel_init=kernel_init, recurrent_init=None,
        bias_offsets={}, dtype=dtype, param_dtype=param_dtype, options=(("candidate", candidate),), linear=linear,
    )


def minlstm(
    hidden_size: int,
    *,
    candidate: str = "g",
    use_bias: bool = True,
    kernel_init: Initializer | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The minLSTM (Feng et al. 2024): an LSTM whose gates read only ``x_t``, with the forget and input
    gates normalised to sum to one and no output gate, so that ``h_t`` is linear in ``h_{t-1}``:

    .. math::

        \begin{array}{ll}
        f_t = \sigma(x_t W_f + b_f), \quad i_t = \sigma(x_t W_i + b_i) \\
        f'_t = f_t / (f_t + i_t), \quad i'_t = i_t / (f_t + i_t) \\
        \tilde h_t = g(x_t W_{\tilde h} + b_{\tilde h}) \\
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t
        \end{array}

    As for :func:`mingru`, ``jaxrnn.scan(..., parallel="associative")`` solves
    it for all steps at once. The normalisation keeps ``h`` a convex
    combination of candidates, so its scale does not drift with T.

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.minlstm(16)
      >>> params = cell.init(jax.random.key(0), 3)
      >>> ys, h = jaxrnn.scan(cell, params, jax.numpy.ones((2, 5, 3)), parallel="associative")
      >>> ys.shape, sorted(params)
      ((2, 5, 16), ['b', 'w_i'])

    Arguments:
      hidden_size, candidate, use_bias, kernel_init, dtype, param_dtype:
        as for :func:`mingru`. Gate order along ``w_i``'s fused axis: ``f``, ``i``, ``h~``.

    Returns:
      A :class:`Cell` whose carry is ``h`` of shape (B, H), with ``linear``
      set: ``a_t = f'_t``, ``b_t = i'_t h~_t``.
    """
    _checks.check_positive_int("hidden_size", hidden_size)
    _checks.check_choice("candidate", candidate, tuple(CANDIDATES))
    H, phi = hidden_size, CANDIDATES[candidate]

    def normalised(xp):
        # f / (f + i) = sigmoid(log f - log i), from the log-gates: no 0 / 0 where both gates underflow
        d = jax.nn.log_sigmoid(xp[..., H : 2 * H]) - jax.nn.log_sigmoid(xp[..., :H])
        return jax.nn.sigmoid(-d), jax.nn.sigmoid(d)  # f', i'

    def linear(params, xp, dtype):
        f, i = normalised(xp)
        return f, i * phi(xp[..., 2 * H :])

    def gates(params, h, xp_t, hh_t, dtype):
        f, i = normalised(xp_t)
        return {"forget": f, "input": i}

    return _make_cell(
        "minlstm", hidden_size, 3, None, gates,
        use_bias=use_bias, init="default", kernel_init=kernel_init, recurrent_init=None,
        bias_offsets={}, dtype=dtype, param_dtype=param_dtype, options=(("candidate", candidate),), linear=linear,
    )


def lru(
    hidden_size: int,
    *,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
    kernel_init: Initializer | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> Cell:
    r"""The linear recurrent unit (LRU; Orvieto et al. 2023, "Resurrecting recurrent neural networks for
    long sequences"): a diagonal complex recurrence over N = H/2 units, its eigenvalues in exponential
    form and its input normalised:

    .. math::

        \begin{array}{ll}
        \lambda = \exp(-e^{\nu} + i e^{\theta}) \\
        z_t = \lambda \odot z_{t-1} + e^{\gamma} \odot (x_t B), \quad B = B_{re} + i B_{im} \\
        h_t = [\mathrm{Re}\, z_t, \ \mathrm{Im}\, z_t]
        \end{array}

    ``|lambda| = exp(-exp(nu))`` lies in (0, 1) whatever ``nu`` becomes, so
    training cannot make the recurrence unstable (in float32 it rounds to
    exactly 1 once ``nu < -16.6``: a unit that keeps everything, never growing). At initialisation
    ``|lambda|`` is drawn uniformly on the ring ``r_min <= |lambda| <= r_max``
    (by area), its phase uniformly in ``[0, max_phase]``, and
    ``gamma = log sqrt(1 - |lambda|^2)``, so that under white-noise input each
    unit's state keeps its input's variance however close ``|lambda|`` is to 1.

    The carry, which is also the output, holds the N units' real parts and then
    their imaginary parts. The paper's output map ``y = Re(C z) + D x`` is
    linear in this output and in the input: a linear readout of ``h`` (or the
    next layer's input projection) realises ``Re(C z)`` exactly, and the skip
    term ``D x`` is the caller's to add. Stacked in :class:`jaxrnn.RNN`, which
    puts no nonlinearity between layers, LRUs make one linear system; the
    paper puts an MLP between them. What it trades, as for :func:`mingru`: the
    decay reads neither the input nor the state.

    Example::

      >>> import jax, jaxrnn
      >>> cell = jaxrnn.lru(16)                  # 8 complex units
      >>> params = cell.init(jax.random.key(0), 3)
      >>> xs = jax.numpy.ones((2, 50, 3))
      >>> ys, h = jaxrnn.scan(cell, params, xs)
      >>> ys_p, h_p = jaxrnn.scan(cell, params, xs, parallel="associative")
      >>> bool(jax.numpy.allclose(ys, ys_p, rtol=1e-5, atol=1e-5)), sorted(params)
      (True, ['gamma_log', 'nu_log', 'theta_log', 'w_i'])

    Arguments:
      hidden_size: H, even: the carry's width, twice the number of complex units.
      r_min, r_max: the ring that ``|lambda|`` is drawn from, ``0 <= r_min < r_max <= 1``.
      max_phase: the largest initial phase of ``lambda`` (radians).
      kernel_init: for ``w_i`` (I, H), ``[B_re, B_im]`` side by side; by
        default each entry ~ N(0, 1 / (2 I)), the paper's.
      dtype, param_dtype: the carry's and the parameters' dtype (complex
        arithmetic runs in complex64, or complex128 for float64).

    Returns:
      A :class:`Cell` whose carry is ``[Re z, Im z]`` of shape (B, H), with
      ``linear`` set: complex ``a_t = lambda`` and ``b_t = exp(gamma) x_t B``,
      each (..., H/2).
    """
    _checks.check_positive_int("hidden_size", hidden_size)
    if hidden_size % 2:
        raise ValueError(f"hidden_size: expected an even number (the carry holds the real and the imaginary "
                         f"parts of hidden_size / 2 complex units), got {hidden_size}")
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"r_min, r_max: expected 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if not max_phase > 0:
        raise ValueError(f"max_phase: expected a positive angle, got {max_phase}")
    N = hidden_size // 2
    real = jnp.promote_types(dtype, jnp.float32)  # complex numbers come in float32 or float64 parts

    def extra_init(key: Array) -> Params:
        # Drawn in float32 (or float64) and cast: in bfloat16, |lambda| near 1 would round to a few values,
        # some to exactly 1 (nu_log = gamma_log = -inf).
        k_r, k_phase = jax.random.split(key)
        draw = jnp.promote_types(param_dtype, jnp.float32)
        tiny = jnp.finfo(draw).tiny  # u = 0 would put nu or theta at infinity
        u = jax.random.uniform(k_r, (N,), draw, minval=tiny)
        nu = -0.5 * jnp.log(u * (r_max**2 - r_min**2) + r_min**2)  # |lambda|^2 uniform on [r_min^2, r_max^2]
        phase = max_phase * jax.random.uniform(k_phase, (N,), draw, minval=tiny)
        params = {"nu_log": jnp.log(nu), "theta_log": jnp.log(phase),
                  "gamma_log": 0.5 * jnp.log1p(-jnp.exp(-2 * nu))}  # log sqrt(1 - |lambda|^2)
        return {name: v.astype(param_dtype) for name, v in params.items()}

    def linear(params, xp, dtype):
        nu, theta, gamma = (params[k].astype(real) for k in ("nu_log", "theta_log", "gamma_log"))
        xp = xp.astype(real)
        b = jnp.exp(gamma) * jax.lax.complex(xp[..., :N], xp[..., N:])
        return jnp.broadcast_to(jnp.exp(jax.lax.complex(-jnp.exp(nu), jnp.exp(theta))), b.shape), b

    default_kernel = lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / math.sqrt(2 * shape[0])
    return _make_cell(
        "lru", hidden_size, 1, None, lambda params, h, xp_t, hh_t, dtype: {},
        use_bias=False, init="default", kernel_init=kernel_init or default_kernel, recurrent_init=None,
        bias_offsets={}, dtype=dtype, param_dtype=param_dtype,
        options=(("r_min", r_min), ("r_max", r_max), ("max_phase", max_phase)), linear=linear, extra_init=extra_init,
    )


CELLS: Mapping[str, Callable[..., Cell]] = {
    "vanilla": vanilla, "lstm": lstm, "gru": gru, "mingru": mingru, "minlstm": minlstm, "lru": lru,
}

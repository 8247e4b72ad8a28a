"""The one unroll every cell, layer and diagnostic goes through.

``scan`` does three things around ``jax.lax.scan``:

1. the input projection ``x_t W_i + b`` is placed where the backend runs it
   fastest (``projection``): as ONE matmul before the loop on accelerators, or
   inside the loop, one small matmul per step, on CPU (see ``projection``);
2. padding (``lengths``) and packed sequences (``resets``) become two masks the
   body applies with ``where``, so every row of a batch runs the same program;
3. ``reverse`` runs each row backwards over its own valid part, by permuting
   time per row, so padding stays at the end in both directions.

On the CPU an LSTM, a GRU or a vanilla cell skips the loop altogether, masks and all:
``kernel="auto"`` hands it to :mod:`jaxrnn.native`, one compiled call for the
whole sequence.

A worked example of ``resets`` (one row holding two sequences, ``a`` and ``b``)::

    x:       a0   a1   a2   b0   b1
    resets:  F    F    F    T    F
    carry:   c0 → a0 → a1 → a2      (reset: carry := initial) c0 → b0 → b1

and of ``reverse=True`` on a row of length 3 padded to 5::

    x:        x0 x1 x2 pad pad     processing order: x2, x1, x0
    outputs:  y0 y1 y2 0   0       (y0 saw x2, x1, x0; returned in place)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _checks, chunks, linear, native
from jaxrnn.cells import Carry, Cell, Params, is_stock, linear_matches

Array = jax.Array


def tree_where(cond: Array, x: Any, y: Any) -> Any:
    """``where(cond, x, y)`` on matching pytrees; ``cond`` (B,) broadcasts over features."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(cond[..., None], a, b), x, y)


def sequence_mask(lengths: Array, time: int, *, time_major: bool = False) -> Array:
    """Booleans, true at step t < ``lengths[b]``: (B, T), or (T, B) with ``time_major``; (T,) for a scalar length."""
    lengths = jnp.asarray(lengths)
    steps = jnp.arange(time)
    if lengths.ndim == 0:
        return steps < lengths
    return steps[:, None] < lengths[None, :] if time_major else steps[None, :] < lengths[:, None]


def reverse_permutation(lengths: Array, time: int) -> Array:
    """Per-row time indices (T, B) that reverse each row's first ``lengths[b]`` steps.

    Padding positions map to themselves, and the permutation is its own inverse,
    so the same gather un-reverses the outputs.
    """
    t = jnp.arange(time)[:, None]
    return jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


def _gather_time(x: Array, perm: Array) -> Array:
    """x[perm[t, b], b, ...] for a time-major x of shape (T, B, ...)."""
    index = perm.reshape(perm.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=0)


def scan(
    cell: Cell,
    params: Params,
    xs: Array,
    *,
    initial_carry: Carry | None = None,
    lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    unroll: int | bool = 2,
    backward: str = "fused",
    checkpoint_every: int | None = None,
    projection: str = "auto",
    kernel: str = "auto",
    parallel: str | None = None,
) -> tuple[Array, Carry]:
    r"""Run ``cell`` over a sequence: ``(carry_t, y_t) = cell.step(params, carry_{t-1}, x_t)``.

    Example::

      >>> import jax, jax.numpy as jnp, jaxrnn
      >>> cell = jaxrnn.gru(8)
      >>> params = cell.init(jax.random.key(0), 4)
      >>> xs = jnp.ones((3, 10, 4))                      # (B, T, I)
      >>> ys, h = jaxrnn.scan(cell, params, xs, lengths=jnp.array([10, 4, 0]))
      >>> ys.shape, bool((ys[1, 4:] == 0).all()), bool((h[2] == 0).all())
      ((3, 10, 8), True, True)

    Arguments:
      cell: a :class:`~jaxrnn.Cell`.
      params: the cell's parameters.
      xs: (B, T, I), or (T, B, I) with ``time_major=True``, or (T, I) for one
        unbatched sequence (then ``lengths`` is a scalar, ``resets`` is (T,)
        and the carry has no batch axis).
      initial_carry: the carry before step 0; zeros by default.
      lengths: (B,) integers in [0, T] for right-padded batches. Outputs at
        padded steps are zero, the carry stops changing after each row's last
        valid step, and ``final_carry`` is the carry at that step (the initial
        carry for length 0).
      resets: (B, T) booleans (time-major: (T, B)). Where true, the carry is set
        back to ``initial_carry`` before step t consumes x_t, so independent
        sequences packed in one row do not leak state into each other. A
        reset at a padded step (with ``lengths``) does nothing.
      reverse: run each row backwards over its valid part; outputs are returned
        in the original order (padding stays at the end). With ``resets``,
        each packed segment is reversed on its own.
      time_major: layout of ``xs``, ``resets`` and the outputs.
      unroll: steps per loop iteration, passed to ``jax.lax.scan``. The
        default 2 measured fastest on the CPU; larger values compile slower
        (docs/performance.md).
      backward: ``"fused"`` (default): a custom VJP that keeps every step's
        recurrent matmul output and, after the backward loop, computes
        ``dW_h`` for all steps as ONE large matmul (as cuDNN does) instead of a
        small one per step; each step's elementwise part is differentiated by
        ``cell.elementwise_vjp()`` (the GRU's own keeps its gate
        activations, so its backward pass evaluates no sigmoid or tanh again).
        ``"autodiff"``: JAX's own derivative of the loop.
        Same values; ``resets``, and a cell without ``w_h`` (a linear one),
        always use autodiff.
      checkpoint_every: memory saving: run the loop in chunks of this many
        steps, each projecting its own inputs, and keep only each chunk's
        first carry for the backward pass, recomputing the rest
        (``jax.checkpoint``). The last chunk is kept whole: the backward pass
        starts with it, so its rerun would only rebuild it. Memory kept for
        the backward pass: T/chunk carries and one chunk's activations
        instead of T steps' (the projected inputs, G times the size of the
        inputs, are never stored whole); time: one more forward pass over all
        but the last chunk. A chunk of sqrt(T) needs the least memory; a
        larger one reruns less (measured trade-offs: docs/performance.md).
      projection: where ``x_t W_i + b`` is computed. ``"hoisted"``: one
        (T*B, I) x (I, G*H) matmul before the loop. ``"per_step"``: one small
        matmul inside each step. ``"auto"`` (default): ``"per_step"`` when
        JAX's default backend is the CPU, else ``"hoisted"``. Why: on XLA CPU
        the hoisted result, a (T, B, G*H) buffer, is written to fresh memory
        and streamed back from DRAM one step at a time, which costs more than
        the small matmuls save (docs/performance.md); on a GPU one large
        matmul is the faster. The backward pass of both computes ``dW_i`` as
        one large matmul. Same values either way (to float rounding).
      kernel: ``"native"``: run the whole unroll as one compiled CPU kernel
        (:mod:`jaxrnn.native`; LSTM, GRU or vanilla cell, float32, ``lengths``, ``resets``
        and ``reverse`` included; with ``checkpoint_every``, one call per
        chunk; an error says which condition fails).
        ``"xla"``: the ``lax.scan`` loop. ``"auto"`` (default): native
        wherever it can run and the call is large enough
        (:data:`jaxrnn.native.AUTO`; an unbatched sequence keeps to the loop,
        which ``jax.vmap`` batches), else the loop. The kernel is differentiable
        once; for higher derivatives (or forward mode) pass ``"xla"``.
        Same values either way (to float rounding).
      parallel: None (default): the loop, one step after another.
        ``"associative"``: for a cell linear in its carry (``cell.linear``:
        :func:`~jaxrnn.mingru`, :func:`~jaxrnn.minlstm`, :func:`~jaxrnn.lru`), all steps at once by
        a parallel prefix scan (:mod:`jaxrnn.linear`): O(log T) sequential
        depth for O(T) work, with the masks inside the scan; differentiated by
        JAX. Same values as the loop (to float rounding); ``unroll``,
        ``backward``, ``projection`` and ``kernel="auto"`` are the loop's and
        do not apply, and ``checkpoint_every`` or ``kernel="native"`` with it
        is an error. ``"deer"``, ``"quasi-deer"``, ``"elk"``, ``"quasi-elk"``:
        any cell, all steps at once by Newton's method
        (:func:`jaxrnn.newton.solve` with its defaults and ``fallback=True``:
        a solve that does not converge gives the loop's trajectory; call
        ``newton.solve`` itself for its report, tolerance and warm start).
        Differentiable in reverse mode only.

    Returns:
      ``(ys, final_carry)``: ys (B, T, H) (or (T, B, H)); final_carry as
      ``cell.initial_carry``.
    """
    xs = jnp.asarray(xs)
    if xs.ndim == 2:  # one unbatched sequence: run it as a batch of one
        # On "auto", the loop, whatever the length: under jax.vmap, the usual way to batch such calls, the
        # kernels would run once per member (their FFI call batches sequentially), where the loop batches.
        ys, carry = scan(
            cell, params, xs[None], **batch_of_one(cell, xs, initial_carry=initial_carry, lengths=lengths, resets=resets),
            reverse=reverse, unroll=unroll, backward=backward, checkpoint_every=checkpoint_every,
            projection=projection, kernel="xla" if kernel == "auto" else kernel, parallel=parallel,
        )
        return ys[0], jax.tree_util.tree_map(lambda v: v[0], carry)
    if xs.ndim != 3:
        layout = "(T, B, features)" if time_major else "(B, T, features)"
        raise ValueError(
            f"xs: expected rank 3 {layout}, or rank 2 (T, features) for one unbatched "
            f"sequence; got shape {xs.shape} (rank {xs.ndim})"
        )
    _checks.check_choice("backward", backward, ("fused", "autodiff"))
    _checks.check_choice("projection", projection, PROJECTIONS)
    _checks.check_choice("kernel", kernel, KERNELS)
    if checkpoint_every is not None:
        _checks.check_positive_int("checkpoint_every", checkpoint_every)
    if parallel is not None:
        _checks.check_choice("parallel", parallel, PARALLEL)
        for option, value, loop_only in (("checkpoint_every", checkpoint_every, checkpoint_every is not None),
                                         ("kernel", repr(kernel), kernel == "native")):
            if loop_only:
                raise ValueError(f"parallel={parallel!r} with {option}={value}: that is an option of the "
                                 "loop; pass one or the other")
        if parallel != "associative":
            from jaxrnn import newton  # imports this module

            ys, final_carry, _ = newton.solve(cell, params, xs, method=parallel, initial_carry=initial_carry,
                                              lengths=lengths, resets=resets, reverse=reverse,
                                              time_major=time_major, fallback=True)
            return ys, final_carry
        if cell.linear is None:
            raise ValueError(f"parallel={parallel!r}: the {cell.kind} cell is not linear in its carry "
                             "(cell.linear is None); the linear cells are jaxrnn.mingru, jaxrnn.minlstm and jaxrnn.lru")
        if not linear_matches(cell):
            raise ValueError(f"parallel={parallel!r}: the cell's elementwise was replaced, and its linear (the "
                             "coefficients the scan solves with) was made for the old one; replace both, or "
                             "run the loop (parallel=None)")
        prep = prepare(cell, params, xs, initial_carry=initial_carry, lengths=lengths, resets=resets,
                       reverse=reverse, time_major=time_major)
        final_carry, ys = _associative(cell, params, prep)
        return _finish(ys, final_carry, prep, reverse, time_major)
    if kernel != "xla":
        steps, batch = xs.shape[:2] if time_major else xs.shape[1::-1]
        reason = native.unsupported(cell, params, batch, xs.dtype, steps=steps, backward=backward,
                                    forced=kernel == "native")
        if reason is None:
            return _native(cell, params, xs, initial_carry, lengths, resets, reverse, time_major, checkpoint_every)
        if kernel == "native":
            raise ValueError(f"kernel='native' cannot run this call: {reason}")
    hoisted = resolve_projection(projection) == "hoisted"
    prep = prepare(
        cell, params, xs, initial_carry=initial_carry, lengths=lengths, resets=resets,
        reverse=reverse, time_major=time_major, project=hoisted and checkpoint_every is None,
    )
    if checkpoint_every is not None:
        final_carry, ys = _checkpointed(
            cell, params, prep, checkpoint_every, unroll, per_chunk=hoisted,
            fused=backward == "fused" and "w_h" in params,  # the fused backward is W_h's
        )
    elif backward == "fused" and prep.resets is None and "w_h" in params:
        final_carry, ys = fused_recurrence(
            cell, params, prep.xp, prep.initial_carry, prep.valid, unroll, projected=prep.projected
        )
    else:
        body = make_body(cell, params, prep)
        final_carry, ys = jax.lax.scan(body, prep.initial_carry, (prep.xp, prep.valid, prep.resets), unroll=unroll)
    return _finish(ys, final_carry, prep, reverse, time_major)


def _finish(ys: Array, final_carry: Carry, prep: Prepared, reverse: bool, time_major: bool) -> tuple[Array, Carry]:
    """Time-major outputs, in processing order (reversed rows reversed), back in the caller's order and
    layout."""
    if reverse:
        ys = jnp.flip(ys, axis=0) if prep.perm is None else _gather_time(ys, prep.perm)
    return (ys if time_major else jnp.swapaxes(ys, 0, 1)), final_carry


def _associative(cell: Cell, params: Params, prep: Prepared) -> tuple[Carry, Array]:
    """A linear cell's every step at once (:func:`jaxrnn.linear.recurrence`): ``(final_carry, ys)``."""
    a, b = cell.linear(params, prep.xp)
    hs = linear.recurrence(a, b, prep.initial_carry, valid=prep.valid, resets=prep.resets)
    ys = hs if prep.valid is None else jnp.where(prep.valid[..., None], hs, jnp.zeros((), hs.dtype))
    # Padded steps are identities, so the last step's carry is each row's at its last valid step.
    return (hs[-1] if hs.shape[0] else prep.initial_carry), ys


def batch_of_one(cell: Cell, xs: Array, *, initial_carry: Carry | None = None, lengths: Array | None = None,
                 resets: Array | None = None) -> dict[str, Any]:
    """The batch-axis-of-one forms of an unbatched sequence's ``initial_carry``, ``lengths`` and ``resets``.

    Every function that takes one (T, I) sequence runs it as a batch of one
    through this. The arguments are checked here, in the shapes the caller
    passed (a scalar length, (T,) resets, a carry without batch axis), so an
    error never describes the batched shapes used inside.
    """
    T = xs.shape[0]
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.ndim != 0:
            raise ValueError(
                f"lengths: expected a scalar for one unbatched sequence xs of shape {xs.shape}, got shape {lengths.shape}"
            )
        lengths = _checks.check_lengths(lengths[None], 1, T)
    if resets is not None:
        resets = _checks.check_resets(resets, (T,), "(T,)")[None]
    if initial_carry is not None:
        _checks.check_same_structure("initial_carry", initial_carry, cell.initial_carry(None))
        initial_carry = jax.tree_util.tree_map(lambda v: jnp.asarray(v)[None], initial_carry)
    return dict(initial_carry=initial_carry, lengths=lengths, resets=resets)


PROJECTIONS = ("auto", "hoisted", "per_step")
KERNELS = ("auto", "xla", "native")
NEWTON_METHODS = ("deer", "quasi-deer", "elk", "quasi-elk")  # jaxrnn.newton's
PARALLEL = ("associative", *NEWTON_METHODS)


def _native(cell: Cell, params: Params, xs: Array, initial_carry, lengths, resets, reverse: bool, time_major: bool,
            checkpoint_every: int | None):
    """:func:`scan` through :func:`jaxrnn.native.unroll` (an LSTM, GRU or vanilla cell).

    The kernels read and write either layout, so batch-major inputs are not
    transposed, and apply ``lengths`` and ``resets`` themselves. ``reverse``
    is a flip of time, or with ``lengths`` the per-row permutation of
    :func:`reverse_permutation`, of the inputs before the call and of the
    outputs after it. With ``checkpoint_every``: :func:`jaxrnn.native.unroll_checkpointed`.
    """
    # prepare() checks every argument and lays out the resets in processing order, time-major, as the kernel
    # reads them; its copy of xs goes unused (XLA drops it).
    prep = prepare(cell, params, xs, initial_carry=initial_carry, lengths=lengths, resets=resets, reverse=reverse,
                   time_major=time_major, project=False)
    lstm = cell.kind == "lstm"
    carry = tuple(prep.initial_carry) if lstm else (prep.initial_carry,)
    masks = native.masks_for(carry, lengths, prep.resets)
    w = native.weights(cell, params)
    time_axis = 0 if time_major else 1
    if reverse:
        xs = jnp.flip(xs, time_axis) if prep.perm is None else _permute_time(xs, prep.perm, time_major)
    if checkpoint_every is None:
        ys, carry = native.unroll(native.kernel_kind(cell), not time_major, xs, carry, w, masks)
    else:
        ys, carry = native.unroll_checkpointed(native.kernel_kind(cell), not time_major, checkpoint_every, xs, carry, w, masks)
    if reverse:  # the permutation is its own inverse
        ys = jnp.flip(ys, time_axis) if prep.perm is None else _permute_time(ys, prep.perm, time_major)
    return ys, (type(prep.initial_carry)(*carry) if lstm else carry[0])


def _permute_time(x: Array, perm: Array, time_major: bool) -> Array:
    """``x`` with each row's steps in the order ``perm`` (T, B) gives, in either layout."""
    return _gather_time(x, perm) if time_major else jnp.take_along_axis(x, perm.T[..., None], axis=1)


def resolve_projection(projection: str) -> str:
    """``"auto"`` → ``"per_step"`` on the CPU backend, ``"hoisted"`` elsewhere (see :func:`scan`)."""
    if projection == "auto":
        return "per_step" if jax.default_backend() == "cpu" else "hoisted"
    return projection


class Prepared(NamedTuple):
    """A batch ready for the loop: everything time-major, masks only where asked for."""

    xp: Array  # (T, B, G*H) projected inputs, or (T, B, I) raw ones, in processing order
    valid: Array | None  # (T, B) step t < lengths[b]
    resets: Array | None  # (T, B)
    initial_carry: Carry
    perm: Array | None  # (T, B) per-row time permutation applied for reverse with lengths
    projected: bool = True  # whether xp holds x W_i + b (else each step projects its x_t)

    def step_input(self, cell: Cell, params: Params, x_t: Array) -> Array:
        """Step t's ``x_t W_i + b``."""
        return x_t if self.projected else cell.project(params, x_t)


def prepare(
    cell: Cell,
    params: Params,
    xs: Array,
    *,
    initial_carry: Carry | None = None,
    lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    time_major: bool = False,
    project: bool = True,
) -> Prepared:
    """Check every argument against the cell and project all inputs in one matmul.

    With ``project=False``, ``xp`` holds the raw inputs (time-major), for a
    loop that projects them itself, step by step or chunk by chunk.
    """
    if xs.ndim != 3:
        layout = "(T, B, features)" if time_major else "(B, T, features)"
        raise ValueError(
            f"xs: expected rank 3 {layout}, or rank 2 (T, features) for one unbatched "
            f"sequence; got shape {xs.shape} (rank {xs.ndim})"
        )
    cell.check_params(params)
    input_size = params["w_i"].shape[0]
    if xs.shape[-1] != input_size:
        raise ValueError(
            f"xs: expected feature size {input_size} (params['w_i'] has shape "
            f"{tuple(params['w_i'].shape)}), got xs of shape {xs.shape} with feature size {xs.shape[-1]}"
        )
    T, B = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])

    default_carry = cell.initial_carry(B)
    if initial_carry is None:
        initial_carry = default_carry
    else:
        _checks.check_same_structure("initial_carry", initial_carry, default_carry)
        initial_carry = jax.tree_util.tree_map(
            lambda v, d: jnp.asarray(v, d.dtype), initial_carry, default_carry
        )
    if lengths is not None:
        lengths = _checks.check_lengths(lengths, B, T)
    if resets is not None:
        layout = "(T, B)" if time_major else "(B, T)"
        resets = _checks.check_resets(resets, (T, B) if time_major else (B, T), layout)
        resets = resets if time_major else resets.T

    # One matmul for all steps, written time-major so the loop slices the leading axis.
    xp = xs if time_major else jnp.swapaxes(xs, 0, 1)
    valid = None if lengths is None else sequence_mask(lengths, T, time_major=True)
    if valid is not None:
        # Padding holds whatever the data pipeline left there, NaN and inf included. It is
        # replaced before anything is computed from it: a padded step then runs on finite
        # numbers whose result the masks discard, and the zero cotangents the masks send
        # back meet finite derivatives (0 * f'(NaN) would be NaN in every weight gradient).
        xp = jnp.where(valid[..., None], xp, jnp.zeros((), xp.dtype))
    if project:
        xp = cell.project(params, xp)

    perm = None
    if reverse:
        if resets is not None:
            # Reversed, a segment starts where the next forward segment begins:
            # reset before original step t when step t+1 was a forward reset.
            resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])], axis=0)
        if lengths is None:
            xp = jnp.flip(xp, axis=0)
            resets = None if resets is None else jnp.flip(resets, axis=0)
        else:
            perm = reverse_permutation(lengths, T)
            xp = _gather_time(xp, perm)
            resets = None if resets is None else _gather_time(resets, perm)

    # The reverse permutation maps padding onto itself, so ``valid`` holds in processing order too.
    if resets is not None and valid is not None:
        # A padded step changes nothing, its reset flag included: the carry it passes on is the one it
        # got, and so is the carry's cotangent it sends back (never to the initial carry).
        resets = resets & valid
    return Prepared(xp, valid, resets, initial_carry, perm, project)


def make_body(cell: Cell, params: Params, prep: Prepared):
    """The loop body ``(carry, (xp_t, valid_t, reset_t)) -> (carry, y_t)``.

    Masks are applied only when given, so the plain case stays plain.
    """
    initial_carry, masked, resetting = prep.initial_carry, prep.valid is not None, prep.resets is not None

    def body(previous, inputs):
        xp_t, valid_t, reset_t = inputs
        carry = tree_where(reset_t, initial_carry, previous) if resetting else previous
        new_carry, y_t = cell.recur(params, carry, prep.step_input(cell, params, xp_t))
        if masked:  # a padded step changes nothing (prepare() dropped its reset flag)
            new_carry = tree_where(valid_t, new_carry, previous)
            y_t = jnp.where(valid_t[:, None], y_t, jnp.zeros_like(y_t))
        return new_carry, y_t

    return body


def _tree_add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def _masked(carry_prev: Carry, new: Carry, y: Array, valid_t: Array | None) -> tuple[Carry, Array]:
    if valid_t is None:
        return new, y
    return tree_where(valid_t, new, carry_prev), jnp.where(valid_t[:, None], y, jnp.zeros_like(y))


def _add_gradients(total: Params, step: Params) -> Params:
    """``total`` plus a step's parameter gradients, which may name only the parameters the step reads."""
    if set(step) - set(total):
        raise ValueError(f"step_vjp: its backward gave gradients for {sorted(set(step) - set(total))}, "
                         f"which are not parameters of the elementwise part (those are {sorted(total)})")
    return {k: v + step[k] if k in step else v for k, v in total.items()}


def _parameters_read(cell: Cell, params: Params) -> tuple[Params, Params]:
    """The parameters the projection and the elementwise part get in the fused loop.

    A cell as its constructor made it (:func:`jaxrnn.cells.is_stock`) projects
    with ``w_i`` and ``b`` and reads none of ``w_i``, ``w_h``, ``b`` in its
    elementwise part (the GRU reads ``b_hn``), so the backward loop sums no
    gradient for the large weights at every step. Any other cell's parts may
    read any parameter: each gets all of them, and autodiff adds up the
    gradients that come back for each (zeros where a part reads nothing).
    """
    if not is_stock(cell):
        return dict(params), dict(params)
    return ({k: v for k, v in params.items() if k in ("w_i", "b")},
            {k: v for k, v in params.items() if k not in ("w_i", "w_h", "b")})


def fused_recurrence(
    cell: Cell,
    params: Params,
    xp: Array,
    initial_carry: Carry,
    valid: Array | None,
    unroll: int | bool = 1,
    *,
    projected: bool = True,
) -> tuple[Carry, Array]:
    """The recurrent loop over inputs (T, B, ...), with a cuDNN-style backward pass.

    ``xp`` holds the projected inputs ``x W_i + b`` (T, B, G*H), or, with
    ``projected=False``, the raw inputs (T, B, I), which each step projects.

    Forward, every step keeps its input carry and what the cell's
    :meth:`~jaxrnn.Cell.elementwise_vjp` saves: ``xp_t`` and ``hh_t = h_{t-1} W_h``
    by default, the GRU its activations. Backward, a reverse scan
    differentiates only the elementwise part of each step and sends
    ``dh_{t-1} = d hh_t W_h^T`` back: one matmul per step. The weight
    gradient ``dW_h = sum_t h_{t-1}^T d hh_t`` is then one matmul of (H, T*B) by (T*B, G*H), which runs near the machine's
    GEMM peak, where autodiff would do T small ones inside the loop. ``d xp``
    goes back through the projection, whose derivative (``dW_i``, ``db``,
    ``dx``) is likewise one large matmul each, whichever side of the loop the
    projection ran on.

    The elementwise part of a stock cell reads none of ``w_i``, ``w_h``, ``b``
    (the GRU reads ``b_hn``); any other cell's parts get every parameter
    (:func:`_parameters_read`). The elementwise part's parameter gradients are
    summed in the backward loop.
    """
    projection, rest = _parameters_read(cell, params)
    step_vjp = cell.elementwise_vjp()

    def forward(projection, w_h, rest, xs, carry0, valid, keep: bool):
        def step(carry, inputs):
            x_t, valid_t = inputs
            xp_t = x_t if projected else cell.project(projection, x_t)
            hh_t = cell.hh({"w_h": w_h}, carry, xp_t)
            if not keep:
                return _masked(carry, *cell.elementwise(rest, carry, xp_t, hh_t), valid_t)
            new, y, saved = step_vjp.keep(rest, carry, xp_t, hh_t)
            new, y = _masked(carry, new, y, valid_t)
            return new, (y, carry, saved)

        return jax.lax.scan(step, carry0, (xs, valid), unroll=unroll)

    @jax.custom_vjp
    def run(projection, w_h, rest, xs, carry0, valid):
        return forward(projection, w_h, rest, xs, carry0, valid, keep=False)

    def run_fwd(projection, w_h, rest, xs, carry0, valid):
        final, (ys, prev, saved) = forward(projection, w_h, rest, xs, carry0, valid, keep=True)
        return (final, ys), (projection, w_h, rest, xs, valid, prev, saved)

    def run_bwd(residuals, cotangents):
        projection, w_h, rest, xs, valid, prev, saved = residuals
        d_final, d_ys = cotangents
        w_t = w_h.astype(d_ys.dtype).T

        def back(carry, inputs):
            d_carry, d_rest = carry
            carry_prev, saved_t, valid_t, dy_t = inputs
            d_new = d_carry
            if valid_t is not None:  # a padded step passed its carry through and output zeros
                zero = jax.tree_util.tree_map(jnp.zeros_like, d_carry)
                d_new, passed = tree_where(valid_t, d_carry, zero), tree_where(valid_t, zero, d_carry)
                dy_t = jnp.where(valid_t[:, None], dy_t, jnp.zeros_like(dy_t))
            dr, dc, dxp, dhh = step_vjp.backward(rest, carry_prev, saved_t, d_new, dy_t)
            if valid_t is not None:
                dc = _tree_add(dc, passed)
            _, hidden_vjp = jax.vjp(cell.hidden, carry_prev)
            # hh_t = hidden(carry).astype(xp_t.dtype) @ w_h: its cotangent goes back in the carry's dtype
            dc = _tree_add(dc, hidden_vjp((dhh @ w_t).astype(jnp.result_type(cell.hidden(carry_prev))))[0])
            return (dc, _add_gradients(d_rest, dr)), (dxp, dhh)

        zeros = jax.tree_util.tree_map(jnp.zeros_like, rest)
        (d_carry0, d_rest), (d_xp, d_hh) = jax.lax.scan(
            back, (d_final, zeros), (prev, saved, valid, d_ys), reverse=True, unroll=unroll
        )
        d_w_h = jnp.einsum("tbh,tbg->hg", cell.hidden(prev), d_hh).astype(w_h.dtype)
        if projected:  # the projection ran outside; autodiff takes d_xp back through it
            d_projection, d_xs = jax.tree_util.tree_map(jnp.zeros_like, projection), d_xp
        else:
            d_projection, d_xs = jax.vjp(cell.project, projection, xs)[1](d_xp)
        return d_projection, d_w_h, d_rest, d_xs, d_carry0, None

    run.defvjp(run_fwd, run_bwd)
    return run(projection, params["w_h"], rest, xp, initial_carry, valid)


def _checkpointed(
    cell: Cell, params: Params, prep: Prepared, chunk: int, unroll: int | bool, per_chunk: bool, fused: bool
):
    """The loop over raw inputs in chunks of ``chunk`` steps (laid out by :func:`jaxrnn.chunks.layout`),
    rematerialised in the backward pass.

    Each chunk projects its inputs in one matmul (``per_chunk``), or each step
    its own; either way the (T, B, G*H) projection is never stored whole. The
    last chunk is not rematerialised: the backward pass starts with it, so its
    rerun would rebuild what the forward pass has just made, and keeping it
    costs no more memory than the rerun of any other chunk.
    """
    T = prep.xp.shape[0]
    head, whole, chunk = chunks.layout(T, chunk)
    n, pad = whole + (head > 0), (chunk - head) % chunk if T else 0
    valid = prep.valid
    if pad:  # the short first chunk, padded at its front to a whole one; padded steps are masked out
        valid = jnp.ones(prep.xp.shape[:2], bool) if valid is None else valid
        grow = lambda a: None if a is None else jnp.concatenate([jnp.zeros((pad,) + a.shape[1:], a.dtype), a])
        prep = prep._replace(xp=grow(prep.xp), valid=grow(valid), resets=grow(prep.resets))
    body = make_body(cell, params, prep._replace(projected=per_chunk))
    split = lambda a: None if a is None else a.reshape((n, chunk) + a.shape[1:])

    def run_chunk(carry, inputs):
        xs, valid, resets = inputs
        xs = cell.project(params, xs) if per_chunk else xs
        if fused and resets is None:  # the cuDNN-style backward within each chunk, too
            return fused_recurrence(cell, params, xs, carry, valid, unroll, projected=per_chunk)
        return jax.lax.scan(body, carry, (xs, valid, resets), unroll=unroll)

    if T == 0:  # an empty sequence: no chunk to keep
        return run_chunk(prep.initial_carry, (prep.xp, prep.valid, prep.resets))
    split_inputs = tuple(map(split, (prep.xp, prep.valid, prep.resets)))
    carry, ys = jax.lax.scan(jax.checkpoint(run_chunk), prep.initial_carry,
                             jax.tree_util.tree_map(lambda a: a[:-1], split_inputs))
    final, last = run_chunk(carry, jax.tree_util.tree_map(lambda a: a[-1], split_inputs))
    # The shape spelled out: with an empty batch, reshape cannot infer a -1.
    return final, jnp.concatenate([ys.reshape(((n - 1) * chunk,) + ys.shape[2:]), last])[pad:]

"""Training: optax optimizers and clipping, a jit-compiled step with metrics, a divergence
guard, truncated BPTT over streams, length curricula and data parallelism.

Everything numerical comes from optax: optimizers (:func:`make_optimizer`),
gradient clipping (``clip_by_global_norm``, element-wise ``clip``) and learning
rate schedules. What this module adds is the recurrent-specific plumbing:

* a train step that carries the recurrent state between calls (truncated BPTT:
  the state flows forward across chunks, the gradient stops at the chunk edge),
  and reports the gradient norm before and after clipping;
* a divergence guard that stops (or skips the step) on a non-finite loss or
  gradient and says where;
* :func:`length_curriculum`, a schedule for the training sequence length;
* :func:`data_parallel`, sharding the batch over every visible device, and
  :func:`global_batch`, the same over several processes.

Multi-process (one process per host, or several on one machine): call
``jax.distributed.initialize()`` at the start of every process (before anything
else touches JAX); ``jax.devices()`` then lists every process's devices,
:func:`data_parallel` builds its mesh over all of them, and
:func:`global_batch` makes the global batch from each process's own rows.
Checkpoints must then go to storage that every process can reach.
``jaxrnn train char-lm --coordinator HOST:PORT --num-processes N --process-id I``
does all of this (docs/distributed.md).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrnn import _checks

Array = jax.Array
OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop")
SCHEDULES = ("constant", "warmup_cosine", "step")


class Optimizer(NamedTuple):
    """An optax clipping transform and the optimizer proper, kept apart so the
    train step can report the gradient norm after clipping.

    ``optax.chain(clip, base)`` is the whole optimizer (:meth:`chain`). The
    clipping transforms are stateless, so applying ``clip`` on its own costs
    nothing extra.
    """

    clip: optax.GradientTransformation
    base: optax.GradientTransformation

    def init(self, params):
        return self.base.init(params)

    def chain(self) -> optax.GradientTransformation:
        return optax.chain(self.clip, self.base)


def make_schedule(
    lr: float, schedule: str = "constant", *, total_steps: int | None = None,
    warmup_steps: int = 0, decay_every: int = 1000, decay_rate: float = 0.5,
) -> optax.Schedule:
    """An optax learning-rate schedule.

    ``"constant"``; ``"warmup_cosine"`` (linear warm-up for ``warmup_steps``,
    then cosine decay to 0 at ``total_steps``); ``"step"`` (multiply by
    ``decay_rate`` every ``decay_every`` steps, as char-rnn does per epoch).
    """
    _checks.check_choice("schedule", schedule, SCHEDULES)
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "warmup_cosine":
        if not total_steps:
            raise ValueError("total_steps: the warmup_cosine schedule needs the run's length, got None")
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps)
    return optax.exponential_decay(lr, decay_every, decay_rate, staircase=True)


def make_optimizer(
    name: str = "adam",
    lr: float | optax.Schedule = 1e-3,
    *,
    clip_norm: float | None = None,
    clip_value: float | None = None,
    momentum: float = 0.9,
    **schedule_kwargs: Any,
) -> Optimizer:
    """SGD, momentum, Adam or RMSProp from optax, with optional clipping and schedule.

    Example::

      >>> import jaxrnn
      >>> opt = jaxrnn.training.make_optimizer("rmsprop", 2e-3, clip_value=5.0,  # char-rnn's setup
      ...                                      schedule="step", decay_every=1000, decay_rate=0.97)
      >>> type(opt.chain()).__name__
      'GradientTransformationExtraArgs'

    Arguments:
      name: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"rmsprop"``.
      lr: a learning rate, or an optax schedule.
      clip_norm: ``optax.clip_by_global_norm(clip_norm)`` (Pascanu et al. 2013).
      clip_value: ``optax.clip(clip_value)``, element-wise, as in char-rnn.
      momentum: for ``"momentum"``.
      schedule_kwargs: :func:`make_schedule` options when ``lr`` is a number.
    """
    _checks.check_choice("optimizer", name, OPTIMIZERS)
    schedule = lr if callable(lr) else make_schedule(lr, **schedule_kwargs)
    base = {
        "sgd": lambda: optax.sgd(schedule),
        "momentum": lambda: optax.sgd(schedule, momentum=momentum),
        "adam": lambda: optax.adam(schedule),
        "rmsprop": lambda: optax.rmsprop(schedule, decay=0.95),
    }[name]()
    clips = []
    if clip_value is not None:
        clips.append(optax.clip(clip_value))
    if clip_norm is not None:
        clips.append(optax.clip_by_global_norm(clip_norm))
    return Optimizer(optax.chain(*clips) if clips else optax.identity(), base)


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly: checkpoint this whole record.

    ``carry`` is the recurrent state handed from one chunk to the next in
    truncated BPTT (any pytree; ``()`` when unused); ``key`` is raw PRNG key
    data (uint32), so that checkpoints hold plain arrays.
    """

    step: Array
    params: Any
    opt_state: Any
    carry: Any
    key: Array
    skipped: Array  # how many steps the divergence guard skipped


def init_state(params: Any, optimizer: Optimizer, key: Array, carry: Any = ()) -> TrainState:
    """A fresh state. It holds copies of ``params`` and ``carry``: the train step
    donates its state's buffers, and the caller's arrays must survive that."""
    params, carry = jax.tree_util.tree_map(jnp.copy, (params, carry))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
        carry=carry, key=jax.random.key_data(key), skipped=jnp.zeros((), jnp.int32),
    )


class DivergenceError(RuntimeError):
    """A non-finite loss or gradient stopped the run; the last good checkpoint is untouched."""


#: loss_fn(params, carry, batch, key) -> (loss, (new_carry, metrics dict))
LossFn = Callable[[Any, Any, Any, Array], tuple[Array, tuple[Any, dict[str, Array]]]]


def make_train_step(loss_fn: LossFn, optimizer: Optimizer, *, skip_nonfinite: bool = False) -> Callable:
    """A jit-compiled ``step(state, batch) -> (state, metrics)`` (:func:`make_update`, jitted,
    donating its state)."""
    return jax.jit(make_update(loss_fn, optimizer, skip_nonfinite=skip_nonfinite), donate_argnums=0)


def make_update(loss_fn: LossFn, optimizer: Optimizer, *, skip_nonfinite: bool = False) -> Callable:
    """The pure ``step(state, batch) -> (state, metrics)``, not yet jitted, for use inside
    other transformations: ``jax.vmap`` over independent seeds, ``jax.lax.scan`` over many
    steps per dispatch (:func:`make_steps`).

    Metrics: ``loss``; ``grad_norm`` and ``grad_norm_clipped``, the global
    gradient norm before and after clipping; ``finite`` (loss and gradient
    finite); ``skipped`` so far; and whatever ``loss_fn`` reports (e.g. the
    hidden-state norm, or the loss per time step).

    ``loss_fn(params, carry, batch, key)`` returns ``(loss, (new_carry,
    metrics))``. The new carry is passed to the next step with its gradient
    stopped: truncated BPTT. With ``skip_nonfinite``, a step whose loss or
    gradient is not finite leaves params, optimizer state and carry as they
    were (and counts itself in ``skipped``); otherwise the caller stops the run
    (:func:`check_finite`).
    """

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, Array]]:
        key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
        (loss, (carry, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.carry, batch, sub
        )
        clipped, _ = optimizer.clip.update(grads, optimizer.clip.init(state.params))
        updates, opt_state = optimizer.base.update(clipped, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        carry = jax.lax.stop_gradient(carry)
        if skip_nonfinite:
            keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
            params, opt_state, carry = keep(params, state.params), keep(opt_state, state.opt_state), keep(carry, state.carry)
        skipped = state.skipped + (~finite).astype(jnp.int32) if skip_nonfinite else state.skipped
        new_state = TrainState(state.step + 1, params, opt_state, carry, jax.random.key_data(key), skipped)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, grad_norm_clipped=optax.tree.norm(clipped),
                       finite=finite, skipped=skipped)
        return new_state, metrics

    return step


def make_steps(loss_fn: LossFn, optimizer: Optimizer, batch_at: Callable[[Any], Any], *,
               skip_nonfinite: bool = False) -> Callable:
    """Many train steps per dispatch: ``steps(state, xs) -> (state, metrics)``, one ``lax.scan``
    of :func:`make_update` in which step ``i`` trains on ``batch_at(xs[i])``.

    ``xs`` is whatever makes a batch on the device: step numbers, PRNG keys, or a pytree of
    arrays with one leading entry per step. The metrics come stacked over the steps (leading
    axis ``len(xs)``). Not jitted: jit it, or ``jax.vmap`` it over independent seeds first
    (``batch_at`` may close over a per-seed value inside the vmapped function). The same
    steps as calling :func:`make_train_step` once per ``xs[i]``, without a dispatch per step.

    Example::

      >>> import jax, jax.numpy as jnp
      >>> from jaxrnn import training
      >>> loss_fn = lambda w, carry, batch, key: (jnp.mean((batch * w - 2 * batch) ** 2), (carry, {}))
      >>> batch_at = lambda k: jax.random.normal(k, (8,))
      >>> opt = training.make_optimizer("sgd", 0.1)
      >>> steps = jax.jit(training.make_steps(loss_fn, opt, batch_at))
      >>> state, metrics = steps(training.init_state(jnp.zeros(()), opt, jax.random.key(0)),
      ...                        jax.random.split(jax.random.key(1), 50))
      >>> metrics["loss"].shape, int(state.step), round(float(state.params), 3)
      ((50,), 50, 2.0)
    """
    update = make_update(loss_fn, optimizer, skip_nonfinite=skip_nonfinite)

    def steps(state: TrainState, xs: Any) -> tuple[TrainState, dict[str, Array]]:
        return jax.lax.scan(lambda state, x: update(state, batch_at(x)), state, xs)

    return steps


def check_finite(metrics: dict[str, Any], step: int) -> None:
    """Raise :class:`DivergenceError` naming the step and gradient norm if the step diverged."""
    if not bool(metrics["finite"]):
        raise DivergenceError(
            f"non-finite loss or gradient at step {step}: loss={float(metrics['loss'])}, "
            f"gradient global norm={float(metrics['grad_norm'])}. Lower the learning rate, clip the gradient "
            "(--clip), or skip such steps (skip_nonfinite=True, --skip-nonfinite). The run stopped before "
            "saving this step: the checkpoints saved before it are intact."
        )


def length_curriculum(start: int, maximum: int, ramp_steps: int, *, stages: int = 4) -> Callable[[int], int]:
    """A sequence-length curriculum: the training length at each step.

    The length grows geometrically from ``start`` to ``maximum`` in ``stages``
    equal steps over ``ramp_steps`` training steps, then stays at ``maximum``.
    Few distinct lengths mean few recompilations.

    Example::

      >>> from jaxrnn.training import length_curriculum
      >>> f = length_curriculum(10, 160, ramp_steps=300, stages=4)
      >>> [f(s) for s in (0, 74, 75, 150, 225, 300, 10_000)]  # a stage every 300 // 4 = 75 steps
      [10, 10, 20, 40, 80, 160, 160]
    """
    if not 0 < start <= maximum:
        raise ValueError(f"start, maximum: expected 0 < start <= maximum, got {start}, {maximum}")
    _checks.check_positive_int("stages", stages)
    lengths = [round(start * (maximum / start) ** (i / stages)) for i in range(stages + 1)]
    per_stage = max(1, ramp_steps // stages)

    def length(step: int) -> int:
        return lengths[min(step // per_stage, stages)]

    return length


# --------------------------------------------------------------------------- streams (TBPTT)


def stream_batches(tokens: np.ndarray, batch_size: int, seq_len: int) -> np.ndarray:
    """Cut a token stream into ``batch_size`` parallel streams and consecutive chunks.

    As char-rnn does: the stream is split into ``batch_size`` contiguous rows,
    and chunk ``i`` holds steps ``[i * seq_len, (i + 1) * seq_len]`` of every
    row (one step of overlap, for the next-token targets). Chunk ``i + 1``
    continues where chunk ``i`` ended, so the recurrent state can be carried
    across them.

    Returns:
      (num_chunks, batch_size, seq_len + 1) integer array.
    """
    row = len(tokens) // batch_size
    num_chunks = (row - 1) // seq_len
    if num_chunks < 1:
        raise ValueError(
            f"tokens: {len(tokens)} tokens are too few for batch_size={batch_size} x seq_len={seq_len} "
            f"(need at least {batch_size * (seq_len + 1)})"
        )
    rows = np.asarray(tokens[: row * batch_size]).reshape(batch_size, row)
    index = np.arange(num_chunks)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return rows[:, index].transpose(1, 0, 2)


def random_windows(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int) -> np.ndarray:
    """``batch_size`` windows of ``seq_len + 1`` tokens at random offsets: the batch of ``step``.

    The offsets are a function of ``(seed, step)`` alone, so that a resumed run
    draws the batches an uninterrupted one would. Unlike :func:`stream_batches`,
    each window starts from the initial state (there is no carry between them).

    Returns:
      (batch_size, seq_len + 1) integer array.

    Example::

      >>> import numpy as np
      >>> from jaxrnn.training import random_windows
      >>> w = random_windows(np.arange(100), 4, 9, seed=0, step=3)
      >>> w.shape, bool((np.diff(w, axis=1) == 1).all())
      ((4, 10), True)
    """
    span = len(tokens) - seq_len
    if span < 1:
        raise ValueError(f"tokens: {len(tokens)} tokens are too few for windows of seq_len + 1 = {seq_len + 1}")
    starts = np.random.default_rng([seed, step]).integers(0, span, batch_size)
    return np.asarray(tokens)[starts[:, None] + np.arange(seq_len + 1)[None, :]]


# --------------------------------------------------------------------------- data parallel


def data_parallel(devices: list | None = None) -> tuple[Mesh, Callable, Callable]:
    """A 1-D mesh over ``devices`` (default: all) on a ``"data"`` axis.

    Returns ``(mesh, shard, replicate)``: ``shard(batch)`` splits every array's
    leading (batch) axis across the devices; ``replicate(tree)`` puts a full
    copy on each. Under ``jit`` the train step then runs data-parallel, XLA
    inserting the gradient all-reduce.

    Example::

      >>> import jax, jax.numpy as jnp
      >>> from jaxrnn.training import data_parallel
      >>> mesh, shard, replicate = data_parallel()
      >>> shard({"x": jnp.ones((8, 3))})["x"].sharding.spec == jax.sharding.PartitionSpec("data")
      True
    """
    devices = jax.devices() if devices is None else devices
    mesh = Mesh(np.array(devices), ("data",))
    batch_sharding, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())

    def shard(tree):
        def put(x):
            if x.shape[0] % len(devices):
                raise ValueError(
                    f"batch: the leading axis ({x.shape[0]}) must divide evenly over {len(devices)} devices"
                )
            return jax.device_put(x, batch_sharding)

        return jax.tree_util.tree_map(put, tree)

    return mesh, shard, lambda tree: jax.device_put(tree, replicated)


def global_batch(batch: Any, mesh: Mesh, axis: int = 0) -> Any:
    """The global batch as one ``jax.Array`` per leaf, sharded along ``axis`` over ``mesh``'s
    ``"data"`` axis, in a run of one process or of several (``jax.distributed``).

    ``batch`` is the whole global batch (numpy, the same in every process). Each process takes
    only the rows its own devices hold, rows ``[p B / P, (p + 1) B / P)`` for process ``p`` of
    ``P`` on a mesh over ``jax.devices()`` (process by process), and
    ``jax.make_array_from_process_local_data`` puts them together: nothing crosses between
    processes. A leaf that is already a global array (one that spans other processes' devices,
    such as a carry returned by the train step) is returned as it is. With one process this is
    :func:`data_parallel`'s ``shard``.

    Example::

      >>> import jax, numpy as np
      >>> from jaxrnn.training import data_parallel, global_batch
      >>> mesh, _, _ = data_parallel()
      >>> x = global_batch(np.arange(24).reshape(2, 4, 3), mesh, axis=1)  # a (L, B, H) carry, by rows
      >>> x.shape, x.sharding.spec == jax.sharding.PartitionSpec(None, "data")
      ((2, 4, 3), True)
    """
    sharding = NamedSharding(mesh, PartitionSpec(*[None] * axis, "data"))
    count = mesh.devices.size

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        x = np.asarray(x)
        if x.shape[axis] % count:
            raise ValueError(f"batch: axis {axis} ({x.shape[axis]}) must divide evenly over {count} devices")
        # The rows this process's devices hold, in order: one range [p B / P, (p + 1) B / P) on a mesh
        # in process order; the ranges of any other device order, concatenated as jax expects them.
        ranges = sorted({(index[axis].start or 0, index[axis].stop or x.shape[axis])
                         for index in sharding.addressable_devices_indices_map(x.shape).values()})
        local = np.concatenate([x[(slice(None),) * axis + (slice(lo, hi),)] for lo, hi in ranges], axis=axis)
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree_util.tree_map(put, batch)

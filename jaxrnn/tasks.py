"""Long-range dependency tasks: pure, jit-able generators keyed by a PRNG key.

Each task is a :class:`Task`: a generator ``sample(key, batch_size, length)``,
its loss, the loss of the best *memoryless* predictor (the baseline a model
scores without carrying anything across time) and the threshold below which
the task counts as solved. ``Task.memoryless(batch)`` returns that predictor's
outputs, so the baseline formula can be checked numerically (``tests/test_tasks.py``).

===================  ==========  ====================  ==========================  ===========================
task                 outputs     loss                  memoryless baseline         solved below
===================  ==========  ====================  ==========================  ===========================
``adding``           last step   MSE                   1/6 (predict 1)             0.01
``copy_memory``      every step  cross-entropy / step  10 ln 8 / (T + 20)          10% of the baseline
``temporal_order``   last step   cross-entropy         ln 4 (4 classes)            10% of the baseline
``temporal_order3``  last step   cross-entropy         ln 8 (8 classes)            10% of the baseline
``digits``           last step   cross-entropy         entropy of the class prior  test error 10%
``permuted_digits``  last step   cross-entropy         entropy of the class prior  test error 10%
===================  ==========  ====================  ==========================  ===========================

Accuracy, where reported, counts the class at the last step, or for the copy
task the 10 recalled symbols only (the blanks are trivially right). The adding
and copy definitions follow the code that produced Arjovsky et al. (2016)'s
figures (``amarshah/complex_RNN``: ``adding_problem.py``, ``memory_problem.py``).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _checks
from jaxrnn.heads import cross_entropy

Array = jax.Array


class Batch(NamedTuple):
    """Inputs (B, T, features) and targets: (B,) for many-to-one tasks, (B, T) for many-to-many."""

    xs: Array
    targets: Array


class Task(NamedTuple):
    """A sequence task and what a model must beat on it.

    Fields:
      name: as in :data:`TASKS`.
      sample: ``(key, batch_size, length) -> Batch``; jit-able (``length`` static).
      input_size: features per step.
      output_size: 1 for regression, else the number of classes.
      every_step: outputs at every step (many-to-many) or only the last (many-to-one).
      loss: ``(outputs, targets) -> scalar``; outputs (B, output_size) or (B, T, output_size).
      baseline: ``length -> loss`` of the best memoryless predictor.
      threshold: ``length -> value`` below which the task counts as solved: a loss,
        or an error rate (1 - accuracy) when ``solved_on == "error"``.
      memoryless: ``batch -> outputs`` of that predictor (checks ``baseline``).
      accuracy: ``(outputs, targets) -> fraction correct`` (classification), else None.
      solved_on: ``"loss"`` or ``"error"`` (what ``threshold`` bounds).
      fixed_length: the only length the task has (the digits: 64), else None.
      test_set: ``() -> Batch``, a fixed held-out set, where the task has one.
      initial_output: where a readout's bias starts (the memoryless answer of a regression).
    """

    name: str
    sample: Callable[[Array, int, int], Batch]
    input_size: int
    output_size: int
    every_step: bool
    loss: Callable[[Array, Array], Array]
    baseline: Callable[[int], float]
    threshold: Callable[[int], float]
    memoryless: Callable[[Batch], Array]
    accuracy: Callable[[Array, Array], Array] | None = None
    solved_on: str = "loss"
    fixed_length: int | None = None
    test_set: Callable[[], Batch] | None = None
    initial_output: float = 0.0


def _check(batch_size: int, length: int, minimum: int) -> None:
    _checks.check_positive_int("batch_size", batch_size)
    if not isinstance(length, int) or length < minimum:
        raise ValueError(f"length: expected an int of at least {minimum} steps, got {length!r}")


def _accuracy(logits: Array, targets: Array) -> Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == targets)


# ----------------------------------------------------------------------------- adding

#: MSE of always predicting 1.0, the best memoryless guess: Var(U1 + U2) = 2/12.
ADDING_BASELINE_MSE = 1.0 / 6.0


def adding(key: Array, batch_size: int, length: int) -> Batch:
    """The adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016 form).

    Each step carries two channels: a value ``u_t ~ U[0, 1]`` and a marker
    ``m_t`` in {0, 1}. Exactly two steps are marked, one uniformly in the
    first half ``[0, T/2)`` and one in the second half ``[T/2, T)``; the target
    is the sum of the two marked values. A model that ignores the markers does
    best by predicting 1.0, with MSE 1/6 ≈ 0.167 (:data:`ADDING_BASELINE_MSE`);
    the task is usually called solved below MSE 0.01 (about 6% of baseline).

    The first marker can lie up to T-1 steps before the output, so the
    gradient that teaches the model to remember it must cross that distance.

    Example::

      >>> import jax, jaxrnn
      >>> xs, y = jaxrnn.tasks.adding(jax.random.key(0), 4, 50)
      >>> xs.shape, y.shape, int(xs[0, :, 1].sum())
      ((4, 50, 2), (4,), 2)

    Returns:
      :class:`Batch` with xs (B, T, 2) and targets (B,).
    """
    _check(batch_size, length, 2)
    k_u, k_1, k_2 = jax.random.split(key, 3)
    values = jax.random.uniform(k_u, (batch_size, length))
    half = length // 2
    first = jax.random.randint(k_1, (batch_size,), 0, half)
    second = jax.random.randint(k_2, (batch_size,), half, length)
    steps = jnp.arange(length)[None]
    markers = (steps == first[:, None]) | (steps == second[:, None])
    targets = jnp.sum(jnp.where(markers, values, 0.0), axis=1)
    return Batch(jnp.stack([values, markers.astype(values.dtype)], axis=-1), targets)


# ----------------------------------------------------------------------------- copy memory

COPY_SYMBOLS = 8  # a_1..a_8 to remember; 0 is the blank, 9 the delimiter
COPY_LENGTH = 10  # symbols to remember
COPY_VOCAB = COPY_SYMBOLS + 2


def copy_memory_baseline(length: int) -> float:
    """10 ln 8 / (T + 20): blanks predicted for sure, the 10 recalled symbols guessed uniformly."""
    return COPY_LENGTH * math.log(COPY_SYMBOLS) / (length + 2 * COPY_LENGTH)


def copy_memory(key: Array, batch_size: int, length: int) -> Batch:
    """The copy memory task (Arjovsky et al. 2016), with delay ``length`` = T.

    The input (T + 20 steps, one-hot over 10 tokens) is 10 symbols drawn
    uniformly from 1..8, then T-1 blanks (0), the delimiter 9, and 10 more
    blanks. The target is blank for the first T + 10 steps and then the 10
    symbols, in order: the model must hold them for T steps. The memoryless
    strategy (blank everywhere, a uniform guess over 1..8 for the last 10
    steps) scores a cross-entropy per step of ``10 ln 8 / (T + 20)``
    (:func:`copy_memory_baseline`).

    Example::

      >>> import jax, jaxrnn
      >>> xs, y = jaxrnn.tasks.copy_memory(jax.random.key(0), 2, 5)
      >>> xs.shape, y.shape, bool((y[:, -10:] == xs[:, :10].argmax(-1)).all())
      ((2, 25, 10), (2, 25), True)

    Returns:
      :class:`Batch` with xs (B, T + 20, 10) one-hot and targets (B, T + 20) in 0..8.
    """
    _check(batch_size, length, 1)
    symbols = jax.random.randint(key, (batch_size, COPY_LENGTH), 1, COPY_SYMBOLS + 1)
    blanks = lambda n: jnp.zeros((batch_size, n), symbols.dtype)
    delimiter = jnp.full((batch_size, 1), COPY_SYMBOLS + 1, symbols.dtype)
    tokens = jnp.concatenate([symbols, blanks(length - 1), delimiter, blanks(COPY_LENGTH)], axis=1)
    targets = jnp.concatenate([blanks(length + COPY_LENGTH), symbols], axis=1)
    return Batch(jax.nn.one_hot(tokens, COPY_VOCAB), targets)


def _recall_accuracy(logits: Array, targets: Array) -> Array:
    """Fraction of the 10 recalled symbols right (the blanks are easy and would swamp it)."""
    return _accuracy(logits[:, -COPY_LENGTH:], targets[:, -COPY_LENGTH:])


def _copy_memoryless(batch: Batch) -> Array:
    B, steps = batch.targets.shape
    blank = jnp.full((COPY_SYMBOLS + 1,), -1e9).at[0].set(0.0)
    guess = jnp.zeros((COPY_SYMBOLS + 1,)).at[0].set(-1e9)
    recall = jnp.arange(steps) >= steps - COPY_LENGTH
    return jnp.broadcast_to(jnp.where(recall[:, None], guess, blank), (B, steps, COPY_SYMBOLS + 1))


# ----------------------------------------------------------------------------- temporal order

#: Symbols of the temporal order tasks: 4 distractors, start, end, and the two relevant ones.
ORDER_SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")
#: Where the relevant symbols go, as fractions of T: Hochreiter & Schmidhuber (1997) sec. 5.6
#: place them in [10, 20] and [50, 60] (2 symbols) or [10, 20], [33, 43], [66, 76] (3) of
#: sequences 100-110 long; we scale those windows to any length T.
ORDER_WINDOWS = {2: ((0.1, 0.2), (0.5, 0.6)), 3: ((0.1, 0.2), (0.33, 0.43), (0.66, 0.76))}


def temporal_order(key: Array, batch_size: int, length: int, *, bits: int = 2) -> Batch:
    """The temporal order problem (Hochreiter & Schmidhuber 1997, experiments 6a/6b;
    Pascanu et al. 2013, sec. 4.1.1), 2 or 3 relevant symbols.

    A sequence of T one-hot symbols starts with ``B``, ends with ``E`` and is
    otherwise random distractors ``a``-``d``, except at ``bits`` positions,
    one drawn in each window of :data:`ORDER_WINDOWS` (the 1997 windows scaled
    to T), which hold ``X`` or ``Y``. The class is the order of those symbols:
    XX, XY, YX, YY (4 classes) or the 8 orders of three. Every class is
    equally likely and independent of the distractors, so the best memoryless
    cross-entropy is ``ln 4`` (``ln 8``), and the first relevant symbol lies
    about 0.85 T steps before the output.

    Example::

      >>> import jax, jaxrnn
      >>> xs, y = jaxrnn.tasks.temporal_order(jax.random.key(0), 3, 100)
      >>> xs.shape, y.shape, int(y.max()) < 4
      ((3, 100, 8), (3,), True)

    Returns:
      :class:`Batch` with xs (B, T, 8) one-hot and targets (B,) in 0..2**bits - 1.
    """
    if bits not in ORDER_WINDOWS:
        raise ValueError(f"bits: expected 2 or 3, got {bits!r}")
    _check(batch_size, length, 20)
    k_noise, k_bits, *k_pos = jax.random.split(key, 2 + bits)
    tokens = jax.random.randint(k_noise, (batch_size, length), 0, 4)
    tokens = tokens.at[:, 0].set(4).at[:, -1].set(5)
    which = jax.random.bernoulli(k_bits, 0.5, (batch_size, bits)).astype(jnp.int32)  # 0: X, 1: Y
    rows = jnp.arange(batch_size)
    for i, ((lo, hi), k) in enumerate(zip(ORDER_WINDOWS[bits], k_pos)):
        start, stop = max(1, int(lo * length)), max(int(lo * length) + 1, int(hi * length))
        position = jax.random.randint(k, (batch_size,), start, stop + 1)
        tokens = tokens.at[rows, position].set(6 + which[:, i])
    targets = jnp.sum(which * (2 ** jnp.arange(bits - 1, -1, -1)), axis=1)  # first symbol is the high bit
    return Batch(jax.nn.one_hot(tokens, len(ORDER_SYMBOLS)), targets)


# ----------------------------------------------------------------------------- sequential digits

DIGITS_LENGTH = 64  # 8 x 8 pixels, one per step
DIGITS_TEST = 360  # the last 360 of scikit-learn's 1,797 images (after a fixed shuffle) are held out


@functools.lru_cache(maxsize=None)
def digits_data(permuted: bool = False) -> dict[str, np.ndarray]:
    """scikit-learn's bundled 8x8 digits as pixel sequences: train/test splits, fixed.

    Pixels (0..16) are scaled to [0, 1] and read row by row (64 steps, one
    feature), or in one fixed random permutation (seed 0) for the permuted
    variant. Images are shuffled once with seed 0; the last 360 are the test
    set. Offline: the data ships inside scikit-learn.
    """
    try:  # scikit-learn is in the `programs` extra, not a core dependency: only the digits need it
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"the digits tasks need scikit-learn: pip install 'jaxrnn[programs]' ({e})",
                                  name=e.name) from e

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    pixels = (digits.data[order] / 16.0).astype(np.float32)
    if permuted:
        pixels = pixels[:, np.random.default_rng(0).permutation(DIGITS_LENGTH)]
    labels = digits.target[order].astype(np.int32)
    n = len(labels) - DIGITS_TEST
    return {"train_x": pixels[:n, :, None], "train_y": labels[:n],
            "test_x": pixels[n:, :, None], "test_y": labels[n:]}


def digits_prior_entropy() -> float:
    """Cross-entropy of predicting the training class frequencies, in nats (about ln 10)."""
    counts = np.bincount(digits_data()["train_y"], minlength=10)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def digits(key: Array, batch_size: int, length: int = DIGITS_LENGTH, *, permuted: bool = False) -> Batch:
    """A batch of training digits read pixel by pixel: a small offline stand-in for
    sequential (and, with ``permuted``, permuted) MNIST.

    Example::

      >>> import jax, jaxrnn
      >>> xs, y = jaxrnn.tasks.digits(jax.random.key(0), 5)
      >>> xs.shape, y.shape
      ((5, 64, 1), (5,))

    Returns:
      :class:`Batch` with xs (B, 64, 1) in [0, 1] and targets (B,) in 0..9.
      ``length`` must be 64; it is an argument only so that every task samples alike.
    """
    if length != DIGITS_LENGTH:
        raise ValueError(f"length: digits are {DIGITS_LENGTH} pixels long, got {length!r}")
    _check(batch_size, length, 1)
    data = digits_data(permuted)
    index = jax.random.randint(key, (batch_size,), 0, len(data["train_y"]))
    return Batch(jnp.asarray(data["train_x"])[index], jnp.asarray(data["train_y"])[index])


def digits_test(permuted: bool = False) -> Batch:
    """The 360 held-out digits."""
    data = digits_data(permuted)
    return Batch(jnp.asarray(data["test_x"]), jnp.asarray(data["test_y"]))


# ----------------------------------------------------------------------------- the registry

def _mse(outputs: Array, targets: Array) -> Array:
    return jnp.mean((outputs[..., 0] - targets) ** 2)


def _prior_logits(batch: Batch) -> Array:
    counts = np.bincount(digits_data()["train_y"], minlength=10)
    return jnp.broadcast_to(jnp.log(counts / counts.sum()), (batch.targets.shape[0], 10))


def _class_frequencies(classes: int) -> Callable[[Batch], Array]:
    """The best memoryless classifier for a batch: log of its own class frequencies."""

    def logits(batch: Batch) -> Array:
        counts = jnp.bincount(batch.targets, length=classes)
        return jnp.broadcast_to(jnp.log(counts / counts.sum()), (batch.targets.shape[0], classes))

    return logits


def _digits_task(name: str, permuted: bool) -> Task:
    return Task(
        name=name, sample=functools.partial(digits, permuted=permuted), input_size=1, output_size=10,
        every_step=False, loss=cross_entropy, baseline=lambda length: digits_prior_entropy(),
        # solved: test error below 10% (no cross-entropy corresponds to an accuracy)
        threshold=lambda length: 0.1, memoryless=_prior_logits, accuracy=_accuracy,
        solved_on="error", fixed_length=DIGITS_LENGTH, test_set=functools.partial(digits_test, permuted),
    )


#: Every task by name.
TASKS: dict[str, Task] = {
    "adding": Task("adding", adding, 2, 1, False, _mse, lambda length: ADDING_BASELINE_MSE,
                   lambda length: 0.01, lambda batch: jnp.ones((batch.targets.shape[0], 1)), initial_output=1.0),
    "copy_memory": Task("copy_memory", copy_memory, COPY_VOCAB, COPY_SYMBOLS + 1, True, cross_entropy,
                        copy_memory_baseline, lambda length: 0.1 * copy_memory_baseline(length),
                        _copy_memoryless, _recall_accuracy),
    "temporal_order": Task("temporal_order", temporal_order, len(ORDER_SYMBOLS), 4, False, cross_entropy,
                           lambda length: math.log(4), lambda length: 0.1 * math.log(4), _class_frequencies(4), _accuracy),
    "temporal_order3": Task("temporal_order3", functools.partial(temporal_order, bits=3), len(ORDER_SYMBOLS), 8,
                            False, cross_entropy, lambda length: math.log(8), lambda length: 0.1 * math.log(8),
                            _class_frequencies(8), _accuracy),
    "digits": _digits_task("digits", False),
    "permuted_digits": _digits_task("permuted_digits", True),
}


def solved(task: Task, length: int, loss: float, error: float | None = None) -> bool:
    """Whether a model solved ``task``: its error rate or its loss (``task.solved_on``) below the threshold."""
    if task.solved_on == "error":
        return error is not None and error < task.threshold(length)
    return loss < task.threshold(length)

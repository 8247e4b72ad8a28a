"""Why recurrence: windowed models against a GRU when the needed context lies d steps back.

The task: two input channels, random bits (+-1, distractors) and a channel that is zero but on one step,
d steps before the end, where it holds a bit (+-1); the target, read at the last step, is that bit. Inside
a window the task is linear (the window's sum of the second channel), so logistic regression can solve it;
only one bit must be kept, from wherever it came.

1. **The window** (T = 64, d uniform in 1..63): MLPs (one hidden layer of 64) on the last k steps, k
   swept, and logistic regression on the widest window, against a GRU (H = 32, fewer weights than the MLPs
   at k >= 32) reading the whole sequence; test accuracy per distance. A window solves what falls inside it and nothing beyond:
   the feature engineer's k is the problem's horizon, and a longer dependency means a new model.
2. **Sharing weights across time** (trained on lengths 2..20, a length drawn for each batch; tested on
   T = 200, d in 1..199): the GRU, whose one step is applied at every position, against the MLP with
   position-specific weights over the last 20 steps (the longest input it saw in training). Accuracy by
   distance from the end, and by the number of steps before the marked one.

    python experiments/why_recurrence.py          # about 35 s on a 2-core CPU

Writes ``window.png`` and ``length.png`` (accuracy against distance) and a results table.
"""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn import training
from jaxrnn.programs import arguments
from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs

from experiments._common import experiment_parser, fit

# Each bucket ends one short of a power of two: a window of k = 2^j steps sees d <= k - 1, so each bucket is
# wholly inside or wholly outside each window swept.
BUCKETS = ((1, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127), (128, 199))


def batch(rng: np.random.Generator, B: int, T: int, max_distance: int):
    """``(xs (B, T, 2), targets (B,), distances (B,))``: a channel of random bits (distractors), and a channel
    that is zero but at the marked step, where it holds the bit to recall (+-1); the target as 0/1."""
    noise = rng.choice([-1.0, 1.0], size=(B, T))
    bit = rng.choice([-1.0, 1.0], size=B)
    d = rng.integers(1, max_distance + 1, size=B)
    marked = np.zeros((B, T))
    marked[np.arange(B), T - 1 - d] = bit
    return np.stack([noise, marked], axis=-1).astype(np.float32), (bit > 0).astype(np.float32), d


def windowed(k: int, hidden: int | None):
    """``(init(key), logit(params, xs))`` of logistic regression (``hidden`` None) or an MLP on the last k
    steps (zero-padded in front when the sequence is shorter)."""

    def features(xs):
        T = xs.shape[1]
        xs = jnp.pad(xs, ((0, 0), (max(k - T, 0), 0), (0, 0)))
        return xs[:, -k:].reshape(xs.shape[0], -1)

    def init(key):
        k1, k2 = jax.random.split(key)
        if hidden is None:
            return {"w": jnp.zeros(2 * k), "b": jnp.zeros(())}
        return {"w1": jax.random.normal(k1, (2 * k, hidden)) / np.sqrt(2 * k), "b1": jnp.zeros(hidden),
                "w2": jax.random.normal(k2, (hidden,)) / np.sqrt(hidden), "b2": jnp.zeros(())}

    def logit(p, xs):
        f = features(xs)
        if hidden is None:
            return f @ p["w"] + p["b"]
        return jnp.tanh(f @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    return init, logit


def recurrent(hidden: int):
    """A GRU reading the whole sequence, a linear readout of its last output."""
    cell = jaxrnn.gru(hidden)

    def init(key):
        return {"cell": cell.init(key, 2), "w": jnp.zeros(hidden), "b": jnp.zeros(())}

    def logit(p, xs):
        ys, _ = jaxrnn.scan(cell, p["cell"], xs)
        return ys[:, -1] @ p["w"] + p["b"]

    return init, logit


def train(model, args, T: int | tuple[int, int], max_distance: int, seed: int):
    """Adam with clipping on freshly drawn batches, of length T or, for a range (lo, hi), of a length drawn
    from it for each batch (d < that length); the trained parameters."""
    init, logit = model

    def loss_fn(p, carry, b, key):
        del key
        xs, target = b
        z = logit(p, xs)
        return jnp.mean(jnp.logaddexp(0.0, z) - target * z), (carry, {})  # binary cross-entropy

    rng = np.random.default_rng(seed)

    def batch_at(step: int):
        length = T if isinstance(T, int) else int(rng.integers(T[0], T[1] + 1))
        return batch(rng, args.batch_size, length, min(max_distance, length - 1))[:2]

    return fit(loss_fn, init(jax.random.key(seed)), training.make_optimizer("adam", args.lr, clip_norm=1.0),
               batch_at, args.steps, desc="train")[1]


def accuracy_by_distance(model, params, T: int, max_distance: int, n: int, seed: int,
                         before: bool = False) -> dict[str, float]:
    """Test accuracy on ``n`` fresh sequences, per bucket of the distance d from the end (or, ``before``, of
    the steps before the marked one, T - 1 - d); empty buckets left out."""
    xs, target, d = batch(np.random.default_rng(10_000 + seed), n, T, max_distance)
    right = (np.asarray(model[1](params, xs)) > 0) == (target > 0)
    v = T - 1 - d if before else d
    buckets = ((0, 0),) + BUCKETS if before else BUCKETS
    return {f"{lo}-{hi}": float(right[(v >= lo) & (v <= hi)].mean()) for lo, hi in buckets if ((v >= lo) & (v <= hi)).any()}


def plot(panels: list[tuple[dict[str, dict[str, float]], str]], title: str, path) -> None:
    """Accuracy per bucket, a line per model, a panel per ``(rows, x label)``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4), squeeze=False)
    for ax, (rows, xlabel) in zip(axes[0], panels):
        for name, acc in rows.items():
            ax.plot(list(acc), list(acc.values()), "o-", label=name)
        ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.3, 1.02)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def run(args) -> dict:
    folder = run_folder("why-recurrence", args.out)
    window_T, length_train, length_test = 64, 20, 200
    window_runs = {f"logistic regression, k={max(args.windows)}": windowed(max(args.windows), None)}
    window_runs |= {f"MLP, k={k}": windowed(k, 64) for k in args.windows}
    window_runs[f"GRU, H={args.hidden}"] = recurrent(args.hidden)
    window = {name: accuracy_by_distance(m, train(m, args, window_T, window_T - 1, args.seed), window_T,
                                         window_T - 1, args.test_size, args.seed)
              for name, m in window_runs.items()}
    length_runs = {f"MLP over the last {length_train} steps (position-specific weights)": windowed(length_train, 64),
                   f"GRU, H={args.hidden} (one step, shared across time)": recurrent(args.hidden)}
    trained = {name: train(m, args, (2, length_train), length_train - 1, args.seed) for name, m in length_runs.items()}
    length = {name: accuracy_by_distance(m, trained[name], length_test, length_test - 1, args.test_size, args.seed)
              for name, m in length_runs.items()}
    length_before = {name: accuracy_by_distance(m, trained[name], length_test, length_test - 1, args.test_size,
                                                args.seed, before=True) for name, m in length_runs.items()}
    distance = "distance d of the marked bit from the end (steps)"
    plot([(window, distance)], f"T = {window_T}, trained and tested on d in 1..{window_T - 1}",
         folder / "window.png")
    plot([(length, distance), (length_before, "steps before the marked one (T - 1 - d)")],
         f"trained on T = 2..{length_train}, tested on T = {length_test}", folder / "length.png")
    table = "\n\n".join(
        markdown_table([what, *(part[next(iter(part))])],
                       [[name, *(f"{v:.2f}" for v in acc.values())] for name, acc in part.items()])
        for what, part in (("model / distance d", window), ("model / distance d", length),
                           ("model / steps before the marked one", length_before)))
    results = {"config": vars(args), "window": window, "length": length, "length_by_steps_before": length_before,
               "parameters": {name: int(sum(v.size for v in jax.tree_util.tree_leaves(m[0](jax.random.key(0)))))
                              for name, m in (window_runs | length_runs).items()}}
    write_outputs(folder, table, results)
    return results


def parser() -> arguments.ArgumentParser:
    p = experiment_parser("why_recurrence", __doc__, steps=1500, batch_size=64, lr=3e-3)
    p.add_argument("--windows", nargs="+", type=arguments.positive_int, default=[4, 8, 16, 32, 64])
    p.add_argument("--hidden", type=arguments.positive_int, default=32)
    p.add_argument("--test-size", type=arguments.positive_int, default=4000)
    return p


if __name__ == "__main__":
    run(parser().parse_args())

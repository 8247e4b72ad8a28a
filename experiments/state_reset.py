"""The cost of not resetting the state between independent examples (seed 000's warning).

Each training row packs ``--segments`` independent adding problems of random
lengths (10 to 40 steps) back to back, so a model cannot count its way to a
boundary; the target of each is read at its last step. One
GRU is trained with ``resets`` at every segment start (the state goes back to
zero, as if each example ran alone), an identical one without (the state of
the previous example leaks into the next). Both are then evaluated on held-out
packed rows, segment by segment: the first segment has nothing before it, so
any gap on the later ones is the leak.

    python experiments/state_reset.py        # about a minute on a 2-core CPU

Writes ``state_reset.png`` and a results table.
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
from jaxrnn import tasks, training
from jaxrnn.programs import arguments
from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs

from experiments._common import experiment_parser, fit, nanmean_tail, predict, regressor


def packed(key, batch_size: int, segments: int, min_length: int, max_length: int):
    """Rows of ``segments`` independent adding problems of random lengths in [min_length, max_length].

    Returns xs (B, S * max_length, 2) (zero after the last segment), targets (B, S), resets (B, R)
    (true at each segment's first step) and ends (B, S) (each segment's last step).
    """
    k_len, k_val, k_1, k_2 = jax.random.split(key, 4)
    lengths = jax.random.randint(k_len, (batch_size, segments), min_length, max_length + 1)
    starts = jnp.cumsum(lengths, axis=1) - lengths
    half = lengths // 2  # as in tasks.adding: one marker in each half of the segment
    first = starts + jnp.floor(jax.random.uniform(k_1, lengths.shape) * half).astype(jnp.int32)
    second = starts + half + jnp.floor(jax.random.uniform(k_2, lengths.shape) * (lengths - half)).astype(jnp.int32)
    row = segments * max_length
    steps = jnp.arange(row)
    used = steps[None] < (starts[:, -1] + lengths[:, -1])[:, None]
    values = jnp.where(used, jax.random.uniform(k_val, (batch_size, row)), 0.0)
    hit = lambda pos: jnp.any(steps[None, None] == pos[..., None], axis=1)  # (B, R)
    markers = (hit(first) | hit(second)).astype(values.dtype)
    targets = jnp.take_along_axis(values, first, 1) + jnp.take_along_axis(values, second, 1)
    return jnp.stack([values, markers], -1), targets, hit(starts), starts + lengths - 1


def segment_mse(cell, params, xs, targets, resets, ends, use_resets: bool):
    """(S,) MSE of the prediction at each segment's last step."""
    preds = jnp.take_along_axis(predict(cell, params, xs, resets=resets if use_resets else None), ends, axis=1)
    return jnp.mean((preds - targets) ** 2, axis=0)


def run(args) -> dict:
    folder = run_folder("state-reset", args.out)
    cell = jaxrnn.CELLS[args.cell](args.hidden_size)
    params0 = regressor(cell, 2, jax.random.key(args.seed))
    sizes = (args.segments, args.min_length, args.max_length)
    held_out = packed(jax.random.key(999), 1000, *sizes)
    results, histories, rows = {"config": vars(args), "runs": {}}, {}, []
    for use_resets in (True, False):
        name = "reset at every example" if use_resets else "no reset (state leaks)"

        def loss_fn(params, carry, batch, key, use_resets=use_resets):
            return jnp.mean(segment_mse(cell, params, *batch, use_resets)), (carry, {})

        key = jax.random.key(args.seed + 1)
        batch_at = lambda step: packed(jax.random.fold_in(key, step), args.batch_size, *sizes)
        optimizer = training.make_optimizer("adam", args.lr, clip_norm=1.0)
        history, params = fit(loss_fn, params0, optimizer, batch_at, args.steps, desc=name)
        histories[name] = [h["loss"] for h in history]
        own = np.asarray(segment_mse(cell, params, *held_out, use_resets))
        flipped = np.asarray(segment_mse(cell, params, *held_out, not use_resets))
        results["runs"][name] = {"train_loss": histories[name], "eval_own_mode": own.tolist(),
                                 "eval_other_mode": flipped.tolist(), "final_train_loss": nanmean_tail(histories[name])}
        rows.append([name, "as trained"] + own.tolist() + [float(own[1:].mean())])
        rows.append([name, "evaluated " + ("without" if use_resets else "with") + " resets"]
                    + flipped.tolist() + [float(flipped[1:].mean())])
    leak = results["runs"]["no reset (state leaks)"]["eval_own_mode"]
    clean = results["runs"]["reset at every example"]["eval_own_mode"]
    results["later_segments_mse_ratio"] = float(np.mean(leak[1:]) / np.mean(clean[1:]))
    table = (f"{args.cell.upper()} H={args.hidden_size}; rows of {args.segments} packed adding problems of random "
             f"lengths {args.min_length}-{args.max_length}; Adam {args.lr:g}, {args.steps} steps, batch {args.batch_size}; held-out MSE per segment "
             f"(baseline {tasks.ADDING_BASELINE_MSE:.3f}).\n\n")
    table += markdown_table(["training", "evaluation"] + [f"segment {k + 1}" for k in range(args.segments)]
                            + ["mean of segments 2+"], rows)
    mismatch = results["runs"]["reset at every example"]["eval_other_mode"]
    results["mismatch_mse_by_segment"] = mismatch
    table += (f"\nTrained without resets, the later segments' MSE is {results['later_segments_mse_ratio']:.1f}x that "
              "of the model trained with resets (the leaked state is noise it has to learn to ignore). A model "
              "trained with resets but run without them (state carried across examples at inference) goes from "
              f"{mismatch[0]:.2g} on the first segment to " + ", ".join(f"{v:.2g}" for v in mismatch[1:])
              + f" on the next ones (baseline {tasks.ADDING_BASELINE_MSE:.3f}).\n")
    plot(histories, results, args, folder)
    write_outputs(folder, table, results)
    return results


def plot(histories: dict, results: dict, args, folder) -> None:
    plt = pyplot()
    fig, (ax, ax_seg) = plt.subplots(1, 2, figsize=(11, 4))
    for name, losses in histories.items():
        ax.plot(np.convolve(losses, np.ones(25) / 25, mode="valid"), label=name)
    ax.axhline(tasks.ADDING_BASELINE_MSE, color="gray", ls="--", lw=1, label="baseline")
    ax.set(yscale="log", xlabel="Adam step", ylabel="training MSE (25-step mean)", title="training")
    segments = np.arange(1, args.segments + 1)
    for name, r in results["runs"].items():
        ax_seg.plot(segments, r["eval_own_mode"], "o-", label=f"{name}")
    ax_seg.set(yscale="log", xticks=segments, xlabel="segment in the packed row",
               ylabel="held-out MSE", title="error per packed example")
    ax.legend(fontsize=8)
    ax_seg.legend(fontsize=8)
    save_figure(fig, folder / "state_reset.png")


def parser() -> arguments.ArgumentParser:
    p = experiment_parser("state-reset", __doc__, steps=1500, batch_size=32, lr=3e-3)
    p.add_argument("--cell", choices=("vanilla", "lstm", "gru"), default="gru")
    p.add_argument("--hidden-size", type=arguments.positive_int, default=64)
    p.add_argument("--segments", type=arguments.positive_int, default=4)
    p.add_argument("--min-length", type=arguments.positive_int, default=10)
    p.add_argument("--max-length", type=arguments.positive_int, default=40)
    return p


if __name__ == "__main__":
    run(parser().parse_args())

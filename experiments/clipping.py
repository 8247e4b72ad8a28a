"""Exploding gradients tamed by clipping (Pascanu, Mikolov & Bengio 2013).

A vanilla tanh RNN whose recurrent matrix starts with spectral radius 1.5 (the
exploding side of the gradient-flow benchmark's sweep) is trained with plain
SGD on the adding problem, at two learning rates, without and with
``optax.clip_by_global_norm``. The threshold follows Pascanu et al.: the mean
gradient norm over a number of batches, measured here at initialisation.

    python experiments/clipping.py            # about 1 minute on a 2-core CPU

Writes ``clipping.png`` (loss and gradient norm over steps) and a results table.
"""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np
import optax

import jaxrnn
from jaxrnn import tasks, training
from jaxrnn.programs import arguments
from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs

from experiments._common import experiment_parser, fit, last_step_mse, nanmean_tail, regressor


def mean_gradient_norm(loss_fn, params, batch_at, batches: int) -> float:
    """Pascanu et al.'s heuristic for the threshold: the average gradient norm over many batches."""
    grad = jax.jit(jax.grad(lambda p, b: loss_fn(p, (), b, None)[0]))
    return float(np.mean([optax.tree.norm(grad(params, batch_at(10_000 + i))) for i in range(batches)]))


def run(args) -> dict:
    folder = run_folder("clipping", args.out)
    cell = jaxrnn.vanilla(args.hidden_size, recurrent_init=jax.nn.initializers.orthogonal(scale=args.radius))
    params = regressor(cell, 2, jax.random.key(args.seed))
    loss_fn = last_step_mse(cell)
    batch_at = lambda step: tasks.adding(jax.random.fold_in(jax.random.key(args.seed + 1), step), args.batch_size, args.length)
    threshold = mean_gradient_norm(loss_fn, params, batch_at, 50)

    runs = {}
    for lr in args.lrs:
        for clip in (None, threshold):
            name = f"lr={lr:g}, " + ("no clipping" if clip is None else f"clip_by_global_norm({clip:.3g})")
            optimizer = training.make_optimizer("sgd", lr, clip_norm=clip)
            runs[name], _ = fit(loss_fn, params, optimizer, batch_at, args.steps, desc=name)

    rows, results = [], {"threshold": threshold, "config": vars(args), "runs": {}}
    for name, hist in runs.items():
        loss = [h["loss"] for h in hist]
        norm = np.array([h["grad_norm"] for h in hist])
        bad = [h["step"] for h in hist if not h["finite"]]
        row = {
            "final_loss": nanmean_tail(loss),
            "nonfinite_steps": len(bad),
            "first_nonfinite_step": bad[0] if bad else None,
            "max_grad_norm": float(np.nanmax(np.where(np.isfinite(norm), norm, np.nan))) if np.isfinite(norm).any() else float("inf"),
            "spikes": int(np.sum(~(norm <= 10 * threshold))),  # non-finite counts as a spike
        }
        results["runs"][name] = row | {"loss": loss, "grad_norm": norm.tolist()}
        rows.append([name, row["final_loss"], f"{row['nonfinite_steps']} / {len(hist)}",
                     row["first_nonfinite_step"] or "-", row["spikes"], row["max_grad_norm"]])
    table = (f"Vanilla tanh RNN, H={args.hidden_size}, W_h = {args.radius} x orthogonal, adding problem T={args.length}, "
             f"SGD, {args.steps} steps, batch {args.batch_size}. Threshold = mean gradient norm over 50 batches "
             f"at init = {threshold:.3g}. Baseline MSE {tasks.ADDING_BASELINE_MSE:.3f}.\n\n")
    table += markdown_table(["run", "final MSE (last 10%)", "non-finite steps", "first non-finite",
                             "steps with norm > 10x threshold", "max finite grad norm"], rows)
    plot(runs, threshold, folder)
    write_outputs(folder, table, results)
    return results


def plot(runs: dict, threshold: float, folder) -> None:
    plt = pyplot()
    fig, (ax_loss, ax_norm) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, hist in runs.items():
        steps = [h["step"] for h in hist]
        line, = ax_loss.plot(steps, [h["loss"] if h["finite"] else np.nan for h in hist], lw=0.8, label=name)
        norm = np.array([h["grad_norm"] for h in hist])
        ax_norm.plot(steps, np.where(np.isfinite(norm), norm, np.nan), lw=0.8, color=line.get_color())
        bad = [h["step"] for h in hist if not h["finite"]]
        if bad:
            ax_norm.plot(bad, np.full(len(bad), 1e12), "x", ms=3, color=line.get_color())
        over = [h["step"] for h in hist if not (h["loss"] <= 1.0)]
        if over:
            ax_loss.annotate(f"{name}: loss > 1 or non-finite from step {over[0]}", xy=(over[0], 1.0),
                             xytext=(over[0] + 100, 0.7), fontsize=7, color=line.get_color(),
                             arrowprops={"arrowstyle": "->", "color": line.get_color()})
    ax_loss.set_ylim(0.05, 1.0)
    ax_loss.axhline(1 / 6, color="gray", ls="--", lw=1, label="baseline")
    ax_norm.axhline(threshold, color="black", ls=":", lw=1, label="clipping threshold")
    ax_loss.set(yscale="log", xlabel="SGD step", ylabel="training MSE (gaps: non-finite)", title="loss")
    ax_norm.set(yscale="log", xlabel="SGD step", ylabel="gradient global norm before clipping",
                title="gradient norm (x at top: non-finite)")
    ax_loss.legend(fontsize=7)
    ax_norm.legend(fontsize=7)
    save_figure(fig, folder / "clipping.png")


def parser() -> arguments.ArgumentParser:
    p = experiment_parser("clipping", __doc__, steps=1500, batch_size=32, lr=None)
    p.add_argument("--radius", type=arguments.positive_float, default=1.5, help="spectral radius of the initial W_h")
    p.add_argument("--lrs", nargs="+", type=arguments.positive_float, default=[0.05, 0.1])
    p.add_argument("--length", type=arguments.positive_int, default=20)
    p.add_argument("--hidden-size", type=arguments.positive_int, default=64)
    return p


if __name__ == "__main__":
    run(parser().parse_args())

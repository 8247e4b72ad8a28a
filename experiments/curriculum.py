"""A sequence-length curriculum against training directly on long sequences.

The same model (a GRU by default), optimizer and budget learn the adding problem
at T = 200, either on T = 200 from the start ("direct") or on lengths that grow
geometrically from 25 to 200 ("curriculum", :func:`jaxrnn.training.length_curriculum`).
Both are evaluated every ``--eval-every`` steps on one fixed batch of 1,000
sequences at T = 200; a run reaches the target when its MSE falls below
``--target`` (0.01, the usual "solved" line, 6% of the baseline).

    python experiments/curriculum.py          # a few minutes on a 2-core CPU

Writes ``curriculum.png`` and a results table: steps, sequence steps
processed, and seconds to the target for each run.
"""

from __future__ import annotations

import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn import tasks, training
from jaxrnn.programs import arguments
from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs

from experiments._common import experiment_parser, fit, last_step_mse, predict, regressor


def run(args) -> dict:
    folder = run_folder("curriculum", args.out)
    cell = jaxrnn.CELLS[args.cell](args.hidden_size)
    params = regressor(cell, 2, jax.random.key(args.seed))
    loss_fn = last_step_mse(cell)
    held_out = tasks.adding(jax.random.key(999), 1000, args.length)
    mse = jax.jit(lambda p: jnp.mean((predict(cell, p, held_out.xs)[:, -1] - held_out.targets) ** 2))
    schedules = {
        "direct": lambda step: args.length,
        "curriculum": training.length_curriculum(args.start, args.length, args.ramp_steps, stages=args.stages),
    }
    results = {"config": vars(args), "runs": {}}
    rows = []
    for name, length_at in schedules.items():
        key = jax.random.key(args.seed + 1)
        batch_at = lambda step: tasks.adding(jax.random.fold_in(key, step), args.batch_size, length_at(step))
        optimizer = training.make_optimizer("adam", args.lr, clip_norm=1.0)
        t0 = time.perf_counter()
        history, _ = fit(loss_fn, params, optimizer, batch_at, args.steps, desc=name,
                         evaluate=lambda p: float(mse(p)), eval_every=args.eval_every,
                         stop_when=lambda v: v < args.target and not args.full)
        seconds = time.perf_counter() - t0  # includes compiling one program per length
        evals = [(h["step"], h["eval"]) for h in history if "eval" in h]
        hit = next((s for s, v in evals if v < args.target), None)
        seq_steps = sum(length_at(s) * args.batch_size for s in range(hit or history[-1]["step"]))
        results["runs"][name] = {"evals": evals, "steps_to_target": hit, "sequence_steps_to_target": seq_steps if hit else None,
                                 "seconds": seconds, "lengths": [length_at(s) for s in range(history[-1]["step"])]}
        rows.append([name, hit or f"not within {args.steps}", f"{seq_steps:,}" if hit else "-",
                     f"{seconds:.0f}" if hit else "-", min(v for _, v in evals)])
    reached = {n: r["steps_to_target"] for n, r in results["runs"].items() if r["steps_to_target"]}
    results["first_to_target"] = min(reached, key=reached.get) if reached else None
    table = (f"{args.cell.upper()} H={args.hidden_size}, adding problem evaluated at T={args.length} (1,000 held-out "
             f"sequences), Adam {args.lr:g} + clip 1.0, batch {args.batch_size}, target MSE < {args.target}. "
             f"Curriculum: {args.start} -> {args.length} in {args.stages} geometric stages over {args.ramp_steps} steps.\n\n")
    table += markdown_table(["run", "steps to target", "sequence steps processed", "seconds to target",
                             "best held-out MSE"], rows)
    table += f"\nFirst to the target: **{results['first_to_target'] or 'neither'}**.\n"
    plot(results, args, folder)
    write_outputs(folder, table, results)
    return results


def plot(results: dict, args, folder) -> None:
    plt = pyplot()
    fig, (ax, ax_len) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for name, r in results["runs"].items():
        steps, values = zip(*r["evals"])
        ax.plot(steps, values, "o-", ms=3, label=name)
        ax_len.plot(np.arange(1, len(r["lengths"]) + 1), r["lengths"], label=name)
    ax.axhline(args.target, color="black", ls=":", lw=1, label=f"target {args.target}")
    ax.axhline(tasks.ADDING_BASELINE_MSE, color="gray", ls="--", lw=1, label="baseline")
    ax.set(yscale="log", xlabel="training step", ylabel=f"held-out MSE at T={args.length}",
           title="Adding problem: direct training against a length curriculum")
    ax_len.set(xlabel="training step", ylabel="training sequence length", title="length schedule")
    ax.legend(fontsize=8)
    ax_len.legend(fontsize=8)
    save_figure(fig, folder / "curriculum.png")


def parser() -> arguments.ArgumentParser:
    p = experiment_parser("curriculum", __doc__, steps=3000, batch_size=32, lr=3e-3)
    p.add_argument("--cell", choices=("vanilla", "lstm", "gru"), default="gru")
    p.add_argument("--hidden-size", type=arguments.positive_int, default=64)
    p.add_argument("--length", type=arguments.positive_int, default=200)
    p.add_argument("--start", type=arguments.positive_int, default=25)
    p.add_argument("--stages", type=arguments.positive_int, default=3)
    p.add_argument("--ramp-steps", type=arguments.nonnegative_int, default=600)
    p.add_argument("--target", type=arguments.positive_float, default=0.01)
    p.add_argument("--eval-every", type=arguments.positive_int, default=50)
    p.add_argument("--full", action="store_true", help="train the whole budget instead of stopping at the target")
    return p


if __name__ == "__main__":
    run(parser().parse_args())

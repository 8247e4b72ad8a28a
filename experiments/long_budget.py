"""Adding at T = 200 and copy memory at T = 100 on a paper's budget, with clipping and without: is the
gap that the default long-range run leaves a matter of budget?

At ``jaxrnn long-range``'s 2,000 steps every cell sits at the memoryless baseline of adding at T = 200 and
of copy memory at T = 100. Arjovsky et al. (2016) train their LSTM far longer: RMSProp at 1e-3 (decay
0.9), gradients clipped at 1 for the LSTM and the tanh RNN, batches of 20 or 50. In their figure 2 the
LSTM (128 units) on adding at T = 200 leaves the baseline after about 2,000 steps and is near 0 after
about 15,000; in figure 1 the LSTM (40 units) on copy at T = 100 creeps below the baseline, to about
0.145 against 0.173 after 1,000,000 examples. (Read in the authors' TeX draft and figure files,
``amarshah/complex_RNN``; :data:`jaxrnn.programs.long_range.PUBLISHED`.)

This trains the long-range program's models (:data:`jaxrnn.programs.long_range.MODELS`: same cells,
readout, held-out set and RMSProp at 1e-3; 64 units, batch 32, ``--seeds`` seeds side by side) for
``--steps`` steps: the tanh RNN and the LSTM each with global-norm clipping at 1 and without, the
chrono-initialised LSTM and the GRU with it. A run stops early once every seed has met the threshold.

    python experiments/long_budget.py                 # 10,000 steps: about 35 minutes on a 2-core CPU
    python experiments/long_budget.py --tasks copy_memory --models lstm gru --steps 31250
                                                      # copy's million examples at batch 32

Writes ``curves.png`` (held-out loss against steps, median of the seeds and each seed faint, beside the
baseline and the threshold), ``results.md`` (the table) and ``results.json`` (every curve), the latter
after each run so a crash keeps what finished.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from tqdm.auto import tqdm

from jaxrnn import tasks
from jaxrnn.programs import arguments, long_range
from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs

#: task -> the length it is trained at.
LENGTHS = {"adding": 200, "copy_memory": 100}
EVAL_SIZE = 512  # held-out sequences per task
#: The long-range program's models trained here: the tanh RNN and the LSTM with clipping and without.
MODELS = ("tanh", "tanh+clip", "lstm-noclip", "lstm", "lstm-chrono", "gru")


def held_out_baseline(task_name: str) -> float:
    """The memoryless predictor's loss on the held-out set the curves are measured on.

    Copy memory's is the task's baseline exactly (blanks certain, each recalled symbol one of 8); the
    adding problem's is the mean of (y - 1)^2 over the held-out targets y (0.148 against 1/6)."""
    if task_name != "adding":
        return tasks.TASKS[task_name].baseline(LENGTHS[task_name])
    targets = long_range.eval_batch(tasks.TASKS[task_name], LENGTHS[task_name], EVAL_SIZE).targets
    return float(np.mean((np.asarray(targets, np.float64) - 1.0) ** 2))


def below_half(run: dict) -> list[int | None]:
    """Per seed, the first evaluation step whose held-out loss is below half the memoryless baseline.

    Half, not just below: the held-out set's own memoryless loss differs from the task's by chance
    (:func:`held_out_baseline`: 0.148 for adding's, 11% under 1/6)."""
    loss = np.asarray(run["eval_loss"], np.float64)  # (evaluations, seeds)
    below = loss < 0.5 * run["baseline"]
    return [int(run["curve_steps"][int(np.argmax(below[:, s]))]) if below[:, s].any() else None
            for s in range(loss.shape[1])]


def row(run: dict) -> list[str]:
    """The table's cells for one run: final loss (median; each seed), lowest median, below half the baseline, solved."""
    loss = np.asarray(run["eval_loss"], np.float64)
    median = np.nanmedian(loss, axis=1)
    left = below_half(run)
    solved = sum(run["final_solved"])
    when = [a for a, ok in zip(run["solved_at"], run["final_solved"]) if ok]
    return [f"{median[-1]:.3g} ({', '.join(f'{v:.3g}' for v in loss[-1])})",
            f"{np.nanmin(median):.3g}",
            ", ".join("-" if s is None else f"{s:,}" for s in left),
            f"{solved}/{run['seeds']}" + (f" @{int(np.median(when)):,}" if when else ""),
            f"{run['steps_run']:,}"]


def plot(results: list[dict], path: pathlib.Path, steps: int, seeds: int, batch_size: int) -> None:
    plt = pyplot()
    names = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(max(8.0, 6.5 * len(names)), 4.2), squeeze=False)
    cell_of = lambda model: model.removesuffix("+clip").removesuffix("-noclip")  # clipped or not, one cell
    colors = {cell: f"C{i}" for i, cell in enumerate(dict.fromkeys(cell_of(m) for m in long_range.MODELS))}
    for ax, name in zip(axes[0], names):
        runs = [r for r in results if r["task"] == name]
        for r in runs:
            color = colors[cell_of(r["model"])]
            style = "-" if r["clipped"] else "--"
            loss = np.asarray(r["eval_loss"], np.float64)
            ax.plot(r["curve_steps"], loss, style, color=color, lw=0.6, alpha=0.25)
            ax.plot(r["curve_steps"], np.nanmedian(loss, axis=1), style, color=color, lw=1.6, label=f"{r['model']} ({'clipped' if r['clipped'] else 'unclipped'})")
        baseline, threshold, held_out = runs[0]["baseline"], runs[0]["threshold"], held_out_baseline(name)
        ax.axhline(baseline, color="k", ls=":", lw=1.2, label=f"memoryless baseline {baseline:.3g}")
        if abs(held_out - baseline) > 1e-3 * baseline:
            ax.axhline(held_out, color="k", ls="--", lw=0.8, label=f"memoryless, on the held-out set: {held_out:.3g}")
        ax.axhline(threshold, color="grey", ls="-.", lw=1, label=f"solved below {threshold:.3g}")
        ax.set_ylim(0, 1.9 * baseline)  # a diverged seed (loss 1e18) would flatten the rest
        ax.set_xlim(0, steps)
        ax.set_title(f"{name}, T = {runs[0]['length']}")
        ax.set_xlabel(f"training step (batch {batch_size})")
        ax.set_ylabel("held-out loss")
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.suptitle(f"RMSProp 1e-3, 64 units, {seeds} seeds (thin: each seed; thick: median); "
                 "solid: clipped at 1, dashed: unclipped", fontsize=9)
    save_figure(fig, path, rect=(0, 0, 1, 0.95))


def run(args) -> list[dict]:
    folder = run_folder("long-budget", args.out)
    jobs = [(t, name) for t in args.tasks for name in args.models]
    results = []
    for task_name, name in tqdm(jobs, desc="long-budget", unit="run"):
        model = long_range.MODELS[name]
        r = long_range.train(tasks.TASKS[task_name], model, LENGTHS[task_name], seeds=args.seeds,
                             steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                             eval_size=EVAL_SIZE)
        r = {k: v for k, v in r.items() if k not in ("params", "initial_params")}
        results.append(r | {"model": name, "clipped": model.clip_norm is not None})
        (folder / "results.json").write_text(json.dumps(results, indent=1))  # nothing lost on a crash
    write_outputs(folder, tables(results, args), {"config": vars(args), "results": results})
    plot(results, folder / "curves.png", args.steps, args.seeds, args.batch_size)
    return results


def tables(results: list[dict], args) -> str:
    """results.md: per task, a row per model."""
    text = (f"{args.seeds} seeds, up to {args.steps:,} steps of RMSProp (lr {args.lr}), batch {args.batch_size}, "
            f"64 units; held-out loss every {args.eval_every} steps; \"below half the baseline\": the first "
            f"evaluation there.\n")
    for task_name in args.tasks:
        runs = [r for r in results if r["task"] == task_name]
        text += (f"\n### {task_name}, T = {LENGTHS[task_name]}: baseline {runs[0]['baseline']:.4g} (on the held-out "
                 f"set {held_out_baseline(task_name):.4g}), solved below {runs[0]['threshold']:.3g}\n\n")
        text += markdown_table(
            ["model", "clipped at 1", "final loss, median (seeds)", "lowest median",
             "below half the baseline (step, per seed)", "solved at the end", "steps run", "published"],
            [[r["model"], "yes" if r["clipped"] else "no", *row(r),
              long_range.PUBLISHED.get((task_name, r["model"]), "")] for r in runs])
    return text


def parser() -> arguments.ArgumentParser:
    p = arguments.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=arguments.HelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(LENGTHS), default=list(LENGTHS))
    p.add_argument("--models", nargs="+", choices=list(long_range.MODELS), default=list(MODELS))
    p.add_argument("--steps", type=arguments.positive_int, default=10_000, help="step budget per run")
    p.add_argument("--seeds", type=arguments.positive_int, default=3)
    p.add_argument("--batch-size", type=arguments.positive_int, default=32)
    p.add_argument("--lr", type=arguments.positive_float, default=1e-3)
    p.add_argument("--eval-every", type=arguments.positive_int, default=250)
    p.add_argument("--out", help="output folder (default runs/long-budget-<time>)")
    return p


if __name__ == "__main__":
    run(parser().parse_args())

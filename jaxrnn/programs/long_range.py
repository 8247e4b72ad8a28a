"""Long-range dependency tasks, every cell, a ladder of lengths: ``jaxrnn long-range``.

For each task of :mod:`jaxrnn.tasks`, each model of :data:`DEFAULT_MODELS` (or of
:data:`MODELS`, with ``--models``: the linear minGRU, minLSTM and LRU too) and each
length of the ladder, ``--seeds`` independent runs train side by side (``vmap``
over seeds; ``lax.scan`` over ``--eval-every`` steps per dispatch) with the
same budget: RMSProp (lr 1e-3, as Arjovsky et al. 2016 and Tallec & Ollivier
2018), batch 32, ``--steps`` steps. Every model but ``tanh`` and ``lstm-noclip`` clips
the global gradient norm at 1 (Pascanu et al. 2013). A model is one cell and a linear
readout of its last output (many-to-one) or of every output (copy memory).

Writes to ``runs/long-range-<time>/`` (or ``--out``):

* ``results.md`` / ``results.json``: per task, model x length: final loss
  (median over seeds; accuracy where it applies), seeds solved, median steps to
  solve, and the published result beside it with its source;
* ``curves.png``: held-out loss against steps, per task, at the longest length
  where some seed met the threshold;
* ``gradients.png``: ``log10 ||dL/dh_t||`` of each trained model against its
  untrained self (:func:`jaxrnn.diagnostics.gradient_profile`) on
  ``--profile-task`` (temporal order by default) at its longest length.

    jaxrnn long-range                 # default ladder: under 30 minutes on a 2-core CPU
    jaxrnn long-range --full          # the full ladder, 10,000 steps (a GPU's work)
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxrnn import cells, diagnostics, tasks, training
from jaxrnn.programs import arguments
from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs
from jaxrnn.unroll import scan

Array = jax.Array


class Model(NamedTuple):
    """How to build and train one contender."""

    cell: Callable[[int], cells.Cell]  # hidden_size -> cell
    clip_norm: float | None
    chrono: bool = False  # re-initialise the LSTM gate biases with chrono_init(T_max = sequence length)


MODELS: dict[str, Model] = {
    "tanh": Model(lambda h: cells.vanilla(h), None),
    "tanh+clip": Model(lambda h: cells.vanilla(h), 1.0),
    # Le et al. 2015: ReLU, W_h = I, biases 0, input weights N(0, 0.001^2).
    "irnn": Model(lambda h: cells.vanilla(h, activation="relu", recurrent_init=cells.identity_init(),
                                          kernel_init=jax.nn.initializers.normal(1e-3)), 1.0),
    "lstm": Model(lambda h: cells.lstm(h, forget_bias=1.0), 1.0),
    "lstm-noclip": Model(lambda h: cells.lstm(h, forget_bias=1.0), None),  # by name: clipping's effect
    "lstm-chrono": Model(lambda h: cells.lstm(h, forget_bias=0.0), 1.0, chrono=True),
    "gru": Model(lambda h: cells.gru(h), 1.0),
    # Feng et al. 2024 and Orvieto et al. 2023: linear in the carry (on the loop: the associative scan is no faster on a CPU,
    # docs/parallel.md). Asked for by name, outside the default run.
    "mingru": Model(lambda h: cells.mingru(h), 1.0),
    "minlstm": Model(lambda h: cells.minlstm(h), 1.0),
    "lru": Model(lambda h: cells.lru(h), 1.0),  # h / 2 complex units
}
DEFAULT_MODELS = ("tanh", "tanh+clip", "irnn", "lstm", "lstm-chrono", "gru")

LADDER = {  # default: sized for a 2-core CPU
    "adding": (50, 100, 200),
    "copy_memory": (10, 50, 100),
    "temporal_order": (50, 100),
    "temporal_order3": (100,),
    "digits": (64,),
    "permuted_digits": (64,),
}
FULL_LADDER = {
    "adding": (50, 100, 200, 400, 750),
    "copy_memory": (10, 50, 100, 200, 500),
    "temporal_order": (50, 100, 200),
    "temporal_order3": (100, 200),
    "digits": (64,),
    "permuted_digits": (64,),
}

#: What the papers report, beside our numbers. "checked": read in the authors' own text or
#: code; "lead": a claim passed on in the project's issue that could not be checked against
#: the paper text available here.
_URNN = "Arjovsky et al. 2016, checked in the authors' TeX draft and figure files"
PUBLISHED: dict[tuple[str, str], str] = {
    ("adding", "tanh"): "plain SGD fails beyond T≈20 (Pascanu et al. 2013; lead)",
    ("adding", "tanh+clip"): f"128 units, clipped at 1: at the baseline at every T = 100-750, for 36,000 steps "
                             f"at T = 200 (fig. 2; {_URNN}); with their regulariser too, solved to T=200 on 5/5 "
                             "seeds (Pascanu et al. 2013; lead)",
    ("adding", "lstm"): f"128 units, clipped at 1: below the baseline to T = 750, near 0 at T = 200 after about "
                        f"15,000 steps (fig. 2; {_URNN}); solved at T=200 and 750 (Tallec & Ollivier 2018; lead)",
    ("adding", "lstm-chrono"): "about 7x faster than forget bias 1 at T=750 (Tallec & Ollivier 2018; lead)",
    ("copy_memory", "tanh"): f"at the baseline at T = 100-500 (fig. 1; {_URNN})",
    ("copy_memory", "lstm"): f"40 units: at the baseline at T = 200-500; at T = 100 slowly below it, about 0.145 "
                             f"against 0.173 after 1,000,000 examples (fig. 1; {_URNN})",
    ("temporal_order", "tanh+clip"): "solved to T=200 on 5/5 seeds with clipping + regulariser "
                                     "(Pascanu et al. 2013; lead)",
    ("temporal_order", "lstm"): "solved at length 100-110 (Hochreiter & Schmidhuber 1997, exp. 6a; lead)",
    ("temporal_order3", "lstm"): "solved at length 100-110 (Hochreiter & Schmidhuber 1997, exp. 6b; lead)",
}


def model_fns(task: tasks.Task, model: Model, hidden: int, length: int):
    """(init(key) -> params, outputs(params, xs) -> readout, cell)."""
    cell = model.cell(hidden)

    def init(key: Array) -> dict:
        k_cell, k_chrono = jax.random.split(key)
        p = cell.init(k_cell, task.input_size)
        if model.chrono:
            p = cells.chrono_init(k_chrono, p, max_timescale=max(3.0, float(length)))
        # readout starts near the memoryless answer: 1.0 for adding, uniform logits otherwise
        b = jnp.full((task.output_size,), task.initial_output)
        return {"cell": p, "w": jnp.zeros((hidden, task.output_size)), "b": b}

    def outputs(params: dict, xs: Array) -> Array:
        ys, _ = scan(cell, params["cell"], xs)
        ys = ys if task.every_step else ys[:, -1]
        return ys @ params["w"] + params["b"]

    return init, outputs, cell


def eval_batch(task: tasks.Task, length: int, size: int) -> tasks.Batch:
    """The held-out set: the digits' test split, else a fixed batch from a key no training step uses."""
    if task.test_set is not None:
        return task.test_set()
    return jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(10**6), size, length)


def train(task: tasks.Task, model: Model, length: int, *, seeds: int, steps: int, hidden: int = 64,
          batch_size: int = 32, lr: float = 1e-3, eval_every: int = 100, eval_size: int = 512,
          stop_when_solved: bool = True) -> dict:
    """Train ``seeds`` runs of one (task, model, length); returns curves and final numbers."""
    init, outputs, cell = model_fns(task, model, hidden, length)
    optimizer = training.make_optimizer("rmsprop", lr, clip_norm=model.clip_norm)

    def loss_fn(params, carry, batch, key):
        del key
        return task.loss(outputs(params, batch.xs), batch.targets), (carry, {})

    keys = jax.random.split(jax.random.key(0), seeds)
    states = jax.vmap(lambda k: training.init_state(init(k), optimizer, k))(keys)
    initial_params = states.params
    data_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)

    def advance_one(state, data_key, first_step):
        """``eval_every`` steps of one seed; step ``s`` trains on the batch its data key folded with ``s`` draws."""
        batch_at = lambda step: task.sample(jax.random.fold_in(data_key, step), batch_size, length)
        steps_fn = training.make_steps(loss_fn, optimizer, batch_at, skip_nonfinite=True)
        state, metrics = steps_fn(state, first_step + jnp.arange(eval_every))
        return state, metrics["loss"]

    advance = jax.jit(jax.vmap(advance_one, in_axes=(0, 0, None), out_axes=(0, 1)))  # losses: (eval_every, seeds)

    held_out = eval_batch(task, length, eval_size)

    @jax.jit
    def evaluate(params):
        def one(p):
            out = outputs(p, held_out.xs)
            acc = task.accuracy(out, held_out.targets) if task.accuracy is not None else jnp.nan
            return task.loss(out, held_out.targets), acc

        return jax.vmap(one)(params)

    curve_steps, losses, accs, train_losses = [], [], [], []
    solved_at = [None] * seeds
    t0 = time.perf_counter()
    for first in range(0, steps, eval_every):
        states, train_loss = advance(states, data_keys, first)
        loss, acc = jax.device_get(evaluate(states.params))
        step = first + eval_every
        curve_steps.append(step)
        losses.append(loss.tolist())
        accs.append(acc.tolist())
        train_losses.append(np.nanmean(np.asarray(train_loss), axis=0).tolist())
        for s in range(seeds):
            err = None if task.accuracy is None else 1.0 - float(acc[s])
            if solved_at[s] is None and tasks.solved(task, length, float(loss[s]), err):
                solved_at[s] = step
        if stop_when_solved and all(v is not None for v in solved_at):
            break
    final_loss, final_acc = losses[-1], accs[-1]
    final_solved = [tasks.solved(task, length, float(final_loss[s]),
                                 None if task.accuracy is None else 1.0 - float(final_acc[s])) for s in range(seeds)]
    return {
        "task": task.name, "length": length, "seeds": seeds, "steps_run": curve_steps[-1],
        "curve_steps": curve_steps, "eval_loss": losses, "eval_accuracy": accs, "train_loss": train_losses,
        "final_loss": final_loss, "final_accuracy": final_acc, "solved_at": solved_at, "final_solved": final_solved,
        "skipped_steps": np.asarray(states.skipped).tolist(),
        "baseline": task.baseline(length), "threshold": task.threshold(length),
        "seconds": time.perf_counter() - t0, "params": states.params, "initial_params": initial_params,
    }


def gradient_profiles(task: tasks.Task, length: int, model_name: str, run: dict, hidden: int) -> dict:
    """log10 ||dL/dh_t|| (mean over a batch) of seed 0, untrained and trained.

    Both use the same probe loss, ``L = h_T . v`` for a fixed random unit
    vector v, so the curves differ only by what training did to the
    recurrence (the untrained readout is zero and would pass no gradient).
    """
    model = MODELS[model_name]
    _, _, cell = model_fns(task, model, hidden, length)
    batch = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(7), 64, length)
    v = jax.random.normal(jax.random.key(8), (hidden,))
    probe = lambda ys: jnp.mean(ys[:, -1] @ (v / jnp.linalg.norm(v)))
    seed0 = lambda tree: jax.tree_util.tree_map(lambda a: a[0], tree)
    profiles = {}
    for name, params in (("untrained", seed0(run["initial_params"])), ("trained", seed0(run["params"]))):
        prof = diagnostics.gradient_profile(cell, params["cell"], batch.xs, probe)
        mean = np.nanmean(np.where(np.isfinite(prof.log10_norm), prof.log10_norm, np.nan), axis=0)
        profiles[name] = {"log10_norm": mean.tolist(),
                          "decay_per_step": diagnostics.summarize(prof.log10_norm).decay_per_step}
    return profiles


def _median(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else float("nan")


def tables(results: list[dict]) -> str:
    text = ""
    for task_name in dict.fromkeys(r["task"] for r in results):
        task = tasks.TASKS[task_name]
        rows = [r for r in results if r["task"] == task_name]
        lengths = sorted({r["length"] for r in rows})
        base = ", ".join(f"T={t}: {task.baseline(t):.4g}" for t in lengths)
        if task.solved_on == "error":
            measure = "test error < " + ", ".join(f"{100 * task.threshold(t):.3g}%" for t in lengths)
        else:
            measure = "loss < " + ", ".join(f"{task.threshold(t):.3g}" for t in lengths)
        text += f"\n### {task_name}\n\nMemoryless baseline {base}; solved: {measure}. " \
                f"Cells: median over seeds of the held-out loss" + \
                (" / accuracy" if task.accuracy is not None else "") + \
                "; seeds solved at the end (k/n); @ the median step at which those seeds first met the " \
                "threshold; \"lost\" counts seeds that met it and then fell back.\n\n"
        table_rows = []
        for model in dict.fromkeys(r["model"] for r in rows):
            cells_ = []
            for t in lengths:
                r = next((r for r in rows if r["model"] == model and r["length"] == t), None)
                if r is None:
                    cells_.append("-")
                    continue
                loss = _median(r["final_loss"])
                acc = f" / {100 * _median(r['final_accuracy']):.1f}%" if task.accuracy is not None else ""
                solved = sum(r["final_solved"])
                when = _median([a for a, ok in zip(r["solved_at"], r["final_solved"]) if ok])
                lost = sum(a is not None and not ok for a, ok in zip(r["solved_at"], r["final_solved"]))
                cells_.append(f"{loss:.3g}{acc}; {solved}/{r['seeds']}" + (f" @{when:.0f}" if solved else "")
                              + (f" ({lost} lost)" if lost else ""))
            table_rows.append([model, *cells_, PUBLISHED.get((task_name, model), "")])
        text += markdown_table(["model", *(f"T={t}" for t in lengths), "published"], table_rows)
    return text


def write_plots(results: list[dict], profiles: dict, folder: pathlib.Path) -> None:
    plt = pyplot()
    names = list(dict.fromkeys(r["task"] for r in results))
    cols = min(3, len(names))
    rows_ = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5 * cols, 3.6 * rows_), squeeze=False)
    for ax, name in zip(axes.flat, names):
        runs = [r for r in results if r["task"] == name]
        # the longest length at which some seed met the threshold (where the cells part ways), else the shortest
        reached = [r["length"] for r in runs if any(a is not None for a in r["solved_at"])]
        length = max(reached) if reached else min(r["length"] for r in runs)
        baseline = tasks.TASKS[name].baseline(length)
        for r in runs:
            if r["length"] == length:
                loss = np.asarray(r["eval_loss"], np.float64)
                ax.plot(r["curve_steps"], np.nanmedian(loss, axis=1), label=r["model"])
        ax.axhline(baseline, color="k", ls="--", lw=1, label="memoryless baseline")
        ax.set_yscale("log")
        ax.set_ylim(top=3 * baseline)  # a diverged run (loss 1e18) would flatten everything else
        ax.set_title(f"{name}, T={length}")
        ax.set_xlabel("training step")
        ax.set_ylabel("held-out loss (median of seeds)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    save_figure(fig, folder / "curves.png")
    if profiles:
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, (model, prof) in enumerate(profiles["models"].items()):
            color = f"C{i}"
            for state, style in (("untrained", ":"), ("trained", "-")):
                y = np.asarray(prof[state]["log10_norm"])
                ax.plot(np.arange(len(y)), y, style, color=color,
                        label=f"{model} {state} ({prof[state]['decay_per_step']:+.3f}/step)")
        ax.set_xlabel("time step t (loss at the last step)")
        ax.set_ylabel("log10 ||dL/dh_t||")
        ax.set_title(f"Gradient reaching each step: {profiles['task']}, T={profiles['length']}")
        ax.legend(fontsize=6, ncol=2)
        save_figure(fig, folder / "gradients.png")


def run(args) -> pathlib.Path:
    arguments.check_cells({m: MODELS[m].cell for m in args.models}, [args.hidden], "--hidden")
    ladder = FULL_LADDER if args.full else LADDER
    steps = args.steps or (10_000 if args.full else 2_000)
    folder = run_folder("long-range", args.out)
    lengths = lambda t: ladder[t] if tasks.TASKS[t].fixed_length or not args.lengths else args.lengths
    jobs = [(t, m, n) for t in args.tasks for n in lengths(t) for m in args.models]
    results, kept = [], {}
    for task_name, model_name, length in tqdm(jobs, desc="long-range", unit="run"):
        r = train(tasks.TASKS[task_name], MODELS[model_name], length, seeds=args.seeds, steps=steps,
                  hidden=args.hidden, batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every)
        r["model"] = model_name
        kept[(task_name, model_name, length)] = r
        results.append({k: v for k, v in r.items() if k not in ("params", "initial_params")})
        (folder / "results.json").write_text(json.dumps(results, indent=1))  # nothing lost on a crash
    profiles = {}
    if args.profile_task in args.tasks:
        name = args.profile_task
        longest = max(r["length"] for r in results if r["task"] == name)
        profiles = {"task": name, "length": longest, "models": {
            m: gradient_profiles(tasks.TASKS[name], longest, m, kept[(name, m, longest)], args.hidden)
            for m in args.models}}
    text = (f"Long-range tasks: {args.seeds} seeds, up to {steps} steps of RMSProp (lr {args.lr}), batch "
            f"{args.batch_size}, {args.hidden} units; held-out loss every {args.eval_every} steps, runs stop "
            f"once every seed is solved.\n" + tables(results))
    if profiles:
        text += "\n### Gradient decay on {}, T={} (log10 per step, seed 0; probe loss h_T . v)\n\n".format(
            profiles["task"], profiles["length"])
        text += markdown_table(["model", "untrained", "trained"],
                               [[m, f"{p['untrained']['decay_per_step']:+.4f}", f"{p['trained']['decay_per_step']:+.4f}"]
                                for m, p in profiles["models"].items()])
    write_outputs(folder, text, {"results": results, "profiles": profiles})
    write_plots(results, profiles, folder)
    return folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--full", action="store_true", help="the full length ladder and 10,000 steps")
    p.add_argument("--tasks", nargs="+", default=list(LADDER), choices=list(tasks.TASKS))
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODELS),
                   help=f"default: {' '.join(DEFAULT_MODELS)} (the linear mingru, minlstm and lru by name)")
    p.add_argument("--lengths", nargs="+", type=arguments.positive_int,
                   help="override the ladder (every task but the digits)")
    p.add_argument("--seeds", type=arguments.positive_int, default=3)
    p.add_argument("--steps", type=arguments.positive_int,
                   help="step budget per run (default: 2,000; 10,000 with --full)")
    p.add_argument("--hidden", type=arguments.positive_int, default=64)
    p.add_argument("--batch-size", type=arguments.positive_int, default=32)
    p.add_argument("--lr", type=arguments.positive_float, default=1e-3)
    p.add_argument("--eval-every", type=arguments.positive_int, default=100)
    p.add_argument("--profile-task", default="temporal_order", choices=list(tasks.TASKS),
                   help="the task whose trained and untrained gradient profiles are plotted (longest length)")
    p.add_argument("--out", help="output folder (default: runs/long-range-<time>)")


def main(argv: list[str] | None = None) -> pathlib.Path:
    from jaxrnn.programs.cli import run_command

    parser = arguments.ArgumentParser(prog="jaxrnn long-range", description=__doc__.split("\n\n")[0],
                                      formatter_class=arguments.HelpFormatter)
    add_arguments(parser)
    return run_command(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    main()

"""The gradient-flow benchmark: how far back does the gradient reach, per cell and length?

For vanilla tanh (orthogonal recurrent matrix, and a sweep of its spectral
radius), LSTM (forget bias 0 and 1), GRU, and the linear minGRU, minLSTM and LRU
(whose gradient decays by exactly ``|a_t|`` per step), on the adding problem, at
initialisation and after a short training run, it measures with
:mod:`jaxrnn.diagnostics`:

* the gradient profile ``log10 ||dL/ds_t||`` against the distance from the
  loss, for every sequence length;
* its summary (decay per step, ``||dL/ds_1|| / ||dL/ds_T||``, effective horizon);
* the largest singular value of each step's Jacobian;
* the cost of the profile against one forward+backward pass at T = 10,000;
* how much of the profile a plain float32 backward pass would have lost.

Run ``jaxrnn gradient-flow`` (or ``python benchmarks/gradient_flow.py``); the
run folder it prints at the end holds the PNG plots, ``results.json``,
``profiles.csv`` and ``table.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import pathlib
import platform
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn import diagnostics, tasks, training
from jaxrnn.programs import arguments
from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure
from jaxrnn.programs.timing import median_seconds

INPUT_SIZE = 2  # the adding problem's (value, marker) channels


@dataclasses.dataclass(frozen=True)
class Model:
    """One row of the benchmark: a cell kind and how to initialise it."""

    name: str
    kind: str  # a key of jaxrnn.CELLS: models of a kind share compiled functions
    radius: float | None = None  # vanilla: spectral radius of the orthogonal W_h
    forget_bias: float = 1.0  # lstm


#: The named models, as ``--cells`` names them.
MODELS: dict[str, Model] = {
    "vanilla": Model("vanilla tanh (orthogonal)", "vanilla", radius=1.0),
    "lstm-fb0": Model("lstm (forget bias 0)", "lstm", forget_bias=0.0),
    "lstm-fb1": Model("lstm (forget bias 1)", "lstm", forget_bias=1.0),
    "gru": Model("gru", "gru"),
    "mingru": Model("mingru", "mingru"),
    "minlstm": Model("minlstm", "minlstm"),
    "lru": Model("lru", "lru"),  # hidden_size / 2 complex units
}


def models(cells: list[str], radii: list[float]) -> list[Model]:
    """The benchmark's models: the named cells, then the vanilla spectral-radius sweep."""
    unknown = set(cells) - set(MODELS)
    if unknown:
        raise ValueError(f"cells: unknown {sorted(unknown)}, expected some of {sorted(MODELS)}")
    sweep = [r for r in radii if not (r == 1.0 and "vanilla" in cells)]  # rho = 1 is "vanilla" itself
    return [MODELS[c] for c in cells] + [Model(f"vanilla tanh rho={r:g}", "vanilla", radius=r) for r in sweep]


def build(model: Model, hidden_size: int) -> jaxrnn.Cell:
    """The model's cell at the benchmark's hidden size."""
    if model.kind == "vanilla":
        return jaxrnn.vanilla(hidden_size, recurrent_init=jax.nn.initializers.orthogonal(scale=model.radius))
    if model.kind == "lstm":
        return jaxrnn.lstm(hidden_size, forget_bias=model.forget_bias)
    return jaxrnn.CELLS[model.kind](hidden_size)


def init_model(model: Model, hidden_size: int, key: jax.Array) -> dict:
    k_cell, k_out = jax.random.split(key)
    return {
        "cell": build(model, hidden_size).init(k_cell, INPUT_SIZE),
        "readout": {
            "w": jax.random.normal(k_out, (hidden_size,)) / np.sqrt(hidden_size),
            "b": jnp.ones(()),  # start at the baseline guess, 1.0
        },
    }


class Compiled:
    """jit-compiled functions, one set per cell kind: models of a kind share them."""

    def __init__(self, hidden_size: int, kinds: set[str]):
        self.hidden_size = hidden_size
        self.cells = {k: jaxrnn.CELLS[k](hidden_size) for k in kinds}
        self._cache: dict[tuple, Callable] = {}

    def _get(self, name: str, kind: str, make: Callable) -> Callable:
        if (name, kind) not in self._cache:
            self._cache[(name, kind)] = jax.jit(make(self.cells[kind]))
        return self._cache[(name, kind)]

    @staticmethod
    def loss_fn(readout, targets):
        """MSE of a linear readout of the last output: the adding problem's loss."""
        return lambda ys: jnp.mean((ys[:, -1] @ readout["w"] + readout["b"] - targets) ** 2)

    def profile(self, kind: str) -> Callable:
        return self._get("profile", kind, lambda cell: lambda p, xs, y: diagnostics.gradient_profile(
            cell, p["cell"], xs, self.loss_fn(p["readout"], y)))

    def log10_decay(self, kind: str) -> Callable:
        """A linear cell's ``log10 |a_t|`` (B, T, H): its gradient's decay per step, unit by unit."""
        return self._get("log10_decay", kind, lambda cell: lambda p, xs: jnp.log10(jnp.abs(
            cell.linear(p["cell"], cell.project(p["cell"], xs))[0])))

    def jacobian(self, kind: str) -> Callable:
        return self._get("jacobian", kind, lambda cell: lambda p, xs: diagnostics.jacobian_spectral_norms(
            cell, p["cell"], xs, num_iters=30))

    def plain(self, kind: str) -> Callable:
        return self._get("plain", kind, lambda cell: lambda p, xs, y: diagnostics.probe_gradients(
            cell, p["cell"], xs, self.loss_fn(p["readout"], y)))

    def loss(self, kind: str) -> Callable:
        return self._get("loss", kind, lambda cell: lambda p, xs, y: self.loss_fn(p["readout"], y)(
            jaxrnn.scan(cell, p["cell"], xs)[0]))

    def train_chunk(self, kind: str, optimizer: training.Optimizer, length: int, batch_size: int) -> Callable:
        """``steps(state, keys)``: a train step per key, each on a fresh adding batch, inside one
        compiled lax.scan (:func:`jaxrnn.training.make_steps`). Compiled once per kind, length and batch
        size, with the first ``optimizer`` given: a run trains every model with the same one."""

        def make(cell):
            def loss_fn(p, carry, batch, key):
                del key
                ys = jaxrnn.scan(cell, p["cell"], batch.xs)[0]
                return self.loss_fn(p["readout"], batch.targets)(ys), (carry, {})

            return training.make_steps(loss_fn, optimizer, lambda key: tasks.adding(key, batch_size, length))

        return self._get(f"train-{length}-{batch_size}", kind, make)


def train(compiled: Compiled, model: Model, params: dict, args, key: jax.Array, bar) -> tuple[dict, list[float]]:
    """A short Adam run on the adding problem at ``args.train_length``; returns params and losses."""
    optimizer = training.make_optimizer("adam", args.lr, clip_norm=1.0)
    state = training.init_state(params, optimizer, key)  # the key is unused: the loss draws no randomness
    chunk = 100
    run = compiled.train_chunk(model.kind, optimizer, args.train_length, args.batch_size)
    losses = []
    for i in range(args.train_steps // chunk):
        state, metrics = run(state, jax.random.split(jax.random.fold_in(key, i), chunk))
        losses.extend(np.asarray(metrics["loss"]).tolist())
        bar.update(1)
        bar.set_postfix(model=model.name, loss=f"{np.mean(losses[-chunk:]):.4f}")
    return state.params, losses


def cost_check(compiled: Compiled, length: int, batch_size: int, key: jax.Array) -> list[dict]:
    """Wall time of the gradient profile against one forward+backward pass (grad wrt params)."""
    rows = []
    batch = tasks.adding(key, batch_size, length)
    for kind in ("vanilla", "lstm"):
        params = init_model(Model(kind, kind, radius=1.0), compiled.hidden_size, key)
        grad = jax.jit(jax.grad(compiled.loss(kind)))
        t_grad = median_seconds(grad, params, batch.xs, batch.targets)
        t_prof = median_seconds(compiled.profile(kind), params, batch.xs, batch.targets)
        rows.append({"cell": kind, "T": length, "forward_backward_s": t_grad, "profile_s": t_prof,
                     "ratio": t_prof / t_grad})
    return rows


def summarize_row(phase: str, model: Model, length: int, log10_norm: np.ndarray) -> dict:
    s = diagnostics.summarize(log10_norm)
    return {"phase": phase, "model": model.name, "kind": model.kind, "radius": model.radius, "T": length,
            "log10_ratio": s.log10_ratio, "decay_per_step": s.decay_per_step,
            "effective_horizon": s.effective_horizon}


def run(args) -> pathlib.Path:
    all_models = models(args.cells, args.radii)
    arguments.check_cells({m.kind: jaxrnn.CELLS[m.kind] for m in all_models}, [args.hidden_size], "--hidden-size")
    out = run_folder("gradient-flow", args.out)
    compiled = Compiled(args.hidden_size, {m.kind for m in all_models})
    trained_models = [m for m in all_models if m.radius in (None, 1.0)] if args.train_steps else []
    lengths = sorted(args.lengths)
    jac_length = max([t for t in lengths if t <= 300] or lengths[:1])

    results: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "machine": {"platform": platform.platform(), "devices": [str(d) for d in jax.devices()],
                    "jax": jax.__version__},
        "summaries": [], "profiles": {}, "jacobian": {}, "training": {}, "underflow": [], "cost": [],
        "linear_decay": {},
    }
    csv_file = (out / "profiles.csv").open("w", newline="")
    writer = csv.writer(csv_file)
    writer.writerow(["phase", "model", "T", "distance", "log10_norm_mean", "log10_norm_min", "log10_norm_max"])

    def measure(phase: str, model: Model, params: dict, seed: int):
        for length in lengths:
            batch = tasks.adding(jax.random.key(10_000 + length), args.batch_size, length)
            prof = compiled.profile(model.kind)(params, batch.xs, batch.targets)
            key = f"{phase}|{model.name}|{length}"
            results["profiles"].setdefault(key, []).append(np.asarray(prof.log10_norm))
            if length == max(lengths) and seed == args.seeds[0]:
                plain = compiled.plain(model.kind)(params, batch.xs, batch.targets)
                zero = np.all([np.all(np.asarray(g) == 0, axis=-1) for g in jax.tree_util.tree_leaves(plain)], axis=0)
                results["underflow"].append({
                    "phase": phase, "model": model.name, "T": length,
                    "plain_float32_zero_steps": int(zero.sum()), "steps": int(zero.size),
                    "flagged_steps": int(np.asarray(prof.plain_underflow).sum()),
                    "min_log10_norm": float(np.nanmin(prof.log10_norm)),
                })
            if length == max(lengths) and compiled.cells[model.kind].linear is not None:
                log10_a = np.asarray(compiled.log10_decay(model.kind)(params, batch.xs))  # (B, T, H)
                results["linear_decay"].setdefault(f"{phase}|{model.name}", []).append(
                    {"mean": float(log10_a.mean()), "slowest_unit": float(log10_a.mean(axis=(0, 1)).max())})
            if length == jac_length:
                sig = compiled.jacobian(model.kind)(params, batch.xs)
                results["jacobian"].setdefault(f"{phase}|{model.name}", []).append(np.asarray(sig).mean(0))
            bar.update(1)

    jobs = len(args.seeds) * (len(lengths) * (len(all_models) + len(trained_models))
                              + len(trained_models) * (args.train_steps // 100))
    bar = tqdm(total=jobs, desc="gradient flow", unit="job", smoothing=0.0)
    for seed in args.seeds:
        for model in all_models:
            bar.set_postfix(model=model.name, phase="init")
            measure("init", model, init_model(model, args.hidden_size, jax.random.key(seed)), seed)
        for model in trained_models:
            params = init_model(model, args.hidden_size, jax.random.key(seed))
            params, losses = train(compiled, model, params, args, jax.random.key(1000 + seed), bar)
            results["training"].setdefault(model.name, []).append(losses)
            measure("trained", model, params, seed)
    bar.close()

    # Aggregate over seeds and batch (mean of log10), write the CSV rows and summaries.
    for key, profs in results["profiles"].items():
        phase, name, length = key.split("|")
        stacked = np.concatenate(profs, axis=0)  # (seeds * B, T)
        mean = np.mean(stacked, axis=0)
        model = next(m for m in all_models if m.name == name)
        results["summaries"].append(summarize_row(phase, model, int(length), stacked))
        for t in range(int(length)):
            writer.writerow([phase, name, length, int(length) - 1 - t, f"{mean[t]:.6g}",
                             f"{stacked[:, t].min():.6g}", f"{stacked[:, t].max():.6g}"])
        results["profiles"][key] = mean.tolist()
    csv_file.close()
    results["jacobian"] = {k: np.mean(v, axis=0).tolist() for k, v in results["jacobian"].items()}
    results["linear_decay"] = {k: {m: float(np.mean([s[m] for s in v])) for m in v[0]}
                               for k, v in results["linear_decay"].items()}
    results["final_mse"] = {k: [float(np.mean(run[-100:])) for run in v] for k, v in results["training"].items()}
    results["training"] = {k: np.mean(v, axis=0).tolist() for k, v in results["training"].items()}

    if args.cost_length:
        results["cost"] = cost_check(compiled, args.cost_length, args.batch_size, jax.random.key(0))

    table = tables(results, lengths)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    plot(results, all_models, trained_models, lengths, jac_length, out)
    print(table)
    print(f"\nwrote {out}/: gradient_decay.png, gradient_decay_by_length.png, spectral_radius.png, jacobian.png, "
          "training.png, results.json, profiles.csv, table.md")
    return out


def tables(results: dict, lengths: list[int]) -> str:
    """The run's tables in markdown: one per summary metric, then training, underflow and cost."""
    rows = results["summaries"]
    names = list(dict.fromkeys((r["phase"], r["model"]) for r in rows))
    get = {(r["phase"], r["model"], r["T"]): r for r in rows}
    fmt = {
        "log10_ratio": ("log10 ||dL/ds_1|| / ||dL/ds_T||", lambda v: f"{v:.1f}"),
        "decay_per_step": ("decay per step (log10 units, fitted)", lambda v: f"{v:+.4f}"),
        "effective_horizon": ("effective horizon (steps to fall below 1e-3 of the norm at the loss)",
                              lambda v: "> T" if np.isinf(v) else f"{v:.0f}"),
    }
    lines = [f"Adding problem, hidden size {results['config']['hidden_size']}, "
             f"batch {results['config']['batch_size']}, seeds {results['config']['seeds']}; "
             f"'trained' = {results['config']['train_steps']} Adam steps at T = {results['config']['train_length']}.\n"]
    table = lambda header, rows, align: markdown_table(header, rows, align).rstrip("\n")
    for metric, (title, f) in fmt.items():
        lines.append(f"\n**{title}**\n")
        lines.append(table(["cell", "phase"] + [f"T={t}" for t in lengths],
                           [[name, phase] + [f(get[(phase, name, t)][metric]) if (phase, name, t) in get else ""
                                             for t in lengths] for phase, name in names],
                           "ll" + "r" * len(lengths)))
    if results.get("final_mse"):
        seeds = results["config"]["seeds"]
        lines.append(f"\n**adding-problem MSE after training** (mean of the last 100 steps, per seed; baseline "
                     f"{tasks.ADDING_BASELINE_MSE:.3f}, solved below 0.01)\n")
        lines.append(table(["cell"] + [f"seed {s}" for s in seeds],
                           [[name] + [f"{v:.4f}" for v in finals] for name, finals in results["final_mse"].items()],
                           "l" + "r" * len(seeds)))
    if results.get("linear_decay"):
        T = max(lengths)
        lines.append(f"\n**the linear cells' decay from their coefficients** (T = {T}): ``dL/dh_(t-1) = a_t dL/dh_t`` "
                     "unit by unit, so each unit's gradient falls by log10 |a_t| per step; the norm follows the "
                     "slowest units\n")
        fitted = {(r["phase"], r["model"]): r["decay_per_step"] for r in rows if r["T"] == T}
        lines.append(table(["cell", "phase", "mean log10 |a_t|", "slowest unit's mean log10 |a_t|",
                            "fitted decay per step of the norm"],
                           [[key.split("|")[1], key.split("|")[0], f"{v['mean']:+.4f}", f"{v['slowest_unit']:+.4f}",
                             f"{fitted.get(tuple(key.split('|')), float('nan')):+.4f}"]
                            for key, v in results["linear_decay"].items()], "llrrr"))
    if results["underflow"]:
        lines.append("\n**float32 underflow** (T = {}): steps where plain float32 autodiff returns exactly 0, "
                     "which the renormalised profile measures\n".format(results["underflow"][0]["T"]))
        lines.append(table(["cell", "phase", "plain float32 zero steps", "smallest log10 norm measured"],
                           [[r["model"], r["phase"], f"{r['plain_float32_zero_steps']} / {r['steps']}",
                             f"{r['min_log10_norm']:.1f}"] for r in results["underflow"]], "llrr"))
    if results["cost"]:
        lines.append("\n**cost of the one-pass profile** (median wall time)\n")
        lines.append(table(["cell", "T", "forward+backward", "profile", "ratio"],
                           [[r["cell"], r["T"], f"{1e3 * r['forward_backward_s']:.0f} ms",
                             f"{1e3 * r['profile_s']:.0f} ms", f"{r['ratio']:.2f}"] for r in results["cost"]], "lrrrr"))
    return "\n".join(lines) + "\n"


def plot(results: dict, all_models, trained_models, lengths, jac_length, out: pathlib.Path) -> None:
    plt = pyplot()
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(lengths)))
    phases = ["init", "trained"] if trained_models else ["init"]

    # 1. The headline: log10 gradient norm against (linear) distance from the loss at the longest length, every
    # cell on the same axes, a panel per phase: exponential decay is a straight line whose slope is the decay
    # per step, and the cells compare by eye.
    longest = max(lengths)
    named = [m for m in all_models if m.radius in (None, 1.0)]  # the cells, not the radius sweep's variants
    palette = {m.name: plt.cm.tab10(i) for i, m in enumerate(named)}
    # Each panel its own y range: trained, the gated cells' curves span a few decades, at init hundreds.
    fig, axes = plt.subplots(1, len(phases), figsize=(7 * len(phases), 4.6), squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for model in named:
            prof = results["profiles"].get(f"{phase}|{model.name}|{longest}")
            if prof is not None:
                ax.plot(np.arange(longest)[::-1], prof, color=palette[model.name], lw=1.4, label=model.name)
        ax.axhline(np.log10(np.finfo(np.float32).tiny), color="black", ls=":", lw=1,
                   label="float32 smallest normal")
        ax.set_title(f"{phase}, T = {longest}", fontsize=10)
        ax.set_xlabel("distance from the loss (steps)")
        ax.set_ylabel("log10 ||dL/ds_t||")
        ax.legend(fontsize=7)
    fig.suptitle("Gradient reaching each step back from a loss at the last step (adding problem): "
                 "the slope is the decay per step")
    save_figure(fig, out / "gradient_decay.png")

    # 1b. The same per cell, a line per length, against log distance (short lengths visible beside long ones).
    fig, axes = plt.subplots(len(phases), len(named), figsize=(4 * len(named), 3.4 * len(phases)),
                             squeeze=False, sharey=True)
    for row, phase in enumerate(phases):
        for col, model in enumerate(named):
            ax = axes[row, col]
            for length, color in zip(lengths, colors):
                prof = results["profiles"].get(f"{phase}|{model.name}|{length}")
                if prof is not None:  # distance + 1 so that the loss step sits at 1 on a log axis
                    ax.plot(np.arange(length)[::-1] + 1, prof, color=color, label=f"T={length}")
            ax.axhline(np.log10(np.finfo(np.float32).tiny), color="red", ls=":", lw=1)
            ax.set_title(f"{model.name} ({phase})", fontsize=10)
            ax.set_xscale("log")
            ax.set_xlabel("distance from the loss + 1 (steps)")
            if col == 0:
                ax.set_ylabel("log10 ||dL/ds_t||")
    axes[0, 0].legend(fontsize=8)
    axes[0, -1].text(0.98, 0.02, "red: float32 smallest normal", transform=axes[0, -1].transAxes,
                     ha="right", fontsize=7, color="red")
    fig.suptitle("Gradient reaching each step back from a loss at the last step (adding problem)")
    save_figure(fig, out / "gradient_decay_by_length.png")

    # 2. decay per step against the spectral radius of W_h (vanilla tanh), gated cells as references.
    summ = [r for r in results["summaries"] if r["phase"] == "init"]
    sweep_length = max([t for t in lengths if t <= 300] or lengths)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for length, color in zip(lengths, colors):
        pts = sorted((r["radius"], r["decay_per_step"]) for r in summ
                     if r["kind"] == "vanilla" and r["T"] == length and r["radius"] is not None)
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, label=f"vanilla tanh, T={length}")
    radii = np.array(sorted({r["radius"] for r in summ if r["radius"] is not None}))
    if len(radii):
        ax.plot(radii, np.log10(radii), "k--", lw=1, label="linear RNN: log10(rho)")
    gated = [r for r in summ if r["kind"] != "vanilla" and r["T"] == sweep_length]
    styles = itertools.cycle([":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (3, 1)), (0, (6, 2)), "--"])
    for r, ls in zip(gated, styles):
        # linear cells in blue, gated ones in red (a cell of 2 units: the LRU's smallest, one complex unit)
        linear = jaxrnn.CELLS[r["kind"]](2).linear is not None
        ax.axhline(r["decay_per_step"], ls=ls, lw=1.4, color="tab:blue" if linear else "tab:red",
                   label=f"{r['model']} (T={sweep_length})")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("spectral radius of W_h (orthogonal x rho)")
    ax.set_ylabel("decay per step (log10 units)")
    ax.set_title("Vanishing (< 0) and exploding (> 0) regimes at initialisation", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, out / "spectral_radius.png")

    # 3. the largest singular value of each step's Jacobian.
    fig, ax = plt.subplots(figsize=(7, 4))
    palette = {m.name: plt.cm.tab10(i) for i, m in enumerate(trained_models or all_models)}
    for key, sig in results["jacobian"].items():
        phase, name = key.split("|")
        if name in palette:
            ax.plot(sig, color=palette[name], ls="-" if phase == "init" else "--", lw=1, label=f"{name} ({phase})")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("time step t")
    ax.set_ylabel("sigma_max(ds_t / ds_{t-1})")
    ax.set_title(f"Largest singular value of each step's Jacobian (T = {jac_length}, batch mean)\n"
                 "an upper bound on the gradient's growth per step, not its rate", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, out / "jacobian.png")

    # 4. training curves of the short adding-problem run.
    if results["training"]:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for name, losses in results["training"].items():
            smooth = np.convolve(losses, np.ones(25) / 25, mode="valid")
            ax.plot(smooth, label=name)
        ax.axhline(tasks.ADDING_BASELINE_MSE, color="gray", ls="--", lw=1, label="baseline (predict 1.0)")
        ax.set_yscale("log")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("training MSE")
        ax.set_title(f"Adding problem at T = {results['config']['train_length']}", fontsize=10)
        ax.legend(fontsize=7)
        save_figure(fig, out / "training.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cells", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to train and profile")
    parser.add_argument("--radii", nargs="*", type=arguments.positive_float, default=[0.5, 0.75, 1.0, 1.25, 1.5],
                        help="spectral radii of W_h for the vanilla tanh sweep (at init)")
    parser.add_argument("--lengths", nargs="+", type=arguments.positive_int, default=[10, 30, 100, 300, 1000])
    parser.add_argument("--hidden-size", type=arguments.positive_int, default=64)
    parser.add_argument("--batch-size", type=arguments.positive_int, default=32)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="initialisation and data seeds; profiles are averaged over them")
    parser.add_argument("--train-steps", type=arguments.int_at_least(0, multiple_of=100), default=1500,
                        help="0 skips training (multiple of 100)")
    parser.add_argument("--train-length", type=arguments.positive_int, default=100)
    parser.add_argument("--lr", type=arguments.positive_float, default=3e-3)
    parser.add_argument("--cost-length", type=arguments.nonnegative_int, default=10_000,
                        help="T of the profile-cost check (0 skips it)")
    parser.add_argument("--out", help="run folder (default: runs/gradient-flow-<timestamp>)")


def main(argv: list[str] | None = None) -> None:
    from jaxrnn.programs.cli import run_command

    parser = arguments.ArgumentParser(prog="jaxrnn gradient-flow", description=__doc__.split("\n\n")[0],
                                      formatter_class=arguments.HelpFormatter)
    add_arguments(parser)
    run_command(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    main()

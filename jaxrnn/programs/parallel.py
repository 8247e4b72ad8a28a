"""Every step at once against one step after another: the linear cells' prefix scan, and DEER and
quasi-DEER for the nonlinear cells.

    python benchmarks/parallel.py --cells mingru minlstm --lengths 100 1000 10000 100000 --batch 8 --hidden 64
    python benchmarks/parallel.py --cells gru --hidden 8 16 --lengths 100 1000 10000 --batch 8

For each cell, batch, width and length, forward and forward+backward
(gradients of the summed squared outputs with respect to parameters and
inputs), interleaved in one process as ``jaxrnn speed`` times its peers:

- ``loop``: ``jaxrnn.scan`` one step after another (the ``lax.scan`` loop);
- a linear cell's ``associative``: ``jaxrnn.scan(..., parallel="associative")``;
  a nonlinear cell's ``deer`` and ``quasi-deer``: ``jaxrnn.scan(...,
  parallel=...)``, Newton's method (:mod:`jaxrnn.newton`), whose iterations
  and convergence are recorded from one more call of
  :func:`jaxrnn.newton.solve` on the same inputs (DEER keeps T x B
  Jacobians of D x D: at D = 2H = 128 and T = 10,000, B = 8, 5 GB each;
  keep the nonlinear cells' H small);
- ``jaxrnn gru`` / ``jaxrnn lstm`` / ``jaxrnn vanilla``: the nonlinear cell
  (the one a linear cell stands in for: minGRU and the LRU the GRU, minLSTM the LSTM) run
  as jaxrnn runs it by default (on a CPU, its native kernel);
- ``flax``: flax's ``nn.RNN`` over that nonlinear cell.

The table gives each one's milliseconds and the loop's time over the fastest
parallel method's, and the run ends with the lengths at which a parallel
method was the faster. Writes the JSON and a figure (time against T, log-log).
"""

from __future__ import annotations

import functools
import json

import jax
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn import newton
from jaxrnn.programs import arguments, speed
from jaxrnn.programs.outputs import markdown_table, pyplot, save_figure

STANDS_FOR = {"mingru": "gru", "minlstm": "lstm", "lru": "gru"}  # the nonlinear cell each linear one stands in for
LINEAR_CELLS = tuple(STANDS_FOR)
NONLINEAR_CELLS = ("vanilla", "gru", "lstm")


def parallel_methods(kind: str) -> tuple[str, ...]:
    """The ``jaxrnn.scan(parallel=...)`` values timed for ``kind``."""
    return ("associative",) if kind in LINEAR_CELLS else ("deer", "quasi-deer")


def makers(kind: str) -> dict:
    """``{name: maker(kind, B, T, H, with_grad)}``, as :func:`jaxrnn.programs.speed.run_case` takes them."""
    other = STANDS_FOR.get(kind, kind)
    made = {"loop": lambda k, B, T, H, g: speed.make_jaxrnn(k, B, T, H, g, kernel="xla")}
    for method in parallel_methods(kind):
        made[method] = lambda k, B, T, H, g, method=method: speed.make_jaxrnn(k, B, T, H, g, parallel=method)
    made[f"jaxrnn {other}"] = lambda k, B, T, H, g: speed.make_jaxrnn(other, B, T, H, g)
    made["flax"] = lambda k, B, T, H, g: speed.make_flax(other, B, T, H, g)
    return made


@functools.lru_cache(maxsize=None)
def newton_reports(kind: str, B: int, T: int, H: int) -> dict:
    """``{method: {"iterations", "converged"}}`` of :func:`jaxrnn.newton.solve` on the inputs the timed
    calls get (those of :func:`jaxrnn.programs.speed.make_jaxrnn`)."""
    cell = speed.make_cell(kind, H, "tanh")
    params = cell.init(jax.random.key(0), H)
    xs = jax.random.normal(jax.random.key(1), (B, T, H))
    out = {}
    for method in parallel_methods(kind):
        report = jax.jit(lambda x: newton.solve(cell, params, x, method=method)[2])(xs)
        out[method] = {"iterations": int(report.iterations), "converged": bool(report.converged)}
    return out


def best_parallel(r: dict) -> str | None:
    """The fastest parallel method of a result row, or None if none was timed."""
    timed = [m for m in parallel_methods(r["cell"]) if m in r["ms"]]
    return min(timed, key=r["ms"].get) if timed else None


def table(results: list[dict]) -> str:
    names = list(dict.fromkeys(name for r in results for name in makers(r["cell"])))
    head = ["cell", "mode", "B", "H", "T", *(f"{n} ms" for n in names), "loop / fastest parallel", "iterations"]
    rows = []
    for r in results:
        ms, best = r["ms"], best_parallel(r)
        fmt = lambda name: f"{ms[name]:.2f}" if name in ms else r["missing"].get(name, "-")
        ratio = f"{ms['loop'] / ms[best]:.2f}x ({best})" if best and "loop" in ms else "-"
        its = ", ".join(f"{m} {v['iterations']}{'' if v['converged'] else ' (not converged)'}"
                        for m, v in r.get("iterations", {}).items()) or "-"
        rows.append([r["cell"], r["mode"], r["B"], r["H"], r["T"], *(fmt(n) for n in names), ratio, its])
    return markdown_table(head, rows)


def scan_wins(results: list[dict]) -> dict[str, list[int]]:
    """``{"cell mode B=.. H=..": the lengths T at which a parallel method beat the loop}``."""
    out: dict[str, list[int]] = {}
    for r in sorted(results, key=lambda r: r["T"]):
        wins = out.setdefault(f"{r['cell']} {r['mode']} B={r['B']} H={r['H']}", [])
        best = best_parallel(r)
        if best and r["ms"][best] < r["ms"].get("loop", 0.0):
            wins.append(r["T"])
    return out


def plot(results: list[dict], path) -> None:
    """Time against T, log-log, one panel per (cell, mode, B, H)."""
    plt = pyplot()
    panels = list(dict.fromkeys((r["cell"], r["mode"], r["B"], r["H"]) for r in results))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (cell, mode, B, H) in zip(axes[0], panels):
        rows = sorted((r for r in results if (r["cell"], r["mode"], r["B"], r["H"]) == (cell, mode, B, H)),
                      key=lambda r: r["T"])
        for name in makers(cell):
            pts = [(r["T"], r["ms"][name]) for r in rows if name in r["ms"]]
            if pts:
                ax.loglog(*zip(*pts), marker="o", label=name)
        ax.set_xlabel("T (steps)")
        ax.set_ylabel("ms")
        ax.set_title(f"{cell} {mode}, B={B} H={H}", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def run(args) -> dict:
    arguments.check_cells({kind: jaxrnn.CELLS[kind] for kind in args.cells}, args.hidden, "--hidden")
    out, path = speed.start_record("parallel", args)
    results = out["results"]
    cases = [(c, B, H, T, g) for c in args.cells for B in args.batch for H in args.hidden for T in args.lengths
             for g in ([False, True] if args.mode == "both" else [args.mode == "fwd+bwd"])]
    print(f"{jax.devices()[0].device_kind}; {args.precision}; median of {args.repeats} interleaved rounds\n",
          flush=True)
    with speed.matmul_precision(args.precision):
        for kind, B, H, T, grad in tqdm(cases, desc="parallel", unit="case"):
            made = makers(kind)
            results.append(speed.run_case(kind, B, T, H, grad, list(made), args.repeats, args.block, made))
            if kind in NONLINEAR_CELLS:
                results[-1]["iterations"] = newton_reports(kind, B, T, H)
            tqdm.write(table(results[-1:]))
            path.write_text(json.dumps(out, indent=1))  # as measured: a run cut short keeps its rows
    out["scan_wins"] = scan_wins(results)
    path.write_text(json.dumps(out, indent=1))
    plot(results, path.with_suffix(".png"))
    print(table(results))
    print("lengths at which a parallel method beat the loop: "
          + "; ".join(f"{k}: {', '.join(map(str, v)) or 'none'}" for k, v in out["scan_wins"].items()))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return out


def main(argv=None) -> None:
    p = arguments.ArgumentParser(prog="parallel", description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", choices=LINEAR_CELLS + NONLINEAR_CELLS, default=["mingru", "minlstm"])
    p.add_argument("--batch", nargs="+", type=arguments.positive_int, default=[8])
    p.add_argument("--hidden", nargs="+", type=arguments.positive_int, default=[64])
    p.add_argument("--lengths", nargs="+", type=arguments.positive_int, default=[100, 1000, 10_000])
    p.add_argument("--mode", choices=("fwd", "fwd+bwd", "both"), default="both")
    p.add_argument("--repeats", type=arguments.positive_int, default=5)
    p.add_argument("--block", type=arguments.int_at_least(2), default=3)
    p.add_argument("--precision", choices=speed.PRECISIONS, default="float32")
    p.add_argument("--json", help="where to write the JSON (default runs/parallel-<timestamp>.json)")
    from jaxrnn.programs.cli import run_command

    run_command(p.prog, run, p.parse_args(argv))


if __name__ == "__main__":
    main()

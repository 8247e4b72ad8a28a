"""How many Newton iterations DEER, quasi-DEER, ELK and quasi-ELK take, against T, the spectral radius of
W_h and the input scale.

    python benchmarks/newton_iterations.py

For the vanilla cell and the GRU (H = 8, B = 4, four N(0, s^2) inputs a step,
s = 1 unless swept, each gate's block of ``W_h`` scaled to spectral radius
rho), three sweeps: the length T at ``--rho`` (default 1); rho at
``--radius-length`` steps (default 200); the input scale s at rho =
``--scale-rho`` (default 4) and ``--scale-length`` steps (default 1000),
where large inputs saturate the units, so that the trajectory contracts
while the Jacobians at the first guess (zero) expand. Each solve
(:func:`jaxrnn.newton.solve`, float32, its default tolerance, at most
``--max-iters`` iterations, default min(2 T, 400)) records its
iterations, whether it converged, and its largest distance from the loop's
outputs; beside it, the loop's own float32 distance from its float64 outputs
(how far rounding alone moves the trajectory: where that is large the
dynamics are chaotic, and a converged solve, consistent step by step to the
tolerance, is no nearer the loop than the loop is to itself in float64).
Writes the JSON and a figure (iterations against T, rho and the input scale).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn import newton
from jaxrnn.programs import arguments, speed
from jaxrnn.programs.outputs import markdown_table, pyplot, record_path, save_figure

CELLS = ("vanilla", "gru")
H, B, I = 8, 4, 4


def scaled_params(kind: str, rho: float, dtype) -> tuple[jaxrnn.Cell, dict]:
    """The cell and its parameters (seed 0) with each gate's H x H block of ``W_h`` at spectral radius ``rho``."""
    cell = getattr(jaxrnn, kind)(H, dtype=dtype, param_dtype=dtype)
    params = cell.init(jax.random.key(0), I)
    w = np.asarray(params["w_h"], np.float64)
    blocks = [w[:, g * H:(g + 1) * H] for g in range(w.shape[1] // H)]
    blocks = [b * rho / np.max(np.abs(np.linalg.eigvals(b))) for b in blocks]
    return cell, dict(params, w_h=jnp.asarray(np.concatenate(blocks, axis=1), dtype))


def case(kind: str, rho: float, T: int, max_iters: int, scale: float = 1.0) -> dict:
    """Every method's iterations, convergence and distance from the loop, and the loop's float32 error."""
    xs = scale * jax.random.normal(jax.random.key(1), (B, T, I))
    cell, params = scaled_params(kind, rho, jnp.float32)
    loop = jax.jit(lambda x: jaxrnn.scan(cell, params, x, kernel="xla")[0])(xs)
    with jax.enable_x64(True):
        cell64, params64 = scaled_params(kind, rho, jnp.float64)
        loop64 = np.asarray(jaxrnn.scan(cell64, params64, jnp.asarray(xs, jnp.float64), kernel="xla")[0])
    out = {"cell": kind, "rho": rho, "T": T, "scale": scale, "max_iters": max_iters,
           "loop_float32_error": float(np.max(np.abs(np.asarray(loop, np.float64) - loop64))), "methods": {}}
    for method in newton.METHODS:
        ys, _, report = jax.jit(lambda x: newton.solve(cell, params, x, method=method, max_iters=max_iters))(xs)
        distance = np.abs(np.asarray(ys, np.float64) - np.asarray(loop, np.float64))
        out["methods"][method] = {
            "iterations": int(report.iterations), "converged": bool(report.converged),
            "residual": float(report.residual),
            "distance_from_loop": float(np.max(np.where(np.isnan(distance), np.inf, distance))),
        }
    return out


def table(results: list[dict]) -> str:
    head = ["cell", "rho", "T", "input scale", *newton.METHODS, "loop float32 vs float64"]
    rows = []
    for r in results:
        cells = [f"{m['iterations']}" + ("" if m["converged"] else " (no)") + f", {m['distance_from_loop']:.0e}"
                 for m in (r["methods"][name] for name in newton.METHODS)]
        rows.append([r["cell"], r["rho"], r["T"], r["scale"], *cells, f"{r['loop_float32_error']:.0e}"])
    return markdown_table(head, rows)


def sweeps(args) -> list[tuple[str, dict]]:
    """``(swept key, the other keys' values)`` of each sweep."""
    return [("T", {"rho": args.rho, "scale": 1.0}), ("rho", {"T": args.radius_length, "scale": 1.0}),
            ("scale", {"rho": args.scale_rho, "T": args.scale_length})]


def plot(results: list[dict], path, args) -> None:
    """Iterations against each sweep's variable; a cross: not converged."""
    plt = pyplot()
    fig, axes = plt.subplots(len(args.cells), 3, figsize=(15, 3.6 * len(args.cells)), squeeze=False)
    for row, kind in zip(axes, args.cells):
        for ax, (key, fixed) in zip(row, sweeps(args)):
            rs = sorted((r for r in results if r["cell"] == kind and all(r[k] == v for k, v in fixed.items())),
                        key=lambda r: r[key])
            for i, method in enumerate(newton.METHODS):
                color = f"C{i}"
                xs = [r[key] for r in rs]
                ax.plot(xs, [r["methods"][method]["iterations"] for r in rs], color=color, label=method)
                for r in rs:
                    m = r["methods"][method]
                    ax.plot(r[key], m["iterations"], "o" if m["converged"] else "x", color=color,
                            markersize=5 if m["converged"] else 8)
            if key == "T":
                ax.plot(xs, xs, "k:", linewidth=1, label="T (DEER's bound)")
            if key != "rho":
                ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel({"T": "T (steps)", "rho": "spectral radius of each block of W_h",
                           "scale": "input scale s"}[key])
            ax.set_ylabel("Newton iterations")
            fixed_text = ", ".join(f"{k}={v:g}" for k, v in fixed.items())
            ax.set_title(f"{kind}, H={H} B={B}, {fixed_text} (x: not converged)", fontsize=9)
            ax.legend(fontsize=7)
    save_figure(fig, path)


def run(args) -> dict:
    out = {"machine": speed.describe_machine(), "versions": speed.versions(), "argv": args.argv, "results": []}
    path = record_path("newton-iterations", args.json)
    cases = list(dict.fromkeys(
        [(k, args.rho, T, 1.0) for k in args.cells for T in args.lengths]
        + [(k, r, args.radius_length, 1.0) for k in args.cells for r in args.radii]
        + [(k, args.scale_rho, args.scale_length, s) for k in args.cells for s in args.scales]))
    for kind, rho, T, scale in tqdm(cases, desc="newton", unit="case"):
        out["results"].append(case(kind, rho, T, args.max_iters or min(2 * T, 400), scale))
        tqdm.write(table(out["results"][-1:]))
        path.write_text(json.dumps(out, indent=1))
    plot(out["results"], path.with_suffix(".png"), args)
    print(table(out["results"]))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return out


def main(argv=None) -> None:
    p = arguments.ArgumentParser(prog="newton_iterations", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=arguments.positive_int, default=[10, 100, 1000, 10_000])
    p.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS))
    p.add_argument("--rho", type=arguments.positive_float, default=1.0, help="the spectral radius of the sweep over T")
    p.add_argument("--radii", nargs="+", type=arguments.positive_float, default=[0.5, 1.0, 1.5, 2.0, 3.0, 4.0])
    p.add_argument("--radius-length", type=arguments.positive_int, default=200)
    p.add_argument("--scales", nargs="+", type=arguments.positive_float, default=[1.0, 3.0, 10.0])
    p.add_argument("--scale-rho", type=arguments.positive_float, default=4.0)
    p.add_argument("--scale-length", type=arguments.positive_int, default=1000)
    p.add_argument("--max-iters", type=arguments.positive_int, default=None, help="default: min(2 T, 400)")
    p.add_argument("--json", help="where to write the JSON (default runs/newton-iterations-<timestamp>.json)")
    from jaxrnn.programs.cli import run_command

    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    run_command(p.prog, run, args)


if __name__ == "__main__":
    main()

"""Newton's method over a long sequence in chunks: a GRU's whole trajectory at T = 100,000, H = 64 by DEER
and quasi-DEER, its values and gradients against the loop's, and the memory each needs.

    python benchmarks/newton_memory.py                      # 4.5 minutes on a 2-core CPU

Unchunked, DEER keeps a (D, D) Jacobian for every step and row: at T = 100,000, B = 8 and a GRU's
D = 64, 13 GB in float32. ``chunk`` (:func:`jaxrnn.newton.solve`) solves ``--chunk`` steps at a time from
the last state of the chunk before, so the Jacobians held are a chunk's. For the loop and each method
this compiles the forward pass and the gradient of the summed squared outputs with respect to the
parameters (for the methods, the implicit adjoint, chunked the same way) and reads the temporary memory
XLA plans for each (``memory_analysis``, as ``jaxrnn speed --memory`` does; the inputs, parameters and
outputs come on top); for each method unchunked, it compiles the forward pass only, to read what it
would need. It runs the loop and the chunked solves and records the seconds each took (after compiling), the
iterations, whether every chunk converged, the largest distance from the loop's outputs and the largest
relative distance from its gradients. The GRU's input is ``--hidden`` wide too. Writes the JSON
(``--json``) and prints a table.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn import newton
from jaxrnn.programs import arguments, speed
from jaxrnn.programs.outputs import markdown_table, record_path

METHODS = ("deer", "quasi-deer")


def compiled(fn, *args) -> tuple:
    """``fn`` compiled for ``args``, and the temporary memory XLA plans for it, GB."""
    executable = jax.jit(fn).lower(*args).compile()
    return executable, executable.memory_analysis().temp_size_in_bytes / 1e9


def timed(executable, *args) -> tuple:
    start = time.perf_counter()
    out = jax.block_until_ready(executable(*args))
    return out, time.perf_counter() - start


def run(args) -> dict:
    path = record_path("newton-memory", args.json)
    out = {"machine": speed.describe_machine(), "versions": speed.versions(), "config": vars(args), "results": []}
    cell = jaxrnn.gru(args.hidden)
    params = cell.init(jax.random.key(0), args.hidden)
    xs = jax.random.normal(jax.random.key(1), (args.batch, args.length, args.hidden))
    loss = lambda ys: jnp.sum(ys ** 2)
    gradient = lambda forward: jax.grad(lambda p, x: loss(forward(p, x)))
    loop = lambda p, x: jaxrnn.scan(cell, p, x)[0]
    loop_fwd, loop_fwd_gb = compiled(loop, params, xs)
    loop_bwd, loop_bwd_gb = compiled(gradient(loop), params, xs)
    (loop_ys, loop_forward_s), (loop_grad, loop_gradient_s) = timed(loop_fwd, params, xs), timed(loop_bwd, params, xs)
    out["loop"] = {"forward_temp_gb": loop_fwd_gb, "gradient_temp_gb": loop_bwd_gb, "forward_s": loop_forward_s,
                   "gradient_s": loop_gradient_s}
    for method in tqdm(args.methods, desc="newton memory", unit="method"):
        solve = lambda p, x, chunk: newton.solve(cell, p, x, method=method, chunk=chunk)
        chunked = lambda p, x: solve(p, x, args.chunk)[0]
        _, unchunked_gb = compiled(lambda p, x: solve(p, x, None)[0], params, xs)
        fwd, fwd_gb = compiled(lambda p, x: solve(p, x, args.chunk), params, xs)
        bwd, bwd_gb = compiled(gradient(chunked), params, xs)
        (ys, _, report), forward_s = timed(fwd, params, xs)
        grad, gradient_s = timed(bwd, params, xs)
        out["results"].append({
            "method": method, "unchunked_forward_temp_gb": unchunked_gb, "forward_temp_gb": fwd_gb,
            "gradient_temp_gb": bwd_gb, "forward_s": forward_s, "gradient_s": gradient_s,
            "iterations_max": int(jnp.max(report.iterations)), "converged": bool(jnp.all(report.converged)),
            "max_abs_diff": float(jnp.max(jnp.abs(ys - loop_ys))),
            "max_rel_grad_diff": max(float(jnp.max(jnp.abs(grad[k] - loop_grad[k])) / jnp.max(jnp.abs(loop_grad[k])))
                                     for k in loop_grad)})
        path.write_text(json.dumps(out, indent=1))  # nothing lost on a crash
    print(f"GRU H={args.hidden}, B={args.batch}, T={args.length:,}, solved {min(args.chunk, args.length):,} steps at "
          f"a time; XLA's temporary memory, GB (the loop: {loop_fwd_gb:.2f} forward, {loop_bwd_gb:.2f} gradient; "
          f"{loop_forward_s:.2f} s forward, {loop_gradient_s:.2f} s gradient)\n")
    print(markdown_table(
        ["method", "unchunked forward GB", "forward GB", "gradient GB", "forward s", "gradient s",
         "iterations (max over chunks)", "converged", "max abs. difference from the loop",
         "max relative gradient difference"],
        [[r["method"], f"{r['unchunked_forward_temp_gb']:.2f}", f"{r['forward_temp_gb']:.2f}",
          f"{r['gradient_temp_gb']:.2f}", f"{r['forward_s']:.1f}", f"{r['gradient_s']:.1f}", r["iterations_max"],
          r["converged"], f"{r['max_abs_diff']:.1e}", f"{r['max_rel_grad_diff']:.1e}"] for r in out["results"]]))
    print(f"\nwrote {path}")
    return out


def main(argv=None) -> dict:
    p = arguments.ArgumentParser(prog="newton_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--hidden", type=arguments.positive_int, default=64)
    p.add_argument("--batch", type=arguments.positive_int, default=8)
    p.add_argument("--length", type=arguments.positive_int, default=100_000)
    p.add_argument("--chunk", type=arguments.positive_int, default=1000)
    p.add_argument("--json", help="where to write the JSON (default runs/newton-memory-<timestamp>.json)")
    from jaxrnn.programs.cli import run_command

    return run_command(p.prog, run, p.parse_args(argv))


if __name__ == "__main__":
    main()

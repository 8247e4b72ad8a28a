"""jaxrnn's own speed options timed side by side, with flax and torch as references.

Which ``unroll``, ``projection``, ``backward`` and ``kernel`` of :func:`jaxrnn.scan` is
fastest depends on the machine: a CPU pays for memory traffic, a GPU for
kernel launches and loop iterations. This runs every combination asked for in
one process, interleaved with the peers exactly as ``jaxrnn speed`` does
(:func:`jaxrnn.programs.speed.run_case`), so the defaults can be chosen from one
run's ratios. ``XLA_FLAGS`` is read when JAX starts: compare flags by running
this once per setting; the JSON records the setting.

    python benchmarks/variants.py --cells lstm gru --lengths 100 1000 --unroll 1 2 4 8
"""

from __future__ import annotations

import functools
import itertools
import json
import os

import jax
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn.programs import arguments, speed
from jaxrnn.programs.outputs import markdown_table
from jaxrnn.unroll import PROJECTIONS


def variant_makers(unrolls, projections, backwards, step_vjps=("cell",), kernels=("xla",), activation="tanh") -> dict:
    """``{"unroll=U projection backward[ step_vjp]": maker}`` for every combination of the loop's
    options, plus ``"native"`` (:mod:`jaxrnn.native`, which has none of them) if in ``kernels``; a vanilla
    cell's ``activation``."""
    makers = {
        f"unroll={u} {p} {b}" + ("" if s == "cell" else f" {s}-step"):
            functools.partial(speed.make_jaxrnn, unroll=u, projection=p, backward=b, step_vjp=s, kernel="xla",
                              activation=activation)
        for u, p, b, s in itertools.product(unrolls, projections, backwards, step_vjps)
    } if "xla" in kernels else {}
    if "native" in kernels:
        makers["native"] = functools.partial(_make_native, activation=activation)
    for layout in ("small", "wide"):
        if f"native-{layout}" in kernels:
            makers[f"native-{layout}"] = functools.partial(_make_native_layout, layout, activation=activation)
    if "native-threads" in kernels:
        makers["native-threads"] = functools.partial(_make_native_threads, activation=activation)
    return makers


def _make_native(kind, B, T, H, with_grad, activation="tanh"):
    cell = speed.make_cell(kind, H, activation)
    reason = jaxrnn.native.unsupported(cell, cell.init(jax.random.key(0), H), B, "float32", steps=T)
    return (speed.make_jaxrnn(kind, B, T, H, with_grad, kernel="native", activation=activation)
            if reason is None else reason)


def _make_native_layout(layout, kind, B, T, H, with_grad, activation="tanh"):
    """The kernels in one layout whatever the batch (kernel="native", any batch): compiled here, inside
    :func:`jaxrnn.native.forced_layout`, since the layout is chosen when a call is traced."""
    cell = speed.make_cell(kind, H, activation)
    reason = jaxrnn.native.unsupported(cell, cell.init(jax.random.key(0), H), B, "float32", steps=T, forced=True)
    if reason is not None:
        return reason
    fn, args = speed.make_jaxrnn(kind, B, T, H, with_grad, kernel="native", activation=activation)
    with jaxrnn.native.forced_layout(layout):
        return fn.lower(*args).compile(), args


def _make_native_threads(kind, B, T, H, with_grad, activation="tanh"):
    """The kernels with helper threads of their own instead of XLA's pool's (:func:`jaxrnn.native.pooled`):
    compiled here, inside :func:`jaxrnn.native.forced_helpers`, since that is read when a call is traced."""
    made = _make_native(kind, B, T, H, with_grad, activation)
    if isinstance(made, str):
        return made
    fn, args = made
    with jaxrnn.native.forced_helpers("threads"):
        return fn.lower(*args).compile(), args


def table(results: list[dict], variants: list[str], peers: list[str]) -> str:
    head = ["cell", "mode", "B", "T", "H", "variant", "ms"] + [f"x {p}" for p in peers]
    rows = []
    for r in results:
        ms = r["ms"]
        best = min((v for v in variants if v in ms), key=ms.get)
        for v in variants:
            if v not in ms:  # a variant that cannot run this case (native: not an LSTM, say)
                rows.append([r["cell"], r["mode"], r["B"], r["T"], r["H"], v, r["missing"].get(v, "-")]
                            + ["-"] * len(peers))
                continue
            ratios = [f"{ms[p] / ms[v]:.2f}" if p in ms else "-" for p in peers]
            name = f"**{v}**" if v == best else v
            rows.append([r["cell"], r["mode"], r["B"], r["T"], r["H"], name, f"{ms[v]:.2f}"] + ratios)
    return markdown_table(head, rows)


def run(args) -> dict:
    makers = variant_makers(args.unroll, args.projection, args.backward, args.step_vjp, args.kernel, args.activation)
    peers = [p for p in args.peers if p not in makers]
    modes = [False, True] if args.mode == "both" else [args.mode == "fwd+bwd"]
    cases = list(itertools.product(args.cells, args.batch, args.lengths, args.hidden, modes))
    out, path = speed.start_record("variants", args, xla_flags=os.environ.get("XLA_FLAGS", ""))
    results = out["results"]
    print(f"{jax.devices()[0].device_kind}; {args.precision}; XLA_FLAGS={out['xla_flags'] or '(unset)'}; "
          f"bold: the fastest variant of each case\n", flush=True)
    with speed.matmul_precision(args.precision):
        for kind, B, T, H, grad in tqdm(cases, desc="variants", unit="case"):
            results.append(speed.run_case(kind, B, T, H, grad, [*makers, *peers], args.repeats, args.block, makers))
            tqdm.write(table(results[-1:], list(makers), peers))  # as measured: a run cut short keeps its rows
            path.write_text(json.dumps(out, indent=1))
    print(table(results, list(makers), peers))
    print(f"wrote {path}")
    return out


def main(argv=None) -> None:
    p = arguments.ArgumentParser(prog="variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=list(speed.GATES))
    p.add_argument("--batch", nargs="+", type=int, default=[32])
    p.add_argument("--hidden", nargs="+", type=int, default=[256])
    p.add_argument("--lengths", nargs="+", type=int, default=[100, 1000])
    p.add_argument("--mode", choices=("fwd", "fwd+bwd", "both"), default="both")
    p.add_argument("--unroll", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--projection", nargs="+", choices=PROJECTIONS[1:], default=list(PROJECTIONS[1:]))
    p.add_argument("--backward", nargs="+", choices=("fused", "autodiff"), default=["fused"])
    p.add_argument("--step-vjp", nargs="+", choices=("cell", "autodiff"), default=["cell"],
                   help="the fused backward's per-step derivative: the cell's own StepVJP, or jax.vjp of its "
                        "elementwise part (differs for the GRU, which keeps its activations)")
    p.add_argument("--kernel", nargs="+", choices=("xla", "native", "native-small", "native-wide", "native-threads"),
                   default=["xla"],
                   help="xla: the lax.scan loop, one variant per combination above; native: jaxrnn.native's "
                        "one-call LSTM (reported missing, with the reason, where it cannot run); native-small, "
                        "native-wide: the kernels in that layout (jaxrnn.native.layout_for), on any batch; "
                        "native-threads: the kernels with helper threads of their own, not XLA's pool's")
    p.add_argument("--activation", choices=tuple(jaxrnn.cells.ACTIVATIONS), default="tanh",
                   help="the vanilla cell's, in jaxrnn's variants (the peers' vanilla cells are tanh's)")
    p.add_argument("--peers", nargs="+", choices=speed.PEERS, default=["flax", "torch"])
    p.add_argument("--repeats", type=arguments.positive_int, default=7)
    p.add_argument("--block", type=arguments.int_at_least(2), default=3)
    p.add_argument("--precision", choices=speed.PRECISIONS, default="float32")
    p.add_argument("--json", help="where to write the JSON (default runs/variants-<timestamp>.json)")
    p.add_argument("--malloc-tunables", action="store_true",
                   help=f"restart with GLIBC_TUNABLES={speed.MALLOC_TUNABLES} (Linux; glibc's defaults otherwise)")
    args = p.parse_args(argv)
    if argv is None:
        speed.restart_with(speed.environment_for(args))
    run(args)


if __name__ == "__main__":
    main()

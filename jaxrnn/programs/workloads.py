"""The workloads users run, jaxrnn against flax and torch: ``jaxrnn speed --workloads``.

Where :mod:`jaxrnn.programs.speed` sweeps one tuned shape over sizes, this
times the shapes users bring: padded batches (jaxrnn ``lengths``, flax
``seq_lengths``, torch packed sequences), a two-layer bidirectional LSTM on a
padded batch, batches of 1 and 8, narrow and wide hidden sizes, the vanilla
cell, and a stream fed one step per call (inference: jaxrnn's
:func:`jaxrnn.streaming.step`, flax's cell, torch's ``LSTMCell``). Each row
is compiled and warmed up, then timed in interleaved rounds as ``speed``
does; forward, and forward+backward of ``sum(valid outputs ** 2)`` with
respect to every parameter and the inputs. Inputs are (B, T, H) with input
size H; a padded batch's lengths are drawn once from [T/4, T], the longest
equal to T.

The run reports the environment it measured: the allocator (glibc's defaults
unless ``--malloc-tunables``) and the instruction set (``--isa avx2`` limits
XLA, oneDNN, MKL, torch's ATen and jaxrnn's native kernels to AVX2: what a CPU
without AVX-512 gets).
"""

from __future__ import annotations

import json
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn.programs import arguments, speed
from jaxrnn.programs.outputs import markdown_table, pyplot, save_figure

PEERS = ("jaxrnn", "flax", "torch")


class Workload(NamedTuple):
    """One row: a cell, its sizes, and how the batch is shaped."""

    name: str
    cell: str
    B: int
    T: int
    H: int
    padded: bool = False
    layers: int = 1
    bidirectional: bool = False
    streaming: bool = False  # T calls of one step each, B rows, forward only


WORKLOADS = (
    Workload("LSTM B=32 T=100 H=256", "lstm", 32, 100, 256),
    Workload("GRU B=32 T=100 H=256", "gru", 32, 100, 256),
    Workload("LSTM, padded batch", "lstm", 32, 100, 256, padded=True),
    Workload("GRU, padded batch", "gru", 32, 100, 256, padded=True),
    Workload("2-layer bidirectional LSTM, padded", "lstm", 32, 100, 256, padded=True, layers=2, bidirectional=True),
    Workload("LSTM B=1 T=200", "lstm", 1, 200, 256),
    Workload("LSTM B=8 T=100", "lstm", 8, 100, 256),
    Workload("LSTM B=32 H=64 T=200", "lstm", 32, 200, 64),
    Workload("LSTM B=32 H=1024 T=50", "lstm", 32, 50, 1024),
    Workload("vanilla B=32 T=100", "vanilla", 32, 100, 256),
    Workload("LSTM streaming B=1, 100 one-step calls", "lstm", 1, 100, 256, streaming=True),
)


def lengths_of(w: Workload) -> np.ndarray | None:
    """A padded batch's lengths, drawn from [T/4, T] with the longest equal to T; None when unpadded."""
    if not w.padded:
        return None
    lengths = np.random.default_rng(0).integers(max(1, w.T // 4), w.T + 1, w.B)
    lengths[0] = w.T
    return lengths


def _inputs(w: Workload) -> jax.Array:
    return jax.random.normal(jax.random.key(1), (w.B, w.T, w.H))


def _valid(w: Workload) -> jax.Array:
    lengths = lengths_of(w)
    return jnp.ones((w.B, w.T), bool) if lengths is None else jaxrnn.unroll.sequence_mask(jnp.asarray(lengths), w.T)


def _jax_call(apply: Callable, params, w: Workload, with_grad: bool):
    valid = _valid(w)
    loss = lambda p, x: jnp.sum(jnp.where(valid[..., None], apply(p, x), 0.0) ** 2)
    fn = jax.jit(jax.grad(loss, argnums=(0, 1)) if with_grad else apply)
    xs = _inputs(w)
    return lambda: jax.block_until_ready(fn(params, xs))


def _stream(step: Callable, state, w: Workload) -> Callable:
    """A call that feeds ``w.T`` inputs of (B, H) one per ``step(state, x_t) -> state`` call, as a
    stream of tokens arrives, and waits for the last state."""
    xs = list(np.asarray(_inputs(w)).swapaxes(0, 1))

    def run():
        s = state
        for x_t in xs:
            s = step(s, x_t)
        return jax.block_until_ready(s)

    return run


def make_jaxrnn(w: Workload, with_grad: bool):
    if w.streaming:
        rnn = jaxrnn.RNN(jaxrnn.CELLS[w.cell](w.H))
        params = rnn.init(jax.random.key(0), w.H)
        step = jax.jit(lambda s, x: jaxrnn.streaming.step(rnn, params, s, x)[0])
        return _stream(step, jaxrnn.streaming.start(rnn, batch_size=w.B), w)
    lengths = lengths_of(w)
    lengths = None if lengths is None else jnp.asarray(lengths)
    rnn = jaxrnn.RNN(jaxrnn.CELLS[w.cell](w.H), num_layers=w.layers, bidirectional=w.bidirectional)
    params = rnn.init(jax.random.key(0), w.H)
    return _jax_call(lambda p, x: rnn.apply(p, x, lengths=lengths)[0], params, w, with_grad)


def make_flax(w: Workload, with_grad: bool):
    import flax.linen as nn

    cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "vanilla": nn.SimpleCell}[w.cell]
    if w.streaming:
        one = cell(w.H)
        carry = one.initialize_carry(jax.random.key(0), (w.B, w.H))
        params = one.init(jax.random.key(0), carry, jnp.zeros((w.B, w.H)))
        step = jax.jit(lambda s, x: one.apply(params, s, x)[0])
        return _stream(step, carry, w)
    lengths = lengths_of(w)
    lengths = None if lengths is None else jnp.asarray(lengths)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(w.layers):
                if w.bidirectional:
                    x = nn.Bidirectional(nn.RNN(cell(w.H)), nn.RNN(cell(w.H)))(x, seq_lengths=lengths)
                else:
                    x = nn.RNN(cell(w.H))(x, seq_lengths=lengths)
            return x

    model = Model()
    return _jax_call(model.apply, model.init(jax.random.key(0), _inputs(w)), w, with_grad)


def make_torch(w: Workload, with_grad: bool):
    import torch

    if w.streaming:
        one = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "vanilla": torch.nn.RNNCell}[w.cell](w.H, w.H)
        zeros = torch.zeros(w.B, w.H)
        start = (zeros, zeros) if w.cell == "lstm" else zeros
        xs = [torch.from_numpy(x.copy()) for x in np.asarray(_inputs(w)).swapaxes(0, 1)]

        def stream():
            with torch.no_grad():
                s = start
                for x_t in xs:
                    s = one(x_t, s)

        return stream
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "vanilla": torch.nn.RNN}[w.cell](
        w.H, w.H, num_layers=w.layers, bidirectional=w.bidirectional, batch_first=True)
    xs = torch.from_numpy(np.array(_inputs(w))).requires_grad_(with_grad)
    lengths = lengths_of(w)

    def forward():
        if lengths is None:
            return module(xs)[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(xs, torch.from_numpy(lengths), batch_first=True,
                                                         enforce_sorted=False)
        return module(packed)[0].data  # the valid steps only

    def run():
        if with_grad:
            module.zero_grad(set_to_none=True)
            xs.grad = None
            (forward() ** 2).sum().backward()
        else:
            with torch.no_grad():
                forward()

    return run


MAKERS = {"jaxrnn": make_jaxrnn, "flax": make_flax, "torch": make_torch}

def matmul_flops(w: Workload, with_grad: bool) -> float:
    """The FLOPs of a row's matmuls over its valid steps (:func:`jaxrnn.programs.speed.step_flops` per batch
    row, step, layer and direction). The elementwise work is left out, and so are padded steps: what any
    implementation must compute, so that a rate from it compares with a matmul's."""
    lengths = lengths_of(w)
    steps = w.B * w.T if lengths is None else int(lengths.sum())
    directions = 2 if w.bidirectional else 1
    inputs = [w.H] + [directions * w.H] * (w.layers - 1)
    return steps * directions * sum(speed.step_flops(w.cell, i, w.H, with_grad) for i in inputs)


def faults_per_call(call: Callable, calls: int = 3) -> float | None:
    """Minor page faults per call: pages the allocator handed back fresh, each zeroed and mapped by the
    kernel on first touch (None where the platform does not count them)."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        call()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def run_workload(w: Workload, with_grad: bool, peers, repeats: int, block: int) -> dict:
    """One row, every peer timed in interleaved rounds (as :func:`jaxrnn.programs.speed.run_case`), then
    each one's page faults per call."""
    calls, missing = {}, {}
    for name in peers:
        if not speed.installed(name):
            missing[name] = "not installed"
            continue
        call = MAKERS[name](w, with_grad)
        call(), call()  # compile, then one more warm-up
        calls[name] = call
    ms = speed.interleaved_ms(calls, repeats, timed=block - 1, settle=True)
    faults = {name: faults_per_call(call) for name, call in calls.items()}
    return {**w._asdict(), "mode": "fwd+bwd" if with_grad else "fwd", "ms": ms, "faults": faults, "missing": missing,
            "matmul_flops": matmul_flops(w, with_grad)}


def ratio(row: dict, peer: str) -> float:
    """jaxrnn's speed-up over ``peer`` on a row (peer's time / jaxrnn's); NaN where either is missing."""
    ms = row["ms"]
    return ms[peer] / ms["jaxrnn"] if "jaxrnn" in ms and peer in ms else float("nan")


def table(rows: list[dict], peers, peak: float) -> str:
    """The rows as markdown, with jaxrnn's and torch's rates on each row's matmul FLOPs
    (:func:`matmul_flops`) as shares of ``peak``, the process's float32 GEMM rate in FLOP/s
    (:func:`jaxrnn.programs.speed.gemm_peak`)."""
    others = [p for p in peers if p != "jaxrnn"]
    rated = [p for p in speed.PEAK_COLUMNS if p in peers]
    header = ["workload", "mode", *[f"{p} ms" for p in peers], *[f"x {p}" for p in others],
              *[f"{p} % GEMM peak" for p in rated], "jaxrnn page faults / call"]
    faults = lambda r: r.get("faults", {}).get("jaxrnn")
    share = lambda r, p: f"{r['matmul_flops'] / (r['ms'][p] / 1e3) / peak:.0%}" if p in r["ms"] else "-"
    body = [[r["name"], r["mode"], *[f"{r['ms'][p]:.2f}" if p in r["ms"] else "-" for p in peers],
             *[f"{ratio(r, p):.2f}x" for p in others], *[share(r, p) for p in rated],
             "-" if faults(r) is None else f"{faults(r):,.0f}"]
            for r in rows]
    return markdown_table(header, body, align="ll" + "r" * (len(header) - 2))


def plot(rows: list[dict], peers, title: str, caption: str, path) -> None:
    """jaxrnn's speed-up over each peer per workload (forward+backward; a stream's forward), with the 1.0x
    and 1.5x lines; ``caption`` (the machine, the versions, the command) goes under it."""
    rows = [r for r in rows if r["mode"] == "fwd+bwd" or r.get("streaming")] or rows
    others = [p for p in peers if p != "jaxrnn"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.9))
    y = np.arange(len(rows))
    height = 0.8 / max(1, len(others))
    for i, peer in enumerate(others):
        ax.barh(y + i * height, [ratio(r, peer) for r in rows], height, label=f"x {peer}")
    for target in (1.0, 1.5):
        ax.axvline(target, color="k", lw=0.8, ls="--" if target > 1 else "-")
    ax.set_yticks(y + height * (len(others) - 1) / 2, [r["name"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="jaxrnn's speed-up (peer's time / jaxrnn's), forward+backward (a stream: forward)", title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.text(0.01, 0.01, caption, fontsize=7, color="0.3")
    save_figure(fig, path, rect=(0, 0.04, 1, 1))


def run(args, workloads=WORKLOADS) -> dict:
    """Time every workload, print the table as it grows, write JSON and a figure beside it."""
    modes = [False, True] if args.mode == "both" else [args.mode == "fwd+bwd"]
    peers = [p for p in PEERS if p in args.peers]
    if "jaxrnn" not in peers:
        raise arguments.UsageError("--peers: --workloads compares jaxrnn with the others; include jaxrnn")
    env = speed.environment()
    out, path = speed.start_record("workloads", args, environment=env)
    peak = speed.gemm_peak()
    out["gemm_peak_gflops"] = peak / 1e9
    header = (f"{jax.devices()[0].device_kind}; {env}; float32 GEMM peak: {peak / 1e9:.0f} GFLOP/s; "
              f"median of {args.repeats} interleaved rounds\n\n")
    print(header + "\n".join(table([], peers, peak).splitlines()[:2]), flush=True)
    for w in tqdm(workloads, desc="workloads", unit="row"):
        for with_grad in [m for m in modes if not (m and w.streaming)]:  # a stream is inference
            out["results"].append(run_workload(w, with_grad, peers, args.repeats, args.block))
            tqdm.write(table(out["results"][-1:], peers, peak).splitlines()[-1])
            path.write_text(json.dumps(out, indent=1))
    machine, versions = out["machine"], out["versions"]
    caption = (f"{machine['processor']}, {machine['cpus']} CPUs; jax {versions['jax']}, "
               f"flax {versions['flax']}, torch {versions['torch']}; "
               f"{' '.join(['jaxrnn speed', *(a for a in sys.argv[1:] if a != 'speed')])}")
    plot(out["results"], peers, env.split("; jaxrnn")[0], caption, path.with_suffix(".png"))
    print("\n" + header + table(out["results"], peers, peak))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return out

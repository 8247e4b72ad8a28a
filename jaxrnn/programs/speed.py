"""Speed and memory: jaxrnn against flax, equinox, haiku and torch, in one process.

For each case (cell, batch B, hidden H, length T, forward or forward+backward)
every implementation is compiled and warmed up first (compile time reported
apart), then timed in interleaved rounds (A B C A B C ...) so that the shared
machine's drift hits all of them alike. In each round every implementation
first runs untimed calls, one and then more until 30 ms have passed
(:data:`SETTLE_S`), and then ``--block`` - 1 timed calls back to back: the
untimed ones absorb what the previous implementation left behind (whatever
ran right after torch took 4-5 ms longer for a 13 ms LSTM forward: torch's
OpenMP workers spin-waiting on a core after each parallel region). The median of
the timed calls is reported, each ending in ``block_until_ready`` (torch: the
call returns when done on CPU; ``torch.cuda.synchronize`` on a GPU). Inputs are (B, T, H) with
input size = H; forward+backward differentiates ``sum(outputs**2)`` with
respect to every parameter and the inputs.

It prints a table (ms per call, sequence steps per second, jaxrnn's speed-up
over each peer, and the fraction of this machine's float32 GEMM peak, measured
in the same run with one large matmul) and writes JSON. The ``floor`` column is
not a library: it runs only the matmuls of jaxrnn's fused path (two per step
forward, one per step backward, then the three large weight and input
gradient GEMMs) with no gates at all, so it bounds from below what any loop
of XLA CPU ops shaped like this one can reach. On a CPU jaxrnn's LSTM, GRU and
vanilla cell are no such loop: they run :mod:`jaxrnn.native`'s kernels (``kernel="auto"``). ``--memory`` adds the peak
activation memory (XLA's compiled temp buffers) of a forward+backward LSTM at
T = 10,000, B = 32, H = 256 for jaxrnn, jaxrnn with ``checkpoint_every`` at
100, 1000 and 2500, and flax, with their times.

    jaxrnn speed --quick            # LSTM/GRU/vanilla, B=32, H=256, T=100 and 1000

Each row is printed, and the JSON rewritten, as soon as its case is measured,
so a run stopped by a time limit keeps what it measured. ``--precision``
fixes the matmul arithmetic for every peer alike (true float32 by default;
``tf32`` for a GPU's tensor cores), since JAX and torch default differently on
a GPU (:func:`matmul_precision`). On a GPU the GEMM peak is measured with an
8192^3 matmul and torch runs on CUDA (cuDNN).

The benchmark measures what users get: glibc's allocator as it comes.
``--malloc-tunables`` restarts it (on Linux) with ``GLIBC_TUNABLES`` set to
:data:`MALLOC_TUNABLES`, and the output says so. XLA and torch both allocate
their large buffers afresh on every call; by default glibc gives buffers over
32 MiB (and, per thread arena, smaller ones) fresh pages from the kernel each
time, zeroed and faulted in 4 KiB at a time. The tunables ask for transparent
huge pages and keep freed memory for reuse (one arena, no mmap, no trimming),
so a steady loop of calls faults no pages at all, as a long training run with a
caching allocator would. The setting applies to every peer in the process and
the JSON records it; docs/performance.md has what it changes. ``--isa avx2``
restarts with XLA, oneDNN and torch's ATen limited to AVX2 and jaxrnn's native
kernels built for AVX2 (``JAXRNN_NATIVE_ISA=avx2``): what a CPU without AVX-512
gets.
``--workloads`` times the shapes users bring instead of the size sweep
(:mod:`jaxrnn.programs.workloads`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn.programs import arguments
from jaxrnn.programs.outputs import markdown_table, pyplot, record_path, save_figure
from jaxrnn.programs.timing import median_seconds

PEERS = ("jaxrnn", "flax", "equinox", "haiku", "torch", "floor")
GATES = {"lstm": 4, "gru": 3, "vanilla": 1}
MODULES = {"jaxrnn": "jax", "floor": "jax"}  # the module a peer needs, where its name is not one
PEAK_COLUMNS = ("jaxrnn", "torch", "floor")  # peers whose fraction of the GEMM peak the table shows


def installed(name: str) -> bool:
    return importlib.util.find_spec(MODULES.get(name, name)) is not None


def _jax_fn(apply: Callable, params, xs, with_grad: bool) -> tuple[Callable, tuple]:
    loss = lambda p, x: jnp.sum(apply(p, x) ** 2)
    fn = jax.jit(jax.grad(loss, argnums=(0, 1)) if with_grad else apply)
    return fn, (params, xs)


def make_cell(kind: str, H: int, activation: str = "tanh") -> jaxrnn.Cell:
    """jaxrnn's cell of ``kind`` and width H; a vanilla cell with ``activation``."""
    return jaxrnn.vanilla(H, activation) if kind == "vanilla" else jaxrnn.CELLS[kind](H)


def make_jaxrnn(kind, B, T, H, with_grad, step_vjp="cell", activation="tanh", **options):
    """jaxrnn.scan with ``options``; ``step_vjp="autodiff"`` swaps a hand-derived
    :class:`~jaxrnn.StepVJP` (the GRU's) for the generic one, to time the difference; ``activation``: the
    vanilla cell's."""
    cell = make_cell(kind, H, activation)
    if step_vjp == "autodiff":
        cell = cell._replace(step_vjp=jaxrnn.cells.autodiff_step_vjp(cell.elementwise))
    params = cell.init(jax.random.key(0), H)
    apply = lambda p, x: jaxrnn.scan(cell, p, x, **options)[0]
    return _jax_fn(apply, params, jax.random.normal(jax.random.key(1), (B, T, H)), with_grad)


def make_flax(kind, B, T, H, with_grad):
    import flax.linen as nn

    cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "vanilla": nn.SimpleCell}[kind](H)
    model = nn.RNN(cell)
    xs = jax.random.normal(jax.random.key(1), (B, T, H))
    return _jax_fn(lambda p, x: model.apply(p, x), model.init(jax.random.key(0), xs), xs, with_grad)


def make_equinox(kind, B, T, H, with_grad):
    import equinox as eqx

    if kind == "vanilla":
        return None  # equinox has no plain RNN cell
    cell = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell}[kind](H, H, key=jax.random.key(0))
    params, static = eqx.partition(cell, eqx.is_array)

    def apply(p, x):
        c = eqx.combine(p, static)
        h0 = (jnp.zeros(H), jnp.zeros(H)) if kind == "lstm" else jnp.zeros(H)

        def one(seq):
            def step(state, x_t):
                state = c(x_t, state)
                return state, state[0] if kind == "lstm" else state

            return jax.lax.scan(step, h0, seq)[1]

        return jax.vmap(one)(x)

    return _jax_fn(apply, params, jax.random.normal(jax.random.key(1), (B, T, H)), with_grad)


def make_haiku(kind, B, T, H, with_grad):
    import haiku as hk

    core = {"lstm": hk.LSTM, "gru": hk.GRU, "vanilla": hk.VanillaRNN}[kind]

    def forward(x):
        rnn = core(H)
        ys, _ = hk.dynamic_unroll(rnn, x, rnn.initial_state(B), time_major=False)
        return ys

    model = hk.without_apply_rng(hk.transform(forward))
    xs = jax.random.normal(jax.random.key(1), (B, T, H))
    return _jax_fn(model.apply, model.init(jax.random.key(0), xs), xs, with_grad)


def make_torch(kind, B, T, H, with_grad):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "vanilla": torch.nn.RNN}[kind](H, H, batch_first=True)
    module = module.to(device)
    xs = torch.randn(B, T, H, device=device, requires_grad=with_grad)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        if with_grad:
            module.zero_grad(set_to_none=True)
            xs.grad = None
            (module(xs)[0] ** 2).sum().backward()
        else:
            with torch.no_grad():
                module(xs)
        sync()

    return run, ()


def make_floor(kind, B, T, H, with_grad):
    """The matmuls of jaxrnn's fused path, with no gates: a lower bound for an XLA loop of this shape.

    Forward, each step computes ``x_t W_i + h W_h`` (B, G*H) and keeps its
    first H columns as the next ``h``. Backward, each step sends ``dz_t W_h^T``
    back (``dz_t``: the H-wide gradient repeated G times), then ``dW_h``,
    ``dW_i`` and ``dx`` are one large GEMM each, as in
    :func:`jaxrnn.unroll.fused_recurrence`. Inputs are already time-major, so
    there are no transposes either. A peer faster than this cannot be matched
    by rearranging XLA ops; it takes a different kernel, such as
    :mod:`jaxrnn.native`, which jaxrnn runs for the LSTM, GRU and vanilla cell on a CPU.
    """
    G = GATES[kind]
    k_i, k_h, k_x = jax.random.split(jax.random.key(0), 3)
    w_i, w_h = (jax.random.normal(k, (H, G * H)) / H**0.5 for k in (k_i, k_h))
    xs = jax.random.normal(k_x, (T, B, H))

    def forward(w_i, w_h, xs):
        def step(h, x_t):
            h = (x_t @ w_i + h @ w_h)[:, :H]
            return h, h

        return jax.lax.scan(step, jnp.zeros((B, H)), xs, unroll=2)[1]

    def forward_backward(w_i, w_h, xs):
        hs = forward(w_i, w_h, xs)

        def back(dh, _):
            dz = jnp.tile(dh, (1, G))
            return dz @ w_h.T, dz

        # Starting from hs[-1] makes the backward loop wait for the forward one, as real autodiff does.
        _, dz = jax.lax.scan(back, hs[-1], None, length=T, reverse=True, unroll=2)
        dz = dz.reshape(T * B, G * H)
        prev = jnp.concatenate([jnp.zeros((1, B, H)), hs[:-1]]).reshape(T * B, H)
        return prev.T @ dz, xs.reshape(T * B, H).T @ dz, dz @ w_i.T

    return jax.jit(forward_backward if with_grad else forward), (w_i, w_h, xs)


MAKERS = {"jaxrnn": make_jaxrnn, "flax": make_flax, "equinox": make_equinox, "haiku": make_haiku, "torch": make_torch,
          "floor": make_floor}


def prepare(name: str, kind: str, B: int, T: int, H: int, with_grad: bool, maker: Callable | None = None):
    """(callable with no arguments, compile+first-call seconds); None if the peer lacks this cell, or
    the maker's string saying why it cannot run it."""
    made = (maker or MAKERS[name])(kind, B, T, H, with_grad)
    if made is None or isinstance(made, str):  # a peer without this cell; a string says why
        return made
    fn, args = made
    call = (lambda: jax.block_until_ready(fn(*args))) if name != "torch" else fn
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    call()  # one more warm-up
    return call, first


def gemm_peak(n: int | None = None, repeats: int = 5) -> float:
    """This machine's float32 GEMM rate (FLOP/s) from one large jitted matmul, median of repeats.

    ``n`` defaults to 2048 on the CPU and 8192 on an accelerator (2048 fills a GPU for only ~0.3 ms).
    """
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n))
    return 2 * n**3 / median_seconds(jax.jit(lambda x: x @ x), a, repeats=repeats)


def step_flops(kind: str, I: int, H: int, with_grad: bool) -> int:
    """Matmul FLOPs of one batch row's step: ``[x_t, h_(t-1)] [W_i; W_h]``, ``2 (I + H) G H`` for G gates;
    the backward pass costs two more of those (the input and carry gradients, the weight gradients)."""
    return 2 * (I + H) * GATES[kind] * H * (3 if with_grad else 1)


def flops(kind: str, B: int, T: int, H: int, with_grad: bool) -> float:
    """Matmul FLOPs of the RNN (input size H) over B rows and T steps (:func:`step_flops`)."""
    return B * T * step_flops(kind, H, H, with_grad)


# How long each implementation runs untimed in a round before its timed calls (``settle``): torch's OpenMP
# workers spin-wait on a core for milliseconds after each parallel region, and one untimed call of a
# millisecond did not outlast them (jaxrnn's LSTM at B = 1, T = 200: 3.3 ms a forward+backward timed after
# flax, 4.8-5.6 after torch).
SETTLE_S = 0.03


def interleaved_ms(calls: dict[str, Callable], repeats: int, timed: int = 1, settle: bool = False) -> dict[str, float]:
    """Median ms per call of each no-argument ``call``, over ``repeats`` rounds A B C A B C ...

    Each round runs every call ``timed`` times back to back, after untimed calls if ``settle``: one, and
    more until :data:`SETTLE_S` has passed (they absorb what the previous implementation left running:
    module docstring).
    """
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            if settle:
                until = time.perf_counter() + SETTLE_S
                call()
                while time.perf_counter() < until:
                    call()
            for _ in range(timed):
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def run_case(kind, B, T, H, with_grad, peers, repeats, block=3, makers: dict[str, Callable] | None = None) -> dict:
    """Time ``peers`` on one case, interleaved. ``makers`` adds named implementations of one's own
    (``maker(kind, B, T, H, with_grad) -> (fn, args)``, as :func:`make_jaxrnn`), for variants."""
    if block < 2:
        raise ValueError(f"block: expected at least 2 calls (the first of each block is not timed), got {block}")
    makers = makers or {}
    calls, compile_s, missing = {}, {}, {}
    for name in peers:
        if name not in makers and not installed(name):
            missing[name] = "not installed"
            continue
        prepared = prepare(name, kind, B, T, H, with_grad, makers.get(name))
        if prepared is None or isinstance(prepared, str):
            missing[name] = prepared or f"no {kind} cell"
            continue
        calls[name], compile_s[name] = prepared
    return {
        "cell": kind, "B": B, "T": T, "H": H, "mode": "fwd+bwd" if with_grad else "fwd",
        "ms": interleaved_ms(calls, repeats, timed=block - 1, settle=True),
        "first_call_s": compile_s, "missing": missing,
    }


def memory_case(T: int = 10_000, B: int = 32, H: int = 256, chunks: tuple[int, ...] = (100, 1000, 2500),
                repeats: int = 5) -> list[dict]:
    """Peak activation memory (XLA temp buffers) and time of a forward+backward LSTM step.

    jaxrnn's default, jaxrnn with ``checkpoint_every`` at each of ``chunks`` (sqrt(T),
    the least memory; then larger ones, which rerun less: the last chunk is
    kept from the forward pass, so a chunk of T/4 reruns three quarters of it),
    and flax. Timed in interleaved rounds, as :func:`run_case`, after one
    warm-up call each: the memory option's target is a time ratio, and the machine
    drifts between one implementation's calls and the next's.
    """
    variants = {"jaxrnn": lambda: make_jaxrnn("lstm", B, T, H, True)}
    for chunk in chunks:
        variants[f"jaxrnn checkpoint_every={chunk}"] = \
            lambda c=chunk: make_jaxrnn("lstm", B, T, H, True, checkpoint_every=c)
    variants["flax"] = lambda: make_flax("lstm", B, T, H, True)
    compiled, temp = {}, {}
    for name, make in variants.items():
        fn, args = make()
        executable = fn.lower(*args).compile()
        temp[name] = executable.memory_analysis().temp_size_in_bytes / 2**20
        compiled[name] = lambda f=executable, a=args: jax.block_until_ready(f(*a))
        compiled[name]()
    ms = interleaved_ms(compiled, repeats)
    return [{"impl": name, "T": T, "B": B, "H": H, "temp_MiB": temp[name], "ms": ms[name]} for name in compiled]


def memory_table(rows: list[dict]) -> str:
    """:func:`memory_case`'s rows, with memory as a fraction of flax's and time as a multiple of jaxrnn's default."""
    by = {m["impl"]: m for m in rows}
    return markdown_table(["impl", "temp memory (MiB)", "x flax memory", "ms", "x jaxrnn default time"],
                          [[m["impl"], f"{m['temp_MiB']:.0f}", f"{m['temp_MiB'] / by['flax']['temp_MiB']:.2f}",
                            f"{m['ms']:.0f}", f"{m['ms'] / by['jaxrnn']['ms']:.2f}"] for m in rows], "lrrrr")


def table(results: list[dict], peak: float, peers: list[str]) -> str:
    others = [p for p in peers if p != "jaxrnn"]
    head = ["cell", "mode", "B", "T", "H"] + [f"{p} ms" for p in peers] + ["jaxrnn seq-steps/s"] \
        + [f"x {p}" for p in others] + [f"{p} % GEMM peak" for p in PEAK_COLUMNS]
    rows = []
    for r in results:
        ms = r["ms"]
        cell = lambda p: f"{ms[p]:.1f}" if p in ms else r["missing"].get(p, "-")
        ratio = lambda p: f"{ms[p] / ms['jaxrnn']:.2f}" if p in ms and "jaxrnn" in ms else "-"
        pct = lambda p: f"{100 * flops(r['cell'], r['B'], r['T'], r['H'], r['mode'] != 'fwd') / (ms[p] / 1e3) / peak:.0f}%" \
            if p in ms else "-"
        sps = f"{r['B'] * r['T'] / (ms['jaxrnn'] / 1e3):,.0f}" if "jaxrnn" in ms else "-"
        rows.append([r["cell"], r["mode"], r["B"], r["T"], r["H"]] + [cell(p) for p in peers] + [sps]
                    + [ratio(p) for p in others] + [pct(p) for p in PEAK_COLUMNS])
    return markdown_table(head, rows)


def plot(results: list[dict], peers: list[str], path: pathlib.Path) -> None:
    """Each peer's time relative to jaxrnn's (1 = as fast; above 1 = slower), one panel per mode."""
    plt = pyplot()
    modes = list(dict.fromkeys(r["mode"] for r in results))
    shown = [p for p in peers if p != "jaxrnn"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 0.5 + 0.45 * len(results)), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in results if r["mode"] == mode and "jaxrnn" in r["ms"]]
        width = 0.8 / max(1, len(shown))
        for k, peer in enumerate(shown):
            ys = [i + (k - (len(shown) - 1) / 2) * width for i in range(len(rows))]
            rel = [r["ms"][peer] / r["ms"]["jaxrnn"] if peer in r["ms"] else 0 for r in rows]
            ax.barh(ys, rel, height=width, label=peer, hatch="//" if peer == "floor" else None,
                    color="none" if peer == "floor" else None, edgecolor="black" if peer == "floor" else None)
        ax.axvline(1, color="black", lw=1)
        ax.set_yticks(range(len(rows)), [f"{r['cell']} B={r['B']} H={r['H']} T={r['T']}" for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("time / jaxrnn's time (right of 1: slower than jaxrnn)")
        ax.set_title(mode)
    fig.legend(*axes[0][-1].get_legend_handles_labels(), loc="lower center", ncol=len(shown))
    save_figure(fig, path, rect=(0, 0.6 / fig.get_figheight(), 1, 1))


PRECISIONS = ("float32", "tf32")


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Within: every peer's float32 matmuls use the same arithmetic; settings restored after.

    ``"float32"``: true float32 everywhere (JAX's ``"highest"`` matmul
    precision; torch with TF32 off for matmuls and cuDNN). ``"tf32"``: the
    GPU's TensorFloat-32 tensor cores for both. Left alone, the defaults
    differ: JAX and torch's cuDNN RNNs run TF32 on a recent GPU while torch's
    plain matmuls run float32. A CPU computes float32 either way.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    tf32 = precision == "tf32"
    with jax.default_matmul_precision("tensorfloat32" if tf32 else "highest"):
        if not installed("torch"):
            yield
            return
        import torch

        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _processor() -> str:
    """The CPU's model name (``platform.processor()`` is empty on most Linux systems)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment() -> str:
    """The allocator and instruction set this process measures under, in one line."""
    tunables = os.environ.get("GLIBC_TUNABLES")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    native = jaxrnn.native.unavailable_reason()
    allocator = f"GLIBC_TUNABLES={tunables}" if tunables else "glibc defaults"
    isa = f"{isa}-limited (XLA, oneDNN, MKL, ATen)" if isa else "the machine's own"
    kernels = f"on ({jaxrnn.native.isa()})" if native is None else f"off ({native})"
    return f"allocator: {allocator}; ISA: {isa}; jaxrnn native kernels: {kernels}"


def describe_machine() -> dict:
    """Where the run happened: OS, processor, JAX devices, torch threads and CUDA device."""
    machine = {"platform": platform.platform(), "processor": _processor(), "cpus": os.cpu_count(),
               "jax_devices": [str(d) for d in jax.devices()]}
    if installed("torch"):
        import torch

        machine["torch_threads"] = torch.get_num_threads()
        machine["torch_cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return machine


def versions() -> dict:
    return {"jax": jax.__version__, **{n: _version(n) for n in ("flax", "equinox", "haiku", "torch")}}


def start_record(kind: str, args, **extra) -> tuple[dict, pathlib.Path]:
    """The JSON a benchmark run writes (where, when, versions, precision; ``results`` filled as
    measured) and its path: ``args.json`` or ``runs/<kind>-<timestamp>.json``."""
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": describe_machine(),
           "versions": versions(), "native_helpers": "pool" if jaxrnn.native.pooled() else "threads",
           "precision": args.precision, "repeats": args.repeats, "block": args.block,
           "argv": sys.argv[1:], **extra, "results": []}
    return out, record_path(kind, args.json)


def run(args) -> dict:
    with matmul_precision(args.precision):
        if getattr(args, "workloads", False):
            from jaxrnn.programs import workloads

            return workloads.run(args)
        return _run(args)


def _run(args) -> dict:
    cells = args.cells
    if args.quick:
        grid = [(b, h, t) for b in (32,) for h in (256,) for t in (100, 1000)]
    else:
        grid = [(b, h, t) for b in args.batch for h in args.hidden for t in args.lengths]
    modes = [False, True] if args.mode == "both" else [args.mode == "fwd+bwd"]
    cases = [(k, b, t, h, m) for k in cells for (b, h, t) in grid for m in modes]
    peak = gemm_peak()
    out, path = start_record("speed", args, glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                             gemm_peak_gflops=peak / 1e9)
    results = out["results"]
    text = (f"{jax.devices()[0].device_kind}; {args.precision} GEMM peak: {peak / 1e9:.0f} GFLOP/s; median of "
            f"{args.repeats} interleaved rounds of {args.block - 1} timed call(s) each; "
            f"{environment()}\n\n")
    print(text + "\n".join(table([], peak, args.peers).splitlines()[:2]), flush=True)
    for case in tqdm(cases, desc="speed", unit="case"):
        results.append(run_case(*case, args.peers, args.repeats, args.block))
        # Each row as soon as it is measured, and the JSON so far: a long run cut short keeps what it did.
        tqdm.write(table(results[-1:], peak, args.peers).splitlines()[-1])
        path.write_text(json.dumps(out, indent=1))
    text += table(results, peak, args.peers)
    if args.memory:
        out["memory"] = memory_case()
        text += "\nForward+backward LSTM, T=10,000, B=32, H=256: XLA peak temp memory and time\n\n" \
            + memory_table(out["memory"])
    path.write_text(json.dumps(out, indent=1))
    plot(results, args.peers, path.with_suffix(".png"))
    print("\n" + text)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return out


def _version(name: str) -> str:
    if not installed(name):
        return "not installed"
    module = __import__(name)
    return getattr(module, "__version__", "?")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="B=32, H=256, T in (100, 1000)")
    p.add_argument("--cells", nargs="+", default=["lstm", "gru", "vanilla"], choices=list(GATES))
    p.add_argument("--batch", nargs="+", type=arguments.positive_int, default=[1, 32, 256])
    p.add_argument("--hidden", nargs="+", type=arguments.positive_int, default=[128, 256, 512])
    p.add_argument("--lengths", nargs="+", type=arguments.positive_int, default=[100, 1000])
    p.add_argument("--mode", choices=("fwd", "fwd+bwd", "both"), default="both")
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    p.add_argument("--repeats", type=arguments.positive_int, default=7,
                   help="interleaved timing rounds (median reported)")
    p.add_argument("--block", type=arguments.int_at_least(2), default=3,
                   help="calls per implementation per round: the first, and more for 30 ms, untimed; then "
                        "block - 1 timed (module docstring)")
    p.add_argument("--memory", action="store_true", help="also measure memory at T=10,000")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="float32 matmul arithmetic for every peer, or TF32 tensor cores on a GPU")
    p.add_argument("--json", help="where to write the JSON (default: runs/speed-<timestamp>.json)")
    p.add_argument("--malloc-tunables", action="store_true",
                   help=f"restart with GLIBC_TUNABLES={MALLOC_TUNABLES} (Linux; glibc's defaults otherwise)")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: restart with XLA, oneDNN, MKL, ATen and jaxrnn's native kernels limited to AVX2")
    p.add_argument("--workloads", action="store_true",
                   help="time the workload table (padded, bidirectional, small and large batches) against flax "
                        "and torch instead of the size sweep")


# Transparent huge pages; one arena, never mmap, never give memory back: freed buffers are reused as they are.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=17179869184")

# What --isa avx2 sets: each library's own switch, jaxrnn's kernels built for AVX2 among them.
AVX2_ENVIRONMENT = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "JAXRNN_NATIVE_ISA": "avx2"}


def environment_for(args) -> dict[str, str]:
    """The environment variables ``args`` ask the process to start with (read only at start-up)."""
    env = {}
    if getattr(args, "malloc_tunables", False) and sys.platform.startswith("linux"):
        env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    if getattr(args, "isa", "native") == "avx2":
        flags = re.sub(r"\s*--xla_cpu_max_isa=\S*", "", os.environ.get("XLA_FLAGS", ""))  # ours replaces any
        env |= AVX2_ENVIRONMENT
        env["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa=AVX2".strip()
    return env


def restart_with(env: dict[str, str]) -> None:
    """Re-run this process's command line in a fresh process with ``env`` added, unless it has it already.

    glibc, XLA, oneDNN and ATen read these only at start-up, hence the restart.
    Called only for a command line of our own (``jaxrnn speed``, ``python -m
    jaxrnn.programs.speed``, ``benchmarks/speed.py``), never from a library call.
    """
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **env))


def main(argv=None) -> None:
    from jaxrnn.programs.cli import run_command

    parser = arguments.ArgumentParser(prog="jaxrnn speed", description=__doc__.split("\n\n")[0],
                                      formatter_class=arguments.HelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if argv is None:  # our own command line: safe to restart
        restart_with(environment_for(args))
    run_command(parser.prog, run, args)


if __name__ == "__main__":
    main()

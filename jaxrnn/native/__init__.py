r"""The LSTM, GRU and vanilla RNN unrolls as one compiled CPU kernel each, called through the XLA FFI.

On XLA's CPU backend a ``lax.scan`` step is several separate operations, and
for an LSTM of batch 32 and hidden size 256 the bare matmuls of such a loop
already take longer than torch's whole oneDNN LSTM (README, Performance).
``rnn_cpu.cc`` runs the whole unroll in one call instead: the weights are
packed once, each step is one pass over them per core with the gates computed
on the accumulators, and the cores meet once per step. A call runs in one of
two layouts, which give the same bits: the vector lanes along batch rows
(``"wide"``, the batch padded to 16) or, for a few rows, along hidden units
(``"small"``), which also takes weights too large for the caches; :func:`layout_for` picks one.

The kernels are compiled on first use with the machine's C++ compiler
(``$CXX``, else ``c++``, GCC or Clang; about 10 s) for this machine's CPU
(``-march=native``) and cached under ``$JAXRNN_CACHE`` (default
``~/.cache/jaxrnn``). One source serves every vector width (GCC/Clang vector
extensions): they run on an x86-64 CPU with AVX-512, or with AVX2 and FMA, in
float32, and :func:`isa` says which of the two they were built for.
:func:`unavailable_reason` says why not where they cannot run (another CPU, no
compiler), and :func:`jaxrnn.scan` then keeps to its XLA loop.
``JAXRNN_NATIVE=0`` turns them off; ``JAXRNN_NATIVE_THREADS`` sets their thread
count (default: the CPUs this process may run on); ``JAXRNN_NATIVE_HUGEPAGES=0``
stops them from asking for transparent huge pages under their large outputs
(see ``advise_huge_pages`` in ``rnn_cpu.cc``). ``JAXRNN_NATIVE_ISA`` builds
them for less than this CPU has, to test or time those builds on it:
``avx2`` (``-mno-avx512f``: AVX2 and FMA, as on a CPU without AVX-512) or
``sse2`` (``-mno-avx``: no AVX, no FMA; such a build says it cannot run);
unset or ``native``, everything this CPU has. ``JAXRNN_NATIVE_HELPERS=threads``
gives each call helper threads of its own instead of XLA's pool's
(:func:`pooled`; any other value than ``pool`` or ``threads`` is an error).
``JAXRNN_NATIVE_TRACE`` (any value, read at every call) writes one line on
stderr per kernel call: its time, and when its first helper thread began and
how many of its tasks the helpers ran.

Differentiable (a custom VJP: the kernel's backward loop produces the gate
gradients ``dG`` and, from the same pass over them, the input gradients, and
adds the weight gradients a chunk of steps at a time, each chunk one product
as cuDNN's after its loop), jit-able and vmap-able (sequentially); not
differentiable twice.

Example::

  >>> import jax, jax.numpy as jnp, jaxrnn
  >>> cell = jaxrnn.lstm(32)
  >>> params = cell.init(jax.random.key(0), 8)
  >>> xs = jax.random.normal(jax.random.key(1), (16, 20, 8))
  >>> ys, _ = jaxrnn.scan(cell, params, xs, kernel="xla")
  >>> if jaxrnn.native.unavailable_reason() is None:
  ...     ys_native, _ = jaxrnn.scan(cell, params, xs, kernel="native")
  ...     assert jnp.allclose(ys, ys_native, atol=1e-5)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _checks, chunks
from jaxrnn.cells import is_stock

SOURCE = Path(__file__).with_name("rnn_cpu.cc")
# -ffp-contract=off: the kernel's FMAs are written out; no other a * b + c is fused, so that every build
# (each vector width, each compiler) rounds alike.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-pthread")
# JAXRNN_NATIVE_ISA: the flags that build the kernels for less than -march=native gives.
ISA_FLAGS = {"native": (), "avx2": ("-mno-avx512f",), "sse2": ("-mno-avx",)}
# GCC only: no if-conversion of loops for the vectoriser. GCC 12.2 at -O3, vectorising the basic blocks of
# an if-converted loop, made `if (invariant) v = v + w` on the kernel's vectors an add masked to lane 0
# alone (AVX-512); the kernel's vectors are explicit, and nothing in it needs loops if-converted.
GCC_FLAGS = ("-fno-tree-loop-if-convert",)
KINDS = ("lstm", "gru", "vanilla")  # in the order of rnn_cpu.cc's kinds (jaxrnn_cell_blocks)
ACTIVATIONS = ("tanh", "relu", "identity")  # the vanilla cell's, in the order of rnn_cpu.cc's Activation


def kernel_kind(cell) -> str:
    """The kernel calls' name for a cell (:func:`unroll`'s ``kind``): its kind, and for a vanilla cell whose
    activation is not tanh the activation too, ``"vanilla:relu"`` or ``"vanilla:identity"``."""
    activation = cell.option("activation") if cell.kind == "vanilla" else "tanh"
    return cell.kind if activation == "tanh" else f"{cell.kind}:{activation}"


def _split(kind: str) -> tuple[str, dict]:
    """A kernel kind's cell (the key of KINDS, AUTO, SMALL_BATCH, blocks) and the FFI attributes it adds."""
    cell, _, activation = kind.partition(":")
    if cell not in KINDS or (activation and (cell != "vanilla" or activation not in ACTIVATIONS)):
        raise ValueError(f"kind: expected one of {KINDS} or 'vanilla:<activation>' with an activation of "
                         f"{ACTIVATIONS}, got {kind!r}")
    return cell, ({"activation": np.int64(ACTIVATIONS.index(activation or "tanh"))} if cell == "vanilla" else {})


def cache_dir() -> Path:
    return Path(os.environ.get("JAXRNN_CACHE", Path.home() / ".cache" / "jaxrnn"))


def threads() -> int:
    """Threads the kernels run on: ``$JAXRNN_NATIVE_THREADS``, else this process's CPUs."""
    if "JAXRNN_NATIVE_THREADS" in os.environ:
        return max(1, int(os.environ["JAXRNN_NATIVE_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def flags() -> tuple:
    """The compiler flags of the build: :data:`FLAGS`, plus those of ``$JAXRNN_NATIVE_ISA`` (:data:`ISA_FLAGS`)."""
    isa = os.environ.get("JAXRNN_NATIVE_ISA", "") or "native"
    if isa not in ISA_FLAGS:
        raise ValueError(f"JAXRNN_NATIVE_ISA={isa!r} is not one of {', '.join(ISA_FLAGS)}")
    return FLAGS + ISA_FLAGS[isa]


def _compile() -> Path:
    """Build the kernels for this machine, or reuse the build cached for the same inputs."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (looked for {os.environ.get('CXX', 'c++')!r})")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    build = flags() + (GCC_FLAGS if "Free Software Foundation" in version else ())
    include = jax.ffi.include_dir()
    key = hashlib.sha256(
        "\n".join([SOURCE.read_text(), version, " ".join(build), include, jax.__version__, platform.node()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"rnn_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build to a temporary name and rename: concurrent processes never see half a library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *build, "-isystem", include, str(SOURCE), "-o", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    os.replace(tmp, target)
    return target


@functools.cache
def _library() -> tuple:
    """Compile, load and register the kernels once per process: ``(reason, isa)``, the reason they
    cannot run or None, and the vector instruction set they were built for or None."""
    if os.environ.get("JAXRNN_NATIVE", "1") == "0":
        return "turned off by JAXRNN_NATIVE=0", None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU, this is {platform.machine()}", None
    import ctypes

    try:
        lib = ctypes.cdll.LoadLibrary(str(_compile()))
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as err:
        return f"could not build the kernels: {err}", None
    lib.jaxrnn_native_isa.restype = ctypes.c_char_p
    isa = lib.jaxrnn_native_isa().decode()
    if not lib.jaxrnn_native_available():
        return (f"needs a CPU with AVX2 and FMA, or AVX-512 (the kernels were built for {isa}"
                + (f", JAXRNN_NATIVE_ISA={os.environ['JAXRNN_NATIVE_ISA']})" if os.environ.get("JAXRNN_NATIVE_ISA")
                   else ")"), isa)
    for name in (f"jaxrnn_{kind}_{way}" for kind in KINDS for way in ("forward", "backward")):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    _BLOCKS.update({kind: divmod(lib.jaxrnn_cell_blocks(i), 16) for i, kind in enumerate(KINDS)})
    lib.jaxrnn_large_weight_bytes.restype = ctypes.c_int64
    _LARGE_WEIGHT_BYTES[:] = [lib.jaxrnn_large_weight_bytes()]
    return None, isa


_BLOCKS: dict[str, tuple[int, int]] = {}  # filled by _library from rnn_cpu.cc's cells
_LARGE_WEIGHT_BYTES: list[int] = []  # filled by _library: rnn_cpu.cc's kLargeWeightBytes


def blocks(kind: str) -> tuple[int, int]:
    """``(slots, kept)`` of rnn_cpu.cc's cell for ``kind``, as the built kernels define them: the blocks of H
    floats per batch row and step of dG (the LSTM's 4 gates; the GRU's 3 gates in 4 slots, h W_hn apart from
    x W_in; the vanilla cell's 1) and of what the forward call keeps for the backward one (the LSTM's i, f,
    g, o, c_{t-1}; the GRU's r, z, n, h W_hn + b_hn, h_{t-1}; the vanilla cell's h_t)."""
    _require()
    return _BLOCKS[_split(kind)[0]]


def _load() -> str | None:
    """Compile, load and register the kernels once per process; the reason they cannot run, or None."""
    return _library()[0]


def unavailable_reason() -> str | None:
    """Why the native kernels cannot run in this process, or None when they can."""
    return _load()


def isa() -> str | None:
    """The vector instruction set the kernels run on, ``"avx512"`` or ``"avx2"``; None where they cannot run."""
    reason, built = _library()
    return None if reason else built


# The calls kernel="auto" hands to each kernel: (batch, steps) pairs, a call of at least that many rows and
# steps for any pair; below them the XLA loop measured as fast or faster (docs/kernels.md, "Where the
# kernels are taken"). The LSTM's kernels, in the small layout, beat the loop from a batch of 1, but below
# 32 steps a few rows do not earn back a call's fixed cost (packing the weights, waking a helper thread).
# The GRU's loop is about as fast as its kernels below 16 rows. The vanilla cell's loop, small matmuls and an
# activation a step, is the cheapest: its kernels beat it from 16 rows over 32 steps, and at 12 rows over 100
# (the small layout, by a quarter at H = 64, level at 256); at 8 rows they won by less than this machine's
# spread, which does not pay for giving up forward-mode derivatives there. Measured on tanh; relu and the
# identity, timed at 32 rows (benchmarks/variants.py --activation), took the same rule. kernel="native"
# runs any call.
AUTO = {"lstm": ((8, 1), (1, 32)), "gru": ((16, 1),), "vanilla": ((16, 32), (12, 100))}


# The kernels' two layouts (rnn_cpu.cc): "wide", the vector lanes along batch rows (the batch padded to a
# multiple of 16), and "small", the lanes along hidden units (no padding). Both give the same bits. The small
# one runs batches up to these, where it measured faster than the wide one (docs/kernels.md, "Where the
# kernels are taken"), and, built for AVX-512, any batch whose weights take large_weight_bytes() or more: the
# wide layout reads all of [W_i; W_h] every step, the small one W_i once per chunk of steps and W_h alone
# every step, which is the cheaper once the weights no longer fit in the caches (an LSTM at I = H = 1024,
# 32 MiB: 1.4-1.6x as fast forward+backward at B = 32; level at 2-8 MiB). The AVX2 build's small tiles take one
# batch row, and read the weights once per row: it keeps the wide layout there.
SMALL_BATCH = {"lstm": 12, "gru": 12, "vanilla": 12}
_forced_layout: str | None = None  # set within forced_layout


def large_weight_bytes() -> int:
    """The bytes of float32 weights ``[W_i; W_h]`` from which the kernels built for AVX-512 run any batch in
    the small layout (``kLargeWeightBytes`` in ``rnn_cpu.cc``, which also reads ``W_i`` less often there).
    Raises RuntimeError, as every call into the kernels does, where they cannot run."""
    _require()
    return _LARGE_WEIGHT_BYTES[0]


def layout_for(kind: str, batch: int, weight_bytes: int = 0) -> str:
    """The layout a kernel call runs in: ``"small"`` from 1 row up to ``SMALL_BATCH[kind]``, and for any
    batch when its weights ``[W_i; W_h]`` take ``weight_bytes >= large_weight_bytes()`` and the kernels are
    built for AVX-512; else ``"wide"`` (an empty batch too). Within :func:`forced_layout`, that layout."""
    if batch < 1:
        return "wide"
    if _forced_layout is not None:
        return _forced_layout
    if batch <= SMALL_BATCH[_split(kind)[0]]:
        return "small"
    return "small" if isa() == "avx512" and weight_bytes >= large_weight_bytes() else "wide"


@contextlib.contextmanager
def forced_layout(layout: str):
    """Within it, every kernel call traced runs in ``layout`` (``"small"`` or ``"wide"``) whatever its batch
    (an empty one stays wide) and weights: to compare the layouts (tests, ``benchmarks/variants.py``). The
    layout is chosen when a call is traced, so a function jitted outside it keeps the layout of its first
    trace."""
    global _forced_layout
    if layout not in ("small", "wide"):
        raise ValueError(f"layout: expected 'small' or 'wide', got {layout!r}")
    saved, _forced_layout = _forced_layout, layout
    try:
        yield
    finally:
        _forced_layout = saved


def unsupported(cell, params, batch: int, dtype, *, steps: int, backward: str = "fused",
                forced: bool = False) -> str | None:
    """Why :func:`jaxrnn.scan` cannot run this call natively, or None when it can.

    The kernels run an LSTM, GRU or vanilla cell as :func:`jaxrnn.lstm`,
    :func:`jaxrnn.gru` or :func:`jaxrnn.vanilla` made it (never a cell whose
    functions were replaced: see :func:`jaxrnn.cells.is_stock`; the vanilla
    cell with any of its activations), in float32 on the CPU
    backend, with the fused backward; ``lengths``, ``resets`` and ``reverse``
    included.
    Unless ``forced`` (``kernel="native"``), a call smaller than every
    (batch, steps) pair of ``AUTO[cell.kind]`` is left to the XLA loop too.
    """
    if not is_stock(cell):  # first: a replaced function may break any check below (cell.option, say)
        return ("the cell's functions were replaced (jaxrnn.cells.is_stock is false); the kernels compute "
                "the LSTM, GRU and vanilla cell that jaxrnn.lstm, jaxrnn.gru and jaxrnn.vanilla make")
    checks = (  # (condition, reason), each evaluated only once those before it hold
        (lambda: cell.kind in KINDS,
         lambda: f"the cell is {cell.kind!r}; the kernels are an LSTM's, a GRU's and a vanilla cell's"),
        (lambda: jax.default_backend() == "cpu",
         lambda: f"JAX's default backend is {jax.default_backend()!r}, not the CPU"),
        (
            lambda: all(
                jnp.dtype(d) == jnp.float32
                for d in (dtype, cell.option("dtype"), *(jnp.result_type(v) for v in jax.tree_util.tree_leaves(params)))
            ),
            lambda: "the inputs, parameters or cell dtype are not all float32",
        ),
        (lambda: backward == "fused", lambda: f"backward={backward!r} asks for JAX's own derivative of the loop"),
        (lambda: steps > 0, lambda: "the sequence is empty"),
        (lambda: forced or any(batch >= b and steps >= t for b, t in AUTO[cell.kind]),
         lambda: f"the call ({batch} rows, {steps} steps) is smaller than kernel='auto' takes: at least "
                 + ", or at least ".join(f"{b} rows" if t == 1 else f"{t} steps" if b == 1 else f"{b} rows and {t} steps"
                                         for b, t in AUTO[cell.kind])),
    )
    for ok, reason in checks:
        if not ok():
            return reason()
    return unavailable_reason()


def _require() -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"jaxrnn's native kernels cannot run here: {reason}")


HELPERS = ("pool", "threads")
_FORCED_HELPERS: str | None = None


def pooled() -> bool:
    """Whether a kernel call's helper threads come from XLA's intra-op pool (the default) or are its own.

    XLA's pool threads spin for a while after each of its ops before they
    sleep: a helper of the call's own would compete with them for the cores
    (the loops inside a checkpointed call, and the other ops of a training
    step, leave them spinning), where a pool thread spends that time on the
    kernel's work. ``JAXRNN_NATIVE_HELPERS=threads`` (or :func:`forced_helpers`)
    gives every call helpers of its own, to compare; docs/kernels.md has the
    figures that chose the pool. Read when a call is traced: a function
    jitted before keeps the setting of its first trace.
    """
    helpers = _FORCED_HELPERS or os.environ.get("JAXRNN_NATIVE_HELPERS", "") or "pool"
    if helpers not in HELPERS:
        raise ValueError(f"JAXRNN_NATIVE_HELPERS={helpers!r}: expected one of {HELPERS}")
    return helpers == "pool"


@contextlib.contextmanager
def forced_helpers(helpers: str):
    """Within it, every kernel call traced takes its helper threads as ``helpers`` says (``"pool"`` or
    ``"threads"``), whatever ``JAXRNN_NATIVE_HELPERS`` says: to compare them (``benchmarks/variants.py``).
    Like :func:`forced_layout`, it acts when a call is traced."""
    global _FORCED_HELPERS
    _checks.check_choice("helpers", helpers, HELPERS)
    saved, _FORCED_HELPERS = _FORCED_HELPERS, helpers
    try:
        yield
    finally:
        _FORCED_HELPERS = saved


def weights(cell, params) -> tuple:
    """The kernel's weight arguments from a cell's params: LSTM and vanilla (w_i, w_h, b); GRU (w_i, w_h, b,
    b_hn). Biases a cell was made without are zeros."""
    H, G = cell.hidden_size, cell.num_gates
    zeros = lambda n: jnp.zeros((n,), jnp.float32)
    out = (params["w_i"], params["w_h"], params["b"] if "b" in params else zeros(G * H))
    return out + ((params["b_hn"] if "b_hn" in params else zeros(H)),) if cell.kind == "gru" else out


def _f32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _rows(batch_major: bool, B: int, T: int) -> tuple:
    """The leading dimensions of a sequence array of T steps: every one is laid out as ``x``."""
    return (B, T) if batch_major else (T, B)


class Masks(NamedTuple):
    """:func:`jaxrnn.scan`'s ``lengths`` and ``resets`` as the kernels take them.

    A padded step (``t >= lengths[b]``) freezes the row's carry, outputs zeros
    and reads its input as zeros; a reset (only at valid steps) starts the
    carry over from ``initial`` before the step. Each field is a (0,) array
    when not given (:func:`masks_for` makes them).
    """

    lengths: jax.Array  # (B,) int32
    resets: jax.Array  # (T, B) uint8, time-major in either layout: step t of x (all of it, not a call's)
    initial: tuple  # the carry a reset starts over from: (B, H) arrays like the carry; differentiable


def masks_for(carry: tuple, lengths=None, resets=None) -> Masks:
    """:class:`Masks` for a sequence whose initial carry is ``carry``: what a reset goes back to, in every
    call over its steps (the checkpointed chunks start from other carries, and reset to this one)."""
    none = jnp.zeros((0,), jnp.float32)
    return Masks(
        jnp.zeros((0,), jnp.int32) if lengths is None else jnp.asarray(lengths).astype(jnp.int32),
        jnp.zeros((0,), jnp.uint8) if resets is None else jnp.asarray(resets, jnp.uint8),
        tuple(none for _ in carry) if resets is None else tuple(carry),
    )


def forward_call(kind, x, carry, w, batch_major: bool, keep: bool, start=0, steps=None,
                 masks: Masks | None = None):
    """One forward kernel call: ``(ys, carry, kept, operands)``, the last two empty without ``keep``.

    The raw call under :func:`unroll` (no checks, no derivative), public so that
    a benchmark can time the kernel's parts on their own.

    It runs ``steps`` steps (all by default) from step ``start`` of ``x``, which
    it reads in place: the checkpointed chunks cost no copies of ``x``.
    """
    _require()
    m = masks_for(carry) if masks is None else masks
    B, H = carry[0].shape
    T = x.shape[1 if batch_major else 0] if steps is None else steps
    rows = _rows(batch_major, B, T)
    small = layout_for(kind, B, 4 * (w[0].size + w[1].size)) == "small"
    # The kept activations in the layout's own order: the backward call tells the layout from their rank.
    kept_blocks = blocks(kind)[1]
    activations = _f32(T, B, kept_blocks, H) if small else _f32(T, kept_blocks * H, -(-B // 16) * 16)
    kept = (activations, _f32(*rows, x.shape[-1] + H)) if keep else (_f32(0), _f32(0))
    outs = (_f32(*rows, H), *(_f32(B, H) for _ in carry), *kept)
    cell, attributes = _split(kind)
    call = jax.ffi.ffi_call(f"jaxrnn_{cell}_forward", outs, vmap_method="sequential")
    ys, *rest = call(
        x, jnp.asarray(start, jnp.int32), *carry, *m.initial, m.lengths, m.resets, *w,
        threads=np.int64(threads()), pooled=pooled(), keep=keep, batch_major=batch_major, small=small,
        **attributes,
    )
    return ys, tuple(rest[: len(carry)]), *rest[len(carry) :]


def backward_call(kind, kept, operands, w, d_ys, d_carry, batch_major: bool, start=0,
                  masks: Masks | None = None):
    """The backward kernel: its loop (which also gives the input gradient) and the weight gradients, from
    each step's ``dG`` and the matmul operands ``[x_t, h_{t-1}]`` the forward call kept, a chunk of steps
    at a time inside the call (docs/kernels.md).

    The raw call under :func:`unroll`'s derivative, public as :func:`forward_call` is.

    The steps are those of ``kept``, from step ``start`` of ``d_ys`` (read in place), in the layout
    the forward call kept them in (:func:`layout_for`).
    Returns ``(d_x, d_carry0, d_w, d_initial)``: ``d_w`` matches ``w``, ``d_initial``
    the masks' ``initial`` (the gradient that the steps which reset send to it).
    """
    m = masks_for(d_carry) if masks is None else masks
    B, H = d_carry[0].shape
    w_i, w_h = w[0], w[1]
    rows = _rows(batch_major, B, kept.shape[0])
    initial = tuple(_f32(*v.shape) for v in m.initial)
    S = blocks(kind)[0]
    outs = (_f32(*rows, w_i.shape[0]), *(_f32(B, H) for _ in d_carry), *initial, _f32(*w_i.shape),
            _f32(*w_h.shape), _f32(S * H))
    cell, attributes = _split(kind)
    call = jax.ffi.ffi_call(f"jaxrnn_{cell}_backward", outs, vmap_method="sequential")
    d_x, *rest, d_w_i, d_w_h, d_sum = call(
        kept, operands, w_i, w_h, d_ys, jnp.asarray(start, jnp.int32), *d_carry, m.lengths, m.resets,
        threads=np.int64(threads()), pooled=pooled(), batch_major=batch_major, small=kept.ndim == 4,
        **attributes,
    )
    d_carry0, d_initial = tuple(rest[: len(d_carry)]), tuple(rest[len(d_carry) :])
    if cell != "gru":  # dG's slots are the gates, for b as for W_i and W_h
        return d_x, d_carry0, (d_w_i, d_w_h, d_sum), d_initial
    # The GRU's dG holds d r, d z, d(x W_in) and d(h W_hn): b takes the first three, b_hn the last.
    return d_x, d_carry0, (d_w_i, d_w_h, d_sum[: 3 * H], d_sum[3 * H :]), d_initial


def _masks_cotangent(m: Masks, d_initial: tuple) -> Masks:
    """The cotangent of :class:`Masks`: float0 zeros for the integer masks (as JAX wants), ``d_initial`` for
    the initial carry."""
    float0 = lambda a: np.zeros(a.shape, jax.dtypes.float0)
    return Masks(float0(m.lengths), float0(m.resets), d_initial)


def unroll(kind: str, batch_major: bool, x, carry: tuple, w: tuple, masks: Masks | None = None):
    """A cell of :func:`jaxrnn.lstm`, :func:`jaxrnn.gru` or :func:`jaxrnn.vanilla` over a batch of
    sequences, as one kernel call.

    Arguments:
      kind: ``"lstm"``, ``"gru"``, ``"vanilla"`` (tanh), ``"vanilla:relu"`` or ``"vanilla:identity"``
        (:func:`kernel_kind` of the cell).
      batch_major: the layout of ``x`` and of the returned ``ys``.
      x: (T, B, I) float32 inputs, or (B, T, I) with ``batch_major``.
      carry: the initial carry as a tuple of (B, H) arrays: LSTM ``(h, c)``, GRU and vanilla ``(h,)``.
      w: the cell's parameters as :func:`weights` lists them.
      masks: ``lengths`` and ``resets`` (:func:`masks_for`); none by default.

    Returns:
      ``(ys, carry)``: ys (T, B, H) (or (B, T, H)) and the final carry, a tuple like ``carry``.
    """
    return _unroll(kind, batch_major, x, carry, w, masks_for(carry) if masks is None else masks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _unroll(kind, batch_major, x, carry, w, m):
    ys, carry, _, _ = forward_call(kind, x, carry, w, batch_major, keep=False, masks=m)
    return ys, carry


def _unroll_fwd(kind, batch_major, x, carry, w, m):
    ys, last, kept, operands = forward_call(kind, x, carry, w, batch_major, keep=True, masks=m)
    return (ys, last), (w, kept, operands, m)


def _unroll_bwd(kind, batch_major, residuals, cotangents):
    w, kept, operands, m = residuals
    d_ys, d_carry = cotangents
    d_x, d_carry0, d_w, d_initial = backward_call(kind, kept, operands, w, d_ys, d_carry, batch_major, masks=m)
    return d_x, d_carry0, d_w, _masks_cotangent(m, d_initial)


_unroll.defvjp(_unroll_fwd, _unroll_bwd)


# A chunk's activations are kept in calls of at most this many steps, each
# with its own gradient buffer for the backward pass (d x), so that buffer is a
# piece's, not a whole chunk's. Each piece costs a little time, which is why
# short chunks are not cut up (the measured trade-off: docs/performance.md,
# checkpoint_every).
PIECE_STEPS = 250


def unroll_checkpointed(kind: str, batch_major: bool, chunk: int, x, carry: tuple, w: tuple,
                        masks: Masks | None = None):
    """:func:`unroll` keeping only the carry every ``chunk`` steps for the backward pass.

    The forward pass runs the kernel chunk by chunk, keeping no activations
    except the last chunk's; the backward pass starts from those, then reruns
    each earlier chunk's forward, last first, keeping its activations for that
    chunk only (in pieces of at most :data:`PIECE_STEPS` steps, each with its
    own gradient buffers). Memory for the backward pass: T/chunk carries plus
    one chunk's activations, instead of all T steps'; time: one more forward
    pass over all but the last chunk.

    Why the last chunk is kept: the backward pass starts with it, so rerunning
    it would rebuild what the forward pass had just made, and holding it costs
    no more memory than the rerun of any other chunk. When ``chunk`` does not
    divide T, the short chunk comes first, so that the kept one is whole.
    """
    return _unroll_checkpointed(kind, batch_major, chunk, x, carry, w, masks_for(carry) if masks is None else masks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _unroll_checkpointed(kind, batch_major, chunk, x, carry, w, m):
    (ys, last), _ = _checkpointed_fwd(kind, batch_major, chunk, x, carry, w, m)
    return ys, last


def _keep_chunk(kind, batch_major, x, carry, w, m, start: int, steps: int, ys=None):
    """A chunk's forward keeping its activations, in calls of at most :data:`PIECE_STEPS` steps.

    Returns ``(ys, carry, pieces)``: ``ys`` as given (the whole sequence's, into
    which the chunk's outputs are written) or None, the carry after the chunk,
    and each call's ``(start, kept, operands)``.
    """
    size = -(-steps // -(-steps // PIECE_STEPS))  # equal pieces
    pieces = []
    for offset in range(0, steps, size):
        first, length = start + offset, min(size, steps - offset)
        y, carry, kept, operands = forward_call(
            kind, x, carry, w, batch_major, keep=True, start=first, steps=length, masks=m
        )
        pieces.append((first, kept, operands))
        ys = ys if ys is None else jax.lax.dynamic_update_slice_in_dim(ys, y, first, 1 if batch_major else 0)
    return ys, carry, tuple(pieces)


def _checkpointed_fwd(kind, batch_major, chunk, x, carry, w, m):
    # Each chunk's call reads its steps of x in place and its ys are written
    # into the whole ys, in either layout: no copy of the whole sequence (its
    # size is what this saves), and no copy of x per chunk (docs/kernels.md has
    # what the slices of x and d ys cost). The masks are the whole sequence's:
    # a call reads its steps of them.
    axis = 1 if batch_major else 0
    head, n, chunk = chunks.layout(x.shape[axis], chunk)

    def run(state, start, length):  # one chunk's forward; returns the carry it started from
        first, ys = state
        y, carry, _, _ = forward_call(kind, x, first, w, batch_major, keep=False, start=start,
                                      steps=length, masks=m)
        return (carry, jax.lax.dynamic_update_slice_in_dim(ys, y, start, axis)), first

    state = (carry, jnp.zeros(x.shape[:2] + (carry[0].shape[-1],), jnp.float32))
    if head:
        state, _ = run(state, 0, head)
    # starts: the carry each of the n - 1 rerun whole chunks starts from.
    (first, ys), starts = jax.lax.scan(lambda s, k: run(s, head + k * chunk, chunk), state, jnp.arange(n - 1))
    ys, last, pieces = _keep_chunk(kind, batch_major, x, first, w, m, head + (n - 1) * chunk, chunk, ys)
    return (ys, last), (x, w, m, carry, starts, pieces)


def _checkpointed_bwd(kind, batch_major, chunk, residuals, cotangents):
    x, w, m, carry0, starts, pieces = residuals
    d_ys, d_carry = cotangents
    axis = 1 if batch_major else 0
    head, n, chunk = chunks.layout(x.shape[axis], chunk)
    add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)

    def back(state, pieces):  # the backward pass of a chunk's kept pieces, last first
        for start, kept, operands in reversed(pieces):
            d_carry, d_w, d_x, d_initial = state
            dx, d_carry, dw, di = backward_call(
                kind, kept, operands, w, d_ys, d_carry, batch_major, start=start, masks=m
            )
            state = d_carry, add(d_w, dw), jax.lax.dynamic_update_slice_in_dim(d_x, dx, start, axis), add(d_initial, di)
        return state

    def rerun(state, start, length, first):  # rerun the chunk's forward, keeping activations, then back
        return back(state, _keep_chunk(kind, batch_major, x, first, w, m, start, length)[2])

    zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
    state = back((d_carry, zeros(w), jnp.zeros_like(x), zeros(m.initial)), pieces)
    step = lambda state, chunk_k: (rerun(state, head + chunk_k[0] * chunk, chunk, chunk_k[1]), None)
    state, _ = jax.lax.scan(step, state, (jnp.arange(n - 1), starts), reverse=True)
    if head:
        state = rerun(state, 0, head, carry0)
    d_carry0, d_w, d_x, d_initial = state
    return d_x, d_carry0, d_w, _masks_cotangent(m, d_initial)


_unroll_checkpointed.defvjp(_checkpointed_fwd, _checkpointed_bwd)

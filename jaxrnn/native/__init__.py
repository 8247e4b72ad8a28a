r"""The LSTM unroll as one compiled CPU kernel, called through the XLA FFI.

On XLA's CPU backend a ``lax.scan`` step is several separate operations, and
for an LSTM of batch 32 and hidden size 256 the bare matmuls of such a loop
already take longer than torch's whole oneDNN LSTM (README, Performance).
``lstm_cpu.cc`` runs the whole unroll in one call instead: the weights are
packed once, each step is one pass over them per core with the gates computed
on the accumulators, and the cores meet once per step.

The kernel is compiled on first use with the machine's C++ compiler
(``$CXX``, else ``c++``; about 5 s) for this machine's CPU (``-march=native``)
and cached under ``$JAXRNN_CACHE`` (default ``~/.cache/jaxrnn``). It needs an
x86-64 CPU with AVX-512 and float32; :func:`unavailable_reason` says why not
where it cannot run, and :func:`jaxrnn.scan` then keeps to its XLA loop.
``JAXRNN_NATIVE=0`` turns it off; ``JAXRNN_NATIVE_THREADS`` sets its thread
count (default: the CPUs this process may run on).

Differentiable (a custom VJP: the kernel's backward loop produces the gate
gradients ``dG`` (T, B, 4H), and the weight and input gradients are then three
large matmuls, as cuDNN does), jit-able and vmap-able (sequentially); not
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

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = Path(__file__).with_name("lstm_cpu.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")


def cache_dir() -> Path:
    return Path(os.environ.get("JAXRNN_CACHE", Path.home() / ".cache" / "jaxrnn"))


def threads() -> int:
    """Threads the kernel runs on: ``$JAXRNN_NATIVE_THREADS``, else this process's CPUs."""
    if "JAXRNN_NATIVE_THREADS" in os.environ:
        return max(1, int(os.environ["JAXRNN_NATIVE_THREADS"]))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _compile() -> Path:
    """Build the kernel for this machine, or reuse the build cached for the same inputs."""
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    if compiler is None:
        raise RuntimeError(f"no C++ compiler found (looked for {os.environ.get('CXX', 'c++')!r})")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    include = jax.ffi.include_dir()
    key = hashlib.sha256(
        "\n".join([SOURCE.read_text(), version, " ".join(FLAGS), include, jax.__version__, platform.node()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"lstm_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build to a temporary name and rename: concurrent processes never see half a library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *FLAGS, "-isystem", include, str(SOURCE), "-o", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    os.replace(tmp, target)
    return target


@functools.cache
def _load() -> str | None:
    """Compile, load and register the kernel once per process; the reason it cannot run, or None."""
    if os.environ.get("JAXRNN_NATIVE", "1") == "0":
        return "turned off by JAXRNN_NATIVE=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU, this is {platform.machine()}"
    import ctypes

    try:
        lib = ctypes.cdll.LoadLibrary(str(_compile()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return f"could not build the kernel: {err}"
    if not lib.jaxrnn_native_available():
        return "needs a CPU with AVX-512 (the kernel was built without it)"
    for name in ("jaxrnn_lstm_forward", "jaxrnn_lstm_backward"):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return None


def unavailable_reason() -> str | None:
    """Why the native LSTM cannot run in this process, or None when it can."""
    return _load()


MIN_BATCH = 8  # the kernel pads the batch to a multiple of 16; below 8 most of its work would be padding


def unsupported(cell, params, batch: int, dtype, *, lengths=None, resets=None, backward: str = "fused") -> str | None:
    """Why :func:`jaxrnn.scan` cannot run this call natively, or None when it can.

    The kernel covers the common case only: an LSTM cell in float32 on the
    CPU backend, no ``lengths`` or ``resets``, the fused
    backward, a batch of at least ``MIN_BATCH``. Everything else keeps to the
    XLA loop.
    """
    checks = (
        (cell.kind == "lstm", f"the cell is {cell.kind!r}; the kernel is an LSTM's"),
        (jax.default_backend() == "cpu", f"JAX's default backend is {jax.default_backend()!r}, not the CPU"),
        (
            all(
                jnp.dtype(d) == jnp.float32
                for d in (dtype, cell.option("dtype"), *(jnp.result_type(v) for v in jax.tree_util.tree_leaves(params)))
            ),
            "the inputs, parameters or cell dtype are not all float32",
        ),
        (lengths is None, "lengths are given"),
        (resets is None, "resets are given"),
        (backward == "fused", f"backward={backward!r} asks for JAX's own derivative of the loop"),
        (batch >= MIN_BATCH, f"the batch ({batch}) is below {MIN_BATCH}"),
    )
    for ok, reason in checks:
        if not ok:
            return reason
    return unavailable_reason()


def _require() -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"jaxrnn's native LSTM cannot run here: {reason}")


def _forward(x, h0, c0, w_i, w_h, b, batch_major: bool, keep: bool):
    _require()
    B, H = h0.shape
    T = x.shape[1 if batch_major else 0]
    padded = -(-B // 16) * 16
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    rows = x.shape[:2]  # (T, B) or (B, T): every sequence array is laid out as x
    kept = (f32(T, 5 * H, padded), f32(*rows, x.shape[-1] + H)) if keep else (f32(0), f32(0))
    call = jax.ffi.ffi_call(
        "jaxrnn_lstm_forward", (f32(*rows, H), f32(B, H), f32(B, H), *kept), vmap_method="sequential"
    )
    return call(x, h0, c0, w_i, w_h, b, threads=np.int64(threads()), keep=keep, batch_major=batch_major)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def lstm_unroll(x, h0, c0, w_i, w_h, b, batch_major=False):
    """The LSTM of :func:`jaxrnn.lstm` over a batch of sequences, as one kernel call.

    Arguments:
      x: (T, B, I) float32 inputs, or (B, T, I) with ``batch_major=True``.
      h0, c0: (B, H) the initial carry.
      w_i, w_h, b: the cell's ``(I, 4H)``, ``(H, 4H)`` and ``(4H,)`` parameters,
        gates ``i, f, g, o``.
      batch_major: the layout of ``x`` and of the returned ``ys``.

    Returns:
      ``(ys, h_T, c_T)``: ys (T, B, H) (or (B, T, H)) and the final carry.
    """
    ys, h_last, c_last, _, _ = _forward(x, h0, c0, w_i, w_h, b, batch_major, keep=False)
    return ys, h_last, c_last


def _unroll_fwd(x, h0, c0, w_i, w_h, b, batch_major):
    ys, h_last, c_last, kept, operands = _forward(x, h0, c0, w_i, w_h, b, batch_major, keep=True)
    return (ys, h_last, c_last), (c0, w_i, w_h, kept, operands)


def _backward(kept, operands, c0, w_i, w_h, d_ys, d_h_last, d_c_last, batch_major: bool):
    """The kernel's backward loop, then the weight and input gradients as large matmuls.

    Returns ``(d_x, d_h0, d_c0, d_w, d_b)`` with ``d_w`` = [dW_i; dW_h], (I+H, 4H).
    """
    B, H = c0.shape
    rows = d_ys.shape[:2]
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    call = jax.ffi.ffi_call(
        "jaxrnn_lstm_backward", (f32(*rows, 4 * H), f32(B, H), f32(B, H), f32(4 * H)),
        vmap_method="sequential",
    )
    dg, d_h0, d_c0, d_b = call(
        kept, c0, w_h, d_ys, d_h_last, d_c_last, threads=np.int64(threads()), batch_major=batch_major
    )
    # cuDNN's split, as in jaxrnn.unroll: the forward kept every step's matmul
    # operand [x_t, h_{t-1}], so dW_i and dW_h are one (I+H, T*B) x (T*B, 4H)
    # product. Written as 2-D matmuls: the same contraction as an einsum over
    # (t, b) measured 98-132 ms against 93 (T=1000, B=32, H=256). Either layout
    # works: operands and dG list the (t, b) pairs in the same order.
    I = w_i.shape[0]
    dg_2d = dg.reshape(-1, 4 * H)
    d_w = operands.reshape(-1, I + H).T @ dg_2d
    d_x = (dg_2d @ w_i.T).reshape(*rows, I)
    return d_x, d_h0, d_c0, d_w, d_b


def _unroll_bwd(batch_major, residuals, cotangents):
    c0, w_i, w_h, kept, operands = residuals
    d_x, d_h0, d_c0, d_w, d_b = _backward(kept, operands, c0, w_i, w_h, *cotangents, batch_major)
    I = w_i.shape[0]
    return d_x, d_h0, d_c0, d_w[:I], d_w[I:], d_b


lstm_unroll.defvjp(_unroll_fwd, _unroll_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def lstm_unroll_checkpointed(x, h0, c0, w_i, w_h, b, chunk: int, batch_major: bool = False):
    """:func:`lstm_unroll` keeping only the carry every ``chunk`` steps for the backward pass.

    The forward pass runs the kernel chunk by chunk without keeping any
    activations; the backward pass reruns each chunk's forward, last chunk
    first, keeping its activations for that chunk only. Memory for the backward
    pass: T/chunk carries plus one chunk's activations, instead of all T
    steps'; time: one more forward pass.
    """
    (ys, h_last, c_last), _ = _checkpointed_fwd(x, h0, c0, w_i, w_h, b, chunk, batch_major)
    return ys, h_last, c_last


def _chunk_starts(T: int, chunk: int) -> list[tuple[int, int]]:
    """(start, length) of each chunk; the last may be shorter."""
    return [(s, min(chunk, T - s)) for s in range(0, T, chunk)]


def _checkpointed_fwd(x, h0, c0, w_i, w_h, b, chunk, batch_major):
    # Chunks are sliced out of x and written into ys in place, in either layout:
    # no transposed copy of the whole sequence (its size is what this saves).
    axis = 1 if batch_major else 0
    T = x.shape[axis]
    n, tail = divmod(T, chunk)

    def run(carry, start, length):
        h, c, ys = carry
        x_chunk = jax.lax.dynamic_slice_in_dim(x, start, length, axis)
        y, h, c, _, _ = _forward(x_chunk, h, c, w_i, w_h, b, batch_major, keep=False)
        return (h, c, jax.lax.dynamic_update_slice_in_dim(ys, y, start, axis)), (h, c)

    ys = jnp.zeros(x.shape[:2] + (h0.shape[-1],), jnp.float32)
    (h, c, ys), ends = jax.lax.scan(lambda carry, k: run(carry, k * chunk, chunk), (h0, c0, ys), jnp.arange(n))
    # The carry each chunk starts from: h0 for the first, then each whole chunk's last.
    starts = jax.tree_util.tree_map(lambda first, rest: jnp.concatenate([first[None], rest]), (h0, c0), ends)
    if tail:
        (h, c, ys), _ = run((h, c, ys), n * chunk, tail)
    return (ys, h, c), (x, w_i, w_h, b, starts)


def _checkpointed_bwd(chunk, batch_major, residuals, cotangents):
    x, w_i, w_h, b, starts = residuals
    d_ys, d_h, d_c = cotangents
    (I, G), H = w_i.shape, w_h.shape[0]
    axis = 1 if batch_major else 0
    T = x.shape[axis]
    n, tail = divmod(T, chunk)

    def back(carry, start, length, h0, c0):  # rerun the chunk's forward, keeping activations, then back
        d_h, d_c, d_w, d_b, d_x = carry
        x_chunk = jax.lax.dynamic_slice_in_dim(x, start, length, axis)
        _, _, _, kept, operands = _forward(x_chunk, h0, c0, w_i, w_h, b, batch_major, keep=True)
        d_y = jax.lax.dynamic_slice_in_dim(d_ys, start, length, axis)
        dx, d_h, d_c, dw, db = _backward(kept, operands, c0, w_i, w_h, d_y, d_h, d_c, batch_major)
        return d_h, d_c, d_w + dw, d_b + db, jax.lax.dynamic_update_slice_in_dim(d_x, dx, start, axis)

    carry = (d_h, d_c, jnp.zeros((I + H, G), jnp.float32), jnp.zeros((G,), jnp.float32), jnp.zeros_like(x))
    if tail:
        carry = back(carry, n * chunk, tail, *(s[n] for s in starts))
    step = lambda carry, k: (back(carry, k * chunk, chunk, starts[0][k], starts[1][k]), None)
    (d_h0, d_c0, d_w, d_b, d_x), _ = jax.lax.scan(step, carry, jnp.arange(n), reverse=True)
    return d_x, d_h0, d_c0, d_w[:I], d_w[I:], d_b


lstm_unroll_checkpointed.defvjp(_checkpointed_fwd, _checkpointed_bwd)

"""Where a native kernel's forward+backward time goes, piece by piece, in one process.

    python benchmarks/kernel_parts.py --cells lstm gru --lengths 100 1000

Times, interleaved as ``jaxrnn speed`` does (median of ``--repeats`` rounds):
the forward kernel alone (inference), the forward keeping what the backward
needs, the backward (the kernel's reverse loop, which also gives ``d x`` and,
a chunk of steps at a time, the weight gradients), XLA's matmul of the weight
gradients' shapes (what those products alone take at XLA's matmul rate), and
the whole ``jax.grad`` of a sum of the outputs. Batch-major, as
``jaxrnn.scan`` calls it; B=32, H=I=256 by default. Needs the native kernels
(an x86-64 CPU with AVX-512, or AVX2 and FMA).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

import jaxrnn
from jaxrnn import native
from jaxrnn.programs import arguments
from jaxrnn.programs.speed import interleaved_ms


def parts(kind: str, B: int, T: int, H: int, repeats: int) -> dict[str, float]:
    cell = getattr(jaxrnn, kind)(H)
    w = native.weights(cell, cell.init(jax.random.key(0), H))
    x = jax.random.normal(jax.random.key(1), (B, T, H))
    carry = tuple(jnp.zeros((B, H)) for _ in range(2 if kind == "lstm" else 1))
    d_ys = jax.random.normal(jax.random.key(2), (B, T, H))
    forward = jax.jit(lambda x: native.forward_call(kind, x, carry, w, True, keep=False)[0])
    keeping = jax.jit(lambda x: native.forward_call(kind, x, carry, w, True, keep=True))
    _, _, kept, operands = keeping(x)
    d_carry = tuple(jnp.zeros_like(c) for c in carry)
    backward = jax.jit(lambda kept, operands, d_ys: native.backward_call(kind, kept, operands, w, d_ys, d_carry, True))
    G = w[0].shape[1] // H
    dg = jax.random.normal(jax.random.key(3), (B * T, G * H))
    matmul = jax.jit(lambda operands, dg: operands.reshape(-1, operands.shape[-1]).T @ dg)
    whole = jax.jit(jax.grad(lambda w, x: native.unroll(kind, True, x, carry, w)[0].sum(), argnums=(0, 1)))
    calls = {
        "forward": lambda: forward(x),
        "forward, keeping": lambda: keeping(x),
        "backward": lambda: backward(kept, operands, d_ys),
        "XLA's matmul of the weight gradients' shapes": lambda: matmul(operands, dg),
        "whole fwd+bwd": lambda: whole(w, x),
    }
    calls = {name: (lambda f=f: jax.block_until_ready(f())) for name, f in calls.items()}
    for f in calls.values():  # compile and warm up
        f(), f()
    return interleaved_ms(calls, repeats, timed=2, settle=True)


def main(argv=None) -> None:
    p = arguments.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", nargs="+", default=["lstm"], choices=native.KINDS)
    p.add_argument("--lengths", nargs="+", type=int, default=[1000])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    if native.unavailable_reason():
        raise SystemExit(f"the native kernels cannot run here: {native.unavailable_reason()}")
    for kind in args.cells:
        for T in args.lengths:
            ms = parts(kind, args.batch, T, args.hidden, args.repeats)
            print(f"{kind} B={args.batch} T={T} H={args.hidden}: "
                  + ", ".join(f"{name} {v:.1f} ms" for name, v in ms.items()), flush=True)


if __name__ == "__main__":
    main()

"""The native CPU LSTM, GRU and vanilla cell (jaxrnn.native) against the XLA loop they replace."""

import functools
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn import native
from conftest import random_inputs, random_params

needs_kernel = pytest.mark.skipif(
    native.unavailable_reason() is not None, reason=f"native kernel: {native.unavailable_reason()}"
)

# (B, T, I, H): a batch of exactly 16, a padded one (33 -> 48 rows, a 32-row and
# a 16-row tile); H odd (a one-unit tail tile and a short backward tile), H
# split over threads.
SHAPES = [(16, 6, 5, 8), (33, 9, 7, 40), (16, 4, 3, 9)]


# The kinds every parametrised test runs; the vanilla cell's kernel runs in rows of its own added to the case
# lists (MASKED, LAYOUT_CASES, VANILLA_SPECIALS, ...), to keep the file's time down.
KINDS = ["lstm", "gru"]


def assert_close_at_scale(got, want, rtol=1e-5):
    """Equal to ``rtol`` of the array's largest entry: sums of many float32 terms cancel, so an
    entry near zero carries the rounding error of its largest terms."""
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, atol=rtol * float(np.abs(w).max()), rtol=0)


def assert_same_specials_and_close(got, want, rtol=1e-5, what=""):
    """The contract of a fast path: NaN, +inf and -inf at the same positions of every leaf, and the
    finite entries equal to ``rtol``, relatively and of the larger of 1 and the leaf's largest finite
    entry (float32 sums that cancel leave an entry near zero the rounding error of their largest
    terms, which are of order one here: products of activations, weights and random cotangents)."""
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
    for path, g, w in zip(paths, jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, f"{what}{path}: shape {g.shape}, expected {w.shape}"
        for name, where in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
            differ = np.argwhere(where(g) != where(w))
            assert not differ.size, (
                f"{what}{path}: {name} in one but not the other at {len(differ)} of {g.size} positions, "
                f"first {tuple(differ[0])}: got {g[tuple(differ[0])]}, expected {w[tuple(differ[0])]} "
                f"(got {np.isnan(g).sum()} NaN, {np.isinf(g).sum()} inf; expected {np.isnan(w).sum()}, {np.isinf(w).sum()})"
            )
        finite = np.isfinite(w)
        scale = max(1.0, float(np.abs(w[finite]).max(initial=0.0)))
        np.testing.assert_allclose(g[finite], w[finite], rtol=rtol, atol=rtol * scale, err_msg=f"{what}{path}")


def make_cell(kind, H):
    """The cell of a kernel kind (native.kernel_kind): "lstm", "gru", "vanilla", "vanilla:relu", ..."""
    name, _, activation = kind.partition(":")
    return jaxrnn.vanilla(H, activation) if activation else jaxrnn.CELLS[name](H)


def setup(B, T, I, H, seed=0, kind="lstm"):
    cell = make_cell(kind, H)
    params = random_params(cell, jax.random.key(seed), I)
    if kind.startswith("vanilla"):  # W_h of spectral radius about 1/2: no gates to saturate, and a chaotic h would
        params["w_h"] = params["w_h"] / np.sqrt(H)  # amplify the rounding differences of tanh beyond rtol
    xs = random_inputs(jax.random.key(seed + 1), B, T, I)
    h, c = (0.5 * random_inputs(k, B, H) for k in jax.random.split(jax.random.key(seed + 2)))
    return cell, params, xs, jaxrnn.LSTMState(h, c) if kind == "lstm" else h


@needs_kernel
@pytest.mark.parametrize("time_major", [False, True], ids=["batch-major", "time-major"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("kind", KINDS)
def test_native_equals_the_xla_loop(kind, shape, reverse, time_major):
    cell, params, xs, carry = setup(*shape, kind=kind)
    xs = jnp.swapaxes(xs, 0, 1) if time_major else xs
    run = lambda kernel: jax.jit(
        lambda p, x, c: jaxrnn.scan(cell, p, x, initial_carry=c, reverse=reverse, time_major=time_major, kernel=kernel)
    )(params, xs, carry)
    got, want = run("native"), run("xla")
    for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, r, atol=2e-6)


@needs_kernel
@pytest.mark.parametrize("time_major", [False, True], ids=["batch-major", "time-major"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-I{}-H{}".format(*s))
@pytest.mark.parametrize("kind", KINDS)
def test_native_gradients_equal_the_xla_loop(kind, shape, time_major):
    cell, params, xs, carry = setup(*shape, kind=kind)
    xs = jnp.swapaxes(xs, 0, 1) if time_major else xs
    w = random_inputs(jax.random.key(9), *xs.shape[:2], cell.hidden_size)

    def loss(p, x, c, kernel):
        ys, final = jaxrnn.scan(cell, p, x, initial_carry=c, time_major=time_major, kernel=kernel)
        h, c = (final.h, final.c) if kind == "lstm" else (final, final)
        return jnp.sum(ys * w) + jnp.sum(h**2) + jnp.sum(3 * c)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    assert_close_at_scale(grads(params, xs, carry, "native"), grads(params, xs, carry, "xla"))


@functools.partial(jax.jit, static_argnames=("kind", "kernel", "time_major", "checkpoint_every", "reverse"))
def values_and_gradients(params, xs, carry, w_ys, w_carry, *, kind, kernel, time_major=False, checkpoint_every=None,
                         reverse=False, lengths=None, resets=None):
    """``((ys, final carry), gradients w.r.t. (params, xs, carry))`` of :func:`jaxrnn.scan` and of
    ``sum(ys * w_ys) + sum(final carry * w_carry)``. ``xs``, ``ys``, ``d xs`` and ``resets`` are
    batch-major whatever the layout the call runs in, so that one compiled reference serves every layout."""
    cell = make_cell(kind, params["w_h"].shape[0])

    def loss(p, x, c):
        x = jnp.swapaxes(x, 0, 1) if time_major else x
        r = resets.T if time_major and resets is not None else resets
        ys, final = jaxrnn.scan(cell, p, x, initial_carry=c, time_major=time_major, reverse=reverse,
                                checkpoint_every=checkpoint_every, kernel=kernel, lengths=lengths, resets=r)
        ys = jnp.swapaxes(ys, 0, 1) if time_major else ys
        total = jnp.sum(ys * w_ys) + sum(jnp.sum(f * w) for f, w in zip(jax.tree_util.tree_leaves(final), w_carry))
        return total, (ys, final)

    grads, values = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry)
    return values, grads


NAN, INF = float("nan"), float("inf")

# Special values, each put into (params, xs) of the shape below (xs batch-major). The XLA loop is the
# reference: NaN goes on from where it enters (one row from its step on; everywhere from a weight, and
# into every weight's gradient), sigmoid(+-inf) is 1 or 0 and tanh(+-inf) +-1, exactly, so a saturated
# gate's derivative is exactly 0, and an infinite input times it a NaN weight gradient.
SPECIAL_VALUES = {
    "nan-at-one-step-of-one-row": lambda p, x: (p, x.at[3, 2, 1].set(NAN)),
    "nan-in-w_h": lambda p, x: ({**p, "w_h": p["w_h"].at[1, 2].set(NAN)}, x),
    "+inf-input": lambda p, x: (p, x.at[3, 2, 1].set(INF)),
    "-inf-input": lambda p, x: (p, x.at[5, 0, 0].set(-INF)),
    "inf-minus-inf-in-the-gates": lambda p, x: (p, x.at[3, 2, 0].set(INF).at[3, 2, 1].set(-INF)),
    # Saturates a gate of every row; the kernel's padded batch rows (zero inputs) get 0 * inf = NaN,
    # which must stay out of the bias gradient, the one sum across rows.
    "inf-in-w_i": lambda p, x: ({**p, "w_i": p["w_i"].at[1, 2].set(INF)}, x),
    # XLA runs with denormals flushed to zero: a denormal input times an infinite weight is 0 * inf = NaN.
    "denormal-input-times-inf-weights": lambda p, x: ({**p, "w_i": p["w_i"].at[1].set(INF)}, x.at[3, 2, 1].set(1e-40)),
}
# (time_major, checkpoint_every, B); T = 5: chunks of 2 start with a short one, a chunk of 3 with one of 2.
# B = 17: the wide layout pads the batch to 32 rows; B = 6: the small layout.
SPECIAL_LAYOUTS = [(False, None, 17), (True, None, 6), (False, 2, 17), (True, 3, 6)]


SPECIAL_LAYOUT_IDS = ["batch-major", "time-major-small", "batch-major-chunks-of-2", "time-major-small-chunks-of-3"]
# The vanilla cell: every case, each in one of the layouts in turn.
VANILLAS = ["vanilla", "vanilla:relu", "vanilla:identity"]  # jaxrnn.vanilla's activations, as native.kernel_kind names them
# The vanilla cell: every case for each activation, each case in one of the layouts in turn, a different one for
# each activation.
VANILLA_SPECIALS = [(kind, case, *SPECIAL_LAYOUTS[(k + a) % len(SPECIAL_LAYOUTS)])
                    for a, kind in enumerate(VANILLAS) for k, case in enumerate(SPECIAL_VALUES)]


@needs_kernel
@pytest.mark.parametrize(
    "kind, case, time_major, chunk, B",
    [(kind, case, *layout) for kind in KINDS for case in SPECIAL_VALUES for layout in SPECIAL_LAYOUTS]
    + VANILLA_SPECIALS,
    ids=[f"{kind}-{case}-{name}" for kind in KINDS for case in SPECIAL_VALUES for name in SPECIAL_LAYOUT_IDS]
    + [f"{kind}-{case}-{SPECIAL_LAYOUT_IDS[SPECIAL_LAYOUTS.index(tuple(layout))]}" for kind, case, *layout in VANILLA_SPECIALS],
)
def test_nan_and_inf_propagate_through_the_kernel_as_through_the_xla_loop(kind, case, time_major, chunk, B):
    # H = 33: two shares of units (threads, where there are two CPUs), and a one-unit tail tile.
    cell, params, xs, carry = setup(B, 5, 3, 33, kind=kind)
    params, xs = SPECIAL_VALUES[case](params, xs)
    w_ys = random_inputs(jax.random.key(9), B, 5, 33)
    w_carry = tuple(random_inputs(k, B, 33) for k in jax.random.split(jax.random.key(10), 2 if kind == "lstm" else 1))
    # The reference is the XLA loop without checkpoint_every: checkpointing must not change a value, and
    # the loop's own chunks pad the sequence (zero inputs times an infinite weight: NaN).
    want = values_and_gradients(params, xs, carry, w_ys, w_carry, kind=kind, kernel="xla")
    got = values_and_gradients(params, xs, carry, w_ys, w_carry, kind=kind, kernel="native", time_major=time_major,
                               checkpoint_every=chunk)
    assert_same_specials_and_close(got, want, what=f"{kind} {case}: ")


# Masks on odd sizes: (kind, B, T, I, H, masks, reverse, time_major, checkpoint_every). Batches of 1 and 3
# (the small layout; below AUTO, which kernel="native" overrides), 17 and 33 (a padded
# 16-row tile); H of 1, 7 and 33 (a one-unit tail tile, two shares of units); T of 1, 2 and 37, in chunks of
# 5 (a short one first) too.
MASKED = [
    ("lstm", 17, 37, 5, 33, "lengths", False, False, None),
    ("gru", 33, 37, 3, 7, "lengths", True, True, None),
    ("lstm", 3, 2, 4, 1, "lengths+resets", True, False, None),
    ("gru", 1, 37, 2, 33, "lengths+resets", False, False, None),
    ("lstm", 33, 1, 3, 7, "lengths+resets", False, True, None),
    ("gru", 17, 2, 5, 1, "lengths+resets", True, False, None),
    ("lstm", 17, 37, 3, 7, "lengths+resets", True, False, 5),
    ("gru", 3, 37, 4, 33, "lengths+resets", False, True, 6),
    ("lstm", 1, 37, 2, 7, "resets", True, True, 5),
    ("vanilla", 33, 37, 5, 33, "lengths+resets", True, False, None),
    ("vanilla", 3, 37, 4, 7, "lengths", False, True, 5),
    ("vanilla", 1, 2, 3, 1, "lengths+resets", True, False, None),
    ("vanilla", 17, 1, 2, 33, "resets", False, True, None),
    # The small layout's tiles of 4 groups of 16 units and of 1: H = 130, 9 groups, in shares of 4 and 5 on
    # two threads (H = 70's 5 groups would make shares of 2 and 3, no 4-group tile).
    ("vanilla", 8, 37, 5, 130, "lengths+resets", True, False, None),
    ("vanilla:relu", 17, 37, 5, 33, "lengths+resets", True, False, None),
    ("vanilla:relu", 8, 37, 5, 130, "lengths+resets", False, True, 5),
    ("vanilla:identity", 3, 37, 4, 7, "lengths", False, True, 5),
    ("vanilla:identity", 33, 2, 3, 1, "resets", True, False, None),
    # The weight gradients' chunks of steps (dw_chunk): the small layout's ring of two chunks reused (B = 4:
    # chunks of 64 steps, three of them), and checkpointed calls from step 5 on, each over chunks of 7 steps
    # (B = 33), H = 40 a strip's tail, the GRU's W_h from dG's slots 0, 1 and 3.
    ("lstm", 4, 150, 3, 9, "lengths+resets", False, False, None),
    ("gru", 33, 37, 3, 40, "lengths", False, True, 16),
]


def masked_setup(kind, B, T, I, H, masks, seed=0):
    """Inputs with NaN at every padded step (the kernels must read padding as the loop does: not at all),
    lengths that include 0 and T, and resets at random steps (at padded ones too, where they do nothing)."""
    cell, params, xs, carry = setup(B, T, I, H, seed, kind)
    rng = np.random.default_rng(seed)
    lengths = resets = None
    if "lengths" in masks:
        lengths = rng.integers(1, T, B) if T > 1 else rng.integers(0, 2, B)
        if B > 1:  # a batch of one keeps a length strictly inside (0, T) where it can
            lengths[0], lengths[-1] = T, 0
        xs = jnp.where((np.arange(T)[None, :] >= lengths[:, None])[..., None], jnp.nan, xs)
        lengths = jnp.asarray(lengths)
    if "resets" in masks:
        resets = jnp.asarray(rng.random((B, T)) < 0.3)
    return cell, params, xs, carry, lengths, resets


@needs_kernel
@pytest.mark.parametrize("kind, B, T, I, H, masks, reverse, time_major, chunk", MASKED,
                         ids=["-".join(map(str, case)) for case in MASKED])
def test_masks_in_the_kernel_equal_the_xla_loop(kind, B, T, I, H, masks, reverse, time_major, chunk):
    _, params, xs, carry, lengths, resets = masked_setup(kind, B, T, I, H, masks)
    w_ys = random_inputs(jax.random.key(9), B, T, H)
    w_carry = tuple(random_inputs(k, B, H) for k in jax.random.split(jax.random.key(10), 2 if kind == "lstm" else 1))
    run = lambda **kw: values_and_gradients(params, xs, carry, w_ys, w_carry, kind=kind, reverse=reverse,
                                            lengths=lengths, resets=resets, **kw)
    got = run(kernel="native", time_major=time_major, checkpoint_every=chunk)
    assert_same_specials_and_close(got, run(kernel="xla"), what=f"{kind} {masks}: ")
    assert not np.isnan(np.asarray(got[1][1])).any(), "NaN in the padding reached the input gradient"


# Non-finite parameters and carries meet the masks: a padded step's cotangent is 0 times whatever the step
# computed (NaN, from an infinite weight), and must go where the loop sends it, even where a reset flag
# sits on a padded step (it does nothing). Lengths outside [0, T] under jit mean what the loop makes of them.
MASKED_SPECIALS = {
    "inf-in-w_h": lambda p, c: ({**p, "w_h": p["w_h"].at[0, 0].set(INF)}, c),
    "nan-in-w_i": lambda p, c: ({**p, "w_i": p["w_i"].at[1, 2].set(NAN)}, c),
    "inf-in-the-initial-carry": lambda p, c: (p, jax.tree_util.tree_map(lambda v: v.at[2, 1].set(INF), c)),
}


@needs_kernel
@pytest.mark.parametrize("case", MASKED_SPECIALS)
@pytest.mark.parametrize("kind", KINDS + ["vanilla", "vanilla:relu", "vanilla:identity"])
def test_masks_with_nan_and_inf_and_odd_lengths_as_in_the_xla_loop(kind, case):
    _, params, xs, carry, _, _ = masked_setup(kind, 17, 6, 3, 7, "lengths", seed=5)
    params, carry = MASKED_SPECIALS[case](params, carry)
    lengths = jnp.asarray([6, 0, -3, 9] + [1, 2, 3, 4, 5, 6, 0, 3, 2, 5, 4, 1, 6])  # traced: unchecked
    resets = jnp.ones((17, 6), bool).at[:, 0].set(False)  # on every step, the padded ones too
    xs = jnp.where((np.arange(6)[None, :] >= np.asarray(lengths)[:, None])[..., None], jnp.nan, jnp.nan_to_num(xs))
    w_ys = random_inputs(jax.random.key(9), 17, 6, 7)
    w_carry = tuple(random_inputs(k, 17, 7) for k in jax.random.split(jax.random.key(10), 2 if kind == "lstm" else 1))
    run = lambda kernel: values_and_gradients(params, xs, carry, w_ys, w_carry, kind=kind, kernel=kernel,
                                              lengths=lengths, resets=resets)
    assert_same_specials_and_close(run("native"), run("xla"), what=f"{kind} {case}: ")


# The small-batch layout against the wide one, each forced for every call (native.forced_layout): (kind, B, T, I, H,
# masks, reverse, time_major, checkpoint_every, MASKED_SPECIALS case or None). Batches of 1 to 8, 13 and 17 (a
# second row in a lane of the bias gradient's sums); H of 1, 7, 9, 17, 33 (a short 16-unit vector, two
# shares) and 512; T of 1, 2, 20, 37, 70 and 100, in chunks of 5 and 6 too. Each costs about a second, mostly making its inputs:
# seven by default (chunks, NaN and inf, the small layout's widest batch, three blocks of W_i rows, the vanilla
# cell's tiles, the weight gradients' ring reused, weights of 8 MiB), all with -m slow.
LAYOUT_CASES = [
    ("lstm", 1, 37, 2, 7, "lengths+resets", True, True, 5, None),
    ("gru", 2, 37, 3, 33, "lengths+resets", False, False, 6, "nan-in-w_i"),
    ("lstm", 3, 2, 4, 33, "lengths+resets", False, True, None, "inf-in-the-initial-carry"),
    ("gru", 5, 1, 3, 1, "lengths+resets", True, False, None, None),
    ("lstm", 8, 37, 5, 33, "lengths", True, False, None, "inf-in-w_h"),
    ("gru", 17, 2, 3, 7, "resets", False, True, None, "inf-in-the-initial-carry"),
    # I of 17 and 37 (two and three blocks of W_i rows), and T past x_t's chunk of 64 / B steps
    ("gru", 2, 70, 37, 17, "lengths+resets", True, False, None, None),
    ("lstm", 1, 70, 17, 9, "", False, False, None, None),  # no masks: the LSTM's gates<false>
    # The vanilla cell: forward tiles of 4 groups of 16 units and of one (H = 130: 9 groups, two shares), and
    # in the wide layout 8-unit tiles and a tail of 2 units, one at a time.
    ("vanilla", 3, 37, 5, 130, "lengths+resets", True, True, 6, "inf-in-w_h"),
    # The weight gradients' chunks (dw_chunk: 32 steps at B = 8): four, the ring's two halves each used twice.
    ("lstm", 8, 100, 5, 9, "lengths+resets", False, False, None, None),
    # 8 MiB of weights (native.large_weight_bytes()): the small layout's x_t W_i and d x_t in the weight gradients'
    # chunks (x_steps: 16 steps at B = 13, then 4), not x_chunk's 4.
    ("lstm", 13, 20, 512, 512, "lengths+resets", True, False, None, None),
]


@needs_kernel
@pytest.mark.parametrize("picked", [(0, 1, 4, 6, 8, 9, 10), pytest.param(range(len(LAYOUT_CASES)), marks=pytest.mark.slow)],
                         ids=["seven-cases", "every-case"])
def test_the_small_batch_layout_gives_the_wide_layouts_bits(monkeypatch, request, picked):
    def inputs(kind, B, T, I, H, masks, reverse, time_major, chunk, special):
        _, params, xs, carry, lengths, resets = masked_setup(kind, B, T, I, H, masks)
        if special:
            params, carry = MASKED_SPECIALS[special](params, carry)
        w_ys = random_inputs(jax.random.key(9), B, T, H)
        keys = jax.random.split(jax.random.key(10), 2 if kind == "lstm" else 1)
        w_carry = tuple(random_inputs(k, B, H) for k in keys)
        return (params, xs, carry, w_ys, w_carry), dict(kind=kind, kernel="native", reverse=reverse, lengths=lengths,
                                                        resets=resets, time_major=time_major, checkpoint_every=chunk)

    picked = [LAYOUT_CASES[i] for i in picked]
    cases = [inputs(*case) for case in picked]  # made once: clearing the caches makes eager ops recompile
    taken = []
    real = native.layout_for
    monkeypatch.setattr(native, "layout_for", lambda *a: taken.append(real(*a)) or taken[-1])
    runs = {}
    request.addfinalizer(jax.clear_caches)  # other tests must not find the forced layouts' traces
    for layout in ("wide", "small"):
        # The layout is chosen when a call is traced: the caches of jit must not keep the other one's traces.
        jax.clear_caches()
        taken.clear()
        with native.forced_layout(layout):
            runs[layout] = [jax.tree_util.tree_flatten_with_path(values_and_gradients(*a, **kw))[0] for a, kw in cases]
        assert set(taken) == {layout}
    for case, wide, small in zip(picked, runs["wide"], runs["small"], strict=True):
        for (path, w), (_, s) in zip(wide, small, strict=True):
            np.testing.assert_array_equal(s, w, err_msg=f"{case} {jax.tree_util.keystr(path)}", strict=True)


@needs_kernel
def test_weights_too_large_for_the_caches_take_the_small_layout(monkeypatch):
    large = native.large_weight_bytes()
    assert large == 4 * (512 + 512) * 4 * 512  # an LSTM's at I = H = 512: the LAYOUT_CASES case below takes it
    monkeypatch.setattr(native, "isa", lambda: "avx512")
    assert [native.layout_for("lstm", B, large) for B in (0, 1, 12, 13, 512)] == \
        ["wide", "small", "small", "small", "small"]
    assert [native.layout_for("gru", B, large - 1) for B in (12, 13)] == ["small", "wide"]
    with native.forced_layout("wide"):
        assert native.layout_for("lstm", 13, 4 * large) == "wide"
    with native.forced_layout("small"):
        assert native.layout_for("lstm", 13, 0) == "small"
    # What a forward call keeps tells its layout: (T, B, kept, H) small, (T, kept H, B padded) wide.
    cell = make_cell("lstm", 512)
    w = native.weights(cell, cell.init(jax.random.key(0), 512))
    carry = (jnp.zeros((13, 512)),) * 2
    kept = lambda: jax.eval_shape(lambda x: native.forward_call("lstm", x, carry, w, True, keep=True)[2],
                                  jax.ShapeDtypeStruct((13, 2, 512), jnp.float32)).shape
    assert kept() == (2, 13, 5, 512)
    monkeypatch.setattr(native, "isa", lambda: "avx2")  # its small tiles take one row: it keeps the wide layout
    assert native.layout_for("lstm", 13, 4 * large) == "wide"
    assert kept() == (2, 5 * 512, 16)


@needs_kernel
@pytest.mark.parametrize("kind", KINDS + ["vanilla", "vanilla:identity"])  # relu: no derivative at its kink
def test_check_grads_on_the_native_vjp_with_masks(kind):
    _, params, xs, carry, lengths, resets = masked_setup(kind, 17, 6, 3, 7, "lengths+resets", seed=3)
    xs = jnp.nan_to_num(xs)  # check_grads perturbs every input, the padding included

    def f(p, x, c):
        ys, final = jaxrnn.scan(make_cell(kind, 7), p, x, initial_carry=c, lengths=lengths, resets=resets,
                                reverse=True, kernel="native")
        return ys, final

    check_grads(f, (params, xs, carry), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@needs_kernel
def test_a_bidirectional_layer_on_a_padded_batch_runs_every_direction_in_the_kernel(monkeypatch):
    calls = []
    real = native.unroll
    monkeypatch.setattr(native, "unroll", lambda kind, *a: calls.append(kind) or real(kind, *a))
    rnn = jaxrnn.RNN(jaxrnn.lstm(8), num_layers=2, bidirectional=True)
    params = rnn.init(jax.random.key(0), 3)
    xs = random_inputs(jax.random.key(1), 16, 5, 3)
    jax.grad(lambda p: rnn.apply(p, xs, lengths=jnp.arange(16) % 6)[0].sum())(params)
    assert calls == ["lstm"] * 4


CHUNKS = {  # (chunk, time_major): both layouts, without a test for each pair
    "whole-chunks": (2, False), "a-short-first-chunk-time-major": (3, True), "short-then-the-kept-chunk": (5, False),
    "one-chunk-time-major": (8, True), "chunk-over-T": (16, False),
}


@needs_kernel
@pytest.mark.parametrize(
    "kind, chunk, time_major",
    [(kind, *chunk) for kind in KINDS for chunk in CHUNKS.values()]
    + [("vanilla", *CHUNKS["a-short-first-chunk-time-major"]), ("vanilla", *CHUNKS["whole-chunks"])],
    ids=[f"{kind}-{name}" for kind in KINDS for name in CHUNKS] + ["vanilla-a-short-first-chunk-time-major",
                                                                  "vanilla-whole-chunks"],
)
def test_native_checkpointed_chunks_equal_one_call(kind, chunk, time_major):
    cell, params, xs, carry = setup(16, 8, 3, 8, kind=kind)
    xs = jnp.swapaxes(xs, 0, 1) if time_major else xs
    w = random_inputs(jax.random.key(9), *xs.shape[:2], 8)

    def loss(p, x, checkpoint_every):
        ys, final = jaxrnn.scan(cell, p, x, initial_carry=carry, checkpoint_every=checkpoint_every,
                                time_major=time_major, kernel="native")
        return jnp.sum(ys * w) + jnp.sum(jax.tree_util.tree_leaves(final)[-1] ** 2)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    assert_close_at_scale(value_and_grad(params, xs, chunk), value_and_grad(params, xs, None))


@needs_kernel
def test_native_checkpointed_memory_is_one_chunk(monkeypatch):
    # Temp memory of a gradient at T = 400, B = 16, I = H = 32, checkpointed in chunks of 100 and of 400 (one
    # chunk, kept from the forward pass), against the default's: the default holds the kept activations
    # (T, 5H, 16), the step operands (T, B, I + H) and at most two (T, B, H) arrays, no (T, B, 4H) gate
    # gradients (the kernel adds the weight gradients from a ring of its own); the kept activations are held
    # once, not twice, with one chunk, and a quarter of them with chunks of 100.
    monkeypatch.setattr(native, "PIECE_STEPS", 100)
    T, B, H = 400, 16, 32
    cell, params, xs, carry = setup(B, T, H, H)
    temp = {}
    for chunk in (None, 100, T):
        loss = lambda p, x: jnp.sum(jaxrnn.scan(cell, p, x, checkpoint_every=chunk, kernel="native")[0] ** 2)
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile()
        temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
    kept, operands, sequence = T * 5 * H * B * 4, T * B * 2 * H * 4, T * B * H * 4
    assert temp[None] < kept + operands + 2 * sequence
    assert temp[T] < temp[None] + kept / 2
    assert temp[100] < temp[T] - kept / 2


@needs_kernel
@pytest.mark.parametrize("kind", KINDS + ["vanilla"])
def test_check_grads_on_the_native_vjp(kind):
    cell, params, xs, carry = setup(16, 5, 3, 6, kind=kind)
    f = lambda p, x, c: jaxrnn.scan(cell, p, x, initial_carry=c, kernel="native")
    check_grads(f, (params, xs, carry), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


@needs_kernel
@pytest.mark.parametrize("kind, B, H", [("lstm", 16, 64), ("lstm", 3, 64), ("vanilla", 8, 130)],
                         ids=["wide", "small", "vanilla-small"])
@pytest.mark.parametrize("helpers", ["threads", "pool"])
def test_native_results_do_not_depend_on_the_threads(monkeypatch, helpers, kind, B, H):
    """Both layouts (16 rows: wide; 3: small), with either kind of helper thread (the call's own, XLA's pool);
    the vanilla cell's small-layout tiles of 4 groups of 16 units, in each of two threads' shares of 130 units;
    20 steps: the wide layout's weight gradients in two chunks of 16 (the first sets, the second adds)."""
    cell, params, xs, carry, lengths, resets = masked_setup(kind, B, 20, 4, H, "lengths+resets")
    xs = jnp.nan_to_num(xs)
    monkeypatch.setenv("JAXRNN_NATIVE_HELPERS", helpers)
    runs = []
    for n in ("1", "2", "3"):  # 3 threads on a 2-core machine: waiting must yield, not stall
        monkeypatch.setenv("JAXRNN_NATIVE_THREADS", n)
        for masks in ({}, {"lengths": lengths, "resets": resets}):  # each share resets and cuts its own units
            grad = jax.grad(lambda p, c: jnp.sum(jaxrnn.scan(cell, p, xs, initial_carry=c, kernel="native",
                                                             **masks)[0] ** 2), argnums=(0, 1))
            runs.append(jax.tree_util.tree_leaves(grad(params, carry)))
    for first, *others in (runs[::2], runs[1::2]):  # unmasked, masked: each against its run on one thread
        for run in others:
            for a, b in zip(first, run):
                np.testing.assert_array_equal(a, b)


def test_helpers_come_from_xlas_pool_unless_asked(monkeypatch):
    monkeypatch.delenv("JAXRNN_NATIVE_HELPERS", raising=False)
    assert native.pooled()
    for value in ("pool", ""):
        monkeypatch.setenv("JAXRNN_NATIVE_HELPERS", value)
        assert native.pooled()
    monkeypatch.setenv("JAXRNN_NATIVE_HELPERS", "threads")
    assert not native.pooled()
    with native.forced_helpers("pool"):
        assert native.pooled()
    assert not native.pooled()
    monkeypatch.setenv("JAXRNN_NATIVE_HELPERS", "own")
    with pytest.raises(ValueError, match="JAXRNN_NATIVE_HELPERS='own'"):
        native.pooled()


@needs_kernel
@pytest.mark.parametrize("B", [3, 17], ids=["small", "wide"])
def test_the_vanilla_derivative_at_h_zero_with_an_infinite_cotangent_is_the_xla_loops(B):
    """JAX transposes tanh's derivative as e = d_h (1 - h), then e + e h: at h = 0 under an infinite
    cotangent that is inf + inf * 0 = NaN, where (1 - h^2) d_h would be inf. Unit 0 is exactly 0 at every step
    (no weights into it, and no bias: use_bias=False, which hands the kernel zero biases); its output's
    cotangent is inf at one step of each row."""
    cell = jaxrnn.vanilla(7, use_bias=False)
    params = random_params(cell, jax.random.key(0), 4)
    assert "b" not in params
    params = {**params, "w_i": params["w_i"].at[:, 0].set(0.0), "w_h": params["w_h"].at[:, 0].set(0.0) / np.sqrt(7)}
    xs = random_inputs(jax.random.key(1), B, 6, 4)
    h0 = (0.5 * random_inputs(jax.random.key(2), B, 7)).at[:, 0].set(0.0)
    w = random_inputs(jax.random.key(3), B, 6, 7).at[:, 3, 0].set(jnp.inf)

    def grads(kernel):
        loss = lambda p, x, h: jnp.sum(jaxrnn.scan(cell, p, x, initial_carry=h, kernel=kernel)[0] * w)
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, xs, h0)

    got, want = grads("native"), grads("xla")
    assert np.isnan(np.asarray(want[0]["w_h"])).any(), "the case no longer makes the NaN it is about"
    assert_same_specials_and_close(got, want, what=f"B={B}: ")


@needs_kernel
@pytest.mark.parametrize("B", [3, 17], ids=["small", "wide"])
def test_relu_in_the_kernel_is_jnp_maximum_signed_zeros_and_nan_included(B):
    """relu(x) = jnp.maximum(x, 0): +0 from -0 (the sign, which the closeness checks cannot see) and NaN
    from NaN; steps whose pre-activations are -0 in the kernels (zero inputs and state times negative
    weights, a bias of -0) and NaN."""
    cell = jaxrnn.vanilla(4, "relu")
    for b, nan in ((jnp.asarray([-0.0, -0.0, -1.0, 1.0]), False), (jnp.asarray([NAN, 0.0, -1.0, 1.0]), True)):
        params = {"w_i": -jnp.ones((2, 4)), "w_h": -jnp.ones((4, 4)), "b": b}  # -0 products: -0 sums
        run = lambda kernel: np.asarray(jaxrnn.scan(cell, params, jnp.zeros((B, 3, 2)), kernel=kernel)[0])
        got, want = run("native"), run("xla")
        assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want).any() == nan
        assert np.array_equal(np.signbit(got), np.signbit(want)), (got[0], want[0])
        assert nan or not np.signbit(want).any()  # relu(-0) = +0, relu(-1) = 0


def test_the_kernels_activations_are_the_vanilla_cells():
    assert native.ACTIVATIONS == tuple(jaxrnn.cells.ACTIVATIONS)  # the order is rnn_cpu.cc's Activation's


@needs_kernel
@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("kind", KINDS + ["vanilla"])
def test_an_empty_batch_runs_in_the_kernel(kind, chunk):
    cell = jaxrnn.CELLS[kind](8)
    params = cell.init(jax.random.key(0), 3)
    grad = lambda kernel: jax.grad(lambda p: jnp.sum(
        jaxrnn.scan(cell, p, jnp.ones((0, 5, 3)), kernel=kernel, checkpoint_every=chunk)[0]))(params)
    got = grad("native")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda g, w: bool((g == w).all()), got, grad("xla")))


@needs_kernel
@pytest.mark.parametrize("B", [8, 17], ids=["small", "wide"])
def test_native_under_vmap_runs_each_member(B):
    """vmap of the kernels (one call per member), and the gradient through it, with checkpointed chunks."""
    cell, params, xs, carry = setup(B, 4, 3, 16)
    stacked = jnp.stack([xs, 2 * xs])
    ys = jax.vmap(lambda x: jaxrnn.scan(cell, params, x, kernel="native")[0])(stacked)
    for k in range(2):
        np.testing.assert_allclose(ys[k], jaxrnn.scan(cell, params, stacked[k], kernel="xla")[0], atol=2e-6)
    grad = lambda kernel: jax.grad(lambda p: jnp.sum(jnp.sin(jax.vmap(
        lambda x: jaxrnn.scan(cell, p, x, kernel=kernel, checkpoint_every=3)[0])(stacked))))(params)
    assert_close_at_scale(grad("native"), grad("xla"))


@needs_kernel
def test_auto_picks_native_for_plain_lstm_gru_and_vanilla_and_xla_otherwise(monkeypatch):
    cell, params, xs, _ = setup(16, 4, 3, 8)
    calls = []
    real = native.unroll
    monkeypatch.setattr(native, "unroll", lambda kind, *a: calls.append(kind) or real(kind, *a))
    jaxrnn.scan(cell, params, xs)
    gru = jaxrnn.gru(8)
    jaxrnn.scan(gru, gru.init(jax.random.key(0), 3), xs)
    assert calls == ["lstm", "gru"]
    jaxrnn.scan(cell, params, xs, lengths=jnp.full(16, 4), resets=jnp.zeros((16, 4), bool), reverse=True)  # masks too
    jaxrnn.scan(cell, params, jnp.ones((1, 32, 3)))  # an LSTM batch of one over 32 steps (AUTO): the small layout
    assert calls == ["lstm", "gru", "lstm", "lstm"]
    jaxrnn.scan(cell, params, xs, backward="autodiff")  # JAX's own derivative: the loop
    jaxrnn.scan(cell, params, jnp.ones((7, 31, 3)))  # 7 rows over 31 steps: below both of AUTO["lstm"], the loop
    jaxrnn.scan(gru, gru.init(jax.random.key(0), 3), jnp.ones((15, 32, 3)))  # below AUTO["gru"]: the loop
    assert jaxrnn.scan(cell, params, xs[:, :0])[0].shape == (16, 0, 8)  # no steps: the loop
    assert calls == ["lstm", "gru", "lstm", "lstm"]
    vanilla = jaxrnn.vanilla(8)
    vanilla_params = vanilla.init(jax.random.key(0), 3)
    jaxrnn.scan(vanilla, vanilla_params, jnp.ones((16, 32, 3)))  # AUTO["vanilla"]: 16 rows over 32 steps,
    jaxrnn.scan(vanilla, vanilla_params, jnp.ones((12, 100, 3)))  # or 12 over 100 (the small layout)
    assert calls == ["lstm", "gru", "lstm", "lstm", "vanilla", "vanilla"]
    jaxrnn.scan(vanilla, vanilla_params, xs)  # 16 rows over 4 steps: the loop
    jaxrnn.scan(vanilla, vanilla_params, jnp.ones((12, 99, 3)))  # 12 rows over 99 steps: the loop
    jaxrnn.scan(vanilla, vanilla_params, jnp.ones((8, 1000, 3)))  # 8 rows: the loop, however long
    for activation in ("relu", "identity"):  # the same kernels, told the activation
        other = jaxrnn.vanilla(8, activation)
        jaxrnn.scan(other, other.init(jax.random.key(0), 3), jnp.ones((16, 32, 3)))
    assert calls == ["lstm", "gru", "lstm", "lstm", "vanilla", "vanilla", "vanilla:relu", "vanilla:identity"]


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"backward": "autodiff"}, "backward='autodiff'"),
        ({"xs": jnp.ones((16, 4, 3), jnp.float16)}, "the inputs, parameters or cell dtype are not all float32"),
    ],
)
def test_asking_for_native_where_it_cannot_run_names_the_reason(kwargs, reason):
    cell, params, xs, _ = setup(16, 4, 3, 8)
    xs = kwargs.pop("xs", xs)
    with pytest.raises(ValueError, match=f"kernel='native' cannot run this call: {reason}"):
        jaxrnn.scan(cell, params, xs, kernel="native", **kwargs)


def test_an_unknown_kernel_is_an_error():
    cell, params, xs, _ = setup(16, 4, 3, 8)
    with pytest.raises(ValueError, match=r"kernel: expected one of .*'native'.*got 'c\+\+'"):
        jaxrnn.scan(cell, params, xs, kernel="c++")


@pytest.mark.parametrize("env, reason", [
    ({"JAXRNN_NATIVE": "0"}, "turned off by JAXRNN_NATIVE=0"),
    pytest.param({"CXX": "no-such-compiler", "JAXRNN_NATIVE": "1"},
                 "could not build the kernels: no C++ compiler found (looked for 'no-such-compiler')",
                 marks=pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                          reason="another CPU: the kernels say so before looking for a compiler")),
], ids=["turned-off", "no-compiler"])
def test_without_the_kernel_auto_keeps_to_the_loop(tmp_path, env, reason):
    """A fresh process whose kernels cannot run (turned off, or no compiler to build them): "auto" runs the
    loop, "native" says why not."""
    code = """
import jax, jaxrnn
cell = jaxrnn.lstm(8); p = cell.init(jax.random.key(0), 3); xs = jax.numpy.ones((16, 4, 3))
print(jaxrnn.native.unavailable_reason())
print(jaxrnn.scan(cell, p, xs)[0].shape)
try:
    jaxrnn.scan(cell, p, xs, kernel="native")
except ValueError as err:
    print(err)
"""
    env = {**os.environ, **env, "JAXRNN_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [reason, "(16, 4, 8)", f"kernel='native' cannot run this call: {reason}"]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing was built


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


CAN_RUN = {"avx2", "fma"} <= _cpu_flags() or "avx512f" in _cpu_flags()
HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


@pytest.mark.skipif(not (CAN_RUN and HAS_COMPILER) or os.environ.get("JAXRNN_NATIVE") == "0"
                    or os.environ.get("JAXRNN_NATIVE_ISA") == "sse2",
                    reason="no C++ compiler, or no AVX2 with FMA nor AVX-512 here, or the kernels turned off or "
                           "built for SSE2")
def test_the_kernels_build_where_the_cpu_can_run_them():
    """Where they can build, they must: a compile error would otherwise only turn them off (and skip every
    other test of this file)."""
    assert native.unavailable_reason() is None


BITS_CASES = [(33, 9, "lengths+resets", True), (32, 40, "", False), (3, 40, "lengths+resets", False)]


def _bits(kind, path=None, cases=len(BITS_CASES)):
    """Values and gradients of a masked reversed call (a 32-row and a 16-row tile, a unit tail), a plain one,
    and a masked one in the small-batch layout (the first ``cases`` of them), written to ``path`` as .npz, or
    returned."""
    out = {}
    for case, (B, H, masks, reverse) in enumerate(BITS_CASES[:cases]):
        _, params, xs, carry, lengths, resets = masked_setup(kind, B, 7, 5, H, masks)
        w_ys = random_inputs(jax.random.key(9), B, 7, H)
        w_carry = tuple(random_inputs(k, B, H) for k in jax.random.split(jax.random.key(10), 2))
        got = values_and_gradients(params, xs, carry, w_ys, w_carry, kind=kind, kernel="native", reverse=reverse,
                                   lengths=lengths, resets=resets)
        out |= {f"{case}{jax.tree_util.keystr(k)}": np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(got)[0]}
    return np.savez(path, **out) if path else out


@pytest.mark.skipif(not ({"avx2", "fma"} <= _cpu_flags() and HAS_COMPILER),
                    reason="no C++ compiler, or no AVX2 with FMA, here")
@pytest.mark.parametrize("cases", [1, pytest.param(len(BITS_CASES), marks=pytest.mark.slow)],
                         ids=["masked", "every-case"])
def test_the_avx2_build_compiles_from_source_and_gives_the_same_bits(tmp_path, cases):
    """One source for every vector width, and every build rounds alike: the AVX2 build (JAXRNN_NATIVE_ISA=avx2)
    gives this process's bits (on an AVX-512 machine, the AVX-512 build's), values and gradients, NaN at the
    same places. ``JAXRNN_NATIVE_ISA=avx2 pytest tests/test_native.py`` runs every other test on that build.
    By default one case (the masked reversed batch) of the LSTM (four slots a unit) and the tanh cell (one);
    ``-m slow`` all of BITS_CASES, of the GRU and the vanilla cell's relu and identity too."""
    kinds = ("lstm", "vanilla") if cases == 1 else ("lstm", "gru", *VANILLAS)  # the GRU, relu, identity: -m slow
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_native as t; "
            f"from jaxrnn import native; print(native.isa(), native.unavailable_reason()); "
            + "; ".join(f"t._bits({kind!r}, {str(tmp_path / kind)!r}, {cases})" for kind in kinds))
    env = {**os.environ, "JAXRNN_CACHE": str(tmp_path / "cache"), "JAXRNN_NATIVE_ISA": "avx2", "JAXRNN_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[:2] == ["avx2", "None"]
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".so"]  # one library, no temporary left behind
    if native.unavailable_reason() is None:
        for kind in kinds:
            theirs, ours = np.load(tmp_path / f"{kind}.npz"), _bits(kind, cases=cases)
            assert sorted(theirs) == sorted(ours)
            for key in ours:
                np.testing.assert_array_equal(theirs[key], ours[key], err_msg=f"{kind} {key}", strict=True)


@needs_kernel
def test_the_trace_reports_each_call_and_its_helpers(monkeypatch, capfd):
    cell = make_cell("lstm", 16)
    params, xs = cell.init(jax.random.key(0), 4), random_inputs(jax.random.key(1), 32, 3, 4)
    run = lambda: jax.block_until_ready(jaxrnn.scan(cell, params, xs, kernel="native"))
    monkeypatch.setenv("JAXRNN_NATIVE_TRACE", "1")
    run()
    lines = capfd.readouterr().err.splitlines()
    traced = [line for line in lines if line.startswith("jaxrnn native: ")]
    assert len(traced) == 1, lines
    assert re.fullmatch(r"jaxrnn native: 4 phases x \d+ shares in [0-9.]+ ms, \d+ tasks on helpers; "
                        r"(no helper began|the first helper began [0-9.]+ ms in)", traced[0]), traced[0]
    monkeypatch.delenv("JAXRNN_NATIVE_TRACE")
    run()
    assert "jaxrnn native: " not in capfd.readouterr().err


@needs_kernel
def test_kernel_parts_benchmark_times_every_piece():
    from jaxrnn.programs import kernel_parts

    ms = kernel_parts.parts("gru", B=16, T=3, H=16, repeats=1)
    assert set(ms) == {"forward", "forward, keeping", "backward", "XLA's matmul of the weight gradients' shapes",
                       "whole fwd+bwd"}
    assert all(v > 0 for v in ms.values())

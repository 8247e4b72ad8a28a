"""Property-based checks (hypothesis) of jaxrnn's fast and masked paths against their references.

* :mod:`jaxrnn.native`'s kernels against the XLA loop, with NaN, inf, huge and denormal values
  among the inputs, parameters and initial carry: the same positions NaN, +inf and -inf, and the
  finite values equal to float rounding, for outputs, final carry and gradients.
* ``lengths``, ``resets`` and ``reverse`` against running each row alone, one segment at a time,
  with garbage in the padding (NaN, inf and huge inputs, and resets), which must reach neither
  values nor gradients.

Each property runs twice: a few derandomized examples in every run (profile ``jaxrnn-ci``, so
that CI is reproducible), and many random ones under the ``slow`` marker (profile
``jaxrnn-slow``; ``pytest -m slow``).

Compiling XLA's loop with its gradient is most of an example's time, so shapes come from small
fixed lists that examples share, every example checks several draws of values on the shape it
compiled, and test data comes from numpy (eager jax operations compile once per shape).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxrnn
from test_native import assert_same_specials_and_close, needs_kernel, values_and_gradients

settings.register_profile(
    "jaxrnn-ci", max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "jaxrnn-slow", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
CI, SLOW = settings.get_profile("jaxrnn-ci"), settings.get_profile("jaxrnn-slow")

# ------------------------------------------------------------------ native against the XLA loop ----

# (B, T, I, H): batches the kernels take (jaxrnn.native.AUTO), padded ones (17, 33 rows) among
# them; odd H (one-unit tail tiles; 33 runs on two threads); T from 1 to 12.
NATIVE_SHAPES = {
    "lstm": [(8, 5, 3, 7), (17, 12, 1, 33), (33, 3, 8, 1), (16, 1, 2, 17)],
    "gru": [(16, 5, 3, 7), (17, 1, 8, 33), (33, 12, 2, 17), (16, 3, 1, 1)],
}
# Huge: saturates every gate it enters, and no sum of such terms (I <= 8 of them, times weights of
# a few units) comes near float32's overflow, so no result depends on the order of a sum. Only in
# xs: a huge weight or carry meets unsaturated gates (a zero h_0 times it, say), and its gradient
# terms are then huge sums whose cancellation depends on that order.
SPECIAL = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf"), "huge": 1e30, "-huge": -1e30,
           "denormal": 1e-40}
SPECIAL_FOR = {"xs": tuple(SPECIAL), "params": ("nan", "+inf", "-inf", "denormal"),
               "carry": ("nan", "+inf", "-inf", "denormal")}


@st.composite
def injections(draw):
    """Up to three (target, value, flat index) to set; the index is taken modulo the target's size."""
    where = st.sampled_from(["xs", "xs", "xs", "params", "carry"])
    one = where.flatmap(lambda w: st.tuples(st.just(w), st.sampled_from(SPECIAL_FOR[w]), st.integers(0, 2**20)))
    return draw(st.lists(one, max_size=3))


@st.composite
def native_cases(draw):
    kind = draw(st.sampled_from(["lstm", "gru"]))
    return dict(
        kind=kind,
        shape=draw(st.sampled_from(NATIVE_SHAPES[kind])),
        reverse=draw(st.booleans()),
        time_major=draw(st.booleans()),
        checkpoint_every=draw(st.sampled_from([None, 1, 2, 5])),
        zero_carry=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        draws=draw(st.lists(injections(), min_size=1, max_size=3)),
    )


def inject(params, xs, carry, injections):
    """Copies of ``(params, xs, carry)`` with each injection's value set; its index picks the parameter too."""
    params, xs, carry = jax.tree_util.tree_map(np.copy, (params, xs, carry))
    targets = {"params": [params[k] for k in sorted(params)], "xs": [xs], "carry": jax.tree_util.tree_leaves(carry)}
    for target, value, index in injections:
        array = targets[target][index % len(targets[target])]
        array.flat[index % array.size] = SPECIAL[value]
    return params, xs, carry


def random_setup(kind, B, T, I, H, seed, carry_scale=0.5):
    """``(params, xs, initial carry, w_ys, w_carry)`` as numpy arrays: xs (B, T, I), the loss's weights
    w_ys (B, T, H) and one (B, H) per carry leaf."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)
    params = {name: 0.5 * normal(*shape) for name, shape in jaxrnn.CELLS[kind](H).param_shapes(I).items()}
    leaves = 2 if kind == "lstm" else 1
    carry = [carry_scale * normal(B, H) for _ in range(leaves)]
    carry = jaxrnn.LSTMState(*carry) if kind == "lstm" else carry[0]
    return params, normal(B, T, I), carry, normal(B, T, H), tuple(normal(B, H) for _ in range(leaves))


def check_native_against_xla(case):
    kind, (B, T, I, H) = case["kind"], case["shape"]
    params, xs, carry, w_ys, w_carry = random_setup(kind, B, T, I, H, case["seed"],
                                                    carry_scale=0.0 if case["zero_carry"] else 0.5)
    # The reference is the XLA loop, batch-major, without checkpoint_every (neither may change a value,
    # and the loop's own checkpointed chunks pad the sequence: padding times an infinite weight is NaN),
    # run forward over the flipped sequence for reverse (what reverse means without lengths; test_scan
    # checks the loop's own): one compilation per shape.
    flip = (lambda a: np.flip(np.asarray(a), 1)) if case["reverse"] else (lambda a: a)
    for injected in case["draws"]:
        p, x, c0 = inject(params, xs, carry, injected)
        (ys, final), (d_p, d_x, d_c) = values_and_gradients(p, flip(x), c0, flip(w_ys), w_carry, kind=kind, kernel="xla")
        want = (flip(ys), final), (d_p, flip(d_x), d_c)
        got = values_and_gradients(p, x, c0, w_ys, w_carry, kind=kind, kernel="native", reverse=case["reverse"],
                                   time_major=case["time_major"], checkpoint_every=case["checkpoint_every"])
        assert_same_specials_and_close(got, want, what=f"{injected}: ")


@needs_kernel
@settings(CI, max_examples=25)
@given(native_cases())
def test_native_equals_the_xla_loop_for_drawn_inputs_and_special_values(case):
    check_native_against_xla(case)


@pytest.mark.slow
@needs_kernel
@settings(SLOW, max_examples=1000)  # examples share compilations more than the masked property's
@given(native_cases())
def test_native_equals_the_xla_loop_for_drawn_inputs_and_special_values_at_length(case):
    check_native_against_xla(case)


# ------------------------------------------------------------ masked paths against rows alone ----

# (B, T, I, H): batches of one and more, T up to 6; two (I, H) pairs, since the reference compiles
# once per cell and pair.
MASKED_SHAPES = [(1, 1, 2, 5), (3, 4, 2, 5), (5, 6, 3, 1), (4, 3, 3, 1)]
GARBAGE = (float("nan"), float("inf"), float("-inf"), 1e30, -1e30)


@st.composite
def masked_draws(draw, B, T):
    """Values for one shape: lengths (0 and T among them often), resets or None, garbage for the padding."""
    lengths = draw(st.lists(st.one_of(st.sampled_from([0, T]), st.integers(0, T)), min_size=B, max_size=B))
    resets = draw(st.none() | st.lists(st.booleans(), min_size=B * T, max_size=B * T))
    return dict(lengths=lengths, resets=None if resets is None else np.array(resets).reshape(B, T),
                garbage=draw(st.integers(0, 2**16)))


@st.composite
def masked_cases(draw):
    B, T, I, H = shape = draw(st.sampled_from(MASKED_SHAPES))
    return dict(
        kind=draw(st.sampled_from(["vanilla", "lstm", "gru"])),
        shape=shape,
        reverse=draw(st.booleans()),
        time_major=draw(st.booleans()),
        backward=draw(st.sampled_from(["fused", "autodiff"])),
        checkpoint_every=draw(st.sampled_from([None, 1, 2, 4])),
        seed=draw(st.integers(0, 2**16)),
        draws=draw(st.lists(masked_draws(B, T), min_size=1, max_size=3)),
    )


@functools.partial(jax.jit, static_argnames=("kind", "reverse", "time_major", "backward", "checkpoint_every"))
def masked_values_and_gradients(params, xs, carry, lengths, resets, w_ys, w_carry, *, kind, reverse, time_major,
                                backward, checkpoint_every):
    """As test_native.values_and_gradients, with lengths and resets (None or (B, T)); batch-major in and out."""
    cell = jaxrnn.CELLS[kind](params["w_h"].shape[0])

    def loss(p, x, c):
        swap = (lambda a: None if a is None else jnp.swapaxes(a, 0, 1)) if time_major else (lambda a: a)
        ys, final = jaxrnn.scan(cell, p, swap(x), initial_carry=c, lengths=lengths, resets=swap(resets),
                                reverse=reverse, time_major=time_major, backward=backward,
                                checkpoint_every=checkpoint_every)
        ys = swap(ys)
        return jnp.sum(ys * w_ys) + sum(jnp.sum(f * w) for f, w in zip(jax.tree_util.tree_leaves(final), w_carry)), (
            ys, final)

    grads, values = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, carry)
    return values, grads


@functools.cache
def jitted_step(kind, H):
    """One unbatched ``cell.step`` and its output's share of the loss, compiled once per cell and
    input size (where a loop over a sequence compiled once per length)."""
    cell = jaxrnn.CELLS[kind](H)

    def step(params, carry, x, w):
        carry, y = cell.step(params, carry, x)
        return carry, y, jnp.vdot(y, w)

    return jax.jit(step)


def row_alone(kind, params, xs, carry, resets, reverse, w_ys, w_carry):
    """``(loss, (ys, final carry))`` of one row's valid steps ``xs`` (a list of (I,) arrays), run
    unbatched and without any mask: each segment (split where ``resets`` holds) on its own from
    ``carry``, backwards with ``reverse``, one ``cell.step`` at a time. The final carry is the last
    segment's, the first one's with ``reverse`` (its last step is the row's first), ``carry`` for an
    empty row. Every array keeps its shape whatever the length, so that nothing compiles again."""
    step = jitted_step(kind, params["w_h"].shape[0])
    cuts = [0] + [t for t in range(1, len(xs)) if resets is not None and resets[t]] + [len(xs)]
    loss, ys, finals = 0.0, [None] * len(xs), []
    for s, e in zip(cuts[:-1], cuts[1:]):
        c = carry
        for t in range(e - 1, s - 1, -1) if reverse else range(s, e):
            c, ys[t], share = step(params, c, xs[t], w_ys[t])
            loss = loss + share
        finals.append(c)
    final = carry if not finals else finals[0] if reverse else finals[-1]
    loss = loss + sum(jnp.vdot(f, w) for f, w in zip(jax.tree_util.tree_leaves(final), w_carry))
    return loss, (ys, final)


def assert_close(got, want, what, rtol=1e-5, atol=1e-5):
    """Finite, and equal to ``rtol`` and ``atol`` of the leaf's largest entry (as assert_same_specials_and_close)."""
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert np.isfinite(g).all(), f"{what}: {np.sum(~np.isfinite(g))} of {g.size} entries are not finite: {g}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * max(1.0, float(np.abs(w).max(initial=0))),
                                   err_msg=what)


def check_masked_against_rows_alone(case):
    kind, (B, T, I, H) = case["kind"], case["shape"]
    # A non-zero initial carry: resets go back to it, so that a reset shows.
    params, xs, carry, w_ys, w_carry = random_setup(kind, B, T, I, H, case["seed"])
    rows = lambda tree, b: jax.tree_util.tree_map(lambda v: v[b], tree)
    for drawn in case["draws"]:
        lengths, resets = np.array(drawn["lengths"]), drawn["resets"]
        padded = np.arange(T)[None, :] >= lengths[:, None]  # (B, T)
        rng = np.random.default_rng(drawn["garbage"])
        x = xs.copy()
        x[padded] = rng.choice(GARBAGE, size=(padded.sum(), I))
        what = f"lengths {lengths.tolist()}, resets {None if resets is None else resets.astype(int).tolist()}"
        (ys, final), (d_params, d_xs, d_carry) = jax.tree_util.tree_map(np.asarray, masked_values_and_gradients(
            params, x, carry, lengths, resets, w_ys, w_carry, kind=kind, reverse=case["reverse"],
            time_major=case["time_major"], backward=case["backward"], checkpoint_every=case["checkpoint_every"]))
        want_d_params = jax.tree_util.tree_map(np.zeros_like, params)
        for b, n in enumerate(lengths):
            steps = lambda a: [jnp.asarray(v) for v in a[b, :n]]
            (_, (want_ys, want_final)), (dp, dx, dc) = jax.value_and_grad(row_alone, argnums=(1, 2, 3), has_aux=True)(
                kind, params, steps(xs), rows(carry, b), None if resets is None else resets[b, :n], case["reverse"],
                steps(w_ys), [w[b] for w in w_carry])
            want_d_params = jax.tree_util.tree_map(lambda a, d: a + np.asarray(d), want_d_params, dp)
            row = f"{what}: row {b} (length {n})"
            stack = lambda arrays, size: np.stack(arrays) if n else np.zeros((0, size), np.float32)
            want_ys, dx = stack(want_ys, H), stack(dx, I)
            assert_close(ys[b, :n], want_ys, f"{row}: outputs")
            np.testing.assert_array_equal(ys[b, n:], 0.0, err_msg=f"{row}: outputs at padded steps")
            assert_close(rows(final, b), want_final, f"{row}: final carry")
            assert_close(d_xs[b, :n], dx, f"{row}: gradient w.r.t. xs")
            np.testing.assert_array_equal(d_xs[b, n:], 0.0, err_msg=f"{row}: gradient w.r.t. padded xs")
            assert_close(rows(d_carry, b), dc, f"{row}: gradient w.r.t. the initial carry")
        assert_close(d_params, want_d_params, f"{what}: gradient w.r.t. params (the sum over rows alone)")


@settings(CI, max_examples=8)
@given(masked_cases())
def test_masked_batch_equals_each_row_alone_with_garbage_in_the_padding(case):
    check_masked_against_rows_alone(case)


@pytest.mark.slow
@SLOW
@given(masked_cases())
def test_masked_batch_equals_each_row_alone_with_garbage_in_the_padding_at_length(case):
    check_masked_against_rows_alone(case)

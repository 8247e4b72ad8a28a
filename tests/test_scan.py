"""The unroll: lengths, resets, reverse, layouts, transformations and gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxrnn
from conftest import random_inputs, random_params

B, T, I, H = 3, 7, 2, 4


def setup(cell, seed=0):
    params = random_params(cell, jax.random.key(seed), I)
    xs = random_inputs(jax.random.key(seed + 1), B, T, I)
    return params, xs


def manual_loop(cell, params, xs, carry=None):
    """The reference: a Python loop of cell.step over one unbatched sequence."""
    carry = cell.initial_carry(None) if carry is None else carry
    ys = []
    for x_t in xs:
        carry, y = cell.step(params, carry, x_t)
        ys.append(y)
    return (jnp.stack(ys) if ys else jnp.zeros((0, cell.hidden_size))), carry


class TestScanVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_agree_with_python_loop(self):
        for cell in (jaxrnn.vanilla(H), jaxrnn.lstm(H), jaxrnn.gru(H)):
            params, xs = setup(cell)
            lengths = jnp.array([7, 3, 0])
            run = self.variant(lambda p, x, n: jaxrnn.scan(cell, p, x, lengths=n))
            ys, final = run(params, xs, lengths)
            for b in range(B):
                n = int(lengths[b])
                ref_ys, ref_final = manual_loop(cell, params, xs[b, :n])
                chex.assert_trees_all_close(ys[b, :n], ref_ys, atol=1e-5)
                chex.assert_trees_all_close(ys[b, n:], jnp.zeros_like(ys[b, n:]))
                chex.assert_trees_all_close(jax.tree_util.tree_map(lambda v: v[b], final), ref_final, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, T), min_size=B, max_size=B))
def test_lengths_equal_running_each_truncated_sequence(lengths):
    cell = jaxrnn.lstm(H)
    params, xs = setup(cell)
    for reverse in (False, True):
        ys, final = jaxrnn.scan(cell, params, xs, lengths=jnp.array(lengths), reverse=reverse)
        order = slice(None, None, -1) if reverse else slice(None)
        for b, n in enumerate(lengths):
            alone, alone_final = manual_loop(cell, params, xs[b, :n][order])  # no compile per length
            np.testing.assert_allclose(ys[b, :n], alone[order], atol=1e-5)
            np.testing.assert_array_equal(ys[b, n:], 0.0)
            chex.assert_trees_all_close(jax.tree_util.tree_map(lambda v: v[b], final), alone_final, atol=1e-5)


def segments_of(reset_row):
    starts = [0] + [t for t in range(1, len(reset_row)) if reset_row[t]] + [len(reset_row)]
    return list(zip(starts[:-1], starts[1:]))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.booleans(), min_size=B * T, max_size=B * T), st.booleans())
def test_resets_equal_running_segments_one_by_one(flags, reverse):
    cell = jaxrnn.gru(H)
    params, xs = setup(cell)
    resets = np.array(flags).reshape(B, T)
    h0 = random_inputs(jax.random.key(9), B, H)
    ys, _ = jaxrnn.scan(cell, params, xs, resets=resets, initial_carry=h0, reverse=reverse)
    # The reference is the Python loop (no compile per segment length, which made this test slow).
    order = slice(None, None, -1) if reverse else slice(None)
    for b in range(B):
        for s, e in segments_of(resets[b]):
            seg, _ = manual_loop(cell, params, xs[b, s:e][order], carry=h0[b])
            np.testing.assert_allclose(ys[b, s:e], seg[order], atol=1e-5)


def test_reverse_equals_flipping_by_hand(make_cell):
    cell = make_cell(H)
    params, xs = setup(cell)
    ys, final = jaxrnn.scan(cell, params, xs, reverse=True)
    ref, ref_final = jaxrnn.scan(cell, params, jnp.flip(xs, 1))
    np.testing.assert_allclose(ys, jnp.flip(ref, 1), atol=1e-6)
    chex.assert_trees_all_close(final, ref_final, atol=1e-6)


def test_reverse_with_lengths_keeps_padding_at_end():
    cell = jaxrnn.vanilla(H)
    params, xs = setup(cell)
    lengths = jnp.array([5, 1, 0])
    ys, _ = jaxrnn.scan(cell, params, xs, lengths=lengths, reverse=True)
    for b, n in enumerate([5, 1, 0]):
        ref, _ = manual_loop(cell, params, xs[b, :n][::-1])
        np.testing.assert_allclose(ys[b, :n], ref[::-1], atol=1e-5)
        np.testing.assert_array_equal(ys[b, n:], 0.0)


def test_time_major_matches_batch_major(make_cell):
    cell = make_cell(H)
    params, xs = setup(cell)
    resets = np.zeros((B, T), bool)
    resets[1, 3] = True
    ys, f = jaxrnn.scan(cell, params, xs, lengths=jnp.array([7, 5, 2]), resets=resets)
    ys_tm, f_tm = jaxrnn.scan(
        cell, params, jnp.swapaxes(xs, 0, 1), lengths=jnp.array([7, 5, 2]), resets=resets.T, time_major=True
    )
    np.testing.assert_allclose(ys, jnp.swapaxes(ys_tm, 0, 1), atol=1e-6)
    chex.assert_trees_all_close(f, f_tm)


def test_unbatched_and_vmap_equal_batched(make_cell):
    cell = make_cell(H)
    params, xs = setup(cell)
    lengths = jnp.array([7, 4, 1])
    ys, final = jaxrnn.scan(cell, params, xs, lengths=lengths)
    one, one_final = jaxrnn.scan(cell, params, xs[1], lengths=lengths[1])
    np.testing.assert_allclose(one, ys[1], atol=1e-6)
    chex.assert_trees_all_close(one_final, jax.tree_util.tree_map(lambda v: v[1], final), atol=1e-6)
    vys, vfinal = jax.vmap(lambda x, n: jaxrnn.scan(cell, params, x, lengths=n))(xs, lengths)
    np.testing.assert_allclose(vys, ys, atol=1e-6)
    chex.assert_trees_all_close(vfinal, final, atol=1e-6)


def test_zero_length_sequence_returns_empty_outputs_and_initial_carry(make_cell):
    cell = make_cell(H)
    params = cell.init(jax.random.key(0), I)
    carry0 = jax.tree_util.tree_map(lambda z: z + 1.5, cell.initial_carry(B))
    ys, final = jaxrnn.scan(cell, params, jnp.zeros((B, 0, I)), initial_carry=carry0)
    assert ys.shape == (B, 0, H)
    chex.assert_trees_all_close(final, carry0)


def test_unroll_does_not_change_values():
    cell = jaxrnn.lstm(H)
    params, xs = setup(cell)
    a, _ = jaxrnn.scan(cell, params, xs, unroll=1)
    b, _ = jaxrnn.scan(cell, params, xs, unroll=4)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_check_grads_through_scan_with_lengths_and_resets(make_cell):
    cell = make_cell(3)
    params = random_params(cell, jax.random.key(0), 2, scale=0.3)
    xs = random_inputs(jax.random.key(1), 2, 5, 2)
    resets = np.array([[False, False, True, False, False], [False, True, False, False, True]])
    lengths = jnp.array([5, 3])

    def f(p, x):
        ys, final = jaxrnn.scan(cell, p, x, lengths=lengths, resets=resets)
        return ys, final

    check_grads(f, (params, xs), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_grad_is_zero_for_padded_inputs():
    cell = jaxrnn.gru(H)
    params, xs = setup(cell)
    lengths = jnp.array([7, 3, 0])
    g = jax.grad(lambda x: jnp.sum(jaxrnn.scan(cell, params, x, lengths=lengths)[0] ** 2))(xs)
    np.testing.assert_array_equal(g[1, 3:], 0.0)
    np.testing.assert_array_equal(g[2], 0.0)
    assert np.abs(g[1, :3]).sum() > 0


@pytest.mark.parametrize("make_cell", [jaxrnn.vanilla, jaxrnn.lstm, jaxrnn.gru], ids=["vanilla", "lstm", "gru"])
def test_padding_never_reaches_values_or_gradients(make_cell):
    """Whatever the pipeline left in the padding, results equal those of zero padding, gradients included."""
    cell = make_cell(H)
    params, xs = setup(cell)
    lengths = jnp.array([7, 3, 0])
    padding = ~(jnp.arange(T)[None, :] < lengths[:, None])[..., None]
    resets = jnp.zeros((B, T), bool).at[0, 4].set(True)
    # the fused backward; the checkpointed chunks; the autodiff loop with its reset mask
    for kwargs in ({}, {"reverse": True, "checkpoint_every": 3}, {"backward": "autodiff", "resets": resets, "reverse": True}):
        run = jax.jit(lambda x: (jaxrnn.scan(cell, params, x, lengths=lengths, **kwargs),
                                 grads_of(cell, params, x, lengths=lengths, **kwargs)))
        expected, expected_grads = run(jnp.where(padding, 0.0, xs))
        for poison in (np.nan, np.inf, -np.inf, 3e38):
            values, grads = run(jnp.where(padding, poison, xs))
            chex.assert_trees_all_equal(values, expected)
            chex.assert_trees_all_close(grads, expected_grads, atol=1e-6)


def test_a_reset_flag_in_the_padding_changes_nothing():
    cell = jaxrnn.lstm(H)
    params, xs = setup(cell)
    lengths = jnp.array([7, 3, 5])
    h0 = jax.tree_util.tree_map(lambda z: z + 0.3, cell.initial_carry(B))
    resets = jnp.zeros((B, T), bool).at[1, 2].set(True)
    garbage = resets.at[1, 5].set(True).at[2, 5:].set(True)  # flags after rows 1 and 2 end
    for reverse in (False, True):
        run = lambda r: jaxrnn.scan(cell, params, xs, initial_carry=h0, lengths=lengths, resets=r, reverse=reverse)
        chex.assert_trees_all_equal(run(garbage), run(resets))


def test_empty_batch_with_every_option(make_cell):
    cell = make_cell(H)
    params, xs = setup(cell)
    empty = xs[:0]
    for kwargs in ({}, {"checkpoint_every": 3}, {"lengths": jnp.zeros((0,), int), "checkpoint_every": 2}):
        ys, final = jaxrnn.scan(cell, params, empty, **kwargs)
        assert ys.shape == (0, T, H)
        g = jax.grad(lambda p: jnp.sum(jaxrnn.scan(cell, p, empty, **kwargs)[0]))(params)
        chex.assert_trees_all_equal(g, jax.tree_util.tree_map(jnp.zeros_like, params))


def test_unbatched_errors_describe_the_arguments_as_given():
    cell = jaxrnn.gru(H)
    params, xs = setup(cell)
    one = xs[0]  # (T, I)
    cases = [
        ({"resets": jnp.zeros((1, 2), bool)}, r"resets: expected shape \(T,\) = \(7,\), got shape \(1, 2\)"),
        ({"lengths": jnp.array([3])}, r"lengths: expected a scalar for one unbatched sequence xs of shape \(7, 2\), "
                                      r"got shape \(1,\)"),
        ({"lengths": 9}, r"lengths: values must lie in \[0, T\] = \[0, 7\], got min 9"),
        ({"initial_carry": jnp.zeros((2, H))}, r"initial_carry: expected array of shape \(4,\), got array of shape \(2, 4\)"),
    ]
    for kwargs, message in cases:
        with np.testing.assert_raises_regex(ValueError, message):
            jaxrnn.scan(cell, params, one, **kwargs)


def grads_of(cell, params, xs, **kwargs):
    h0 = jax.tree_util.tree_map(lambda z: z + 0.2, cell.initial_carry(xs.shape[0]))

    def loss(p, x, c):
        ys, final = jaxrnn.scan(cell, p, x, initial_carry=c, **kwargs)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(v ** 2) for v in jax.tree_util.tree_leaves(final))

    return jax.grad(loss, argnums=(0, 1, 2))(params, xs, h0)


# The hoisted projection with -m slow: by default, tests/test_cells.py runs the fused backward with it.
@pytest.mark.parametrize("projection", [pytest.param("hoisted", marks=pytest.mark.slow), "per_step"])
def test_fused_backward_equals_autodiff(make_cell, projection):
    cell = make_cell(H)
    params, xs = setup(cell)
    if "w_h" not in params:
        pytest.skip("a linear cell has no W_h: the fused backward, W_h's, is not taken for it")
    reference = dict(backward="autodiff", projection="hoisted")
    for kwargs in ({}, {"lengths": jnp.array([7, 3, 0])}, {"lengths": jnp.array([7, 5, 2]), "reverse": True}):
        chex.assert_trees_all_close(
            jaxrnn.scan(cell, params, xs, projection=projection, **kwargs),
            jaxrnn.scan(cell, params, xs, **reference, **kwargs), atol=1e-6,
        )
        fused = grads_of(cell, params, xs, backward="fused", projection=projection, **kwargs)
        auto = grads_of(cell, params, xs, **reference, **kwargs)
        chex.assert_trees_all_close(fused, auto, atol=2e-6)
        if projection == "per_step" and "lengths" in kwargs:  # the autodiff loop projecting inside, too
            chex.assert_trees_all_close(
                grads_of(cell, params, xs, backward="autodiff", projection=projection, **kwargs), auto, atol=2e-6)


@pytest.mark.parametrize("projection", ["hoisted", "per_step"])
def test_check_grads_on_the_fused_backward(make_cell, projection):
    cell = make_cell(3)
    params = random_params(cell, jax.random.key(0), 2, scale=0.3)
    if "w_h" not in params:
        pytest.skip("a linear cell has no W_h: the fused backward, W_h's, is not taken for it")
    xs = random_inputs(jax.random.key(1), 2, 5, 2)
    f = lambda p, x: jaxrnn.scan(cell, p, x, lengths=jnp.array([5, 3]), backward="fused", projection=projection)
    check_grads(f, (params, xs), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("projection", [pytest.param("hoisted", marks=pytest.mark.slow), "per_step"])
def test_checkpointed_chunks_equal_the_plain_loop(projection):
    cell = jaxrnn.lstm(H)
    params, xs = setup(cell)  # T = 7: chunks of 3 pad the front; 10 is longer than T (one chunk)
    resets = jnp.zeros((B, T), bool).at[1, 3].set(True)
    options = [({"lengths": jnp.array([7, 4, 1])}, 3)]
    # The chunking is the same for both projections: each of the other cases once is enough.
    options += [({}, 3)] if projection == "hoisted" else [({"resets": resets, "reverse": True}, 3), ({}, 10)]
    for kwargs, chunk in options:
        kwargs = dict(kwargs, projection=projection, kernel="xla")
        plain = jaxrnn.scan(cell, params, xs, **kwargs)
        chunked = jaxrnn.scan(cell, params, xs, checkpoint_every=chunk, **kwargs)
        chex.assert_trees_all_close(chunked, plain, atol=1e-6)
        chex.assert_trees_all_close(grads_of(cell, params, xs, checkpoint_every=chunk, **kwargs),
                                    grads_of(cell, params, xs, backward="autodiff", **kwargs), atol=2e-6)
    empty = xs[:, :0]
    chex.assert_trees_all_close(jaxrnn.scan(cell, params, empty, checkpoint_every=3, kernel="xla"),
                                jaxrnn.scan(cell, params, empty, kernel="xla"))
    with np.testing.assert_raises_regex(ValueError, "checkpoint_every: expected a positive int"):
        jaxrnn.scan(cell, params, xs, checkpoint_every=0)
    with np.testing.assert_raises_regex(ValueError, "backward: expected one of"):
        jaxrnn.scan(cell, params, xs, backward="cudnn")
    with np.testing.assert_raises_regex(ValueError, "projection: expected one of"):
        jaxrnn.scan(cell, params, xs, projection="inside")

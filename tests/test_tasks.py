"""The long-range tasks: shapes, targets recomputed independently, baselines checked numerically."""

import math

import chex
import jax
import numpy as np
import pytest
from absl.testing import parameterized

import jaxrnn
from jaxrnn import tasks
from jaxrnn.programs import long_range


class ShapesTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(
        ("adding", 30, (30, 2), ()),
        ("copy_memory", 7, (27, 10), (27,)),
        ("temporal_order", 40, (40, 8), ()),
        ("temporal_order3", 40, (40, 8), ()),
        ("digits", 64, (64, 1), ()),
        ("permuted_digits", 64, (64, 1), ()),
    )
    def test_shapes(self, name, length, step_shape, target_shape):
        task = tasks.TASKS[name]
        sample = self.variant(task.sample, static_argnums=(1, 2))
        xs, y = sample(jax.random.key(0), 5, length)
        chex.assert_shape(xs, (5,) + step_shape)
        chex.assert_shape(y, (5,) + target_shape)
        assert xs.shape[-1] == task.input_size


def test_copy_memory_targets():
    T = 12
    xs, y = tasks.copy_memory(jax.random.key(1), 50, T)
    tokens = np.asarray(xs).argmax(-1)
    for row, target in zip(tokens, np.asarray(y)):
        symbols = row[:10]
        assert set(symbols) <= set(range(1, 9))
        assert (row[10 : 10 + T - 1] == 0).all() and row[10 + T - 1] == 9 and (row[10 + T :] == 0).all()
        np.testing.assert_array_equal(target, np.concatenate([np.zeros(T + 10, int), symbols]))


@pytest.mark.parametrize("bits", [2, 3])
def test_temporal_order_targets(bits):
    T = 100
    xs, y = tasks.temporal_order(jax.random.key(2), 200, T, bits=bits)
    tokens = np.asarray(xs).argmax(-1)
    windows = {2: [(10, 20), (50, 60)], 3: [(10, 20), (33, 43), (66, 76)]}[bits]  # Hochreiter 1997 at T=100
    for row, target in zip(tokens, np.asarray(y)):
        assert row[0] == 4 and row[-1] == 5
        relevant = np.flatnonzero(row >= 6)
        assert len(relevant) == bits
        assert all(lo <= p <= hi for p, (lo, hi) in zip(relevant, windows))
        order = "".join("XY"[row[p] - 6] for p in relevant)
        assert target == int(order.replace("X", "0").replace("Y", "1"), 2)
    assert len(np.unique(np.asarray(y))) == 2**bits


def test_digits_are_sklearn_digits_and_permutation_is_fixed():
    from sklearn.datasets import load_digits

    plain, permuted = tasks.digits_data(False), tasks.digits_data(True)
    assert plain["train_x"].shape == (1797 - 360, 64, 1) and plain["test_x"].shape == (360, 64, 1)
    raw = load_digits()
    # every sequence is one of sklearn's images, scaled to [0, 1]
    first = plain["train_x"][0, :, 0] * 16
    assert np.isclose(np.abs(raw.data - first).sum(1), 0).any()
    # the permuted variant holds the same pixels, in one order for every image
    np.testing.assert_array_equal(np.sort(permuted["train_x"], axis=1), np.sort(plain["train_x"], axis=1))
    assert not np.array_equal(permuted["train_x"], plain["train_x"])
    np.testing.assert_array_equal(permuted["train_y"], plain["train_y"])
    with pytest.raises(ValueError, match="length: digits are 64 pixels long"):
        tasks.digits(jax.random.key(0), 2, 50)


@pytest.mark.parametrize("name,length", [("adding", 50), ("copy_memory", 30), ("temporal_order", 60),
                                         ("temporal_order3", 60), ("digits", 64), ("permuted_digits", 64)])
def test_memoryless_predictor_scores_the_documented_baseline(name, length):
    task = tasks.TASKS[name]
    batch = jax.jit(task.sample, static_argnums=(1, 2))(jax.random.key(3), 40_000, length)
    loss = float(task.loss(task.memoryless(batch), batch.targets))
    assert abs(loss / task.baseline(length) - 1) < 0.02, (loss, task.baseline(length))
    assert task.threshold(length) < task.baseline(length)


def test_baseline_formulas():
    assert tasks.copy_memory_baseline(100) == pytest.approx(10 * math.log(8) / 120)
    assert tasks.TASKS["temporal_order"].baseline(100) == pytest.approx(math.log(4))
    assert tasks.digits_prior_entropy() == pytest.approx(math.log(10), rel=0.01)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="bits: expected 2 or 3"):
        tasks.temporal_order(jax.random.key(0), 2, 50, bits=4)
    with pytest.raises(ValueError, match="length: expected an int of at least 20"):
        tasks.temporal_order(jax.random.key(0), 2, 10)
    with pytest.raises(ValueError, match="batch_size"):
        tasks.adding(jax.random.key(0), 0, 10)


def test_chrono_init_spreads_forget_time_scales():
    cell = jaxrnn.lstm(256, forget_bias=0.0)
    params = jaxrnn.chrono_init(jax.random.key(1), cell.init(jax.random.key(0), 2), 750)
    b = np.asarray(params["b"]).reshape(4, 256)
    np.testing.assert_allclose(b[0], -b[1])
    timescales = np.exp(b[1])  # forget gate bias log(u), u ~ U[1, 749]
    assert timescales.min() >= 1 and timescales.max() <= 749 and np.median(timescales) > 200
    np.testing.assert_array_equal(b[2:], 0.0)
    with pytest.raises(ValueError, match="max_timescale"):
        jaxrnn.chrono_init(jax.random.key(1), params, 1.5)


def test_lstm_beats_the_baseline_on_adding_at_T50():
    task = tasks.TASKS["adding"]
    run = long_range.train(task, long_range.MODELS["lstm"], 50, seeds=1, steps=800, hidden=32,
                           lr=3e-3, eval_every=100, stop_when_solved=False)
    assert run["final_loss"][0] < 0.5 * task.baseline(50), run["final_loss"]


def test_long_range_smoke(tmp_path):
    # one task (copy memory's every-step readout: tests/test_experiments.py's long_budget smoke)
    folder = long_range.main(["--tasks", "temporal_order",
                              "--models", "lstm-chrono", "--lengths", "20", "--seeds", "2",
                              "--steps", "20", "--eval-every", "10", "--hidden", "8", "--out", str(tmp_path)])
    text = (folder / "results.md").read_text()
    for heading in ("### temporal_order", "Gradient decay on temporal_order"):
        assert heading in text
    assert (folder / "curves.png").stat().st_size > 0 and (folder / "gradients.png").stat().st_size > 0
    import json

    saved = json.loads((folder / "results.json").read_text())
    assert len(saved["results"]) == 1 and saved["profiles"]["length"] == 20
    assert set(long_range.DEFAULT_MODELS) < set(long_range.MODELS) and "mingru" not in long_range.DEFAULT_MODELS
    assert all(np.isfinite(p["untrained"]["decay_per_step"]) for p in saved["profiles"]["models"].values())

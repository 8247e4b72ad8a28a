"""Fast smoke runs of the seeds' experiments on tiny sizes; each checks the claim it measures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import clipping, curriculum, state_reset


def test_clipping_smoke(tmp_path):
    args = clipping.parser().parse_args(["--lrs", "0.1", "--steps", "60", "--out", str(tmp_path)])
    results = clipping.run(args)
    runs = results["runs"]
    unclipped = next(v for k, v in runs.items() if "no clipping" in k)
    clipped = next(v for k, v in runs.items() if "clip_by_global_norm" in k)
    assert unclipped["nonfinite_steps"] > 0 or unclipped["spikes"] > 0  # it explodes...
    assert clipped["nonfinite_steps"] == 0 and np.isfinite(clipped["final_loss"])  # ...the clipped one does not
    assert max(clipped["grad_norm"]) < 1e3
    assert (tmp_path / "clipping.png").exists() and "| run |" in (tmp_path / "results.md").read_text()


def test_curriculum_smoke(tmp_path):
    args = curriculum.parser().parse_args(["--length", "16", "--start", "4", "--stages", "2", "--ramp-steps", "20",
                                           "--steps", "40", "--eval-every", "10", "--hidden-size", "16",
                                           "--target", "1e-9", "--out", str(tmp_path)])
    results = curriculum.run(args)
    lengths = results["runs"]["curriculum"]["lengths"]
    assert lengths[0] == 4 and lengths[-1] == 16 and lengths == sorted(lengths)
    assert set(results["runs"]["direct"]["lengths"]) == {16}
    assert len(results["runs"]["direct"]["evals"]) == 4  # the target was not reached: the whole budget ran
    assert json.loads((tmp_path / "results.json").read_text())["first_to_target"] is None
    assert (tmp_path / "curriculum.png").exists()


def test_packed_rows_are_independent_adding_problems():
    xs, targets, resets, ends = state_reset.packed(jax.random.key(0), 64, 3, 4, 9)
    xs, targets, resets, ends = map(np.asarray, (xs, targets, resets, ends))
    for b in range(64):
        starts = np.flatnonzero(resets[b])
        assert len(starts) == 3 and starts[0] == 0
        bounds = list(starts) + [ends[b, -1] + 1]
        for k in range(3):
            seg = xs[b, bounds[k]:bounds[k + 1]]
            assert ends[b, k] == bounds[k + 1] - 1 and 4 <= len(seg) <= 9
            assert seg[:, 1].sum() == 2  # two markers, one per half
            half = len(seg) // 2
            assert seg[:half, 1].sum() == 1
            np.testing.assert_allclose(targets[b, k], (seg[:, 0] * seg[:, 1]).sum(), rtol=1e-6)
        assert (xs[b, bounds[-1]:] == 0).all()


def test_state_reset_smoke(tmp_path):
    args = state_reset.parser().parse_args(["--steps", "30", "--hidden-size", "16", "--segments", "3",
                                            "--min-length", "4", "--max-length", "8", "--out", str(tmp_path)])
    results = state_reset.run(args)
    runs = results["runs"]
    assert set(runs) == {"reset at every example", "no reset (state leaks)"}
    for r in runs.values():
        assert len(r["eval_own_mode"]) == 3 and len(r["train_loss"]) == 30
        # segment 1 has nothing before it: with or without resets it is the same computation
        assert np.isclose(r["eval_own_mode"][0], r["eval_other_mode"][0], rtol=1e-5)
    assert (tmp_path / "state_reset.png").exists()


def test_char_lm_script_trains_and_plots(tmp_path, capsys):
    from experiments import char_lm

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 100)
    out = tmp_path / "run"
    char_lm.main(["train", "--text", str(text), "--cell", "gru", "--hidden-size", "16", "--num-layers", "1",
                  "--seq-len", "16", "--batch-size", "4", "--steps", "60", "--eval-every", "20",
                  "--sample-every", "0", "--out", str(out), "--quiet"])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("val_loss_nats=")
    char_lm.main(["plot", str(out), "--png", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_loss_per_step_metric_on_request():
    import jax.numpy as jnp
    from jaxrnn import training
    from jaxrnn.programs.char_lm import CharLM

    lm = CharLM(vocab_size=6, cell="lstm", hidden_size=8, num_layers=1)
    opt = training.make_optimizer("adam", 1e-3)
    step = training.make_train_step(lm.loss_fn(per_step=True), opt)
    state = training.init_state(lm.init(jax.random.key(0)), opt, jax.random.key(1), lm.initial_state(3))
    chunk = jax.random.randint(jax.random.key(2), (3, 11), 0, 6)
    _, metrics = step(state, chunk)
    assert metrics["loss_per_step"].shape == (10,)
    np.testing.assert_allclose(jnp.mean(metrics["loss_per_step"]), metrics["loss"], rtol=1e-5)
    assert float(metrics["h_norm"]) > 0


def test_tagging_smoke_and_labels(tmp_path):
    from experiments import tagging

    x, y, n = map(np.asarray, tagging.batch(jax.random.key(0), 16, 12))
    for b in range(16):
        row = np.concatenate([[0], x[b, : n[b]], [0]])
        np.testing.assert_array_equal(y[b, : n[b]], np.maximum(row[:-2], row[2:]))  # max of the two neighbours
        assert (x[b, n[b]:] == 0).all()
    results = tagging.run(tagging.parser().parse_args(["--steps", "20", "--eval-every", "10", "--hidden", "8",
                                                       "--out", str(tmp_path)]))
    assert set(results["runs"]) == {"unidirectional", "bidirectional"}
    assert results["runs"]["unidirectional"]["test_token_accuracy"] < 0.6  # cannot beat the no-future ceiling
    assert (tmp_path / "tagging.png").exists()


def test_forecasting_smoke_and_baselines(tmp_path):
    from experiments import forecasting

    y = forecasting.monthly_co2()
    assert len(y) == 526 and np.isfinite(y).all()
    results = forecasting.run(forecasting.parser().parse_args(["--steps", "20", "--hidden", "8", "--max-order", "0",
                                                               "--out", str(tmp_path)]))
    split = results["train_months"]
    origins = np.arange(split, len(y) - 12)
    assert results["sarima_orders"] == ((0, 1, 0), (0, 1, 0, 12))  # the only order the grid held
    # That model's forecast from origin t is y[t] + y[t+h-12] - y[t-12] (h <= 12): from data up to t only.
    by_hand = np.stack([y[origins] + y[origins + h - 12] - y[origins - 12] for h in range(1, 13)], axis=1)
    truth = np.stack([y[origins + h] for h in range(1, 13)], axis=1)
    np.testing.assert_allclose(results["mae"]["SARIMA(0, 1, 0)x(0, 1, 0, 12)"], np.abs(by_hand - truth).mean(axis=0),
                               atol=1e-3)
    assert set(results["mae"]) == {"GRU", "windowed MLP", "SARIMA(0, 1, 0)x(0, 1, 0, 12)", "naive (last value)",
                                   "seasonal naive (12 months back)"}
    naive_1 = np.abs(y[origins + 1] - y[origins]).mean()
    seasonal_1 = np.abs(y[origins + 1] - y[origins + 1 - 12]).mean()
    assert results["mae"]["naive (last value)"][0] == pytest.approx(naive_1)
    assert results["mae"]["seasonal naive (12 months back)"][0] == pytest.approx(seasonal_1)
    assert (tmp_path / "forecasting.png").exists()


def test_why_recurrence_smoke_and_task(tmp_path):
    from experiments import why_recurrence

    xs, target, d = why_recurrence.batch(np.random.default_rng(0), 5, 12, 11)
    # the marked bit sits d steps before the end, alone in the second channel, and is the target
    assert ((d >= 1) & (d <= 11)).all()
    np.testing.assert_array_equal(xs[np.arange(5), 11 - d, 1] > 0, target > 0)
    # a window sees the last k steps only (zero-padded in front of a shorter sequence)
    init, logit = why_recurrence.windowed(4, 8)
    p = init(jax.random.key(0))
    moved = xs.copy()
    moved[:, :-4] = 7.0
    np.testing.assert_allclose(logit(p, xs), logit(p, moved), rtol=1e-6)
    np.testing.assert_allclose(logit(p, xs[:, -3:]), logit(p, np.pad(xs[:, -3:], ((0, 0), (1, 0), (0, 0)))), rtol=1e-6)
    # accuracy by distance, and by steps before the mark, from a model right exactly where the mark is within
    # its last 4 steps (d <= 3)
    oracle = (None, lambda p, x: jnp.where(x[:, -4:, 1].sum(axis=1) != 0, x[:, -4:, 1].sum(axis=1), -1.0))
    by_d = why_recurrence.accuracy_by_distance(oracle, None, 12, 11, 400, 0)
    assert by_d["1-3"] == 1.0 and by_d["4-7"] < 0.7 and by_d["8-15"] < 0.7
    by_before = why_recurrence.accuracy_by_distance(oracle, None, 12, 11, 400, 0, before=True)
    assert by_before["8-15"] == 1.0 and by_before["0-0"] < 0.7  # T - 1 - d >= 8 means d <= 3
    assert (np.count_nonzero(xs[..., 1], axis=1) == 1).all()
    results = why_recurrence.run(why_recurrence.parser().parse_args(
        ["--steps", "3", "--windows", "4", "--hidden", "4", "--test-size", "50", "--out", str(tmp_path)]))
    assert set(results["window"]) == {"logistic regression, k=4", "MLP, k=4", "GRU, H=4"}
    assert all(0 <= v <= 1 for part in ("window", "length") for acc in results[part].values() for v in acc.values())
    assert (tmp_path / "window.png").exists() and (tmp_path / "length.png").exists()


def test_seq2seq_smoke_and_tasks(tmp_path):
    from experiments import seq2seq

    rng = np.random.default_rng(0)
    assert seq2seq.reverse(rng, 5)[1] == seq2seq.reverse(np.random.default_rng(0), 5)[0][::-1]
    src, tgt = seq2seq.add(rng, 7)
    a, b = src.split("+")
    assert int(a) + int(b) == int(tgt)
    src, tgt = seq2seq.date(rng, 0)
    assert len(tgt) == 10 and tgt[4] == "-"
    test = seq2seq.examples("sort", rng, 50, test=True)
    assert all(seq2seq.is_test(s) for s, _ in test) and all(t == "".join(sorted(s)) for s, t in test)
    results = seq2seq.run(seq2seq.parser().parse_args(["--tasks", "date", "--steps", "5",
                                                       "--test-size", "4", "--hidden", "8", "--embed", "4",
                                                       "--out", str(tmp_path)]))
    for task in ("date",):
        assert set(results["tasks"][task]) == {"plain", "bahdanau"}
        assert all(0 <= r["greedy"] <= 1 for r in results["tasks"][task].values())
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "attention.png").exists()


@pytest.mark.parametrize("name", ["clipping", "curriculum", "forecasting", "long_budget", "seq2seq", "state_reset",
                                  "tagging", "why_recurrence"])
def test_experiment_scripts_show_defaults_and_refuse_bad_arguments_in_one_line(name, capsys, monkeypatch):
    import argparse
    import importlib

    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside a default
    parser = importlib.import_module(f"experiments.{name}").parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and action.default not in (None, "", argparse.SUPPRESS):
            assert f"(default: {action.default})" in formatter._format_action(action), action.dest
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["--steps", "-3"])
    err = capsys.readouterr().err.splitlines()
    assert exit.value.code == 2 and len(err) == 1 and "--steps: expected a positive int, got '-3'" in err[0], err


def test_long_budget_smoke_clipping_and_what_it_reads(tmp_path):
    from experiments import long_budget
    from jaxrnn.programs import long_range

    assert long_range.MODELS["lstm-noclip"].clip_norm is None and long_range.MODELS["lstm"].clip_norm == 1.0
    results = long_budget.run(long_budget.parser().parse_args(
        ["--tasks", "copy_memory", "--models", "lstm-noclip", "--steps", "4", "--eval-every", "2", "--seeds", "2",
         "--out", str(tmp_path)]))
    (run,) = results
    assert run["model"] == "lstm-noclip" and not run["clipped"] and run["steps_run"] == 4 and len(run["eval_loss"]) == 2
    table = (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves.png").exists() and "| lstm-noclip | no |" in table and "(on the held-out set 0.1733" in table
    # held-out loss 0.2, then 0.08 for seed 0 only: below half of 1/6 at step 20, seed 1 never
    fake = {"eval_loss": [[0.2, 0.2], [0.08, 0.2]], "curve_steps": [10, 20], "baseline": 1 / 6}
    assert long_budget.below_half(fake) == [20, None]
    # the held-out set's own memoryless loss, mean (y - 1)^2 over its 512 targets
    assert long_budget.held_out_baseline("adding") == pytest.approx(0.14799, abs=1e-4)

"""Smoke run of the gradient-flow benchmark (the main job) on tiny sizes."""

import json
import math

import numpy as np
import pytest

from jaxrnn.programs import gradient_flow
from jaxrnn.programs.cli import main as cli_main


def test_gradient_flow_smoke(tmp_path, capsys):
    out = tmp_path / "run"
    cli_main([
        "gradient-flow", "--cells", "vanilla", "lstm-fb1", "mingru", "--radii", "0.5", "1.5", "--lengths", "5", "40",
        "--hidden-size", "8", "--batch-size", "4", "--train-steps", "100", "--train-length", "10", "--seeds", "0",
        "--cost-length", "50", "--out", str(out),
    ])
    for name in ("gradient_decay.png", "gradient_decay_by_length.png", "spectral_radius.png", "jacobian.png",
                 "training.png", "results.json", "profiles.csv", "table.md"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    rows = {(r["phase"], r["model"], r["T"]): r for r in results["summaries"]}
    # 3 cells + 2 sweep radii at init, the 3 cells again after training, 2 lengths each
    assert len(rows) == (5 + 3) * 2
    assert all(math.isfinite(r["decay_per_step"]) for r in rows.values())
    # rho = 0.5 vanishes much faster than rho = 1.5 (a contraction against an expansion)
    assert rows[("init", "vanilla tanh rho=0.5", 40)]["decay_per_step"] < rows[("init", "vanilla tanh rho=1.5", 40)]["decay_per_step"] - 0.1
    assert len(results["training"]["lstm (forget bias 1)"]) == 100
    assert results["cost"][0]["ratio"] > 0
    printed = capsys.readouterr().out
    assert "| vanilla tanh (orthogonal) | init |" in printed and str(out) in printed
    assert len(results["profiles"]["init|lstm (forget bias 1)|40"]) == 40
    # the linear cell: its slowest unit's log10 |a_t| is the decay of the gradient's norm (to the fit)
    for phase in ("init", "trained"):
        decay = results["linear_decay"][f"{phase}|mingru"]
        assert decay["mean"] <= decay["slowest_unit"] < 0
        assert abs(decay["slowest_unit"] - rows[(phase, "mingru", 40)]["decay_per_step"]) < 0.05
    assert "slowest unit's mean log10 |a_t|" in printed


def test_models_reject_unknown_cells():
    with pytest.raises(ValueError, match=r"cells: unknown \['lstm'\]"):
        gradient_flow.models(["lstm", "vanilla"], [])
    names = [m.name for m in gradient_flow.models(["vanilla"], [0.5, 1.0])]
    assert names == ["vanilla tanh (orthogonal)", "vanilla tanh rho=0.5"]  # rho=1 is the orthogonal cell


def test_adding_problem_targets_and_baseline():
    import jax
    from jaxrnn import tasks

    xs, y = tasks.adding(jax.random.key(0), 20000, 30)
    values, markers = np.asarray(xs[..., 0]), np.asarray(xs[..., 1])
    assert (markers.sum(1) == 2).all()
    assert (markers[:, :15].sum(1) == 1).all()  # one marker in each half
    np.testing.assert_allclose(y, (values * markers).sum(1), rtol=1e-6)
    baseline = np.mean((np.asarray(y) - 1.0) ** 2)  # the memoryless predictor's loss
    assert abs(baseline / tasks.ADDING_BASELINE_MSE - 1) < 0.02

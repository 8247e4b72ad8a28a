"""Smoke run of the speed benchmark on tiny sizes (speed targets are checked by the benchmark, not here)."""

import json

import jax.numpy as jnp
import pytest

from jaxrnn.bench import speed


def test_speed_smoke(tmp_path, capsys):
    out = tmp_path / "speed.json"
    speed.main(["--cells", "lstm", "vanilla", "--batch", "2", "--hidden", "8", "--lengths", "5", "--repeats", "2",
                "--block", "2", "--peers", "jaxrnn", "flax", "equinox", "torch", "floor", "--json", str(out)])
    results = json.loads(out.read_text())
    rows = {(r["cell"], r["mode"]): r for r in results["results"]}
    assert set(rows) == {("lstm", "fwd"), ("lstm", "fwd+bwd"), ("vanilla", "fwd"), ("vanilla", "fwd+bwd")}
    for r in rows.values():
        assert {"jaxrnn", "flax", "torch", "floor"} <= set(r["ms"]) and all(v > 0 for v in r["ms"].values())
    # a peer without the cell, or not installed, is reported, not dropped
    assert rows[("vanilla", "fwd")]["missing"]["equinox"] in ("no vanilla cell", "not installed")
    assert results["gemm_peak_gflops"] > 0
    printed = capsys.readouterr().out
    assert "x flax" in printed and "floor % GEMM peak" in printed


def test_checkpointed_scan_needs_less_memory():
    rows = {r["impl"]: r for r in speed.memory_case(T=400, B=4, H=16, chunk=20, repeats=1)}
    assert rows["jaxrnn checkpoint_every=20"]["temp_MiB"] < 0.5 * rows["jaxrnn"]["temp_MiB"]
    assert rows["flax"]["temp_MiB"] > 0


def test_floor_runs_the_fused_paths_matmuls():
    fn, (w_i, w_h, xs) = speed.make_floor("gru", 3, 5, 4, with_grad=True)
    d_w_h, d_w_i, d_x = fn(w_i, w_h, xs)
    assert d_w_h.shape == d_w_i.shape == (4, 12) and d_x.shape == (15, 4)
    hs = speed.make_floor("gru", 3, 5, 4, with_grad=False)[0](w_i, w_h, xs)
    h = jnp.zeros((3, 4))
    for t in range(5):  # the forward loop is x_t W_i + h W_h, first H columns
        h = (xs[t] @ w_i + h @ w_h)[:, :4]
        assert jnp.allclose(hs[t], h, atol=1e-5)


def test_block_of_one_is_refused():
    with pytest.raises(ValueError, match="block: expected at least 2"):
        speed.run_case("vanilla", 2, 3, 4, False, ["jaxrnn"], repeats=1, block=1)

"""Smoke run of the speed benchmark on tiny sizes (speed targets are checked by the benchmark, not here)."""

import json
import os

import jax.numpy as jnp
import pytest

import jaxrnn
from jaxrnn.programs import speed


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
    measured = speed.memory_case(T=400, B=4, H=16, chunks=(20,), repeats=1)
    rows = {r["impl"]: r for r in measured}
    assert rows["jaxrnn checkpoint_every=20"]["temp_MiB"] < 0.5 * rows["jaxrnn"]["temp_MiB"]
    assert rows["flax"]["temp_MiB"] > 0
    assert "| jaxrnn checkpoint_every=20 |" in speed.memory_table(measured)


def test_floor_runs_the_fused_paths_matmuls():
    fn, (w_i, w_h, xs) = speed.make_floor("gru", 3, 5, 4, with_grad=True)
    d_w_h, d_w_i, d_x = fn(w_i, w_h, xs)
    hs = speed.make_floor("gru", 3, 5, 4, with_grad=False)[0](w_i, w_h, xs)
    h, prev = jnp.zeros((3, 4)), []
    for t in range(5):  # the forward loop is x_t W_i + h W_h, first H columns
        prev.append(h)
        h = (xs[t] @ w_i + h @ w_h)[:, :4]
        assert jnp.allclose(hs[t], h, atol=1e-5)
    # Backward, from h_T: dz_t is dh repeated per gate, dh goes back through W_h^T; then the three GEMMs.
    dh, want_w_h, want_w_i, want_x = h, 0, 0, [None] * 5
    for t in reversed(range(5)):
        dz = jnp.tile(dh, (1, 3))
        want_w_h, want_w_i, want_x[t] = want_w_h + prev[t].T @ dz, want_w_i + xs[t].T @ dz, dz @ w_i.T
        dh = dz @ w_h.T
    assert jnp.allclose(d_w_h, want_w_h, rtol=1e-4, atol=1e-4)
    assert jnp.allclose(d_w_i, want_w_i, rtol=1e-4, atol=1e-4)
    assert jnp.allclose(d_x, jnp.concatenate(want_x), rtol=1e-4, atol=1e-4)


def test_block_of_one_is_refused():
    with pytest.raises(ValueError, match="block: expected at least 2"):
        speed.run_case("vanilla", 2, 3, 4, False, ["jaxrnn"], repeats=1, block=1)


def test_rows_measured_before_a_crash_are_kept(tmp_path, monkeypatch):
    measured = speed.run_case

    def crash_on_second(kind, *args, **kwargs):
        if kind == "gru":
            raise RuntimeError("out of time")
        return measured(kind, *args, **kwargs)

    monkeypatch.setattr(speed, "run_case", crash_on_second)
    out = tmp_path / "speed.json"
    with pytest.raises(RuntimeError, match="out of time"):
        speed.main(["--cells", "vanilla", "gru", "--batch", "2", "--hidden", "4", "--lengths", "3", "--mode", "fwd",
                    "--repeats", "1", "--block", "2", "--peers", "jaxrnn", "--json", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["cell"], r["mode"]) for r in rows] == [("vanilla", "fwd")]


def test_matmul_precision_is_scoped_and_checked():
    import jax
    import torch

    before = jax.config.jax_default_matmul_precision, torch.backends.cudnn.allow_tf32
    with speed.matmul_precision("tf32"):
        assert jax.config.jax_default_matmul_precision == "tensorfloat32" and torch.backends.cudnn.allow_tf32
    with speed.matmul_precision("float32"):
        assert jax.config.jax_default_matmul_precision == "highest" and not torch.backends.cudnn.allow_tf32
    assert (jax.config.jax_default_matmul_precision, torch.backends.cudnn.allow_tf32) == before
    with pytest.raises(ValueError, match="precision: expected one of"):
        with speed.matmul_precision("bf16"):
            pass


def test_variants_time_every_combination_against_the_peers(tmp_path, capsys):
    from jaxrnn.programs import variants

    out = tmp_path / "variants.json"
    variants.main(["--cells", "gru", "--batch", "2", "--hidden", "4", "--lengths", "3", "--mode", "fwd+bwd",
                   "--unroll", "1", "2", "--projection", "hoisted", "per_step", "--step-vjp", "cell", "autodiff",
                   "--kernel", "xla", "native", "native-small", "native-wide", "native-threads", "--peers", "flax",
                   "--repeats", "1",
                   "--block", "2", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    native_runs = jaxrnn.native.unavailable_reason() is None  # each layout forced, whatever the batch
    names = {f"unroll={u} {p} fused{s}" for u in (1, 2) for p in ("hoisted", "per_step") for s in ("", " autodiff-step")}
    assert set(row["ms"]) == names | {"flax"} | ({"native-small", "native-wide"} if native_runs else set())
    reason = jaxrnn.native.unavailable_reason()
    too_small = "the call (2 rows, 3 steps) is smaller than kernel='auto' takes: at least 16 rows"
    assert row["missing"] == {  # said, not dropped
        "native": too_small, "native-threads": too_small,
        **({} if native_runs else {"native-small": reason, "native-wide": reason})}
    assert "| **" in capsys.readouterr().out  # the fastest variant is marked


def test_variants_time_the_vanilla_cell_with_the_activation_asked_for(tmp_path, monkeypatch):
    from jaxrnn.programs import variants

    made = []
    real = speed.make_cell
    monkeypatch.setattr(speed, "make_cell", lambda *a: made.append(real(*a).option("activation")) or real(*a))
    variants.main(["--cells", "vanilla", "--activation", "relu", "--batch", "2", "--hidden", "4", "--lengths", "3",
                   "--mode", "fwd", "--unroll", "1", "--projection", "per_step", "--kernel", "xla", "native-wide",
                   "--peers", "flax", "--repeats", "1", "--block", "2", "--json", str(tmp_path / "v.json")])
    assert made and set(made) == {"relu"}  # the loop's variant and the kernels' (or the reason they cannot run)


@pytest.mark.skipif(jaxrnn.native.unavailable_reason() is not None, reason="needs the native kernels")
def test_variants_native_threads_compiles_the_kernels_with_helpers_of_their_own(monkeypatch):
    """native-threads is the default kernel call but for where its helpers come from, and leaves the setting
    as it found it."""
    from jaxrnn.programs import variants

    monkeypatch.setenv("JAXRNN_NATIVE_HELPERS", "pool")
    own, _ = variants._make_native_threads("lstm", 16, 3, 4, True)
    default, args = variants._make_native("lstm", 16, 3, 4, True)
    assert "pooled = false" in own.as_text() and "pooled = true" not in own.as_text()
    assert "pooled = true" in default.lower(*args).as_text()
    assert jaxrnn.native.pooled() and os.environ["JAXRNN_NATIVE_HELPERS"] == "pool"


def test_workloads_smoke(tmp_path, capsys):
    """The workload table on tiny shapes: every peer on a padded, a bidirectional and a plain row."""
    import argparse

    from jaxrnn.programs import workloads

    tiny = [workloads.Workload("LSTM padded", "lstm", 5, 9, 8, padded=True),
            workloads.Workload("2-layer bidirectional GRU, padded", "gru", 3, 6, 8, padded=True, layers=2,
                               bidirectional=True),
            workloads.Workload("vanilla", "vanilla", 2, 5, 8),
            workloads.Workload("GRU stream", "gru", 1, 4, 8, streaming=True)]
    parser = argparse.ArgumentParser()
    speed.add_arguments(parser)
    args = parser.parse_args(["--workloads", "--repeats", "1", "--block", "2", "--json", str(tmp_path / "w.json")])
    out = workloads.run(args, tiny)
    modes = lambda w: ("fwd",) if w.streaming else ("fwd", "fwd+bwd")  # a stream is inference
    assert [(r["name"], r["mode"]) for r in out["results"]] == [(w.name, m) for w in tiny for m in modes(w)]
    for r in out["results"]:
        assert set(r["ms"]) == {"jaxrnn", "flax", "torch"} and all(v > 0 for v in r["ms"].values())
        assert workloads.ratio(r, "torch") == r["ms"]["torch"] / r["ms"]["jaxrnn"]
    assert json.loads((tmp_path / "w.json").read_text())["environment"].startswith("allocator: ")
    assert (tmp_path / "w.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| LSTM padded | fwd+bwd |" in printed and "% GEMM peak" in printed and out["gemm_peak_gflops"] > 0


def test_a_rows_matmul_flops_count_its_valid_steps_layers_and_directions():
    from jaxrnn.programs import workloads

    w = workloads.Workload("2-layer bidirectional LSTM", "lstm", 2, 3, 4, layers=2, bidirectional=True)
    # per batch row and step, 2 (I + H) 4H per direction: layer 1 reads x (I = 4), layer 2 both directions (I = 8)
    per_step = 2 * (4 + 4) * 16 * 2 + 2 * (8 + 4) * 16 * 2
    assert workloads.matmul_flops(w, with_grad=False) == 2 * 3 * per_step
    assert workloads.matmul_flops(w, with_grad=True) == 3 * 2 * 3 * per_step  # + input/carry and weight gradients
    gru = workloads.Workload("GRU, padded", "gru", 5, 8, 4, padded=True)
    assert workloads.matmul_flops(gru, False) == workloads.lengths_of(gru).sum() * 2 * (4 + 4) * 3 * 4


def test_padded_workloads_draw_lengths_up_to_T_and_every_peer_sees_them():
    from jaxrnn.programs import workloads

    w = workloads.Workload("padded", "lstm", 33, 40, 4, padded=True)
    lengths = workloads.lengths_of(w)
    assert lengths.shape == (33,) and lengths.max() == 40 and lengths.min() >= 10 and len(set(lengths)) > 5
    assert workloads.lengths_of(w._replace(padded=False)) is None


def test_the_environment_is_the_users_unless_asked():
    import argparse

    parser = argparse.ArgumentParser()
    speed.add_arguments(parser)
    assert speed.environment_for(parser.parse_args([])) == {}  # glibc's allocator, the machine's ISA
    avx2 = speed.environment_for(parser.parse_args(["--isa", "avx2"]))
    assert avx2["JAXRNN_NATIVE_ISA"] == "avx2" and avx2["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert avx2["ATEN_CPU_CAPABILITY"] == "avx2" and "--xla_cpu_max_isa=AVX2" in avx2["XLA_FLAGS"]
    tunables = speed.environment_for(parser.parse_args(["--malloc-tunables"]))
    assert tunables == ({"GLIBC_TUNABLES": speed.MALLOC_TUNABLES} if speed.sys.platform.startswith("linux") else {})
    speed.restart_with({})  # nothing asked: no restart (an exec would end this test process)


def test_avx2_replaces_an_isa_flag_of_the_users_and_workloads_need_jaxrnn(monkeypatch, tmp_path):
    import argparse

    from jaxrnn.programs import arguments, workloads

    parser = argparse.ArgumentParser()
    speed.add_arguments(parser)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX512 --xla_backend_optimization_level=0")
    flags = speed.environment_for(parser.parse_args(["--isa", "avx2"]))["XLA_FLAGS"].split()
    assert flags == ["--xla_backend_optimization_level=0", "--xla_cpu_max_isa=AVX2"]
    args = parser.parse_args(["--workloads", "--peers", "flax", "torch", "--json", str(tmp_path / "w.json")])
    with pytest.raises(arguments.UsageError, match="--peers: .*include jaxrnn"):
        workloads.run(args)

"""Training toolkit: optimizers, clipping metrics, schedules, TBPTT, divergence guard,
checkpoints (damaged ones too; SIGKILL mid-run: test_faults.py), data parallelism and logs."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import training
from jaxrnn.checkpoints import CheckpointError, Checkpoints
from jaxrnn.programs.char_lm import CharLM
from jaxrnn.programs.runlog import RunLog, read_metrics


def quadratic_loss(params, carry, batch, key):
    return jnp.sum((params["w"] - batch) ** 2), (carry, {})


@pytest.mark.parametrize("name", training.OPTIMIZERS)
def test_every_optimizer_descends(name):
    opt = training.make_optimizer(name, 0.05)
    step = training.make_train_step(quadratic_loss, opt)
    state = training.init_state({"w": jnp.zeros(3)}, opt, jax.random.key(0))
    target = jnp.array([1.0, -2.0, 0.5])
    losses = []
    for _ in range(30):
        state, m = step(state, target)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_grad_norm_before_and_after_clipping():
    opt = training.make_optimizer("sgd", 0.1, clip_norm=1.0)
    step = training.make_train_step(quadratic_loss, opt)
    state = training.init_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    state, m = step(state, jnp.array([30.0, 40.0]))  # gradient (-60, -80): norm 100
    assert float(m["grad_norm"]) == pytest.approx(100.0)
    assert float(m["grad_norm_clipped"]) == pytest.approx(1.0)
    np.testing.assert_allclose(state.params["w"], [0.06, 0.08], rtol=1e-5)  # lr * clipped gradient


def test_elementwise_clip_as_char_rnn():
    opt = training.make_optimizer("sgd", 1.0, clip_value=5.0)
    step = training.make_train_step(quadratic_loss, opt)
    state = training.init_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    state, m = step(state, jnp.array([1.0, 100.0]))  # gradient (-2, -200)
    np.testing.assert_allclose(state.params["w"], [2.0, 5.0])
    assert float(m["grad_norm_clipped"]) == pytest.approx(np.hypot(2, 5), rel=1e-5)


def test_make_steps_is_make_train_step_called_once_per_step():
    """Many steps in one lax.scan (make_steps) train exactly as one dispatch per step (make_train_step):
    the same batches, the state's key split the same way, the carry handed on, metrics stacked per step."""

    def loss_fn(params, carry, batch, key):  # uses all four: params, the carried state, the batch and the key
        h = jnp.tanh(batch @ params["w"] + carry)
        noise = 0.01 * jax.random.normal(key, h.shape)
        return jnp.mean((h + noise - 0.5) ** 2), (h, {"h_norm": jnp.linalg.norm(h)})

    batch_at = lambda k: jax.random.normal(k, (4, 3))
    opt = training.make_optimizer("adam", 0.05, clip_norm=0.5)
    params = {"w": jax.random.normal(jax.random.key(0), (3, 2))}
    fresh = lambda: training.init_state(params, opt, jax.random.key(1), carry=jnp.zeros((4, 2)))
    keys = jax.random.split(jax.random.key(2), 12)

    state, metrics = jax.jit(training.make_steps(loss_fn, opt, batch_at, skip_nonfinite=True))(fresh(), keys)
    step = training.make_train_step(loss_fn, opt, skip_nonfinite=True)
    one_by_one, history = fresh(), []
    for k in keys:
        one_by_one, m = step(one_by_one, batch_at(k))
        history.append(m)

    assert int(state.step) == 12 and metrics["loss"].shape == (12,)
    np.testing.assert_array_equal(state.key, one_by_one.key)
    for name in ("loss", "grad_norm", "grad_norm_clipped", "h_norm"):
        np.testing.assert_allclose(metrics[name], [m[name] for m in history], rtol=1e-6, atol=1e-7, err_msg=name)
    for got, want in zip(jax.tree_util.tree_leaves((state.params, state.opt_state, state.carry)),
                         jax.tree_util.tree_leaves((one_by_one.params, one_by_one.opt_state, one_by_one.carry))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_schedules():
    cos = training.make_schedule(1.0, "warmup_cosine", total_steps=100, warmup_steps=10)
    assert float(cos(0)) == 0.0 and float(cos(10)) == pytest.approx(1.0) and float(cos(100)) == pytest.approx(0.0)
    stepped = training.make_schedule(1.0, "step", decay_every=10, decay_rate=0.5)
    assert [float(stepped(s)) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="total_steps"):
        training.make_schedule(1.0, "warmup_cosine")
    with pytest.raises(ValueError, match="schedule: expected one of"):
        training.make_schedule(1.0, "linear")


def test_length_curriculum_grows_to_maximum():
    f = training.length_curriculum(20, 200, ramp_steps=400, stages=3)
    lengths = [f(s) for s in range(0, 600, 50)]
    assert lengths[0] == 20 and lengths[-1] == 200 and lengths == sorted(lengths)
    assert len(set(lengths)) == 4


def test_stream_batches_are_consecutive_chunks():
    tokens = np.arange(2 * 21)  # two rows of 21
    chunks = training.stream_batches(tokens, batch_size=2, seq_len=5)
    assert chunks.shape == (4, 2, 6)
    np.testing.assert_array_equal(chunks[0, 1], [21, 22, 23, 24, 25, 26])
    np.testing.assert_array_equal(chunks[1, 0], [5, 6, 7, 8, 9, 10])  # starts where chunk 0 ended
    with pytest.raises(ValueError, match="too few"):
        training.stream_batches(np.arange(5), 2, 5)


def test_truncated_bptt_carries_state_across_chunks_and_resets_at_documents():
    lm = CharLM(vocab_size=7, cell="gru", hidden_size=8, num_layers=2, separator=0)
    params = lm.init(jax.random.key(0))
    stream = jax.random.randint(jax.random.key(1), (2, 21), 1, 7)
    whole, _, _ = lm.apply(params, stream)
    a, state, _ = lm.apply(params, stream[:, :10])
    b, _, _ = lm.apply(params, stream[:, 10:], state)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), whole, atol=1e-5)
    # a separator resets the state: what follows it equals a fresh start at the separator
    with_doc = stream.at[:, 12].set(0)
    logits, _, _ = lm.apply(params, with_doc)
    fresh, _, _ = lm.apply(params, with_doc[:, 12:])
    np.testing.assert_allclose(logits[:, 12:], fresh, atol=1e-5)


def nan_on_flag_loss(params, carry, batch, key):
    value = jnp.sum((params["w"] - batch["target"]) ** 2)
    return value * jnp.where(batch["poison"], jnp.nan, 1.0), (carry, {})


def test_divergence_guard_stops_with_step_and_norm_and_keeps_last_checkpoint(tmp_path):
    opt = training.make_optimizer("sgd", 0.1)
    step = training.make_train_step(nan_on_flag_loss, opt)
    state = training.init_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    ckpt = Checkpoints(tmp_path)
    good = lambda: {"target": jnp.ones(2), "poison": jnp.array(False)}
    with pytest.raises(training.DivergenceError, match=r"at step 4: loss=nan, gradient global norm=nan"):
        for i in range(1, 10):
            state, m = step(state, good() if i != 4 else {"target": jnp.ones(2), "poison": jnp.array(True)})
            training.check_finite(jax.device_get(m), i)
            ckpt.save(i, state)
    ckpt.close()
    like = training.init_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    restored, meta = Checkpoints(tmp_path).restore_latest(like)
    assert meta["step"] == 3 and np.isfinite(restored.params["w"]).all()


def test_skip_nonfinite_leaves_params_untouched_and_counts():
    opt = training.make_optimizer("adam", 0.1)
    step = training.make_train_step(nan_on_flag_loss, opt, skip_nonfinite=True)
    state = training.init_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    state, _ = step(state, {"target": jnp.ones(2), "poison": jnp.array(False)})
    before = np.asarray(state.params["w"])
    state, m = step(state, {"target": jnp.ones(2), "poison": jnp.array(True)})
    np.testing.assert_array_equal(state.params["w"], before)
    assert int(m["skipped"]) == 1 and not bool(m["finite"])
    state, m = step(state, {"target": jnp.ones(2), "poison": jnp.array(False)})
    assert int(m["skipped"]) == 1 and not np.array_equal(state.params["w"], before)


def test_checkpoints_keep_best_by_validation_loss(tmp_path):
    ckpt = Checkpoints(tmp_path, keep=2)
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0)]:
        ckpt.save(step, {"w": jnp.full(2, float(step))})
        ckpt.save_if_best(step, {"w": jnp.full(2, float(step))}, val)
    ckpt.close()
    again = Checkpoints(tmp_path)
    best, meta = again.restore_best({"w": jnp.zeros(2)})
    assert meta["step"] == 2 and meta["val_loss"] == 1.0 and float(best["w"][0]) == 2.0
    assert again.latest.all_steps() == [3, 4]  # the newest two periodic ones
    assert again.best_val == 1.0  # a reopened run remembers its best
    again.close()


def damage(step_folder, how):
    """Spoil a finished checkpoint as a disk or a careless hand might."""
    if how == "truncated array file":
        for f in (step_folder / "state" / "ocdbt.process_0" / "d").iterdir():
            f.write_bytes(b"")
    elif how == "deleted metadata":
        (step_folder / "meta" / "metadata").unlink()
    elif how == "deleted manifest":
        (step_folder / "state" / "manifest.ocdbt").unlink()


@pytest.mark.parametrize("how", ["truncated array file", "deleted metadata", "deleted manifest"])
def test_restore_falls_back_past_a_damaged_checkpoint_and_keeps_every_intact_one(tmp_path, how):
    w = lambda step: {"w": step + jax.random.normal(jax.random.key(0), (400,))}  # too big to inline in the index
    ckpt = Checkpoints(tmp_path, keep=2)
    for step in (10, 20):
        ckpt.save(step, w(step))
    ckpt.close()
    damage(tmp_path / "checkpoints" / "latest" / "20", how)

    notices = []
    ckpt = Checkpoints(tmp_path, keep=2, notify=notices.append)
    assert Checkpoints(tmp_path, read_only=True, notify=notices.append).restore_latest(w(0))[1]["step"] == 10
    assert len(notices) == 1 and notices[0].startswith("skipped checkpoint latest/20: it does not restore (")
    assert (tmp_path / "checkpoints" / "latest" / "20").exists()  # read-only: reported, left alone
    state, meta = ckpt.restore_latest(w(0), set_aside=True)  # a resumed run
    assert meta["step"] == 10
    np.testing.assert_array_equal(state["w"], w(10)["w"])
    assert notices[1].endswith("using step 10; moved to " + str(tmp_path / "checkpoints" / "corrupt" / "latest-20"))
    assert ckpt.steps() == [10] and (tmp_path / "checkpoints" / "corrupt" / "latest-20" / "state").exists()
    # The resumed run saves step 20 again (no clash with the damaged one), then 30: orbax keeps two,
    # dropping step 10 only once the new ones are complete.
    ckpt.save(20, w(20))
    ckpt.save(30, w(30))
    ckpt.close()
    again = Checkpoints(tmp_path)
    assert again.steps() == [20, 30] and again.restore_latest(w(0))[1]["step"] == 30
    again.close()


def test_no_checkpoint_that_restores_is_an_error_and_nothing_is_moved(tmp_path):
    like = {"w": jax.random.normal(jax.random.key(0), (400,))}
    ckpt = Checkpoints(tmp_path)
    ckpt.save(5, like)
    ckpt.close()
    damage(tmp_path / "checkpoints" / "latest" / "5", "truncated array file")
    ckpt = Checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*latest restores; the newest, step 5: OUT_OF_RANGE"):
        ckpt.restore_latest(like, set_aside=True)
    with pytest.raises(CheckpointError, match="step 5"):  # not shaped like the checkpoints: nothing is damaged
        ckpt.restore_latest({"w": jnp.ones(4), "b": jnp.ones(1)}, set_aside=True)
    assert ckpt.steps() == [5] and not (tmp_path / "checkpoints" / "corrupt").exists()
    ckpt.close()


def test_an_unreadable_best_checkpoint_is_not_best_and_is_set_aside_before_a_save_of_its_step(tmp_path):
    ckpt = Checkpoints(tmp_path)
    ckpt.save_if_best(6, {"w": jnp.ones(3)}, 2.0)
    ckpt.close()
    damage(tmp_path / "checkpoints" / "best" / "6", "deleted metadata")
    notices = []
    ckpt = Checkpoints(tmp_path, notify=notices.append)  # used to fail here, reading its metadata
    assert ckpt.best_val == float("inf")
    assert ckpt.save_if_best(6, {"w": jnp.full(3, 2.0)}, 2.5)  # the resumed run reaches step 6 again
    ckpt.close()
    assert notices == [f"checkpoint best/6 moved to {tmp_path / 'checkpoints' / 'corrupt' / 'best-6'} "
                       "to make room for a new save of step 6"]
    state, meta = Checkpoints(tmp_path).restore_best({"w": jnp.zeros(3)})
    assert meta["val_loss"] == 2.5 and float(state["w"][0]) == 2.0


def test_a_better_best_before_the_old_best_step_is_saved_and_the_old_one_kept(tmp_path):
    """A resumed run that went back before the best checkpoint's step (its latest did not restore) and
    then does better: orbax writes a step only past its newest, so the old best (intact, superseded)
    is set aside, never deleted; it used to be the new one that was silently not written."""
    ckpt = Checkpoints(tmp_path)
    ckpt.save_if_best(40, {"w": jnp.ones(3)}, 2.0)
    ckpt.close()
    notices = []
    ckpt = Checkpoints(tmp_path, notify=notices.append)
    assert ckpt.save_if_best(30, {"w": jnp.zeros(3)}, 1.5)
    ckpt.close()
    assert notices == [f"checkpoint best/40 moved to {tmp_path / 'checkpoints' / 'corrupt' / 'best-40'} "
                       "to make room for a new save of step 30"]
    state, meta = Checkpoints(tmp_path, read_only=True).restore_best({"w": jnp.ones(3)})
    assert meta == {"step": 30, "val_loss": 1.5} and float(state["w"][0]) == 0.0
    assert (tmp_path / "checkpoints" / "corrupt" / "best-40" / "state").exists()
    with pytest.raises(CheckpointError, match="step 50: orbax declined to write it"):  # never a silent no-op
        Checkpoints(tmp_path, read_only=True).save(50, {"w": jnp.ones(3)})


# A run killed with SIGKILL and resumed: tests/test_faults.py.


def test_data_parallel_over_four_cpu_devices_equals_one_device():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jaxrnn import training
        from jaxrnn.programs.char_lm import CharLM
        assert len(jax.devices()) == 4
        lm = CharLM(vocab_size=11, cell="lstm", hidden_size=8, num_layers=2)
        chunks = np.asarray(jax.random.randint(jax.random.key(1), (5, 8, 13), 0, 11))
        def run(devices):
            mesh, shard, replicate = training.data_parallel(devices)
            opt = training.make_optimizer("adam", 1e-2, clip_norm=1.0)
            state = replicate(training.init_state(lm.init(jax.random.key(0)), opt, jax.random.key(2),
                                                  lm.initial_state(8)))
            step = training.make_train_step(lm.loss_fn(), opt)
            losses = []
            for c in chunks:
                state, m = step(state, shard(jnp.asarray(c)))
                losses.append(float(m["loss"]))
            return losses, state.params
        l4, p4 = run(jax.devices())
        l1, p1 = run(jax.devices()[:1])
        np.testing.assert_allclose(l4, l1, rtol=1e-5)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p4, p1)
        print("OK", l4)
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


def test_runlog_jsonl_and_tensorboard(tmp_path):
    plain = RunLog(tmp_path / "plain")  # TensorBoard only when asked
    plain.close()
    assert not plain.has_tensorboard and not (tmp_path / "plain" / "tensorboard").exists()
    log = RunLog(tmp_path, tensorboard=True)
    log.write(1, {"loss": np.float32(2.5), "finite": True})
    log.write(2, {"loss": float("nan")})
    log.write(1, {"loss": 2.0})  # a resumed run repeats step 1: the later line wins
    log.close()
    records = read_metrics(tmp_path)
    assert records[1]["loss"] == 2.0 and records[2]["loss"] == "nan"
    assert log.has_tensorboard  # tensorboardX is in the dev extra
    assert any((tmp_path / "tensorboard").iterdir())


def test_runlog_after_a_line_cut_short_by_a_crash_loses_nothing_more(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # killed mid-write
    log = RunLog(tmp_path)
    log.write(2, {"loss": 1.5})  # the resumed run logs step 2 again
    log.close()
    assert read_metrics(tmp_path) == {1: {"step": 1, "loss": 2.0}, 2: {"step": 2, "loss": 1.5}}


def test_finished_steps_lists_the_checkpoints_written_whole_without_waiting(tmp_path):
    """What a process that lost its peers names (char_lm.PeerLost): the steps on disk, not one orbax has
    started to write (it lists that one in all_steps at once, and writes it into a temporary folder)."""
    ckpt = Checkpoints(tmp_path)
    assert ckpt.finished_steps() == []
    ckpt.save(3, {"w": jnp.ones(2)})
    ckpt.wait()
    (tmp_path / "checkpoints" / "latest" / "6.orbax-checkpoint-tmp-1").mkdir()  # a write cut short
    assert ckpt.finished_steps() == [3]
    ckpt.close()

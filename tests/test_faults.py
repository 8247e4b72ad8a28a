"""Fault test: a char-LM run killed (SIGKILL) at random points N times in a row, resumed with
``--resume`` each time, ends with exactly the parameters of an uninterrupted run.

The kills come from a seeded RNG and are of two kinds: at a random training step, and inside a
checkpoint write (the test watches the checkpoint folders and, as soon as orbax's temporary
folder for a new checkpoint appears, stops the process, and kills it if the folder is still
there: no hook in the library). N = 2 in the default run, N = 20 with ``-m slow``.

Each start of the command costs a JAX import and its compilations; the runs share a persistent
compilation cache (``JAX_COMPILATION_CACHE_DIR``) in the test's folder, so only the first one
compiles. A cached executable is the very program a fresh compilation gives, so the numbers are
the same bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import textwrap

import jax
import numpy as np
import pytest

from jaxrnn.programs.char_lm import load_run
from jaxrnn.checkpoints import Checkpoints
from jaxrnn.programs.runlog import read_metrics

CHECKPOINT_EVERY = 4


def command(text, out, steps):
    return [sys.executable, "-m", "jaxrnn.programs.cli", "train", "char-lm", "--text", str(text), "--cell", "gru",
            "--hidden-size", "8", "--num-layers", "1", "--dropout", "0.1", "--seq-len", "8", "--batch-size", "4",
            "--steps", str(steps), "--checkpoint-every", str(CHECKPOINT_EVERY), "--eval-every", "6",
            "--val-batches", "2", "--sample-every", "0", "--quiet", "--out", str(out)]


def logged(out) -> int:
    """Lines in metrics.jsonl, one a step (a resumed run logs again the steps since its checkpoint)."""
    path = out / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def finished_checkpoints(out) -> list[int]:
    folder = out / "checkpoints" / "latest"
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit()) if folder.is_dir() else []


def writing_checkpoint(out) -> bool:
    """An unfinished orbax checkpoint (its temporary folder) in the run."""
    for kind in ("latest", "best"):
        folder = out / "checkpoints" / kind
        if folder.is_dir() and any("tmp" in name for name in os.listdir(folder)):
            return True
    return False


def kill_once(cmd, out, env, rng, mode) -> str:
    """Start the (resumed) run and SIGKILL it once it has saved a new checkpoint, at a point of the
    kind ``mode``: a random number of steps later, or inside its next checkpoint write. Returns
    the mode, or "finished" if the run ended first."""
    before = (finished_checkpoints(out) or [0])[-1]
    extra = rng.randint(1, 2 * CHECKPOINT_EVERY)  # "step": this many more lines in metrics.jsonl
    target = None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            if target is None:
                if (finished_checkpoints(out) or [0])[-1] > before:  # progress: a new checkpoint is complete
                    target = logged(out) + extra
            elif mode == "checkpoint write" and writing_checkpoint(out):
                proc.send_signal(signal.SIGSTOP)  # frozen, the write cannot finish between the look and the kill
                if writing_checkpoint(out):
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return mode
                proc.send_signal(signal.SIGCONT)  # it finished just before: kill inside the next one
            elif mode == "step" and logged(out) >= target:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return mode
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    return "finished"


def final_state(out, which="latest"):
    _, _, like = load_run(out)
    ckpt = Checkpoints(out, read_only=True)
    restored = ckpt.restore_latest(like) if which == "latest" else ckpt.restore_best(like)
    ckpt.close()
    return restored


def run_with_kills(tmp_path, kills: int, steps: int, seed: int):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 7)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    whole = tmp_path / "whole"
    subprocess.run(command(text, whole, steps), env=env, check=True, capture_output=True)

    killed, rng, hits = tmp_path / "killed", random.Random(seed), []
    for i in range(kills):  # the first two kills hit one of each kind, the others either
        mode = ("checkpoint write", "step")[i] if i < 2 else rng.choice(["step", "checkpoint write"])
        hits.append(kill_once(command(text, killed, steps) + ["--resume"], killed, env, rng, mode))
    last = subprocess.run(command(text, killed, steps) + ["--resume"], env=env, capture_output=True, text=True)
    assert last.returncode == 0, last.stderr[-3000:]
    assert last.stdout.startswith("resumed from step ")
    assert last.stdout.strip().splitlines()[-1].startswith("val_loss_nats=")
    assert hits.count("finished") == 0, f"the run ended before all {kills} kills: {hits}"
    # A killed write leaves no finished checkpoint that fails to restore: nothing was skipped or set aside.
    assert "skipped checkpoint" not in last.stderr and not (killed / "checkpoints" / "corrupt").exists()

    for which in ("latest", "best"):
        (expected, expected_meta), (got, got_meta) = final_state(whole, which), final_state(killed, which)
        assert got_meta["step"] == expected_meta["step"] and (which == "best" or got_meta["step"] == steps)
        # The whole train state, bit for bit: parameters, optimizer moments, carry, RNG key, step.
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, expected)
    a, b = read_metrics(whole), read_metrics(killed)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    np.testing.assert_array_equal([b[s]["loss"] for s in a], [a[s]["loss"] for s in a])
    return hits


def test_killed_and_resumed_twice_ends_as_an_uninterrupted_run(tmp_path):
    hits = run_with_kills(tmp_path, kills=2, steps=40, seed=0)
    assert hits == ["checkpoint write", "step"]


@pytest.mark.slow
def test_killed_and_resumed_twenty_times_ends_as_an_uninterrupted_run(tmp_path):
    hits = run_with_kills(tmp_path, kills=20, steps=320, seed=1)
    assert "step" in hits and "checkpoint write" in hits, hits


def test_failed_saves_raise_at_once_and_the_process_exits(tmp_path):
    """A save to a place that cannot be written raises there and then, in a few lines, and leaves
    no orbax thread behind to keep the process alive (it used to wait five minutes, logging)."""
    code = textwrap.dedent(f"""
        import pathlib, shutil, jax.numpy as jnp, jaxrnn
        from jaxrnn import streaming
        from jaxrnn.checkpoints import CheckpointError, Checkpoints
        root = pathlib.Path({str(tmp_path)!r})
        (root / "a-file").write_text("not a folder")
        try:
            streaming.save(root / "a-file" / "stream", streaming.start(jaxrnn.RNN(jaxrnn.gru(4)), 2))
        except NotADirectoryError as e:
            print("streaming.save:", e)
        import sys; print("--- Checkpoints", file=sys.stderr, flush=True)
        ckpt = Checkpoints(root / "run")
        shutil.rmtree(root / "run" / "checkpoints" / "latest")
        (root / "run" / "checkpoints" / "latest").write_text("no longer a folder")
        try:
            ckpt.save(1, {{"w": jnp.ones(3)}})
        except CheckpointError as e:
            print("Checkpoints.save:", e)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "streaming.save: [Errno 20] Not a directory" in result.stdout
    assert "Checkpoints.save: checkpoint step 1 could not be written to" in result.stdout
    # streaming.save writes synchronously: nothing but its error. (Checkpoints writes in orbax's
    # background threads, which may log the failure too; what counts there is the error and the exit.)
    before, _, _ = result.stderr.partition("--- Checkpoints")
    assert len(before.splitlines()) < 5, before[-3000:]

"""Multi-process data parallel on JAX's own runtime: ``jaxrnn train char-lm`` as several processes
on this machine (each with its own CPU device, a coordinator on localhost), against one process.

The 2-process run trains the losses of the 1-process run (to 1e-5: the gradient is summed over
the processes in another order), its checkpoints restore in one process (``--resume``) and that
run ends at the uninterrupted run's losses; flags that cannot make a run are one line and status
2. ``-m slow``: 2 processes against one process of 2 devices, bit for bit; 4 processes, resumed in
2 processes of 2 devices each; a 1-process run resumed in 2 processes.

Every process is a fresh interpreter (a JAX import and its compilations); the 1-process run goes
alongside the 2-process one. A persistent compilation cache shared by the runs saved nothing
measurable (18.4 s with it, 18.2 s without), so there is none.
"""

from __future__ import annotations

import os
import pathlib
import random
import socket
import subprocess
import sys
import time

import pytest

from jaxrnn.programs.cli import main as cli_main
from jaxrnn.programs.runlog import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 180  # seconds, per launch: a process waiting for another that died fails the test, not the suite


def write_text(tmp_path) -> pathlib.Path:
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog and then some more words appear here".split()
    path = tmp_path / "t.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(120)))
    return path


def command(text, out, steps) -> list[str]:
    return [sys.executable, "-m", "jaxrnn.programs.cli", "train", "char-lm", "--text", str(text), "--cell", "gru",
            "--hidden-size", "8", "--num-layers", "1", "--dropout", "0.1", "--seq-len", "8", "--batch-size", "4",
            "--steps", str(steps), "--eval-every", "3", "--checkpoint-every", "4", "--val-batches", "2",
            "--sample-every", "0", "--quiet", "--out", str(out)]


def environment(devices: int = 1) -> dict:
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # Nothing for jax.distributed.initialize() to detect (a CI job under SLURM, say): the processes join
    # only the runs the test makes, and the missing-coordinator case stays missing.
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR_"))} | {
        "XLA_FLAGS": flags.strip(), "PYTHONPATH": path}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(cmd, env, processes: int) -> list[subprocess.Popen]:
    """``cmd`` as one process, or as ``processes`` processes of one run (a coordinator on localhost)."""
    if processes == 1:
        return [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    address = f"localhost:{free_port()}"
    return [subprocess.Popen(cmd + ["--coordinator", address, "--num-processes", str(processes), "--process-id",
                                    str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(processes)]


def finish(procs) -> list[tuple[int, str, str]]:
    """(status, stdout, stderr) of each process, once all have ended."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def run(cmd, env, processes: int = 1) -> list[tuple[int, str, str]]:
    results = finish(start(cmd, env, processes))
    for i, (status, _, err) in enumerate(results):
        assert status == 0, f"process {i} of {processes}: status {status}\n{err[-3000:]}"
    return results


def losses(out) -> dict[int, float]:
    return {step: record["loss"] for step, record in read_metrics(out).items()}


def assert_close(got: dict, want: dict, steps) -> None:
    for step in steps:
        assert abs(got[step] - want[step]) <= 1e-5, (step, got[step], want[step])


def test_two_processes_train_the_single_process_losses_and_resume_in_one(tmp_path, capsys):
    text, env = write_text(tmp_path), environment()
    whole, split = tmp_path / "whole", tmp_path / "split"
    # The uninterrupted 1-process run, alongside the 2-process run of its first 4 steps (one checkpoint, at 4).
    single = start(command(text, whole, 6), env, 1)
    pair = run(command(text, split, 4), env, processes=2)
    run_single = finish(single)
    assert run_single[0][0] == 0, run_single[0][2][-3000:]
    want = losses(whole)
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    assert_close(losses(split), want, range(1, 5))
    # Process 0 alone writes the log, the config and the summary (gloo, the CPU collectives, says on stdout
    # that each process has met the others); every process wrote its checkpoint shards.
    printed = [[line for line in out.splitlines() if not line.startswith("[Gloo] ")] for _, out, _ in pair]
    assert len(printed[0]) == 1 and printed[0][0].startswith("val_loss_nats=") and printed[1] == [], printed
    assert (split / "config.json").is_file() and sorted(os.listdir(split / "checkpoints" / "latest")) == ["4"]
    state = split / "checkpoints" / "latest" / "4" / "state"
    assert (state / "ocdbt.process_0").is_dir() and (state / "array_metadatas" / "process_1").is_file()
    # Validation: process 0's value, the 1-process run's at step 3 (the same parameters to 1e-5).
    assert abs(read_metrics(split)[3]["val_loss"] - read_metrics(whole)[3]["val_loss"]) <= 1e-5
    # The 2-process checkpoints (the best: step 4) restore here too, onto this process's device.
    cli_main(["sample", "--out", str(split), "--prime", "the", "--length", "20"])
    assert capsys.readouterr().out.startswith("the")
    # The 2-process checkpoint (its carry in two halves) restores in one process and goes on to the same losses.
    (_, out, _), = run(command(text, split, 6) + ["--resume"], env)
    assert out.startswith(f"resumed from step 4 ({split / 'checkpoints' / 'latest'})")
    assert_close(losses(split), want, range(5, 7))
    assert abs(read_metrics(split)[6]["val_loss"] - read_metrics(whole)[6]["val_loss"]) <= 1e-5


def test_flags_that_cannot_make_a_run_are_one_line_and_status_2(tmp_path, capsys):
    text, env = write_text(tmp_path), environment()
    cases = [(["--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"],
              "--process-id 2: expected 0 to 1, one number per process of --num-processes 2"),
             (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
              "--coordinator localhost: expected HOST:PORT")]
    for flags, error in cases:  # refused before jax.distributed.initialize(): in this process
        with pytest.raises(SystemExit) as exit_:
            cli_main(command(text, tmp_path / "run", 2)[3:] + flags)
        err = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(
            f"jaxrnn train char-lm: error: {error}"), err
    # No coordinator given and none in the environment: what jax.distributed.initialize() reports, in one line.
    (status, out, err), = finish(start(command(text, tmp_path / "run", 2) + ["--num-processes", "2", "--process-id",
                                                                              "0"], env, 1))
    assert status == 2 and err.splitlines() == [
        "jaxrnn train char-lm: error: cannot join a multi-process run: --coordinator HOST:PORT is not given and not "
        "found in the environment. Give --coordinator, --num-processes and --process-id, or start the processes "
        "under a cluster manager that jax.distributed.initialize() detects (SLURM's srun, Open MPI's mpirun)"]
    # A batch that does not split over the run's devices: every process says so, nothing is written.
    for status, _, err in finish(start(command(text, tmp_path / "odd", 2) + ["--batch-size", "3"], env, 2)):
        assert status == 2 and err.splitlines()[-1] == (
            "jaxrnn train char-lm: error: --batch-size 3: a multi-process run splits the batch's rows over its 2 "
            "devices (2 processes); give a multiple of 2"), err
    assert not (tmp_path / "odd").exists()


@pytest.mark.slow
def test_four_processes_resume_in_two_and_one_resumes_in_two(tmp_path):
    text = write_text(tmp_path)
    env1, env2 = environment(), environment(devices=2)
    whole, wide, pair, four, one = (tmp_path / name for name in ("whole", "wide", "pair", "four", "one"))
    run(command(text, whole, 6), env1)
    want = losses(whole)
    # Two processes of one device compute what one process of two devices does (data_parallel() within the
    # process), bit for bit: a sum of two is the same in either order. (Four processes are not bit for bit
    # one process of four devices: gloo sums four in another order than XLA does within a process.)
    run(command(text, wide, 6), env2)
    run(command(text, pair, 6), env1, processes=2)
    assert losses(pair) == losses(wide)
    # 4 processes of 1 device, then 2 processes of 2 devices each (the carry's 4 rows over 4 devices both times).
    run(command(text, four, 4), env1, processes=4)
    run(command(text, four, 6) + ["--resume"], env2, processes=2)
    assert_close(losses(four), want, range(1, 7))
    # A 1-process checkpoint (its carry whole) resumed in 2 processes.
    run(command(text, one, 4), env1)
    run(command(text, one, 6) + ["--resume"], env1, processes=2)
    assert_close(losses(one), want, range(1, 7))


def test_a_lost_process_is_one_line_status_1_and_leaves_at_once(monkeypatch, capsys):
    """What a process does once it has lost another (the whole story, two processes and a kill, is the slow
    test below): one line, status 1, and os._exit, not JAX's distributed shutdown, which would wait for the
    lost process and then abort."""
    from jaxrnn.programs import char_lm, cli

    def leave(code):
        raise SystemExit(f"os._exit({code})")

    monkeypatch.setattr(cli.os, "_exit", leave)

    def lose(args):
        raise char_lm.PeerLost("process 0 of 2: a step failed (reset by peer), most likely because another "
                               "process of the run stopped. No checkpoint had been saved yet.")

    with pytest.raises(SystemExit, match=r"os\._exit\(1\)"):
        cli.run_command("jaxrnn train char-lm", lose, None)
    assert capsys.readouterr().err.splitlines() == [
        "jaxrnn train char-lm: error: process 0 of 2: a step failed (reset by peer), most likely because another "
        "process of the run stopped. No checkpoint had been saved yet."]


@pytest.mark.slow
def test_a_lost_process_stops_the_others_with_one_line_and_whole_checkpoints(tmp_path):
    """Process 1 killed in the middle of training, after a checkpoint: process 0 says so in one line, status 1,
    at once (not JAX's abort a minute and a half later), naming the last whole checkpoint, from which the run
    resumes. Checkpoints far apart and no evaluation: the kill lands in a step's collective, not in a
    checkpoint's barrier (where JAX's own heartbeat timeout still decides)."""
    text, env = write_text(tmp_path), environment()
    out = tmp_path / "run"
    flags = ["--checkpoint-every", "300", "--eval-every", "100000"]  # the later flags win
    procs = start(command(text, out, 100_000) + flags, env, 2)
    latest = out / "checkpoints" / "latest"
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())):
            assert time.monotonic() < deadline and procs[0].poll() is None, "no checkpoint was written"
            time.sleep(0.2)
        time.sleep(0.5)  # on into the steps after the checkpoint
        procs[1].kill()
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert procs[0].returncode == 1 and time.monotonic() - killed < 30, (procs[0].returncode, err[-2000:])
    (line,) = err.splitlines()
    assert line.startswith("jaxrnn train char-lm: error: process 0 of 2: a step failed (") and (
        "most likely because another process of the run stopped. The last whole checkpoint is step " in line
        and "rerun the same command with --resume" in line), line
    step = int(line.split("The last whole checkpoint is step ")[1].split()[0])
    (_, printed, _), = run(command(text, out, step + 2) + ["--resume"], env)
    assert printed.startswith(f"resumed from step {step} ")

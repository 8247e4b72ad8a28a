"""Corpora and the char-LM commands (tiny sizes)."""

import argparse
import hashlib
import io
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import training
from jaxrnn.programs import char_lm, cli, data
from jaxrnn.programs.char_lm import CharLM
from jaxrnn.checkpoints import Checkpoints
from jaxrnn.programs.cli import main as cli_main

FAKE = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50


@pytest.fixture
def offline(monkeypatch):
    """No network: any download attempt fails as it would on an offline machine."""
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(data.urllib.request, "urlopen", refuse)


def test_pre_placed_file_with_right_checksum_is_used_without_download(tmp_path, monkeypatch, offline):
    (tmp_path / "tinyshakespeare.txt").write_bytes(FAKE)
    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256", hashlib.sha256(FAKE).hexdigest())
    corpus = data.load_corpus("tinyshakespeare", folder=tmp_path)
    assert corpus.text == FAKE.decode() and corpus.vocab == "".join(sorted(set(FAKE.decode())))


def test_env_var_names_the_data_folder(tmp_path, monkeypatch, offline):
    (tmp_path / "tinyshakespeare.txt").write_bytes(FAKE)
    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256", hashlib.sha256(FAKE).hexdigest())
    monkeypatch.setenv("JAXRNN_DATA", str(tmp_path))
    assert data.load_corpus("tinyshakespeare").text.startswith("First Citizen")


def test_wrong_checksum_is_refused(tmp_path, offline):
    (tmp_path / "tinyshakespeare.txt").write_bytes(b"not shakespeare")
    with pytest.raises(data.CorpusError, match="SHA-256"):
        data.load_corpus("tinyshakespeare", folder=tmp_path)


def test_download_is_checked_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "TINYSHAKESPEARE_SHA256", hashlib.sha256(FAKE).hexdigest())
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(FAKE))
    assert data.load_corpus("tinyshakespeare", folder=tmp_path / "cache").text == FAKE.decode()
    assert (tmp_path / "cache" / "tinyshakespeare.txt").read_bytes() == FAKE
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"tampered"))
    with pytest.raises(data.CorpusError, match="does not match"):
        data.load_corpus("tinyshakespeare", folder=tmp_path / "other")
    assert not (tmp_path / "other" / "tinyshakespeare.txt").exists()


def test_offline_without_corpus_names_the_options(tmp_path, offline):
    with pytest.raises(data.CorpusError) as err:
        data.load_corpus("tinyshakespeare", folder=tmp_path)
    for option in ("--text PATH", "--corpus python-stdlib", "--data-dir", "$JAXRNN_DATA"):
        assert option in str(err.value)


def test_offline_corpora():
    stdlib = data.load_corpus("python-stdlib", max_chars=50_000)
    assert len(stdlib.text) == 50_000 and data.DOCUMENT_SEPARATOR in stdlib.text
    train, val = stdlib.split(0.1)
    assert len(train) == 45_000 and len(val) == 5_000
    with pytest.raises(ValueError, match="exactly one"):
        data.load_corpus("python-stdlib", text_path="x.txt")


def test_python_docs_corpus_is_one_document_per_help_topic():
    docs = data.load_corpus("python-docs", max_chars=60_000)
    assert len(docs.text) == 60_000 and data.DOCUMENT_SEPARATOR in docs.text
    from pydoc_data.topics import topics

    assert docs.text.startswith(topics[min(topics)][:100])


def test_random_windows_are_a_function_of_seed_and_step_and_stay_in_the_text():
    tokens = np.arange(50)
    a = training.random_windows(tokens, 64, 9, seed=3, step=7)
    assert a.shape == (64, 10) and (np.diff(a, axis=1) == 1).all() and a.min() >= 0 and a.max() <= 49
    np.testing.assert_array_equal(a, training.random_windows(tokens, 64, 9, seed=3, step=7))
    assert not np.array_equal(a, training.random_windows(tokens, 64, 9, seed=3, step=8))
    assert not np.array_equal(a, training.random_windows(tokens, 64, 9, seed=4, step=7))
    assert a[:, 0].max() == 40  # every offset can be drawn, the last one included
    with pytest.raises(ValueError, match="too few for windows of seq_len \\+ 1 = 51"):
        training.random_windows(tokens, 2, 50, seed=0, step=0)


def test_random_window_batches_train_on_other_batches_than_the_streams(tmp_path, capsys, offline):
    """--batches random is taken (its resumption is random_windows' being a function of seed and step)."""
    text = tmp_path / "t.txt"
    text.write_bytes(FAKE)
    run = lambda out, batches: cli_main([
        "train", "char-lm", "--text", str(text), "--cell", "gru", "--hidden-size", "8", "--num-layers", "1",
        "--embedding", "4", "--seq-len", "8", "--batch-size", "4", "--batches", batches, "--steps", "1",
        "--sample-every", "0", "--quiet", "--out", str(out)])
    run(tmp_path / "random", "random")
    run(tmp_path / "stream", "stream")
    capsys.readouterr()
    loss = lambda out: json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert loss(tmp_path / "random") != loss(tmp_path / "stream")
    assert json.loads((tmp_path / "random" / "config.json").read_text())["args"]["batches"] == "random"


def test_sampling_is_deterministic_per_key_and_starts_after_prime():
    lm = CharLM(vocab_size=5, cell="lstm", hidden_size=8, num_layers=1)
    params = lm.init(jax.random.key(0))
    a = lm.sample(params, jnp.array([1, 2]), 20, 1.0, jax.random.key(3))
    b = lm.sample(params, jnp.array([1, 2]), 20, 1.0, jax.random.key(3))
    assert a.shape == (20,) and np.array_equal(a, b) and int(a.max()) < 5
    cold = lm.sample(params, jnp.array([1, 2]), 20, 1e-4, jax.random.key(4))  # ~argmax
    assert np.array_equal(cold, lm.sample(params, jnp.array([1, 2]), 20, 1e-4, jax.random.key(5)))


def test_train_and_sample_commands(tmp_path, capsys, offline):
    text = tmp_path / "t.txt"
    text.write_bytes(FAKE)
    out = tmp_path / "run"
    cli_main(["train", "char-lm", "--text", str(text), "--cell", "vanilla", "--hidden-size", "16",
              "--num-layers", "2", "--dropout", "0.1", "--embedding", "8", "--seq-len", "16", "--batch-size", "4",
              "--steps", "40", "--eval-every", "20", "--checkpoint-every", "20", "--sample-every", "20",
              "--profile-every", "20", "--out", str(out), "--quiet", "--resume"])
    printed = capsys.readouterr()
    assert printed.err == f"jaxrnn train char-lm: --resume: no checkpoint in {out / 'checkpoints' / 'latest'} yet; " \
                         "starting from step 0\n"
    printed = printed.out.strip().splitlines()
    assert re.fullmatch(r"val_loss_nats=\d+\.\d{4} val_bpc=\d+\.\d{4}", printed[-1])
    records = [r for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 40 and '"val_bpc"' in records[19] and '"grad_profile_log10"' in records[39]
    assert (out / "checkpoints" / "best").exists() and (out / "config.json").exists()
    assert exit_status(["train", "char-lm", "--text", str(text), "--out", str(out), "--steps", "1"], capsys) == (
        2, [f"jaxrnn train char-lm: error: --out {out} already holds checkpoints; pass --resume to continue it, "
            "or give a new --out"])
    # A resumed run keeps its model: a flag that changes it is refused, naming it, saved and given values.
    status, err = exit_status(["train", "char-lm", "--out", str(out), "--resume", "--hidden-size", "32",
                               "--cell", "vanilla", "--lr", "0.01", "--steps", "60"], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith(
        "jaxrnn train char-lm: error: --resume: --hidden-size 32 differs from the run's 16; "
        "--lr 0.01 differs from the run's 0.002. A resumed run keeps its model and data settings")
    # A damaged latest checkpoint: the run goes back to the one before, says so, and sets it aside.
    for f in (out / "checkpoints" / "latest" / "40" / "state" / "ocdbt.process_0" / "d").iterdir():
        f.write_bytes(b"")
    cli_main(["train", "char-lm", "--out", str(out), "--resume", "--steps", "40", "--quiet", "--sample-every", "0"])
    printed = capsys.readouterr()  # the flags left out (the text among them) come from the run's config
    assert printed.err.startswith("jaxrnn train char-lm: skipped checkpoint latest/40: it does not restore "
                                  "(OUT_OF_RANGE: ") and len(printed.err.splitlines()) == 1
    assert printed.err.rstrip().endswith(f"using step 20; moved to {out / 'checkpoints' / 'corrupt' / 'latest-40'}")
    assert printed.out.startswith("resumed from step 20 ")
    assert sorted(p.name for p in (out / "checkpoints" / "latest").iterdir()) == ["20", "40"]

    cli_main(["sample", "--out", str(out), "--prime", "First", "--length", "30", "--temperature", "0.5"])
    sample = capsys.readouterr().out
    assert sample.startswith("First") and len(sample.rstrip("\n")) >= 35
    status, err = exit_status(["sample", "--out", str(out), "--prime", "@@@"], capsys)
    assert status == 2 and err == [
        "jaxrnn sample: error: --prime: text: characters ['@'] are not in the corpus vocabulary"]


def exit_status(argv, capsys) -> tuple[int, list[str]]:
    """The exit status of a jaxrnn command that fails, and the lines it wrote on stderr."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    return exit_.value.code, capsys.readouterr().err.splitlines()


USER_ERRORS = [  # argv ({t}: a folder with the test's files), the error's text (a regex)
    (["train", "char-lm", "--text", "{t}/short.txt"],
     r"--text .*short.txt: 12 characters are too few for --batch-size 32 and --seq-len 64: need at least 2312 "),
    (["train", "char-lm", "--text", "{t}/good.txt", "--hidden-size", "0"],
     r"argument --hidden-size: expected a positive int, got '0'"),
    (["train", "char-lm", "--text", "{t}/good.txt", "--steps", "-3"], r"argument --steps: expected a positive int"),
    (["train", "char-lm", "--text", "{t}/good.txt", "--lr", "nan"], r"argument --lr: expected a finite number > 0"),
    (["train", "char-lm", "--text", "{t}/good.txt", "--dropout", "1"], r"argument --dropout: .* in \[0, 1\), got '1'"),
    (["train", "char-lm", "--text", "{t}/random.bin"], r"--text: .*random.bin is not a UTF-8 text file: invalid UTF-8"),
    (["train", "char-lm", "--text", "{t}/zeros.txt"], r"zeros.txt does not look like text: 3000 of its 3000 characters"),
    (["train", "char-lm", "--text", "{t}/missing.txt"], r"--text: .*missing.txt is not a file"),
    (["train", "char-lm", "--text", "{t}/good.txt", "--prime", "@@@", "--hidden-size", "8", "--num-layers", "1",
      "--steps", "2", "--sample-every", "1", "--quiet"],  # refused before training, not at the first sample
     r"--prime: text: characters \['@'\] are not in the corpus vocabulary"),
    (["train", "char-lm", "--text", "{t}/good.txt", "--out", "{t}/good.txt"],
     r"--out .*good.txt: exists and is not a folder"),
    (["train", "char-lm", "--text", "{t}/good.txt", "--hiden-size", "8"], r"unrecognized arguments: --hiden-size"),
    (["sample", "--out", "{t}/nowhere"], r"--out .*nowhere: no such folder"),
    (["sample", "--out", "{t}"], r"--out .*: not a char-lm run folder \(no config.json\)"),
    (["sample", "--out", "{t}/untrained"], r"--out .*untrained: no checkpoint yet in .*checkpoints"),
    (["sample", "--out", "{t}/untrained", "--temperature", "0"],
     r"argument --temperature: expected a finite number > 0"),
    (["gradient-flow", "--cells", "lstm"], r"argument --cells: invalid choice: 'lstm'"),
    (["gradient-flow", "--train-steps", "150"], r"argument --train-steps: expected .* multiple of 100, got '150'"),
    (["speed", "--block", "1"], r"argument --block: expected an int >= 2, got '1'"),
    (["long-range", "--lengths", "0"], r"argument --lengths: expected a positive int, got '0'"),
    (["long-range", "--out", "{t}/good.txt/results"], r"Not a directory: '.*good.txt/results'"),
    (["gradient-flow", "--out", "{t}/good.txt/results"], r"Not a directory: '.*good.txt/results'"),
]


@pytest.mark.parametrize("argv,error", USER_ERRORS, ids=[re.sub(r"[^\w -]", "", e)[:40] for _, e in USER_ERRORS])
def test_user_errors_are_one_line_and_status_2(tmp_path, capsys, argv, error):
    (tmp_path / "short.txt").write_text("hello world\n")
    (tmp_path / "good.txt").write_bytes(FAKE)
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (tmp_path / "zeros.txt").write_bytes(bytes(3000))
    (tmp_path / "untrained").mkdir()  # a run folder with its config and no checkpoint yet
    (tmp_path / "untrained" / "config.json").write_text(json.dumps(
        {"args": char_lm.RUN_SETTINGS | {"steps": 10}, "vocab": "abc", "corpus": "t.txt"}))
    argv = [a.format(t=tmp_path) for a in argv]
    argv += ["--out", str(tmp_path / "run")] if argv[:2] == ["train", "char-lm"] and "--out" not in argv else []
    status, err = exit_status(argv, capsys)
    command = " ".join(argv[:2] if argv[0] == "train" else argv[:1])
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"jaxrnn {command}: error: ") and re.search(error, err[0]), err[0]


def test_help_shows_every_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside a default
    parsers = cli.build_parser().commands
    assert sorted(parsers) == ["gradient-flow", "long-range", "sample", "speed", "train char-lm"]
    for name, p in parsers.items():
        formatter = p._get_formatter()
        for action in p._actions:
            if action.option_strings and action.nargs != 0 and action.default not in (None, "", argparse.SUPPRESS):
                assert f"(default: {action.default})" in formatter._format_action(action), (name, action.dest)
    train = parsers["train char-lm"]
    for action in train._actions:  # the run settings: None on the command line, their defaults in --help
        if action.dest in char_lm.RUN_SETTINGS:
            default = char_lm.RUN_SETTINGS[action.dest]
            assert f"(default: {default})" in train._get_formatter()._format_action(action), action.dest


def test_diverging_run_is_one_line_status_1_and_keeps_its_checkpoint(tmp_path, capsys):
    text, out = tmp_path / "t.txt", tmp_path / "run"
    text.write_bytes(FAKE)
    status, err = exit_status(["train", "char-lm", "--text", str(text), "--hidden-size", "8", "--num-layers", "1",
                               "--seq-len", "8", "--batch-size", "4", "--optimizer", "sgd", "--lr", "1e38",
                               "--clip", "0", "--checkpoint-every", "1", "--out", str(out), "--quiet"], capsys)
    assert status == 1 and len(err) == 1, err
    assert re.fullmatch(r"jaxrnn train char-lm: error: non-finite loss or gradient at step 2: loss=(inf|nan), .* "
                        rf"The last, step 1 in {re.escape(str(out / 'checkpoints' / 'latest'))}, is kept\.", err[0])
    _, _, like = char_lm.load_run(out)
    assert Checkpoints(out, read_only=True).restore_latest(like)[1]["step"] == 1


def test_sanity_mode_overfits_a_tiny_slice(tmp_path, capsys):
    cli_main(["train", "char-lm", "--corpus", "python-stdlib", "--max-chars", "20000", "--sanity",
              "--cell", "gru", "--hidden-size", "64", "--num-layers", "1", "--seq-len", "32", "--batch-size", "8",
              "--steps", "250", "--lr", "1e-2", "--eval-every", "250", "--sample-every", "0",
              "--out", str(tmp_path / "sanity"), "--quiet"])
    printed = capsys.readouterr().out
    assert re.search(r"sanity: loss \d+\.\d+ -> \d+\.\d+: PASS", printed), printed[-500:]


def test_reference_comparison_trains_both_sides_on_the_same_split(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from jaxrnn.programs import charlm_reference

    seen = {"jaxrnn": [], "torch": []}  # every chunk each side trains or evaluates on
    side = "jaxrnn"
    real_training, real_validation = char_lm.training_batches, char_lm.validation_chunks

    def training_batches(*args):
        epoch, batch_at = real_training(*args)
        return epoch, lambda step: seen[side].append(batch_at(step)[0]) or batch_at(step)

    def validation_chunks(*args):
        seen[side].append(real_validation(*args))
        return seen[side][-1]

    real_torch = charlm_reference.train_torch

    def train_torch(*args, **kwargs):
        nonlocal side
        side = "torch"
        return real_torch(*args, **kwargs)

    monkeypatch.setattr(char_lm, "training_batches", training_batches)
    monkeypatch.setattr(char_lm, "validation_chunks", validation_chunks)
    monkeypatch.setattr(charlm_reference, "train_torch", train_torch)
    saved = charlm_reference.main(["--texts", "python-docs", "--cells", "gru", "--layers", "1", "--hidden-size", "8",
                                   "--embedding", "4", "--seq-len", "8", "--batch-size", "4", "--steps", "3",
                                   "--eval-every", "3", "--max-chars", "3000", "--out", str(tmp_path)])
    assert len(seen["jaxrnn"]) == len(seen["torch"]) == 4  # the validation chunks, then 3 batches
    for a, b in zip(seen["jaxrnn"], seen["torch"], strict=True):
        np.testing.assert_array_equal(a, b)
    (row,) = saved["results"]
    for side in ("jaxrnn", "torch"):  # untrained on 104 characters: about log2(104) = 6.7 bits
        assert 5.5 < row[side]["val_bpc"] < 8 and row[side]["s_per_step"] > 0, row
    assert saved["recipe"]["embedding"] == 4 and saved["recipe"]["batches"] == char_lm.RUN_SETTINGS["batches"]
    printed = capsys.readouterr().out
    assert "| python-docs | gru | 1 |" in printed and (tmp_path / "results.md").exists()


def test_reference_comparison_over_seeds_gives_each_side_each_seed_and_the_means(tmp_path, capsys, monkeypatch):
    from jaxrnn.programs import charlm_reference

    calls = []

    def fake(side, bpc):
        def train(*args, **kwargs):
            seed = kwargs["recipe"]["seed"] if side == "jaxrnn" else kwargs["seed"]
            calls.append((side, seed))
            return {"val_bpc": bpc + seed / 100, "val_loss_nats": 0.0, "s_per_step": 0.01, "wall_s": 1.0}
        return train

    monkeypatch.setattr(charlm_reference, "train_jaxrnn", fake("jaxrnn", 2.0))
    monkeypatch.setattr(charlm_reference, "train_torch", fake("torch", 2.5))
    saved = charlm_reference.main(["--texts", "python-docs", "--cells", "gru", "--layers", "1", "--seeds", "1", "3",
                                   "--max-chars", "3000", "--out", str(tmp_path)])
    assert calls == [("jaxrnn", 1), ("torch", 1), ("jaxrnn", 3), ("torch", 3)]
    assert [r["seed"] for r in saved["results"]] == [1, 3]
    printed = capsys.readouterr().out
    assert "| python-docs | gru | 1 | 3 | 2.030 | 2.530 | 0.802 |" in printed, printed
    assert "| python-docs | gru | 1 | 2 | 2.020 (2.010-2.030) | 2.520 (2.510-2.530) | 0.802 |" in printed, printed
    for flags, error in ((["--seed", "1", "--seeds", "1", "2"], "--seed and --seeds: give one of them"),
                         (["--seeds", "1", "1"], "--seeds 1 1: each seed once")):
        with pytest.raises(SystemExit) as exit_info:
            charlm_reference.main(flags + ["--out", str(tmp_path / "refused")])
        assert exit_info.value.code == 2 and capsys.readouterr().err.strip().endswith(f"error: {error}")
    assert saved["recipe"]["seed"] is None and saved["seeds"] == [1, 3]

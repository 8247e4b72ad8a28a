"""Corpora and the char-LM commands (tiny sizes)."""

import hashlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import data
from jaxrnn.charlm import CharLM
from jaxrnn.cli import main as cli_main

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
              "--profile-every", "20", "--out", str(out), "--quiet"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"val_loss_nats=\d+\.\d{4} val_bpc=\d+\.\d{4}", printed[-1])
    records = [r for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 40 and '"val_bpc"' in records[19] and '"grad_profile_log10"' in records[39]
    assert (out / "checkpoints" / "best").exists() and (out / "config.json").exists()
    with pytest.raises(SystemExit, match="already holds checkpoints"):
        cli_main(["train", "char-lm", "--text", str(text), "--out", str(out), "--steps", "1"])
    cli_main(["sample", "--out", str(out), "--prime", "First", "--length", "30", "--temperature", "0.5"])
    sample = capsys.readouterr().out
    assert sample.startswith("First") and len(sample.rstrip("\n")) >= 35
    with pytest.raises(SystemExit, match="--prime"):
        cli_main(["sample", "--out", str(out), "--prime", "@@@"])


def test_sanity_mode_overfits_a_tiny_slice(tmp_path, capsys):
    cli_main(["train", "char-lm", "--corpus", "python-stdlib", "--max-chars", "20000", "--sanity",
              "--cell", "gru", "--hidden-size", "64", "--num-layers", "1", "--seq-len", "32", "--batch-size", "8",
              "--steps", "250", "--lr", "1e-2", "--eval-every", "250", "--sample-every", "0",
              "--out", str(tmp_path / "sanity"), "--quiet"])
    printed = capsys.readouterr().out
    assert re.search(r"sanity: loss \d+\.\d+ -> \d+\.\d+: PASS", printed), printed[-500:]

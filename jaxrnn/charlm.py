r"""A character-level language model, and the ``jaxrnn train char-lm`` / ``jaxrnn sample`` commands.

The model reads characters (one-hot or embedded), runs a stacked
:class:`jaxrnn.RNN`, and predicts the next character with a linear softmax
layer. Training follows char-rnn: the corpus is cut into ``batch_size``
parallel streams read in consecutive chunks of ``seq_len``, the state carried
from chunk to chunk (truncated BPTT) and reset at document boundaries and at
the start of every epoch.

.. math::

    \text{loss} = -\frac{1}{BT} \sum_{b,t} \log p(x_{b,t+1} \mid x_{b, \le t}), \qquad
    \text{bits per character} = \text{loss} / \ln 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn import diagnostics, training
from jaxrnn.checkpoints import Checkpoints
from jaxrnn.data import CORPORA, DOCUMENT_SEPARATOR, Corpus, CorpusError, load_corpus
from jaxrnn.runlog import RunLog

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CharLM:
    """A character-level RNN language model.

    Example::

      >>> import jax, jax.numpy as jnp
      >>> from jaxrnn.charlm import CharLM
      >>> lm = CharLM(vocab_size=30, cell="gru", hidden_size=16, num_layers=2)
      >>> params = lm.init(jax.random.key(0))
      >>> logits, state, outputs = lm.apply(params, jnp.zeros((4, 9), jnp.int32))
      >>> logits.shape, state.shape
      ((4, 9, 30), (2, 4, 16))
    """

    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.0
    embedding: int = 0  # 0: one-hot inputs; otherwise the embedding width
    separator: int = -1  # id of the document separator (reset the state after it); -1: none

    @property
    def rnn(self) -> jaxrnn.RNN:
        return jaxrnn.RNN(jaxrnn.CELLS[self.cell](self.hidden_size), self.num_layers, dropout=self.dropout)

    def init(self, key: Array) -> dict:
        k_embed, k_rnn, k_out = jax.random.split(key, 3)
        width = self.embedding or self.vocab_size
        params = {
            "rnn": self.rnn.init(k_rnn, width),
            "out": {"w": jax.nn.initializers.lecun_normal()(k_out, (self.hidden_size, self.vocab_size)),
                    "b": jnp.zeros(self.vocab_size)},
        }
        if self.embedding:
            params["embed"] = jax.random.normal(k_embed, (self.vocab_size, self.embedding)) / math.sqrt(self.embedding)
        return params

    def initial_state(self, batch_size: int | None):
        return self.rnn.initial_state(batch_size)

    def apply(self, params: dict, tokens: Array, state=None, *, key: Array | None = None):
        """Logits (B, T, V) for the next character after each input, the final state, and the
        top layer's outputs (B, T, H)."""
        xs = params["embed"][tokens] if self.embedding else jax.nn.one_hot(tokens, self.vocab_size)
        resets = None if self.separator < 0 else tokens == self.separator
        ys, state = self.rnn.apply(params["rnn"], xs, initial_state=state, resets=resets, key=key)
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, self.num_layers), 1 - self.dropout, ys.shape)
            ys = jnp.where(keep, ys / (1 - self.dropout), 0.0)
        return ys @ params["out"]["w"] + params["out"]["b"], state, ys

    def losses(self, params: dict, chunk: Array, state=None, *, key: Array | None = None):
        """Per-step cross-entropy (B, T) in nats for a chunk (B, T + 1) of ids, and the final state."""
        logits, state, ys = self.apply(params, chunk[:, :-1], state, key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, chunk[:, 1:]), state, ys

    def loss_fn(self, per_step: bool = False):
        """The ``loss_fn(params, carry, batch, key)`` that :func:`jaxrnn.training.make_train_step` takes."""

        def loss(params, carry, chunk, key):
            ce, state, ys = self.losses(params, chunk, carry, key=key)
            metrics = {"h_norm": jnp.mean(jnp.linalg.norm(ys, axis=-1))}
            if per_step:
                metrics["loss_per_step"] = diagnostics.loss_per_step(ce)
            return jnp.mean(ce), (state, metrics)

        return loss

    def gradient_profile(self, params: dict, chunk: Array) -> Array:
        """``log10 ||dL/dh_t||`` of the top layer for the chunk's loss on every step, (T,) batch mean."""
        layer = self.rnn
        xs = params["embed"][chunk[:, :-1]] if self.embedding else jax.nn.one_hot(chunk[:, :-1], self.vocab_size)
        below = dataclasses.replace(layer, num_layers=self.num_layers - 1)
        inputs = below.apply(params["rnn"][:-1], xs)[0] if self.num_layers > 1 else xs
        loss = lambda ys: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            ys @ params["out"]["w"] + params["out"]["b"], chunk[:, 1:]))
        prof = diagnostics.gradient_profile(layer.cell, params["rnn"][-1]["fwd"], inputs, loss)
        return jnp.mean(prof.log10_norm, axis=0)

    def sample(self, params: dict, prime: Array, length: int, temperature: float, key: Array) -> Array:
        """``length`` ids drawn after the ``prime`` ids (at least one), at ``temperature`` > 0."""
        logits, state, _ = self.apply(params, prime[None])
        logits = logits[0, -1]

        def step(carry, key):
            logits, state = carry
            token = jax.random.categorical(key, logits / temperature)
            logits, state, _ = self.apply(params, token[None, None], state)
            return (logits[0, -1], state), token

        _, tokens = jax.lax.scan(step, (logits, state), jax.random.split(key, length))
        return tokens


def evaluate(lm: CharLM, params: dict, chunks: np.ndarray, eval_fn) -> float:
    """Mean validation cross-entropy (nats) over consecutive chunks, the state carried across them."""
    state, total = lm.initial_state(chunks.shape[1]), 0.0
    for chunk in chunks:
        loss, state = eval_fn(params, state, chunk)
        total += float(loss)
    return total / len(chunks)


def sample_text(lm: CharLM, corpus: Corpus, params, prime: str, length: int, temperature: float, seed: int) -> str:
    prime = prime or corpus.text[0]
    ids = lm.sample(params, jnp.asarray(corpus.encode(prime)), length, temperature, jax.random.key(seed))
    return prime + corpus.decode(np.asarray(ids))


# --------------------------------------------------------------------------- commands


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", choices=CORPORA, help="a named corpus (default tinyshakespeare)")
    src.add_argument("--text", help="train on this text file instead")
    p.add_argument("--data-dir", help="where corpora are cached (default $JAXRNN_DATA or ~/.cache/jaxrnn)")
    p.add_argument("--cell", choices=("lstm", "gru", "vanilla"), default="lstm")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--embedding", type=int, default=0, help="embedding width; 0 = one-hot inputs")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop cleanly (evaluate, checkpoint) once training has run this long; 0 = no limit")
    p.add_argument("--optimizer", choices=training.OPTIMIZERS, default="adam")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--schedule", choices=training.SCHEDULES, default="constant")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--clip", type=float, default=5.0, help="clip_by_global_norm threshold; 0 = none")
    p.add_argument("--clip-value", type=float, default=0.0, help="element-wise clip (char-rnn); 0 = none")
    p.add_argument("--skip-nonfinite", action="store_true", help="skip diverged steps instead of stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder: config, metrics.jsonl, checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--val-batches", type=int, default=20, help="validation chunks per evaluation; 0 = all")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--sample-every", type=int, default=500, help="print a sample every N steps; 0 = never")
    p.add_argument("--prime", default="", help="priming text for samples")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--profile-every", type=int, default=0, help="log the gradient profile every N steps")
    p.add_argument("--max-chars", type=int, default=2_000_000, help="cap on the python-stdlib corpus")
    p.add_argument("--sanity", action="store_true",
                   help="overfit the first 2,000 characters for --steps steps and check the loss falls")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _corpus_of(args) -> Corpus:
    corpus_name = None if args.text else (args.corpus or "tinyshakespeare")
    try:
        return load_corpus(corpus_name, text_path=args.text, folder=args.data_dir, max_chars=args.max_chars)
    except CorpusError as e:
        raise SystemExit(f"error: {e}") from None


def train(args) -> dict:
    """Train a char-LM as ``args`` say; returns the final metrics. See ``jaxrnn train char-lm --help``."""
    out = pathlib.Path(args.out)
    corpus = _corpus_of(args)
    if args.sanity:
        corpus = corpus._replace(text=corpus.text[:2000])
    config_path = out / "config.json"
    ckpt_dir = out / "checkpoints" / "latest"
    if ckpt_dir.exists() and any(ckpt_dir.iterdir()) and not args.resume:
        raise SystemExit(f"error: --out {out} already holds checkpoints; pass --resume to continue it, or a new --out")
    if args.resume and config_path.exists():  # a resumed run keeps the model it was started with
        saved = json.loads(config_path.read_text())
        args = argparse.Namespace(**(vars(args) | {k: saved["args"][k] for k in _MODEL_KEYS}))
    out.mkdir(parents=True, exist_ok=True)

    sep = corpus.vocab.find(DOCUMENT_SEPARATOR)
    lm = CharLM(len(corpus.vocab), args.cell, args.hidden_size, args.num_layers, args.dropout, args.embedding, sep)
    config_path.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "func"},
                                       "vocab": corpus.vocab, "corpus": corpus.name}, indent=1))
    train_ids, val_ids = (corpus.split(0.1) if not args.sanity else (corpus.encode(corpus.text),) * 2)
    train_chunks = training.stream_batches(train_ids, args.batch_size, args.seq_len)
    val_chunks = training.stream_batches(val_ids, min(args.batch_size, max(1, len(val_ids) // (args.seq_len + 1))),
                                         args.seq_len)
    if args.val_batches:
        val_chunks = val_chunks[: args.val_batches]

    lr_at = training.make_schedule(args.lr, args.schedule, total_steps=args.steps, warmup_steps=args.warmup_steps,
                                   decay_every=max(1, len(train_chunks)), decay_rate=0.97)
    optimizer = training.make_optimizer(args.optimizer, lr_at, clip_norm=args.clip or None,
                                        clip_value=args.clip_value or None)
    key = jax.random.key(args.seed)
    state = training.init_state(lm.init(key), optimizer, jax.random.fold_in(key, 1), lm.initial_state(args.batch_size))
    ckpt = Checkpoints(out)
    start = 0
    if args.resume:
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state, meta = restored
            start = int(meta["step"])
            print(f"resumed from step {start} ({out / 'checkpoints' / 'latest'})", flush=True)
    log = RunLog(out)

    mesh, shard, replicate = training.data_parallel()
    parallel = len(mesh.devices.flat) > 1 and args.batch_size % len(mesh.devices.flat) == 0
    if parallel:
        state = replicate(state)
    step_fn = training.make_train_step(lm.loss_fn(), optimizer, skip_nonfinite=args.skip_nonfinite)
    eval_fn = jax.jit(lambda p, s, c: (lambda ce, st, _: (jnp.mean(ce), st))(*lm.losses(p, c, s)))
    profile_fn = jax.jit(lm.gradient_profile)

    def validate() -> float:
        return evaluate(lm, state.params, val_chunks, eval_fn)

    first_loss, last_val = None, None  # last_val: (step, validation loss) of the latest evaluation
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=f"char-lm {args.cell}",
               disable=args.quiet, file=sys.stdout, mininterval=2.0)
    t0 = time.perf_counter()
    for step in bar:
        if step % len(train_chunks) == 0:  # a new epoch: the streams restart, so must the state
            state = state._replace(carry=lm.initial_state(args.batch_size))
        chunk = jnp.asarray(train_chunks[step % len(train_chunks)])
        state, metrics = step_fn(state, shard(chunk) if parallel else chunk)
        metrics = jax.device_get(metrics)
        if not args.skip_nonfinite:
            training.check_finite(metrics, step + 1)
        first_loss = first_loss if first_loss is not None else float(metrics["loss"])
        record = dict(metrics, lr=float(lr_at(step)), elapsed_s=time.perf_counter() - t0)
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            val = validate()
            last_val = (done, val)
            record |= {"val_loss": val, "val_bpc": val / math.log(2)}
            if ckpt.save_if_best(done, state, val, {"val_loss": val}):
                record["best"] = True
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", val_bpc=f"{val / math.log(2):.3f}")
        if args.profile_every and done % args.profile_every == 0:
            record["grad_profile_log10"] = np.asarray(profile_fn(state.params, chunk)).round(3).tolist()
        log.write(done, record)
        if done % args.checkpoint_every == 0 or done == args.steps:
            ckpt.save(done, state, {"val_loss": record.get("val_loss")})
        if args.sample_every and done % args.sample_every == 0:
            text = sample_text(lm, corpus, state.params, args.prime, 200, args.temperature, done)
            tqdm.write(f"--- sample at step {done} ---\n{text}\n---")
        if args.max_minutes and time.perf_counter() - t0 > 60 * args.max_minutes and done < args.steps:
            tqdm.write(f"time budget of {args.max_minutes} minutes reached at step {done}")
            break
    bar.close()
    done = int(state.step)
    val = last_val[1] if last_val is not None and last_val[0] == done else validate()
    if done < args.steps and done % args.checkpoint_every:  # stopped early by the time budget
        ckpt.save_if_best(done, state, val, {"val_loss": val})
        ckpt.save(done, state, {"val_loss": val})
    ckpt.close()
    log.close()

    result = {"val_loss_nats": val, "val_bpc": val / math.log(2), "steps": done,
              "train_loss_first": first_loss, "elapsed_s": time.perf_counter() - t0}
    if args.sanity:
        last = float(metrics["loss"]) if args.steps > start else val
        ok = first_loss is not None and last < 0.5 * first_loss
        print(f"sanity: loss {first_loss:.3f} -> {last:.3f}: {'PASS' if ok else 'FAIL (the loss did not halve)'}")
        if not ok:
            raise SystemExit(1)
    print(f"val_loss_nats={val:.4f} val_bpc={val / math.log(2):.4f}", flush=True)
    return result


_MODEL_KEYS = ("cell", "hidden_size", "num_layers", "dropout", "embedding", "seq_len", "batch_size", "corpus",
               "text", "optimizer", "lr", "schedule", "clip", "clip_value", "seed", "warmup_steps")


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="a run folder written by 'jaxrnn train char-lm'")
    p.add_argument("--prime", default="", help="text to start from (default: the corpus's first character)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)


def sample(args) -> str:
    """Print a sample from the run's best checkpoint (the latest if none is marked best)."""
    out = pathlib.Path(args.out)
    config = json.loads((out / "config.json").read_text())
    a = config["args"]
    vocab = config["vocab"]
    lm = CharLM(len(vocab), a["cell"], a["hidden_size"], a["num_layers"], a["dropout"], a["embedding"],
                vocab.find(DOCUMENT_SEPARATOR))
    like = training.init_state(lm.init(jax.random.key(0)), training.make_optimizer(
        a["optimizer"], a["lr"], clip_norm=a["clip"] or None, clip_value=a["clip_value"] or None,
        schedule=a["schedule"], total_steps=a["steps"], warmup_steps=a["warmup_steps"]),
        jax.random.key(0), lm.initial_state(a["batch_size"]))
    ckpt = Checkpoints(out)
    restored = ckpt.restore_best(like) or ckpt.restore_latest(like)
    ckpt.close()
    if restored is None:
        raise SystemExit(f"error: no checkpoint in {out / 'checkpoints'}")
    if args.temperature <= 0:
        raise SystemExit(f"error: --temperature must be > 0, got {args.temperature}")
    corpus = Corpus(config["corpus"], vocab[0], vocab)
    try:
        text = sample_text(lm, corpus, restored[0].params, args.prime, args.length, args.temperature, args.seed)
    except ValueError as e:
        raise SystemExit(f"error: --prime: {e}") from None
    print(text)
    return text

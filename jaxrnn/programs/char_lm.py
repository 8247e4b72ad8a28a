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
import contextlib
import dataclasses
import functools
import json
import math
import os
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
from jaxrnn.checkpoints import CheckpointError, Checkpoints, first_line
from jaxrnn.programs.arguments import UsageError, nonnegative_float, nonnegative_int, positive_float, positive_int, rate
from jaxrnn.programs.data import CORPORA, DOCUMENT_SEPARATOR, Corpus, CorpusError, load_corpus
from jaxrnn.programs.runlog import NoLog, RunLog, atomic_write_text

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CharLM:
    """A character-level RNN language model.

    Example::

      >>> import jax, jax.numpy as jnp
      >>> from jaxrnn.programs.char_lm import CharLM
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
    embedding: int = 128  # the embedding width; 0: one-hot inputs (docs/experiments.md: 2.79 bpc against 2.45)
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
            # N(0, 1), as torch.nn.Embedding: N(0, 1 / E) (flax's nn.Embed) trained to 2.60 bpc where this
            # reached 2.45 (docs/experiments.md, "Defaults")
            params["embed"] = jax.random.normal(k_embed, (self.vocab_size, self.embedding))
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


def training_batches(train_ids: np.ndarray, batch_size: int, seq_len: int, batches: str, seed: int):
    """``(epoch, batch_at)``: the steps per pass over the training ids, and ``batch_at(step)``, step
    ``step``'s chunk (B, T + 1) of ids and whether the state starts afresh for it: at every random
    window (``batches="random"``), or when the streams restart at an epoch (``"stream"``)."""
    chunks = training.stream_batches(train_ids, batch_size, seq_len)
    epoch = len(chunks)

    def batch_at(step: int) -> tuple[np.ndarray, bool]:
        if batches == "random":
            return training.random_windows(train_ids, batch_size, seq_len, seed, step), True
        return chunks[step % epoch], step % epoch == 0

    return epoch, batch_at


def validation_chunks(val_ids: np.ndarray, batch_size: int, seq_len: int, val_batches: int = 0) -> np.ndarray:
    """The validation split as consecutive chunks (N, B', T + 1) of ``B' = min(batch_size, what the
    split holds)`` streams: the first ``val_batches`` of them, or all (0)."""
    chunks = training.stream_batches(val_ids, min(batch_size, max(1, len(val_ids) // (seq_len + 1))), seq_len)
    return chunks[:val_batches] if val_batches else chunks


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

#: A run's model and data settings, with their defaults for a new run. A run keeps them for life:
#: ``--resume`` takes them from the run's ``config.json``, and refuses a flag that changes one.
#: (The corpus, ``--corpus`` or ``--text``, is kept the same way.)
RUN_SETTINGS = {
    "cell": "lstm", "hidden_size": 128, "num_layers": 2, "dropout": 0.0, "embedding": CharLM.embedding,
    "seq_len": 64, "batch_size": 32, "batches": "stream", "optimizer": "adam", "lr": 2e-3, "schedule": "constant",
    "warmup_steps": 100, "clip": 5.0, "clip_value": 0.0, "seed": 0, "max_chars": 2_000_000, "val_batches": 0,
}
DEFAULT_CORPUS = "tinyshakespeare"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    def setting(flag: str, help: str = "", **kwargs) -> None:
        """A run setting: default None on the command line, so that train() can tell the flags given
        from the ones left out (a resumed run takes those from its config); --help shows the default."""
        default = RUN_SETTINGS[flag[2:].replace("-", "_")]
        p.add_argument(flag, default=None, help=f"{help} (default: {default})".lstrip(), **kwargs)

    src = p.add_mutually_exclusive_group()
    src.add_argument("--corpus", choices=CORPORA, help=f"a named corpus (default: {DEFAULT_CORPUS})")
    src.add_argument("--text", help="train on this UTF-8 text file instead")
    p.add_argument("--data-dir", help="where corpora are cached (default: $JAXRNN_DATA or ~/.cache/jaxrnn)")
    setting("--cell", choices=("lstm", "gru", "vanilla"))
    setting("--hidden-size", type=positive_int)
    setting("--num-layers", type=positive_int)
    setting("--dropout", type=rate)
    setting("--embedding", "embedding width; 0 = one-hot inputs", type=nonnegative_int)
    setting("--seq-len", "characters per chunk (truncated BPTT length)", type=positive_int)
    setting("--batch-size", "sequences per batch", type=positive_int)
    setting("--batches", "'stream': batch_size streams read in consecutive chunks, the state carried across them "
            "(truncated BPTT); 'random': windows at random offsets, each from the initial state",
            choices=("stream", "random"))
    p.add_argument("--steps", type=positive_int, default=2000, help="train up to this step")
    p.add_argument("--max-minutes", type=nonnegative_float, default=0.0,
                   help="stop cleanly (evaluate, checkpoint) once training has run this long; 0 = no limit")
    setting("--optimizer", choices=training.OPTIMIZERS)
    setting("--lr", "learning rate", type=positive_float)
    setting("--schedule", choices=training.SCHEDULES)
    setting("--warmup-steps", "for --schedule warmup_cosine", type=nonnegative_int)
    setting("--clip", "clip_by_global_norm threshold; 0 = none", type=nonnegative_float)
    setting("--clip-value", "element-wise clip (char-rnn); 0 = none", type=nonnegative_float)
    p.add_argument("--skip-nonfinite", action="store_true", help="skip diverged steps instead of stopping")
    setting("--seed", type=int)
    p.add_argument("--out", required=True, help="run folder: config, metrics.jsonl, checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --out (from step 0 if it has none); the run "
                        "keeps its model and data settings, and a flag that changes one is an error")
    p.add_argument("--eval-every", type=positive_int, default=250)
    setting("--val-batches", "validation chunks per evaluation (the first ones); 0 = all: the whole validation "
            "split", type=nonnegative_int)
    p.add_argument("--checkpoint-every", type=positive_int, default=250)
    p.add_argument("--sample-every", type=nonnegative_int, default=500,
                   help="print a sample every N steps; 0 = never")
    p.add_argument("--prime", default="", help="priming text for samples (default: the corpus's first character)")
    p.add_argument("--temperature", type=positive_float, default=0.8)
    p.add_argument("--profile-every", type=nonnegative_int, default=0,
                   help="log the gradient profile every N steps; 0 = never")
    setting("--max-chars", "cap on the python-stdlib and python-docs corpora", type=positive_int)
    p.add_argument("--sanity", action="store_true",
                   help="overfit the first 2,000 characters for --steps steps and check the loss falls")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log to TensorBoard (<out>/tensorboard; needs tensorboardX or torch); it costs a "
                        "small model a noticeable share of its step on a CPU (docs/experiments.md), so it is off "
                        "unless asked, on --resume too")
    dist = p.add_argument_group(
        "multi-process runs", "data parallel over several processes, each with its own devices; the same "
        "command in every process, but for --process-id (docs/distributed.md)")
    dist.add_argument("--coordinator", metavar="HOST:PORT",
                      help="where process 0 serves the run's coordination, reachable from every process "
                           "(default: $JAX_COORDINATOR_ADDRESS, or the cluster's, see --distributed)")
    dist.add_argument("--num-processes", type=positive_int, metavar="N", help="how many processes the run has")
    dist.add_argument("--process-id", type=nonnegative_int, metavar="I", help="this process's number, 0 to N - 1")
    dist.add_argument("--distributed", action="store_true",
                      help="join a multi-process run; what is not given, jax.distributed.initialize() finds "
                           "in the environment (SLURM's srun, Open MPI's mpirun, Kubernetes, Cloud TPU). "
                           "Implied by any of the three flags above, and by $JAX_COORDINATOR_ADDRESS")


def flag(key: str) -> str:
    """The command-line flag of a run setting: ``"seq_len"`` -> ``"--seq-len"``."""
    return "--" + key.replace("_", "-")


def _source(values: dict) -> tuple[str, str] | None:
    """The corpus a run's settings name: ("text", absolute path) or ("corpus", name); None if neither."""
    if values.get("text"):
        return "text", str(pathlib.Path(values["text"]).expanduser().resolve())
    if values.get("corpus"):
        return "corpus", values["corpus"]
    return None


def _settings(args: argparse.Namespace, config: dict | None) -> argparse.Namespace:
    """``args`` with every run setting filled in: from the saved ``config`` when resuming (a flag
    given with another value is an error), else from :data:`RUN_SETTINGS`."""
    values = dict(vars(args))
    given = {k: values[k] for k in RUN_SETTINGS if values.get(k) is not None}
    source = _source(values)
    if config is not None:
        saved = config.get("args", {})
        saved = {k: saved.get(k, v) for k, v in RUN_SETTINGS.items()} | {"text": saved.get("text"),
                                                                          "corpus": saved.get("corpus")}
        saved_source = _source(saved) or ("corpus", DEFAULT_CORPUS)
        differ = [f"{flag(k)} {v} differs from the run's {saved[k]}" for k, v in given.items() if v != saved[k]]
        if source is not None and source != saved_source:
            differ.append(f"--{source[0]} {source[1]} differs from the run's --{saved_source[0]} {saved_source[1]}")
        if differ:
            raise UsageError(f"--resume: {'; '.join(differ)}. A resumed run keeps its model and data settings: "
                             "leave these flags out, or start a new run in another --out")
        values |= {k: saved[k] for k in RUN_SETTINGS}
        source = saved_source
    else:
        values |= {k: v for k, v in RUN_SETTINGS.items() if k not in given}
    kind, name = source or ("corpus", DEFAULT_CORPUS)
    values["text"], values["corpus"] = (name, None) if kind == "text" else (None, name)
    return argparse.Namespace(**values)


def _corpus_of(args) -> Corpus:
    try:
        return load_corpus(args.corpus, text_path=args.text, folder=args.data_dir, max_chars=args.max_chars)
    except CorpusError as e:
        raise UsageError(str(e)) from None


def _check_length(corpus: Corpus, args) -> None:
    """The text must give at least one training chunk and one validation chunk."""
    n, B, T = len(corpus.text), args.batch_size, args.seq_len
    what = f"--text {args.text}" if args.text else f"corpus {args.corpus}"
    if args.sanity:  # trains and validates on the same slice
        if n < B * (T + 1):
            raise UsageError(f"{what}: --sanity's {n} characters are too few for --batch-size {B} and --seq-len "
                             f"{T}: need at least {B} x ({T} + 1) = {B * (T + 1)}")
        return
    fits = lambda m: int(m * (1.0 - 0.1)) >= B * (T + 1) and m - int(m * (1.0 - 0.1)) >= T + 1  # Corpus.split
    if fits(n):
        return
    need = max(B * (T + 1), 10 * (T + 1))
    while not fits(need):
        need += 1
    raise UsageError(
        f"{what}: {n} characters are too few for --batch-size {B} and --seq-len {T}: need at least {need} "
        f"(the first 90% for training, {B} streams of {T} + 1; the last 10% for validation, at least {T} + 1). "
        "Give a longer text, or a smaller --batch-size or --seq-len")


def _check_prime(corpus: Corpus, prime: str) -> None:
    """``--prime`` must be made of the corpus's characters (checked before any work, not at the first sample)."""
    try:
        corpus.encode(prime)
    except ValueError as e:
        raise UsageError(f"--prime: {e}") from None


def _join(args) -> bool:
    """Join a multi-process run when asked (``--distributed``, ``--coordinator``, ``--num-processes``,
    ``--process-id``, or ``$JAX_COORDINATOR_ADDRESS``): ``jax.distributed.initialize()``, before any
    other use of JAX. True when this process is one of several."""
    coordinator, n, i = (getattr(args, k, None) for k in ("coordinator", "num_processes", "process_id"))
    asked = (getattr(args, "distributed", False) or coordinator is not None or n is not None or i is not None
             or os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if not asked:
        return False
    if n is not None and i is not None and i >= n:
        raise UsageError(f"--process-id {i}: expected 0 to {n - 1}, one number per process of --num-processes {n}")
    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--coordinator {coordinator}: expected HOST:PORT, process 0's host and a free port")
    if not jax.distributed.is_initialized():
        # CPU devices reach each other through gloo (jax 0.10's default; older versions had none).
        if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(coordinator, n, i)
        except (ValueError, TypeError) as e:  # what neither the flags nor the environment gave
            missing = {"coordinator_address should be defined.": "--coordinator HOST:PORT",
                       "Number of processes must be defined.": "--num-processes N",
                       "The process id of the current process must be defined.": "--process-id I"}.get(str(e))
            what = f"{missing} is not given and not found in the environment" if missing else str(e)
            raise UsageError(f"cannot join a multi-process run: {what}. Give --coordinator, --num-processes and "
                             "--process-id, or start the processes under a cluster manager that "
                             "jax.distributed.initialize() detects (SLURM's srun, Open MPI's mpirun)") from None
    return jax.process_count() > 1


def _local(tree):
    """This process's copy of a replicated tree (its first device's), for work done in one process
    only: sampling, validation."""
    return jax.tree_util.tree_map(
        lambda x: x.addressable_data(0) if isinstance(x, jax.Array) and not x.is_fully_addressable else x, tree)


def _from_process_0(value: float) -> float:
    """Process 0's float in every process, bit for bit (sent as the float64's two 32-bit words)."""
    from jax.experimental import multihost_utils

    words = multihost_utils.broadcast_one_to_all(np.array([value], np.float64).view(np.uint32))
    return float(np.asarray(words, np.uint32).view(np.float64)[0])


class PeerLost(RuntimeError):
    """A multi-process run lost one of its processes. Its checkpoints before that are whole; the process
    that raises this cannot shut JAX's distributed runtime down (that waits for the lost one), so
    ``jaxrnn train`` leaves at once after saying so (:func:`jaxrnn.programs.cli.run_command`)."""

    leave_at_once = True


def _place(state: training.TrainState, mesh) -> training.TrainState:
    """The train state over the processes' mesh: everything replicated, but the carry, (L, B, H) per
    leaf, sharded by rows as the batch is."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    carry = state.carry
    state = jax.device_put(state._replace(carry=()), replicated)
    return state._replace(carry=training.global_batch(carry, mesh, axis=1))


def _read_config(path: pathlib.Path) -> dict:
    try:
        config = json.loads(path.read_text())
        config["args"], config["vocab"]  # noqa: B018 (both must be there)
        return config
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a readable run config ({type(e).__name__}: {e})") from None


def train(args) -> dict:
    """Train a char-LM as ``args`` say; returns the final metrics. See ``jaxrnn train char-lm --help``.

    In a multi-process run (:func:`_join`) every process runs this; process 0 alone writes the
    config, the log, the samples and the progress bar, and all of them write the checkpoints."""
    multi = _join(args)
    primary = not multi or jax.process_index() == 0
    notice = lambda message: primary and print(f"jaxrnn train char-lm: {message}", file=sys.stderr, flush=True)
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    config_path = out / "config.json"
    ckpt_dir = out / "checkpoints" / "latest"
    has_checkpoints = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    if has_checkpoints and not args.resume:
        raise UsageError(f"--out {out} already holds checkpoints; pass --resume to continue it, or give a new --out")
    saved = None
    if args.resume:
        if not has_checkpoints:
            notice(f"--resume: no checkpoint in {ckpt_dir} yet; starting from step 0")
        elif config_path.exists():
            saved = _read_config(config_path)
        else:
            notice(f"--resume: {config_path} is missing; using the settings given and the defaults")
    args = _settings(args, saved)
    corpus = _corpus_of(args)
    if args.sanity:
        corpus = corpus._replace(text=corpus.text[:2000])
    if saved is not None and saved["vocab"] != corpus.vocab:
        raise UsageError(f"--resume: the corpus's characters have changed since the run started ({len(corpus.vocab)} "
                         f"distinct now, {len(saved['vocab'])} then); a run's vocabulary cannot change")
    _check_length(corpus, args)
    _check_prime(corpus, args.prime)
    if multi:
        from jax.experimental import multihost_utils

        if args.batch_size % jax.device_count():
            raise UsageError(f"--batch-size {args.batch_size}: a multi-process run splits the batch's rows over "
                             f"its {jax.device_count()} devices ({jax.process_count()} processes); give a multiple "
                             f"of {jax.device_count()}")
        multihost_utils.sync_global_devices("jaxrnn char-lm: the run folder is read")  # before process 0 writes
    out.mkdir(parents=True, exist_ok=True)

    sep = corpus.vocab.find(DOCUMENT_SEPARATOR)
    lm = CharLM(len(corpus.vocab), args.cell, args.hidden_size, args.num_layers, args.dropout, args.embedding, sep)
    if primary:
        atomic_write_text(config_path, json.dumps({"args": {k: v for k, v in vars(args).items() if k != "func"},
                                                   "vocab": corpus.vocab, "corpus": corpus.name}, indent=1))
    train_ids, val_ids = (corpus.split(0.1) if not args.sanity else (corpus.encode(corpus.text),) * 2)
    epoch, batch_at = training_batches(train_ids, args.batch_size, args.seq_len, args.batches, args.seed)
    val_chunks = validation_chunks(val_ids, args.batch_size, args.seq_len, args.val_batches)

    lr_at = training.make_schedule(args.lr, args.schedule, total_steps=args.steps, warmup_steps=args.warmup_steps,
                                   decay_every=max(1, epoch), decay_rate=0.97)
    optimizer = training.make_optimizer(args.optimizer, lr_at, clip_norm=args.clip or None,
                                        clip_value=args.clip_value or None)
    key = jax.random.key(args.seed)
    # One compiled function, not an eager op (and its compilation) per parameter: seconds at start-up.
    state = jax.jit(lambda k: training.init_state(lm.init(k), optimizer, jax.random.fold_in(k, 1),
                                                  lm.initial_state(args.batch_size)))(key)
    if multi:  # process 0's initial state (the same, unless the hosts compute differently), over all processes
        from jax.experimental import multihost_utils

        state = _place(multihost_utils.broadcast_one_to_all(state), training.data_parallel()[0])
    ckpt = Checkpoints(out, notify=notice)
    log = None
    try:
        start = 0
        if args.resume:
            restored = ckpt.restore_latest(state, set_aside=True)
            if restored is not None:
                state, meta = restored
                start = int(meta["step"])
                if primary:
                    print(f"resumed from step {start} ({ckpt_dir})", flush=True)
                if start >= args.steps:
                    notice(f"the run is already at step {start} (--steps {args.steps}); nothing to train")
        log = RunLog(out, tensorboard=args.tensorboard) if primary else NoLog()
        if args.tensorboard and primary and not log.has_tensorboard:
            notice("--tensorboard: neither tensorboardX nor torch is installed; logging to metrics.jsonl only")
        try:
            result = _train_loop(args, lm, corpus, state, start, optimizer, lr_at, batch_at, val_chunks, ckpt, log)
        except jax.errors.JaxRuntimeError as e:
            if not multi:
                raise
            # Most likely a collective failed because another process stopped (or its host went away). Nothing
            # can be finished with the others (a checkpoint being written waits for them at its barrier): say
            # so, name the last checkpoint written whole, and go.
            steps = ckpt.finished_steps()
            raise PeerLost(f"process {jax.process_index()} of {jax.process_count()}: a step failed "
                           f"({first_line(e, 200)}), most likely because another process of the run stopped. "
                           + (f"The last whole checkpoint is step {steps[-1]} in {ckpt_dir}: rerun the same "
                              "command with --resume, on any number of processes." if steps
                              else "No checkpoint had been saved yet.")) from None
        except training.DivergenceError as e:
            with contextlib.suppress(CheckpointError):  # name only a checkpoint that was written whole
                ckpt.wait()
            steps = ckpt.steps()
            last = f"The last, step {steps[-1]} in {ckpt_dir}, is kept." if steps else "(None had been saved yet.)"
            raise training.DivergenceError(f"{e} {last}") from None
    except PeerLost:
        if log is not None:
            with contextlib.suppress(Exception):  # the first error is the one to report
                log.close()
        raise
    except BaseException:
        # Finish the checkpoint being written (nothing lost), but report the first error, not one
        # that closing raises after it (a full disk fails both).
        for close in ([log.close] if log is not None else []) + [ckpt.close]:
            with contextlib.suppress(Exception):
                close()
        raise
    log.close()
    ckpt.close()  # waits for the checkpoint being written
    return result


def _train_loop(args, lm, corpus, state, start, optimizer, lr_at, batch_at, val_chunks, ckpt, log) -> dict:
    mesh, shard, replicate = training.data_parallel()
    multi = jax.process_count() > 1
    primary = jax.process_index() == 0
    parallel = not multi and len(mesh.devices.flat) > 1 and args.batch_size % len(mesh.devices.flat) == 0
    if parallel:
        state = replicate(state)
    step_fn = training.make_train_step(lm.loss_fn(), optimizer, skip_nonfinite=args.skip_nonfinite)
    eval_fn = jax.jit(lambda p, s, c: (lambda ce, st, _: (jnp.mean(ce), st))(*lm.losses(p, c, s)))
    profile_fn = jax.jit(lm.gradient_profile)
    # The global chunk (numpy, every process has it) -> the array the step trains on. Several processes:
    # each gives its own rows (training.global_batch), the carry goes by rows too, the rest is
    # replicated; validation and samples are process 0's.
    feed = jnp.asarray
    if multi:
        feed = functools.partial(training.global_batch, mesh=mesh)
        state = _place(state, mesh)
        train_step = step_fn
        step_fn = lambda state, chunk: train_step(  # a new epoch's carry, made whole, goes by rows
            state._replace(carry=training.global_batch(state.carry, mesh, axis=1)), chunk)
        profile_fn = jax.jit(lm.gradient_profile, out_shardings=jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec()))

    def validate() -> float:
        if not multi:
            return evaluate(lm, state.params, val_chunks, eval_fn)
        return _from_process_0(evaluate(lm, _local(state.params), val_chunks, eval_fn) if primary else 0.0)

    first_loss, last_val = None, None  # last_val: (step, validation loss) of the latest evaluation
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=f"char-lm {args.cell}",
               disable=args.quiet or not primary, file=sys.stdout, mininterval=2.0)
    t0 = time.perf_counter()
    for step in bar:
        chunk, fresh = batch_at(step)
        if fresh:
            state = state._replace(carry=lm.initial_state(args.batch_size))
        chunk = feed(chunk)
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
        if args.sample_every and done % args.sample_every == 0 and primary:
            text = sample_text(lm, corpus, _local(state.params), args.prime, 200, args.temperature, done)
            tqdm.write(f"--- sample at step {done} ---\n{text}\n---")
        if args.max_minutes and done < args.steps:
            over = time.perf_counter() - t0 > 60 * args.max_minutes
            if multi:  # every process stops where process 0 does
                over = bool(_from_process_0(float(over)))
            if over:
                if primary:
                    tqdm.write(f"time budget of {args.max_minutes} minutes reached at step {done}")
                break
    bar.close()
    done = int(state.step)
    val = last_val[1] if last_val is not None and last_val[0] == done else validate()
    if done < args.steps and done % args.checkpoint_every:  # stopped early by the time budget
        ckpt.save_if_best(done, state, val, {"val_loss": val})
        ckpt.save(done, state, {"val_loss": val})
    ckpt.wait()

    result = {"val_loss_nats": val, "val_bpc": val / math.log(2), "steps": done,
              "train_loss_first": first_loss, "elapsed_s": time.perf_counter() - t0}
    if args.sanity:
        last = float(metrics["loss"]) if args.steps > start else val
        ok = first_loss is not None and last < 0.5 * first_loss
        if primary:
            print(f"sanity: loss {first_loss:.3f} -> {last:.3f}: {'PASS' if ok else 'FAIL (the loss did not halve)'}")
        if not ok:
            raise SystemExit(1)
    if primary:
        print(f"val_loss_nats={val:.4f} val_bpc={val / math.log(2):.4f}", flush=True)
    return result


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="a run folder written by 'jaxrnn train char-lm'")
    p.add_argument("--prime", default="", help="text to start from (default: the corpus's first character)")
    p.add_argument("--temperature", type=positive_float, default=0.8)
    p.add_argument("--length", type=positive_int, default=500, help="characters to sample")
    p.add_argument("--seed", type=int, default=0)


def load_run(out: str | pathlib.Path) -> tuple[dict, CharLM, training.TrainState]:
    """A run folder's config, its model, and the shapes of its checkpoints' train state."""
    out = pathlib.Path(out)
    if not out.is_dir():
        raise UsageError(f"--out {out}: no such folder")
    if not (out / "config.json").is_file():
        raise UsageError(f"--out {out}: not a char-lm run folder (no config.json); "
                         f"make one with 'jaxrnn train char-lm --out {out}'")
    config = _read_config(out / "config.json")
    a, vocab = config["args"], config["vocab"]
    lm = CharLM(len(vocab), a["cell"], a["hidden_size"], a["num_layers"], a["dropout"], a["embedding"],
                vocab.find(DOCUMENT_SEPARATOR))
    optimizer = training.make_optimizer(
        a["optimizer"], a["lr"], clip_norm=a["clip"] or None, clip_value=a["clip_value"] or None,
        schedule=a["schedule"], total_steps=a["steps"], warmup_steps=a["warmup_steps"])
    like = jax.eval_shape(lambda k: training.init_state(lm.init(k), optimizer, k, lm.initial_state(a["batch_size"])),
                          jax.random.key(0))
    return config, lm, like


def sample(args) -> str:
    """Print a sample from the run's best checkpoint (the latest if none is marked best)."""
    notice = lambda message: print(f"jaxrnn sample: {message}", file=sys.stderr, flush=True)
    out = pathlib.Path(args.out)
    config, lm, like = load_run(out)
    ckpt = Checkpoints(out, read_only=True, notify=notice)
    try:
        try:
            restored = ckpt.restore_best(like)
        except CheckpointError as e:
            notice(f"{e}; using the latest checkpoint instead")
            restored = None
        restored = restored or ckpt.restore_latest(like)
    finally:
        ckpt.close()
    if restored is None:
        raise UsageError(f"--out {out}: no checkpoint yet in {out / 'checkpoints'}; train the run "
                         "(further) first")
    vocab = config["vocab"]
    corpus = Corpus(config["corpus"], vocab[0], vocab)
    _check_prime(corpus, args.prime)
    text = sample_text(lm, corpus, restored[0].params, args.prime, args.length, args.temperature, args.seed)
    print(text)
    return text

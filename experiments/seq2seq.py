"""The encoder-decoder bottleneck, measured: a plain encoder-decoder against Bahdanau attention.

Four character-level tasks, generated on the fly: reverse a string, sort its characters, add two numbers
written as text, and translate a date between formats. Both models (bidirectional GRU encoder, GRU decoder,
same sizes) train with the same budget (Adam, clipping at 1, teacher forcing), on inputs of every length in
the task's range. Test strings are held out from training by a hash of the string (1 in 5 strings is
test-only), then decoded greedily (and with beam search, width 4) inside ``jit``.

    python experiments/seq2seq.py            # about 10 minutes on a 2-core CPU

Writes ``accuracy.png`` (exact-match test accuracy against input length, per task: the plain model falls
with length, the attention model holds), ``attention.png`` (the attention matrix of a reversed and a date
example), and a results table.
"""

from __future__ import annotations

import datetime
import functools
import pathlib
import sys
import zlib

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxrnn import training
from jaxrnn.programs import arguments

from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs
from jaxrnn.seq2seq import Seq2Seq

from experiments._common import experiment_parser

PAD, START, END = 0, 1, 2
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz+-/ ,"
VOCAB = 3 + len(CHARS)
ENCODE = {c: i + 3 for i, c in enumerate(CHARS)}
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


# ----------------------------------------------------------------------------- the tasks

def reverse(rng: np.random.Generator, n: int) -> tuple[str, str]:
    s = "".join(rng.choice(list("abcdefghijklmnopqrst"), n))
    return s, s[::-1]


def sort(rng: np.random.Generator, n: int) -> tuple[str, str]:
    s = "".join(rng.choice(list("abcdefghijklmnopqrst"), n))
    return s, "".join(sorted(s))


def add(rng: np.random.Generator, n: int) -> tuple[str, str]:
    """Two numbers whose digits total about n characters; the answer is their sum."""
    a_len = max(1, n // 2)
    b_len = max(1, n - a_len - 1)
    a, b = (int("".join(rng.choice(list("0123456789"), k))) for k in (a_len, b_len))
    return f"{a}+{b}", str(a + b)


def date(rng: np.random.Generator, n: int) -> tuple[str, str]:
    """A date in one of four formats -> ISO ``yyyy-mm-dd``. ``n`` is ignored (lengths 8 to 12)."""
    day = datetime.date(1950, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 36500)))
    formats = [f"{day.day}/{day.month}/{day.year}", f"{MONTHS[day.month - 1]} {day.day}, {day.year}",
               f"{day.day} {MONTHS[day.month - 1]} {day.year}", f"{day.month}-{day.day}-{day.year % 100:02d}"]
    return formats[int(rng.integers(0, 4))], day.isoformat()


TASKS = {"reverse": (reverse, 4, 24), "sort": (sort, 4, 24), "add": (add, 3, 15), "date": (date, 0, 0)}


def is_test(source: str) -> bool:
    """1 in 5 source strings are held out of training, by a hash of the string."""
    return zlib.crc32(source.encode()) % 5 == 0


def examples(task: str, rng: np.random.Generator, count: int, *, test: bool, length: int | None = None):
    make, lo, hi = TASKS[task]
    out = []
    while len(out) < count:
        n = length if length is not None else int(rng.integers(lo, hi + 1))
        src, tgt = make(rng, n)
        if is_test(src) == test:
            out.append((src, tgt))
    return out


def encode_batch(pairs: list[tuple[str, str]], src_len: int, tgt_len: int) -> dict[str, np.ndarray]:
    """Token arrays: src (padded), tgt_in = START + target, tgt_out = target + END, and lengths."""
    B = len(pairs)
    src = np.zeros((B, src_len), np.int32)
    tgt_in = np.zeros((B, tgt_len), np.int32)
    tgt_out = np.zeros((B, tgt_len), np.int32)
    lens = np.zeros(B, np.int32)
    out_lens = np.zeros(B, np.int32)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s)] = [ENCODE[c] for c in s]
        lens[i] = len(s)
        ids = [ENCODE[c] for c in t]
        tgt_in[i, : len(ids) + 1] = [START] + ids
        tgt_out[i, : len(ids) + 1] = ids + [END]
        out_lens[i] = len(ids) + 1
    return {"src": src, "src_len": lens, "tgt_in": tgt_in, "tgt_out": tgt_out, "tgt_len": out_lens}


@functools.lru_cache(maxsize=None)
def max_lengths(task: str) -> tuple[int, int]:
    rng = np.random.default_rng(123)
    pairs = examples(task, rng, 2000, test=False) + examples(task, rng, 200, test=True, length=TASKS[task][2])
    return max(len(s) for s, _ in pairs) + 2, max(len(t) for _, t in pairs) + 2


def decode_text(tokens: np.ndarray) -> str:
    chars = []
    for t in tokens:
        if t == END:
            break
        chars.append(CHARS[t - 3] if t >= 3 else "?")
    return "".join(chars)


# ----------------------------------------------------------------------------- training and evaluation

def train(task: str, attention: str | None, args) -> tuple[Seq2Seq, dict, list[float]]:
    model = Seq2Seq(VOCAB, VOCAB, hidden_size=args.hidden, embed_size=args.embed, attention=attention)
    params = model.init(jax.random.key(args.seed))
    optimizer = training.make_optimizer("adam", args.lr, clip_norm=1.0)
    src_len, tgt_len = max_lengths(task)

    def loss_fn(p, carry, b, key):
        del key
        return model.loss(p, b["src"], b["src_len"], b["tgt_in"], b["tgt_out"], b["tgt_len"]), (carry, {})

    step = training.make_train_step(loss_fn, optimizer)
    state = training.init_state(params, optimizer, jax.random.key(args.seed))
    rng = np.random.default_rng(args.seed)
    losses = []
    for _ in tqdm(range(args.steps), desc=f"{task} {attention or 'plain'}", leave=False, mininterval=1.0):
        batch = encode_batch(examples(task, rng, args.batch_size, test=False), src_len, tgt_len)
        state, metrics = step(state, batch)
        losses.append(metrics["loss"])  # kept on device: no host sync per step
    return model, state.params, [float(v) for v in jax.device_get(losses)]


def evaluate(task: str, model: Seq2Seq, params, args) -> dict:
    """Exact-match accuracy of greedy decoding per input length, and overall for greedy and beam 4."""
    src_len, tgt_len = max_lengths(task)
    greedy = jax.jit(model.greedy, static_argnums=(3, 4, 5))
    beam = jax.jit(model.beam_search, static_argnums=(3, 4, 5, 6))
    rng = np.random.default_rng(10_000 + args.seed)
    _, lo, hi = TASKS[task]
    lengths = [None] if task == "date" else list(range(lo, hi + 1, max(1, (hi - lo) // 6)))
    per_length, all_pairs, hits = {}, [], []
    for n in lengths:
        pairs = examples(task, rng, args.test_size, test=True, length=n)
        b = encode_batch(pairs, src_len, tgt_len)
        out = np.asarray(greedy(params, b["src"], b["src_len"], tgt_len, START, END).tokens)
        ok = [decode_text(o) == t for o, (_, t) in zip(out, pairs)]
        key = "all" if n is None else str(n)
        per_length[key] = float(np.mean(ok))
        all_pairs += pairs
        hits += ok
    b = encode_batch(all_pairs, src_len, tgt_len)
    out = np.asarray(beam(params, b["src"], b["src_len"], tgt_len, START, END, 4).tokens)
    beam_acc = float(np.mean([decode_text(o) == t for o, (_, t) in zip(out, all_pairs)]))
    return {"per_length": per_length, "greedy": float(np.mean(hits)), "beam4": beam_acc}


def attention_example(task: str, model: Seq2Seq, params, source: str) -> tuple[np.ndarray, list[str]]:
    """The attention weights (output steps x source characters) of one greedy decoding, and the output labels."""
    src_len, tgt_len = max_lengths(task)
    b = encode_batch([(source, "")], src_len, tgt_len)
    out = model.greedy(params, b["src"], b["src_len"], tgt_len, START, END)
    tokens = np.asarray(out.tokens[0, : int(out.lengths[0])])
    labels = ["<end>" if t == END else CHARS[t - 3] if t >= 3 else "?" for t in tokens]
    return np.asarray(out.attention[0, : len(tokens), : len(source)]), labels


def run(args) -> dict:
    folder = run_folder("seq2seq", args.out)
    results, trained = {"config": vars(args), "tasks": {}}, {}
    for task in args.tasks:
        results["tasks"][task] = {}
        for attention in (None, "bahdanau"):
            model, params, losses = train(task, attention, args)
            name = attention or "plain"
            trained[(task, name)] = (model, params)
            results["tasks"][task][name] = dict(evaluate(task, model, params, args), final_train_loss=losses[-1],
                                                train_loss=losses[:: max(1, len(losses) // 200)])
    rows = []
    for task, models in results["tasks"].items():
        for name, r in models.items():
            keys = list(r["per_length"])
            rows.append([task, name, f"{100 * r['greedy']:.1f}%", f"{100 * r['beam4']:.1f}%",
                         f"{100 * r['per_length'][keys[0]]:.0f}% (n={keys[0]})",
                         f"{100 * r['per_length'][keys[-1]]:.0f}% (n={keys[-1]})", r["final_train_loss"]])
    table = markdown_table(["task", "model", "test exact match, greedy", "beam 4", "shortest inputs",
                            "longest inputs", "final train loss"], rows)

    plt = pyplot()
    fig, axes = plt.subplots(1, len(args.tasks), figsize=(4.2 * len(args.tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], args.tasks):
        for name, r in results["tasks"][task].items():
            xs = list(r["per_length"])
            ax.plot(range(len(xs)), [100 * r["per_length"][x] for x in xs], "o-", label=name)
            ax.set_xticks(range(len(xs)), xs)
        ax.set_title(task)
        ax.set_xlabel("input length (characters)")
        ax.set_ylim(-5, 105)
    axes[0][0].set_ylabel("test exact match (%)")
    axes[0][0].legend()
    save_figure(fig, folder / "accuracy.png")

    examples_to_show = [(t, s) for t, s in (("reverse", "abcdefghijklmnop"), ("date", "nov 23, 2026"))
                        if t in args.tasks]
    if examples_to_show:
        fig, axes = plt.subplots(1, len(examples_to_show), figsize=(5 * len(examples_to_show), 4.2), squeeze=False)
        for ax, (task, source) in zip(axes[0], examples_to_show):
            weights, labels = attention_example(task, *trained[(task, "bahdanau")], source)
            ax.imshow(weights, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(source)), list(source))
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("source")
            ax.set_ylabel("output")
            ax.set_title(f"{task}: attention weights")
        save_figure(fig, folder / "attention.png")
    write_outputs(folder, table, results)
    return results


def parser() -> arguments.ArgumentParser:
    p = experiment_parser("seq2seq", __doc__, steps=1500, batch_size=64, lr=3e-3)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--hidden", type=arguments.positive_int, default=96)
    p.add_argument("--embed", type=arguments.positive_int, default=32)
    p.add_argument("--test-size", type=arguments.positive_int, default=100, help="test strings per input length")
    return p


if __name__ == "__main__":
    run(parser().parse_args())

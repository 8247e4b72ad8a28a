"""jaxrnn's char-LM beside a plain PyTorch one of the same architecture and recipe, on the same split.

The reference (:func:`train_torch`) is what a user would write in PyTorch: an
``nn.Embedding`` (or one-hot inputs), an ``nn.LSTM`` or ``nn.GRU``, an
``nn.Linear`` readout, each with PyTorch's default initialisation; Adam with
global-norm clipping. It reads the very batches ``jaxrnn train char-lm`` reads
(:func:`jaxrnn.programs.char_lm.training_batches` on :meth:`Corpus.split`'s
training ids) and is evaluated the way jaxrnn's runs are (the whole validation
split as :func:`jaxrnn.programs.char_lm.validation_chunks`, the state carried
across them, as :func:`jaxrnn.programs.char_lm.evaluate` does). What differs is
the framework and its default initialisations, and one thing the plain script
does not do: reset the state at a document separator (python-stdlib and
python-docs have one per file or topic).

:func:`main` trains both on every (text, cell, layers) asked for, one after the
other in this process, and writes ``results.json`` and ``results.md``: each
side's validation bits per character, the median step's wall seconds, and the
wall seconds of the whole loop (evaluations, checkpoints and, for jaxrnn,
compilation included).

    python benchmarks/charlm_reference.py --texts tinyshakespeare python-stdlib python-docs \\
        --cells lstm gru --layers 1 2 --steps 1000 --lr 3e-3 --clip 1

``--seeds 0 1 2`` trains every configuration once per seed and adds a table of
the means and ranges, to tell a difference between the sides from one between seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import numpy as np

from jaxrnn.programs import char_lm, outputs, speed
from jaxrnn.programs.arguments import ArgumentParser, UsageError, nonnegative_float, nonnegative_int, positive_float, positive_int
from jaxrnn.programs.data import CORPORA, load_corpus

#: The recipe both sides share, with jaxrnn's defaults for a new run (char_lm.RUN_SETTINGS).
RECIPE = ("embedding", "seq_len", "batch_size", "batches", "lr", "clip", "seed", "max_chars")
#: What the reference hard-codes: jaxrnn's side must have these too for the recipes to be the same.
FIXED = {"optimizer": "adam", "schedule": "constant", "clip_value": 0.0, "dropout": 0.0, "val_batches": 0}


def train_torch(corpus, *, cell: str, layers: int, hidden_size: int, embedding: int, seq_len: int,
                batch_size: int, batches: str, lr: float, clip: float, seed: int, steps: int,
                eval_every: int) -> dict:
    """Train the PyTorch reference; returns its final validation loss (nats), bpc and per-step times."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    vocab = len(corpus.vocab)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, embedding) if embedding else None
            rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
            self.rnn = rnn(embedding or vocab, hidden_size, layers, batch_first=True)
            self.out = nn.Linear(hidden_size, vocab)

        def forward(self, ids, state):
            x = self.embed(ids) if self.embed is not None else nn.functional.one_hot(ids, vocab).float()
            ys, state = self.rnn(x, state)
            return self.out(ys), state

    model = LM()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train_ids, val_ids = corpus.split(0.1)
    _, batch_at = char_lm.training_batches(train_ids, batch_size, seq_len, batches, seed)
    val_chunks = torch.from_numpy(char_lm.validation_chunks(val_ids, batch_size, seq_len)).long()
    loss_of = lambda logits, targets: nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    detach = lambda s: None if s is None else tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach()

    def validate() -> float:
        model.eval()
        state, total = None, 0.0
        with torch.no_grad():
            for chunk in val_chunks:
                logits, state = model(chunk[:, :-1], state)
                total += float(loss_of(logits, chunk[:, 1:]))
        model.train()
        return total / len(val_chunks)

    state, elapsed, val = None, [], None
    t0 = time.perf_counter()
    for step in range(steps):
        chunk, fresh = batch_at(step)
        state = None if fresh else detach(state)
        chunk = torch.from_numpy(chunk).long()
        logits, state = model(chunk[:, :-1], state)
        loss = loss_of(logits, chunk[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            val = validate()
        elapsed.append(time.perf_counter() - t0)
    return {"val_loss_nats": val, "val_bpc": val / math.log(2), "s_per_step": seconds_per_step(elapsed),
            "wall_s": elapsed[-1]}


def seconds_per_step(elapsed: list[float]) -> float:
    """The median step's wall seconds, from the cumulative times at the end of each step: what a step
    costs, without the evaluations and checkpoints between some of them or the compilation of the first."""
    return float(np.median(np.diff(elapsed))) if len(elapsed) > 1 else elapsed[0]


def train_jaxrnn(text: str, out: pathlib.Path, *, cell: str, layers: int, hidden_size: int, steps: int,
                 eval_every: int, data_dir: str | None, recipe: dict, extra: list[str]) -> dict:
    """``jaxrnn train char-lm`` with the recipe given as flags (the rest its defaults), in this process."""
    from jaxrnn.programs.cli import build_parser

    flags = ["train", "char-lm", "--corpus", text, "--cell", cell, "--num-layers", str(layers), "--hidden-size",
             str(hidden_size), "--steps", str(steps), "--eval-every", str(eval_every), "--checkpoint-every",
             str(steps), "--sample-every", "0", "--quiet", "--out", str(out)]
    flags += [f for k, v in recipe.items() if v is not None for f in (char_lm.flag(k), str(v))]
    flags += (["--data-dir", data_dir] if data_dir else []) + extra
    args = build_parser().parse_args(flags)
    t0 = time.perf_counter()
    result = char_lm.train(args)
    wall = time.perf_counter() - t0  # as the reference's: to the end of the last evaluation
    elapsed = [json.loads(line)["elapsed_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"val_loss_nats": result["val_loss_nats"], "val_bpc": result["val_bpc"],
            "s_per_step": seconds_per_step(elapsed), "wall_s": wall, "flags": flags}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--texts", nargs="+", choices=CORPORA, default=list(CORPORA))
    p.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"])
    p.add_argument("--layers", nargs="+", type=positive_int, default=[1, 2])
    p.add_argument("--hidden-size", type=positive_int, default=128)
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--eval-every", type=positive_int, default=250)
    p.add_argument("--embedding", type=nonnegative_int, help="both sides (default: jaxrnn's)")
    p.add_argument("--seq-len", type=positive_int, help="both sides (default: jaxrnn's)")
    p.add_argument("--batch-size", type=positive_int, help="both sides (default: jaxrnn's)")
    p.add_argument("--batches", choices=("stream", "random"), help="both sides (default: jaxrnn's)")
    p.add_argument("--lr", type=positive_float, help="both sides (default: jaxrnn's)")
    p.add_argument("--clip", type=nonnegative_float, help="global-norm clip, both sides (default: jaxrnn's)")
    p.add_argument("--seed", type=int, help="both sides (default: jaxrnn's)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="train each configuration once per seed, both sides, and add a table of their means and "
                        "ranges (instead of --seed)")
    p.add_argument("--max-chars", type=positive_int, help="cap on the texts, both sides (default: jaxrnn's)")
    p.add_argument("--jaxrnn-flags", default="",
                   help="more flags for jaxrnn's side only (what the reference has no counterpart of, e.g. "
                        "'--skip-nonfinite')")
    p.add_argument("--sides", nargs="+", choices=("jaxrnn", "torch"), default=["jaxrnn", "torch"])
    p.add_argument("--data-dir", help="where tinyshakespeare.txt is (default: $JAXRNN_DATA or ~/.cache/jaxrnn)")
    p.add_argument("--out", help="run folder (default: runs/charlm-reference-<time>)")


def run(args: argparse.Namespace) -> dict:
    if args.seeds and args.seed is not None:
        raise UsageError("--seed and --seeds: give one of them")
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        raise UsageError(f"--seeds {' '.join(map(str, args.seeds))}: each seed once")
    folder = outputs.run_folder("charlm-reference", args.out)
    assert all(char_lm.RUN_SETTINGS[k] == v for k, v in FIXED.items()), "the reference's fixed recipe is not jaxrnn's"
    given = {k: getattr(args, k) for k in RECIPE}
    recipe = {k: char_lm.RUN_SETTINGS[k] if v is None else v for k, v in given.items()}
    seeds = args.seeds or [recipe["seed"]]
    if args.seeds:
        recipe["seed"] = None  # one per run: saved["seeds"]
    results = []
    for text in args.texts:
        try:
            corpus = load_corpus(text, folder=args.data_dir, max_chars=recipe["max_chars"])
        except RuntimeError as e:
            raise UsageError(str(e)) from None
        for cell in args.cells:
            for layers in args.layers:
                for seed in seeds:
                    row = {"text": text, "chars": len(corpus.text), "cell": cell, "layers": layers, "seed": seed}
                    name = f"{text}-{cell}-{layers}" + (f"-seed{seed}" if args.seeds else "")
                    if "jaxrnn" in args.sides:
                        row["jaxrnn"] = train_jaxrnn(text, folder / name, cell=cell, layers=layers,
                                                     hidden_size=args.hidden_size, steps=args.steps,
                                                     eval_every=args.eval_every, data_dir=args.data_dir,
                                                     recipe=given | {"seed": seed}, extra=args.jaxrnn_flags.split())
                    if "torch" in args.sides:
                        row["torch"] = train_torch(corpus, cell=cell, layers=layers, hidden_size=args.hidden_size,
                                                   steps=args.steps, eval_every=args.eval_every,
                                                   **{k: v for k, v in recipe.items() if k != "max_chars"} | {"seed": seed})
                    results.append(row)
                    print(json.dumps(row, default=str), flush=True)
    saved = {"recipe": recipe, "seeds": seeds, "hidden_size": args.hidden_size, "steps": args.steps,
             "jaxrnn_flags": args.jaxrnn_flags, "machine": speed.describe_machine(), "versions": speed.versions(),
             "results": results}
    outputs.write_outputs(folder, render(saved), saved)
    return saved


def render(saved: dict) -> str:
    """The comparison table: bpc and seconds per step each side, and their ratios (jaxrnn / torch); with
    several seeds, a row per seed, then each configuration's mean bpc, its range, and the ratio of the means."""
    several = len(saved.get("seeds", ())) > 1
    rows = []
    for r in saved["results"]:
        j, t = r.get("jaxrnn"), r.get("torch")
        fmt = lambda side, key, spec: format(side[key], spec) if side else "-"
        rows.append([r["text"], r["cell"], r["layers"], *([r["seed"]] if several else []),
                     fmt(j, "val_bpc", ".3f"), fmt(t, "val_bpc", ".3f"),
                     f"{j['val_bpc'] / t['val_bpc']:.3f}" if j and t else "-",
                     fmt(j, "s_per_step", ".4f"), fmt(t, "s_per_step", ".4f"),
                     f"{j['s_per_step'] / t['s_per_step']:.2f}" if j and t else "-",
                     fmt(j, "wall_s", ".0f"), fmt(t, "wall_s", ".0f")])
    header = ["text", "cell", "layers", *(["seed"] if several else []), "jaxrnn bpc", "torch bpc", "bpc ratio",
              "jaxrnn s/step", "torch s/step", "step time ratio", "jaxrnn wall s", "torch wall s"]
    table = outputs.markdown_table(header, rows)
    if not several:
        return table
    configs: dict[tuple, dict[str, list[float]]] = {}
    for r in saved["results"]:
        by_side = configs.setdefault((r["text"], r["cell"], r["layers"]), {"jaxrnn": [], "torch": []})
        for side in by_side:
            if r.get(side):
                by_side[side].append(r[side]["val_bpc"])
    spread = lambda v: f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" if v else "-"
    means = [[*config, len(sides["jaxrnn"] or sides["torch"]), spread(sides["jaxrnn"]), spread(sides["torch"]),
              f"{np.mean(sides['jaxrnn']) / np.mean(sides['torch']):.3f}" if sides["jaxrnn"] and sides["torch"] else "-"]
             for config, sides in configs.items()]
    return table + "\n" + outputs.markdown_table(
        ["text", "cell", "layers", "seeds", "jaxrnn bpc, mean (range)", "torch bpc, mean (range)",
         "ratio of the means"], means)


def main(argv=None) -> dict:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")

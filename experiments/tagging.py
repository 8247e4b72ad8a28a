"""Many-to-many tagging where a step's label depends on the future: unidirectional against bidirectional.

Each sequence holds random digits 0-9 (lengths 10 to 40, right-padded); the label of step t is
``max(x[t-1], x[t+1])``, the larger of its two neighbours (0 beyond either end). A unidirectional GRU has
seen ``x[t-1] = a`` but not ``x[t+1]`` when it must answer; its best guess is ``a`` itself, right with
probability (a + 1) / 10, so it can reach at most 55% on average (slightly more at the last step, whose right
neighbour is known to be 0). A bidirectional GRU (:class:`jaxrnn.RNN`, ``bidirectional=True``, padding-aware
reverse) sees both neighbours and can reach 100%. Same sizes, same budget; the loss is
:func:`jaxrnn.heads.masked_cross_entropy`, so padding never counts.

    python experiments/tagging.py            # about 2 minutes on a 2-core CPU

Writes ``tagging.png`` (held-out token accuracy over training) and a results table.
"""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp

import jaxrnn
from jaxrnn import heads, training
from jaxrnn.programs import arguments

from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs

from experiments._common import experiment_parser


def batch(key: jax.Array, batch_size: int, max_len: int, min_len: int = 10):
    """Tokens (B, T), labels (B, T), lengths (B,); padding holds zeros."""
    k_x, k_n = jax.random.split(key)
    lengths = jax.random.randint(k_n, (batch_size,), min_len, max_len + 1)
    mask = heads.sequence_mask(lengths, max_len)
    x = jnp.where(mask, jax.random.randint(k_x, (batch_size, max_len), 0, 10), 0)
    left = jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]
    right = jnp.pad(x, ((0, 0), (0, 1)))[:, 1:]  # x is 0 past each row's end, so this is 0 at t = len-1
    return x, jnp.maximum(left, right), lengths


def model(bidirectional: bool, hidden: int):
    rnn = jaxrnn.RNN(jaxrnn.gru(hidden), bidirectional=bidirectional)

    def init(key):
        k_e, k_r, k_o = jax.random.split(key, 3)
        return {"embed": jax.random.normal(k_e, (10, 16)) * 0.1, "rnn": rnn.init(k_r, 16),
                "w": jax.nn.initializers.glorot_uniform()(k_o, (rnn.output_size, 10)), "b": jnp.zeros(10)}

    def logits(params, x, lengths):
        ys, _ = rnn.apply(params["rnn"], params["embed"][x], lengths=lengths)
        return ys @ params["w"] + params["b"]

    return init, logits


def run(args) -> dict:
    folder = run_folder("tagging", args.out)
    test_x, test_y, test_len = batch(jax.random.key(10**6), 1000, args.max_len)
    test_mask = heads.sequence_mask(test_len, args.max_len)
    results, curves = {"config": vars(args), "runs": {}}, {}
    for bidirectional in (False, True):
        name = "bidirectional" if bidirectional else "unidirectional"
        init, logits = model(bidirectional, args.hidden)
        optimizer = training.make_optimizer("adam", args.lr, clip_norm=1.0)

        def loss_fn(params, carry, b, key, logits=logits):
            del key
            x, y, n = b
            return heads.masked_cross_entropy(logits(params, x, n), y, n), (carry, {})

        step = training.make_train_step(loss_fn, optimizer)
        state = training.init_state(init(jax.random.key(args.seed)), optimizer, jax.random.key(0))
        accuracy = jax.jit(lambda p, logits=logits: heads.masked_mean(
            jnp.argmax(logits(p, test_x, test_len), -1) == test_y, test_mask))
        curve = []
        for i in range(args.steps):
            state, metrics = step(state, batch(jax.random.fold_in(jax.random.key(args.seed + 1), i),
                                               args.batch_size, args.max_len))
            if (i + 1) % args.eval_every == 0:
                curve.append((i + 1, float(accuracy(state.params))))
        curves[name] = curve
        results["runs"][name] = {"test_token_accuracy": curve[-1][1], "final_train_loss": float(metrics["loss"]),
                                 "curve": curve}
    table = markdown_table(["model", "held-out token accuracy", "final train loss"],
                           [[n, f"{100 * r['test_token_accuracy']:.1f}%", r["final_train_loss"]]
                            for n, r in results["runs"].items()])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, curve in curves.items():
        ax.plot(*zip(*curve), label=name)
    ax.axhline(0.55, color="k", ls="--", lw=1, label="best possible without the future (55%)")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out token accuracy")
    ax.set_title("label = max(x[t-1], x[t+1])")
    ax.legend()
    save_figure(fig, folder / "tagging.png")
    write_outputs(folder, table, results)
    return results


def parser() -> arguments.ArgumentParser:
    p = experiment_parser("tagging", __doc__, steps=1500, batch_size=32, lr=3e-3)
    p.add_argument("--max-len", type=arguments.positive_int, default=40)
    p.add_argument("--hidden", type=arguments.positive_int, default=64)
    p.add_argument("--eval-every", type=arguments.positive_int, default=100)
    return p


if __name__ == "__main__":
    run(parser().parse_args())

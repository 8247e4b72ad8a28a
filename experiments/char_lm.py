"""Character-level language model: train (same as ``jaxrnn train char-lm``) or plot runs.

    python experiments/char_lm.py train --cell lstm --out runs/char-lm-lstm [options]
    python experiments/char_lm.py plot runs/char-lm-lstm runs/char-lm-gru --png docs/char_lm.png

``plot`` draws training loss and validation bits per character against wall time
and steps from each run's ``metrics.jsonl``.
"""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np

from jaxrnn.programs import arguments
from jaxrnn.programs.cli import main as jaxrnn_main
from jaxrnn.programs.outputs import pyplot, save_figure
from jaxrnn.programs.runlog import read_metrics


def plot(runs: list[str], png: str) -> None:
    plt = pyplot()
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        records = read_metrics(run)
        steps = sorted(records)
        loss = np.array([records[s]["loss"] for s in steps], float) / np.log(2)
        smooth = np.convolve(loss, np.ones(50) / 50, mode="valid")
        line, = ax_step.plot(steps[49:], smooth, lw=0.8, alpha=0.6, label=f"{pathlib.Path(run).name} train")
        val = [(s, records[s]["val_bpc"], records[s]["elapsed_s"]) for s in steps if "val_bpc" in records[s]]
        if val:
            s, v, t = zip(*val)
            ax_step.plot(s, v, "o-", ms=3, color=line.get_color(), label=f"{pathlib.Path(run).name} validation")
            ax_time.plot(np.array(t) / 60, v, "o-", ms=3, color=line.get_color(), label=pathlib.Path(run).name)
    ax_step.set(xlabel="step", ylabel="bits per character", title="training (50-step mean) and validation")
    ax_time.set(xlabel="wall time (minutes, 2-core CPU)", ylabel="validation bits per character",
                title="validation against time")
    for ax in (ax_step, ax_time):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, png)
    print(f"wrote {png}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plot"]:
        p = arguments.ArgumentParser(prog="char_lm.py plot")
        p.add_argument("runs", nargs="+")
        p.add_argument("--png", default="char_lm.png")
        a = p.parse_args(argv[1:])
        plot(a.runs, a.png)
    elif argv[:1] == ["train"]:
        jaxrnn_main(["train", "char-lm", *argv[1:]])
    elif argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
    else:
        given = f"got {argv[0]!r}" if argv else "got none"
        print(f"char_lm.py: error: expected a command, train or plot ({given}); --help shows both", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()

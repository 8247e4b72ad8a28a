"""What the experiments share: their command line's common options, a many-to-one regressor on the
adding problem and a train loop; their outputs (run folder, tables, figures) are the programs' own, from
:mod:`jaxrnn.programs.outputs`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import jaxrnn
from jaxrnn import training
from jaxrnn.programs import arguments


def experiment_parser(name: str, doc: str, *, steps: int, batch_size: int,
                      lr: float | None = 3e-3) -> arguments.ArgumentParser:
    """An experiment's command line with the options every one takes (``--steps``, ``--batch-size``,
    ``--lr`` unless ``lr`` is None, ``--seed``, ``--out``); the experiment adds its own."""
    p = arguments.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--steps", type=arguments.positive_int, default=steps, help="training steps")
    p.add_argument("--batch-size", type=arguments.positive_int, default=batch_size)
    if lr is not None:
        p.add_argument("--lr", type=arguments.positive_float, default=lr, help="learning rate")
    p.add_argument("--seed", type=arguments.nonnegative_int, default=0)
    p.add_argument("--out", help=f"output folder (default runs/{name}-<time>)")
    return p


def regressor(cell: jaxrnn.Cell, input_size: int, key: jax.Array) -> dict:
    """A cell and a linear readout of its last output, the readout starting at the mean guess 1.0."""
    return {"cell": cell.init(key, input_size), "w": jnp.zeros(cell.hidden_size), "b": jnp.ones(())}


def predict(cell: jaxrnn.Cell, params: dict, xs, *, resets=None) -> jax.Array:
    """The readout at every step (B, T)."""
    ys, _ = jaxrnn.scan(cell, params["cell"], xs, resets=resets)
    return ys @ params["w"] + params["b"]


def last_step_mse(cell: jaxrnn.Cell) -> training.LossFn:
    """loss_fn for make_train_step: MSE of the prediction at the last step of batch = (xs, targets)."""

    def loss(params, carry, batch, key):
        del key
        return jnp.mean((predict(cell, params, batch.xs)[:, -1] - batch.targets) ** 2), (carry, {})

    return loss


def fit(loss_fn: training.LossFn, params: dict, optimizer: training.Optimizer, batch_at: Callable[[int], Any],
        steps: int, *, desc: str, evaluate: Callable[[dict], float] | None = None, eval_every: int = 0,
        stop_when: Callable[[float], bool] | None = None, skip_nonfinite: bool = True) -> tuple[list[dict], dict]:
    """Train for ``steps`` steps (``batch_at(step)`` gives each batch); returns every step's
    metrics and the final params.

    With ``evaluate`` and ``eval_every``, adds ``eval`` to every ``eval_every``-th record, and stops
    early once ``stop_when(eval)`` holds.
    """
    step_fn = training.make_train_step(loss_fn, optimizer, skip_nonfinite=skip_nonfinite)
    state = training.init_state(params, optimizer, jax.random.key(0))
    history = []
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0):
        state, metrics = step_fn(state, batch_at(step))
        record = {k: float(v) for k, v in jax.device_get(metrics).items()}
        record["step"] = step + 1
        if evaluate is not None and eval_every and (step + 1) % eval_every == 0:
            record["eval"] = evaluate(state.params)
            if stop_when is not None and stop_when(record["eval"]):
                history.append(record)
                break
        history.append(record)
    return history, state.params


def nanmean_tail(values: list[float], fraction: float = 0.1) -> float:
    tail = np.asarray(values[-max(1, int(len(values) * fraction)):], np.float64)
    finite = tail[np.isfinite(tail)]
    return float(finite.mean()) if finite.size else float("nan")

"""Forecasting a real series: Mauna Loa CO2 (statsmodels' bundled ``co2``), one and 12 months ahead.

The weekly series (1958-2001) is averaged per month (526 months, gaps interpolated). The first 80% trains,
the last 20% (about 8.5 years) tests. A GRU reads the last 48 monthly changes (standardised) and predicts
the change from the last value to each of the next 12 months at once (a many-to-one, multi-output head), so
one model gives the one-step and the multi-step forecasts. Baselines: the naive forecast (the last value,
for every horizon), the seasonal naive forecast (the value 12 months before the target month), a windowed
MLP (the same 48 changes in, the same 12 out, the same training; one hidden layer of 64, about as many
weights as the GRU at its default width), and the classical model, a seasonal ARIMA (p, 1, q)(P, 1, Q)_12
whose orders (p, q up to ``--max-order``, P, Q up to min(1, ``--max-order``)) minimise the AIC on the training months; fitted once on them, it forecasts
from each test origin with the data up to it (statsmodels' SARIMAX, its state-space filter run over the
whole series with the fitted parameters).

    python experiments/forecasting.py            # about 20 s on a 2-core CPU

Writes ``forecasting.png`` (test-period forecasts and MAE per horizon) and a results table (MAE in ppm).
"""

from __future__ import annotations

import pathlib
import sys

if __package__ in (None, ""):  # run as a script: make `experiments` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn
from jaxrnn import training
from jaxrnn.programs import arguments

from jaxrnn.programs.outputs import markdown_table, pyplot, run_folder, save_figure, write_outputs

from experiments._common import experiment_parser, fit

SEASON = 12


def monthly_co2() -> np.ndarray:
    """statsmodels' weekly Mauna Loa CO2, as a monthly mean series in ppm (offline: shipped with statsmodels)."""
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"]
    return weekly.resample("MS").mean().interpolate().to_numpy(np.float64)


def windows(series: np.ndarray, ends: np.ndarray, window: int, horizon: int):
    """For each forecast origin t in ``ends``: the last ``window`` changes up to t, and y[t+1..t+h] - y[t]."""
    diffs = np.diff(series, prepend=series[0])
    xs = np.stack([diffs[t - window + 1 : t + 1] for t in ends])
    ys = np.stack([series[t + 1 : t + 1 + horizon] - series[t] for t in ends])
    return xs, ys


def random_batches(xs: np.ndarray, ys: np.ndarray, batch_size: int, seed: int):
    """``batch_at(step)`` for :func:`experiments._common.fit`: rows drawn at random, a generator of its own."""
    rng = np.random.default_rng(seed)

    def batch_at(step: int):
        idx = rng.integers(0, len(xs), batch_size)
        return xs[idx], ys[idx]

    return batch_at


def windowed_mlp(args, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """An MLP on the same standardised windows, trained as the GRU is (Adam, clip 1, same steps, batch and
    rate); its standardised forecasts for ``x_test``."""
    hidden = 64
    W = x_train.shape[1]
    params = {"w1": jax.random.normal(jax.random.key(args.seed + 1), (W, hidden)) / np.sqrt(W), "b1": jnp.zeros(hidden),
              "w2": jnp.zeros((hidden, y_train.shape[1])), "b2": jnp.zeros(y_train.shape[1])}

    def predict(p, x):
        return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss_fn(p, carry, b, key):
        del key
        x, target = b
        return jnp.mean((predict(p, x) - target) ** 2), (carry, {})

    _, params = fit(loss_fn, params, training.make_optimizer("adam", args.lr, clip_norm=1.0),
                    random_batches(x_train, y_train, args.batch_size, args.seed + 1), args.steps, desc="MLP")
    return np.asarray(predict(params, x_test))


def sarima_forecasts(y: np.ndarray, split: int, origins: np.ndarray, horizon: int, max_order: int):
    """``((p, 1, q), (P, 1, Q, 12))`` chosen by AIC on ``y[:split]``, and its forecasts (len(origins),
    horizon) of ``y[t+1 .. t+horizon]`` from each origin t, with the data up to t and the parameters fitted on
    the training months."""
    import warnings

    from statsmodels.tsa.statespace.sarimax import SARIMAX

    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the grid's poorer orders
        for p in range(max_order + 1):
            for q in range(max_order + 1):
                for P in range(min(max_order, 1) + 1):
                    for Q in range(min(max_order, 1) + 1):
                        order, seasonal = (p, 1, q), (P, 1, Q, SEASON)
                        fit = SARIMAX(y[:split], order=order, seasonal_order=seasonal).fit(disp=False)
                        if best is None or fit.aic < best[0]:
                            best = (fit.aic, order, seasonal, fit)
        _, order, seasonal, fit = best
        whole = fit.apply(y)  # the fitted parameters, filtered over the whole series
        forecasts = np.stack([whole.get_prediction(start=t + 1, end=t + horizon, dynamic=True).predicted_mean
                              for t in origins])
    return (order, seasonal), forecasts


def run(args) -> dict:
    folder = run_folder("forecasting", args.out)
    y = monthly_co2()
    split = int(0.8 * len(y))
    H, W = args.horizon, args.window
    train_ends = np.arange(W, split - H)
    test_ends = np.arange(split, len(y) - H)
    x_train, y_train = windows(y, train_ends, W, H)
    x_test, y_test = windows(y, test_ends, W, H)
    x_scale, y_scale = x_train.std(), y_train.std()

    cell = jaxrnn.gru(args.hidden)
    key = jax.random.key(args.seed)
    params = {"cell": cell.init(key, 1), "w": jnp.zeros((args.hidden, H)), "b": jnp.zeros(H)}

    def predict(p, x):
        ys, _ = jaxrnn.scan(cell, p["cell"], (x / x_scale)[..., None])
        return (jaxrnn.heads.last_valid(ys) @ p["w"] + p["b"]) * y_scale

    def loss_fn(p, carry, b, key):
        del key
        x, target = b
        return jnp.mean(((predict(p, x) - target) / y_scale) ** 2), (carry, {})

    history, trained = fit(loss_fn, params, training.make_optimizer("adam", args.lr, clip_norm=1.0),
                           random_batches(x_train, y_train, args.batch_size, args.seed), args.steps, desc="GRU")

    rnn = np.asarray(predict(trained, x_test)) + y[test_ends][:, None]
    mlp = windowed_mlp(args, x_train / x_scale, y_train / y_scale, x_test / x_scale) * y_scale + y[test_ends][:, None]
    orders, sarima = sarima_forecasts(y, split, test_ends, H, args.max_order)
    truth = y_test + y[test_ends][:, None]
    naive = np.repeat(y[test_ends][:, None], H, axis=1)
    seasonal = np.stack([y[test_ends + h + 1 - SEASON * (1 + h // SEASON)] for h in range(H)], axis=1)
    sarima_name = "SARIMA{}x{}".format(orders[0], orders[1])
    forecasts = {"GRU": rnn, "windowed MLP": mlp, sarima_name: sarima, "naive (last value)": naive,
                 "seasonal naive (12 months back)": seasonal}
    mae = {name: np.abs(f - truth).mean(axis=0) for name, f in forecasts.items()}
    rows = [[name, float(m[0]), float(m.mean()), float(m[-1])] for name, m in mae.items()]
    table = markdown_table(["forecast", "MAE 1 month ahead (ppm)", f"MAE mean over 1-{H} months",
                            f"MAE {H} months ahead"], rows)

    plt = pyplot()
    fig, (ax_series, ax_mae) = plt.subplots(1, 2, figsize=(11, 3.8))
    months = np.arange(len(y))
    ax_series.plot(months[split - 36 :], y[split - 36 :], "k", lw=1, label="observed")
    ax_series.plot(test_ends + 1, rnn[:, 0], label="GRU, 1 month ahead")
    ax_series.plot(test_ends + H, rnn[:, -1], label=f"GRU, {H} months ahead", alpha=0.8)
    ax_series.axvline(split, color="gray", ls=":")
    ax_series.set_xlabel("month since 1958-03")
    ax_series.set_ylabel("CO2 (ppm)")
    ax_series.legend(fontsize=8)
    for name, m in mae.items():
        ax_mae.plot(range(1, H + 1), m, "o-", label=name)
    ax_mae.set_xlabel("horizon (months)")
    ax_mae.set_ylabel("test MAE (ppm)")
    ax_mae.set_yscale("log")  # the naive forecasts' errors would flatten the others' onto one line
    ax_mae.legend(fontsize=8)
    save_figure(fig, folder / "forecasting.png")
    results = {"config": vars(args), "mae": {k: v.tolist() for k, v in mae.items()}, "sarima_orders": orders,
               "final_train_loss": history[-1]["loss"], "train_months": split, "test_months": len(y) - split}
    write_outputs(folder, table, results)
    return results


def parser() -> arguments.ArgumentParser:
    p = experiment_parser("forecasting", __doc__, steps=2000, batch_size=32, lr=3e-3)
    p.add_argument("--window", type=arguments.positive_int, default=48)
    p.add_argument("--horizon", type=arguments.positive_int, default=12)
    p.add_argument("--hidden", type=arguments.positive_int, default=32)
    p.add_argument("--max-order", type=arguments.nonnegative_int, default=2,
                   help="SARIMA's largest p and q searched (P and Q: up to min(1, this))")
    return p


if __name__ == "__main__":
    run(parser().parse_args())

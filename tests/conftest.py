"""Shared test helpers: small random inputs and one cell of each kind."""

import os

# The suite compiles hundreds of small XLA programs and runs each a few times: LLVM's optimisation
# level 0 compiles them about a quarter faster. It changes only how XLA's CPU code is generated,
# never what it computes (XLA's own passes and the float semantics stay as they are); set before
# JAX starts its backend, and not over a level the caller chose in XLA_FLAGS.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import jaxrnn  # noqa: E402

# One instance of each cell kind the library has, as (id, factory(H)).
CELL_FACTORIES = {
    "vanilla-tanh": lambda h: jaxrnn.vanilla(h, "tanh"),
    "vanilla-relu": lambda h: jaxrnn.vanilla(h, "relu"),
    "lstm": lambda h: jaxrnn.lstm(h),
    "gru": lambda h: jaxrnn.gru(h),
    "mingru": lambda h: jaxrnn.mingru(h),  # a linear cell (no W_h); the minLSTM's tests are test_linear's
}


@pytest.fixture(params=list(CELL_FACTORIES), ids=list(CELL_FACTORIES))
def make_cell(request):
    return CELL_FACTORIES[request.param]


def random_params(cell, key, input_size, scale=0.5):
    """Params with every entry random and non-zero: zero biases hide missing-bias bugs."""
    params = cell.init(key, input_size)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


def random_inputs(key, *shape):
    return jax.random.normal(key, shape, jnp.float32)

"""Shared test helpers: small random inputs and the three cells."""

import jax
import jax.numpy as jnp
import pytest

import jaxrnn

# One instance of each cell kind the library has, as (id, factory(H)).
CELL_FACTORIES = {
    "vanilla-tanh": lambda h: jaxrnn.vanilla(h, "tanh"),
    "vanilla-relu": lambda h: jaxrnn.vanilla(h, "relu"),
    "lstm": lambda h: jaxrnn.lstm(h),
    "gru": lambda h: jaxrnn.gru(h),
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

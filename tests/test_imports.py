"""What `import jaxrnn` loads: jax and numpy, none of the libraries only some modules or programs need.

Each check runs in a fresh interpreter: this test process has imported flax, optax and the rest already.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the cwd of `python -c`: this checkout's jaxrnn

# Loaded on first use only: flax (jaxrnn.linen), optax (losses, jaxrnn.training), orbax (checkpoints,
# streaming.save); the programs' extra; the test tools.
HEAVY = ("flax", "optax", "orbax", "chex", "matplotlib", "sklearn", "tqdm", "torch", "tensorboardX")


def _loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return which of HEAVY it left in sys.modules."""
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_jaxrnn_loads_only_jax_and_numpy():
    assert _loaded_after("import jaxrnn") == []


def test_core_modules_load_no_extra_library():
    # The core imports only jax, numpy and its own modules; optax and orbax load inside the functions.
    core = "cells, diagnostics, heads, interop, layers, native, seq2seq, streaming, tasks, unroll"
    assert _loaded_after(f"from jaxrnn import {core}") == []


def test_star_import_loads_nothing_heavy_and_shadows_no_flax_name():
    loaded = _loaded_after("from flax import nnx\nfrom jaxrnn import *\nassert nnx.Rngs and scan and lstm")
    assert loaded == _loaded_after("from flax import nnx")  # the star brings nothing more


def test_submodules_load_lazily_on_first_use():
    loaded = _loaded_after(
        "import jaxrnn\n"
        "assert 'linen' in dir(jaxrnn) and set(jaxrnn.__all__) <= set(dir(jaxrnn))\n"
        "assert 'flax' not in sys.modules\n"
        "assert jaxrnn.linen.RNN is sys.modules['jaxrnn.linen'].RNN\n"
        "assert 'flax' in sys.modules and 'orbax' not in sys.modules\n"
        "from jaxrnn import streaming, training\n"
        "assert training.make_optimizer\n"
        "assert not hasattr(jaxrnn, 'no_such_name')"
    )
    assert "flax" in loaded and "optax" in loaded and "orbax" not in loaded


def test_command_without_programs_extra_says_so_in_one_line():
    # tqdm and scikit-learn made unimportable (importlib finds no spec for a None entry).
    code = ("import sys\nsys.modules['tqdm'] = sys.modules['sklearn'] = None\n"
            "from jaxrnn.cli import main\nmain(['gradient-flow'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "jaxrnn: error: the jaxrnn command needs tqdm, scikit-learn (not installed): pip install 'jaxrnn[programs]'"]

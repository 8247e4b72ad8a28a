"""What `import jaxrnn` loads: jax and numpy, none of the libraries only some modules or programs need;
and the boundary between the core and the programs (jaxrnn/programs, experiments, benchmarks).

The loading checks run in a fresh interpreter: this test process has imported flax, optax and the rest
already. The boundary checks read the source (ast): they see imports a run might not reach.
"""

import ast
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


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_jaxrnn_loads_only_jax_and_numpy():
    assert _loaded_after("import jaxrnn") == []
    # An allow-list, not only the deny-list above: past what `import jax, numpy` loads, only jaxrnn's
    # own core modules and the standard library.
    extra = _modules_after("import jaxrnn") - _modules_after("import jax, numpy")
    own = {"jaxrnn", "jax", "jaxlib", "numpy"}  # a jax or numpy submodule jaxrnn uses is no foreign library
    foreign = {m for m in extra if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] not in own}
    assert not foreign, sorted(foreign)
    assert not {m for m in extra if m.startswith("jaxrnn.programs")}


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
            "from jaxrnn.programs.cli import main\nmain(['gradient-flow'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "jaxrnn: error: the jaxrnn command needs tqdm, scikit-learn (not installed): pip install 'jaxrnn[programs]'"]


# --------------------------------------------------------------------------- the boundary: core | programs

JAXRNN = ROOT / "jaxrnn"
CORE_FILES = sorted(JAXRNN.glob("*.py")) + sorted((JAXRNN / "native").rglob("*.py"))
PROGRAM_FILES = sorted((JAXRNN / "programs").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py")) \
    + sorted((ROOT / "benchmarks").glob("*.py"))

def imported_modules(tree: ast.AST, package: str = "") -> list[str]:
    """Every module an ``import`` names, and ``module.name`` for each ``from module import name``
    (``name`` may be a module); relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_jaxrnn_uses(tree: ast.AST) -> list[str]:
    """Private jaxrnn names a module reaches: ``jaxrnn._x`` or ``jaxrnn.m._x`` imported, ``_x`` imported
    from a jaxrnn module, or an attribute chain ``jaxrnn.m._x`` / ``m._x`` from a name bound to jaxrnn
    or to something imported from it."""
    is_jaxrnn = lambda module: module == "jaxrnn" or module.startswith("jaxrnn.")
    found, bound = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_jaxrnn(alias.name):
                    found += [alias.name] if any(map(_is_private, alias.name.split("."))) else []
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level and is_jaxrnn(node.module or ""):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found += [name] if any(map(_is_private, name.split("."))) else []
                bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, root = [node.attr], node.value
            while isinstance(root, ast.Attribute):
                chain.append(root.attr)
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound and any(map(_is_private, chain)):
                found.append(".".join([root.id, *reversed(chain)]))
    return found


def test_the_boundary_checks_see_what_they_look_for():
    parse = ast.parse
    assert "jaxrnn.programs.cli" in imported_modules(parse("from jaxrnn.programs import cli"))
    assert "jaxrnn.programs" in imported_modules(parse("from . import programs"), package="jaxrnn")
    for code in ("from jaxrnn import _checks", "import jaxrnn._checks", "from jaxrnn._checks import UsageError",
                 "from jaxrnn.unroll import _masked", "import jaxrnn\njaxrnn.unroll._masked",
                 "import jaxrnn as j\nj.cells._x", "from jaxrnn import native\nnative._forward(1)"):
        assert private_jaxrnn_uses(parse(code)), code
    for code in ("import jaxrnn\njaxrnn.__version__", "from jaxrnn import training\ntraining.make_steps",
                 "import numpy as np\nnp._x", "def f(cell):\n    return cell._replace(a=1)"):
        assert not private_jaxrnn_uses(parse(code)), code


def test_the_core_never_imports_the_programs():
    bad = {}
    for path in CORE_FILES:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        modules = imported_modules(ast.parse(path.read_text(), str(path)), package)
        bad[path.relative_to(ROOT).as_posix()] = [m for m in modules if m.split(".")[:2] == ["jaxrnn", "programs"]]
    assert not {k: v for k, v in bad.items() if v}, "the core must not depend on the programs"


# The third-party libraries a core module may import (inside the functions that use them, except for
# the modules that exist to wrap them); every other core module imports jax, numpy, the standard
# library and jaxrnn only.
CORE_LIBRARIES = {"linen.py": {"flax"}, "nnx.py": {"flax"}, "training.py": {"optax"},
                  "checkpoints.py": {"orbax"}, "interop.py": {"torch", "flax"}, "tasks.py": {"sklearn"}}


def test_the_core_imports_jax_numpy_and_itself_and_a_library_only_where_it_wraps_it():
    bad = {}
    for path in CORE_FILES:
        tops = {m.split(".")[0] for m in imported_modules(ast.parse(path.read_text(), str(path)))} - {""}
        allowed = {"jax", "jaxlib", "numpy", "jaxrnn", "__future__"} | CORE_LIBRARIES.get(path.name, set())
        bad[path.relative_to(ROOT).as_posix()] = sorted(tops - allowed - set(sys.stdlib_module_names))
    assert not {k: v for k, v in bad.items() if v}, "third-party imports outside CORE_LIBRARIES"


def test_the_programs_use_only_the_public_api():
    assert any(p.name == "cli.py" for p in PROGRAM_FILES)
    bad = {}
    for path in PROGRAM_FILES:
        name = path.relative_to(ROOT).as_posix()
        bad[name] = sorted(set(private_jaxrnn_uses(ast.parse(path.read_text(), str(path)))))
    assert not {k: v for k, v in bad.items() if v}, "private jaxrnn names used outside the core"

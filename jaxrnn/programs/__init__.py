"""The programs behind the ``jaxrnn`` command: what is run, not what is imported.

The command itself (:mod:`~jaxrnn.programs.cli`), the gradient-flow benchmark,
the speed benchmarks, the long-range experiment and the character-level
language model, with what only they need: argument parsing, run folders and
tables, corpora and the metrics log. ``benchmarks/`` and ``experiments/`` are
thin scripts over these modules.

They are built only on jaxrnn's public API (no ``jaxrnn._private`` name; held
by tests/test_imports.py), as a user's own program would be, and the core
never imports them: ``import jaxrnn`` loads none of this package.
"""

"""Benchmarks that ship with the package, so that ``jaxrnn <command>`` runs them after ``pip install``."""

"""Experiments that reproduce the seeds' claims; each writes plots and a results table to runs/."""

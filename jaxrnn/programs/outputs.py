"""What the programs and experiments write: run folders, markdown tables, results files, figures.

Every program names its run the same way (:func:`run_path`, :func:`run_folder`:
``runs/<name>-YYYYmmdd-HHMMSS`` unless told where), writes its tables with
:func:`markdown_table` and draws with matplotlib's Agg backend (:func:`pyplot`,
:func:`save_figure`), so that each of these exists once.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any, Sequence


def run_path(name: str, given: str | pathlib.Path | None = None, *, suffix: str = "") -> pathlib.Path:
    """``given`` if there is one, else ``runs/<name>-<YYYYmmdd-HHMMSS><suffix>`` (now, local time).

    Example::

      >>> str(run_path("speed", "out/speed.json"))
      'out/speed.json'
      >>> str(run_path("speed", suffix=".json")).startswith("runs/speed-")
      True
    """
    if given:
        return pathlib.Path(given)
    return pathlib.Path(f"runs/{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}{suffix}")


def record_path(name: str, given: str | pathlib.Path | None = None) -> pathlib.Path:
    """Where a benchmark writes its JSON record (:func:`run_path` with ``.json``), checked before any work:
    a folder given for it is a :class:`~jaxrnn.programs.arguments.UsageError`; its parent is made."""
    from jaxrnn.programs.arguments import UsageError

    path = run_path(name, given, suffix=".json")
    if path.is_dir():
        raise UsageError(f"--json: {path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_folder(name: str, out: str | pathlib.Path | None = None) -> pathlib.Path:
    """The run's folder, :func:`run_path` (``out``, else ``runs/<name>-<time>``), created if missing."""
    folder = run_path(name, out)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A markdown table, one line per row, ending in a newline.

    Floats are written ``.4g``, anything else with ``str`` (format a cell yourself for another
    precision). ``align`` has one letter per column, ``l`` (the default) or ``r`` (numbers).

    Example::

      >>> print(markdown_table(["cell", "loss"], [["lstm", 0.0123456], ["gru", "-"]], align="lr"), end="")
      | cell | loss |
      |---|---:|
      | lstm | 0.01235 |
      | gru | - |
    """
    align = align or "l" * len(header)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align: expected one of 'l' or 'r' per column ({len(header)}), got {align!r}")
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(fmt(v) for v in header) + " |",
             "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(folder: pathlib.Path, table: str, results: Any) -> None:
    """``results.md`` (the table) and ``results.json`` in ``folder``; print the table and where."""
    (folder / "results.md").write_text(table)
    (folder / "results.json").write_text(json.dumps(results, indent=1, default=float))
    print(table)
    print(f"wrote {folder}/")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: files only, no window (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, *, rect: tuple[float, float, float, float] | None = None) -> None:
    """Lay out (``tight_layout``, within ``rect`` if given), write (110 dpi) and close a figure."""
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)

"""Run logs: JSONL metrics, and TensorBoard event files if asked and a writer is installed.

``metrics.jsonl`` gets one JSON object per logged step, flushed at once so a
crash loses nothing already logged (in a multi-process run, process 0 writes it; the others
have a :class:`NoLog`). A resumed run appends; when steps repeat
(the ones between the last checkpoint and a crash), the later line wins:
:func:`read_metrics` returns them that way.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any


def _tensorboard_writer(directory: pathlib.Path):
    """A SummaryWriter from tensorboardX or torch.utils.tensorboard, or None if neither is installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter(str(directory))


def _plain(value: Any) -> Any:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


class RunLog:
    """Append metrics to ``<directory>/metrics.jsonl`` (and, with ``tensorboard``, to TensorBoard event
    files under ``<directory>/tensorboard`` if tensorboardX or torch is installed)."""

    def __init__(self, directory: str | pathlib.Path, tensorboard: bool = False):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "metrics.jsonl"
        cut_short = False
        if path.exists() and path.stat().st_size:
            with path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                cut_short = f.read(1) != b"\n"
        self._file = path.open("a", buffering=1)
        if cut_short:  # a crash mid-line: end that line, or the next record would be glued to it and lost
            self._file.write("\n")
        self._tb = _tensorboard_writer(self.directory / "tensorboard") if tensorboard else None

    @property
    def has_tensorboard(self) -> bool:
        return self._tb is not None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": int(step)} | {k: _plain(v) for k, v in metrics.items()}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class NoLog:
    """A :class:`RunLog` that writes nothing: the other processes' of a multi-process run, whose
    process 0 writes the run's log."""

    has_tensorboard = False

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def atomic_write_text(path: str | pathlib.Path, text: str) -> None:
    """Write ``path`` whole or not at all: a crash mid-write leaves the previous version."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(directory: str | pathlib.Path, key: str | None = None) -> dict[int, dict[str, Any]]:
    """``{step: record}`` from ``metrics.jsonl``, later lines overriding earlier ones.

    With ``key``, only records that have it (e.g. ``"val_loss"``).
    """
    records: dict[int, dict[str, Any]] = {}
    path = pathlib.Path(directory) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if key is None or key in record:
            records[record["step"]] = record
    return records

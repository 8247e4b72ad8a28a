"""Checkpoints with orbax: the latest few for resuming, and the best by validation loss.

Two orbax ``CheckpointManager`` s under one run folder::

    <run>/checkpoints/latest/<step>/   periodic, the newest ``keep`` of them
    <run>/checkpoints/best/<step>/     the one with the lowest validation loss

orbax writes each checkpoint into a temporary folder and renames it when
complete, so a run killed mid-save (even with SIGKILL) leaves the previous
checkpoints whole; :meth:`Checkpoints.restore_latest` only sees finished ones.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Save and restore a :class:`~jaxrnn.training.TrainState` plus JSON metadata.

    Example::

      >>> import jax.numpy as jnp, tempfile
      >>> from jaxrnn.checkpoints import Checkpoints
      >>> ckpt = Checkpoints(tempfile.mkdtemp())
      >>> ckpt.save(10, {"w": jnp.ones(3)}, {"val_loss": 1.5})
      >>> ckpt.wait()
      >>> state, meta = ckpt.restore_latest({"w": jnp.zeros(3)})
      >>> float(state["w"].sum()), meta["step"]
      (3.0, 10)
      >>> ckpt.close()
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 2):
        root = pathlib.Path(directory).absolute() / "checkpoints"
        options = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)
        self.latest = ocp.CheckpointManager(root / "latest", options=options(keep))
        self.best = ocp.CheckpointManager(root / "best", options=options(1))
        self.best_val = min((self._meta(self.best, s).get("val_loss", float("inf")) for s in self.best.all_steps()),
                            default=float("inf"))

    @staticmethod
    def _args(state: Any, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    @staticmethod
    def _meta(manager: ocp.CheckpointManager, step: int) -> dict:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """A periodic checkpoint (asynchronous: the train loop goes on while it is written)."""
        self.latest.save(step, args=self._args(state, dict(meta or {}, step=step)))

    def save_if_best(self, step: int, state: Any, val_loss: float, meta: dict | None = None) -> bool:
        """Keep ``state`` as the best checkpoint if ``val_loss`` is the lowest so far."""
        if not val_loss < self.best_val:
            return False
        self.best_val = val_loss
        self.best.save(step, args=self._args(state, dict(meta or {}, step=step, val_loss=val_loss)))
        return True

    def _restore(self, manager: ocp.CheckpointManager, like: Any) -> tuple[Any, dict] | None:
        step = manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        out = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def restore_latest(self, like: Any) -> tuple[Any, dict] | None:
        """The newest finished checkpoint as ``(state, meta)`` shaped like ``like``, or None."""
        return self._restore(self.latest, like)

    def restore_best(self, like: Any) -> tuple[Any, dict] | None:
        """The best checkpoint by validation loss, or None."""
        return self._restore(self.best, like)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()

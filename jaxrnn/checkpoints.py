"""Checkpoints with orbax: the latest few for resuming, and the best by validation loss.

Two orbax ``CheckpointManager`` s under one run folder::

    <run>/checkpoints/latest/<step>/   periodic, the newest ``keep`` of them
    <run>/checkpoints/best/<step>/     the one with the lowest validation loss
    <run>/checkpoints/corrupt/         checkpoints set aside (never deleted): those that did not
                                       restore, and any in the way of a new save (below)

orbax writes each checkpoint into a temporary folder and renames it when
complete, so a run killed mid-save (even with SIGKILL) leaves the previous
checkpoints whole; :meth:`Checkpoints.restore_latest` only sees finished ones,
and the next :class:`Checkpoints` removes the unfinished temporary folders.
orbax removes the checkpoints beyond ``keep`` only once the new one is complete.

A finished checkpoint can still be damaged afterwards (a truncated file, a
deleted one). Restoring then falls back to the newest checkpoint that does
restore and reports the ones it skipped (``notify``). When resuming a run,
``set_aside=True`` moves the skipped ones to ``checkpoints/corrupt/``, so that
they neither count against ``keep`` (orbax would otherwise delete an intact
older checkpoint to make room) nor block a new save of the same step. orbax
writes a step only past its newest one: a save meets a checkpoint at or past
its step only after a run went back to an older one (a best checkpoint, say,
that this run's better one supersedes), and sets that one aside too.

Several processes (``jax.distributed``): every process makes its :class:`Checkpoints` on the same
folder (storage that all of them reach) and makes the same calls in the same order, as orbax
requires: each writes the shards of the state that its devices hold, process 0 the replicated
arrays and the metadata, and orbax's barriers finish a checkpoint only once every process has
written its part. Process 0 alone moves checkpoints aside, and a checkpoint counts as restored
only when it restored in every process. A checkpoint holds global arrays, not the processes'
shares of them: it restores in any number of processes, each taking the shards that ``like``
(arrays on its devices) asks for.

Errors: a save that cannot be written raises :class:`CheckpointError` at once
(the step folder is created before :meth:`Checkpoints.save` returns), or, for a
failure while the data is written in the background, at the next save,
:meth:`Checkpoints.wait` or :meth:`Checkpoints.close`; no background thread is
left waiting, so the process exits promptly.
"""

from __future__ import annotations

import contextlib
import gc
import pathlib
import shutil
import sys
import warnings
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or none of the checkpoints present could be read."""


def first_line(error: BaseException, limit: int = 240) -> str:
    """A one-line summary of an exception. orbax's are long and multi-line, and the specific
    one (tensorstore's ``OUT_OF_RANGE ...``) is often the innermost cause."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split()).split(" [tensorstore_spec")[0] or type(error).__name__
    if not isinstance(error, (ValueError, RuntimeError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet_orbax_coroutines():
    """A failed restore leaves orbax read coroutines whose errors were never retrieved; when they
    are collected Python prints each one as an "Exception ignored in" block of ~60 lines. The
    error itself is reported (in one line) by the caller: drop those blocks, and only those."""
    previous = sys.unraisablehook

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if code is None or "orbax" not in code.co_filename:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """What orbax restores ``x`` as: its shape, dtype and sharding. A leaf without a sharding (from
    ``jax.eval_shape``) goes to this process's first device: orbax would otherwise take the sharding
    the checkpoint was saved with, whose devices may not be here (another process's, say)."""
    abstract = ocp.utils.to_shape_dtype_struct(x)
    if getattr(abstract, "sharding", None) is None:
        abstract = jax.ShapeDtypeStruct(abstract.shape, abstract.dtype,
                                        sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    return abstract


class Checkpoints:
    """Save and restore a :class:`~jaxrnn.training.TrainState` plus JSON metadata.

    Arguments:
      directory: the run folder; checkpoints go to ``<directory>/checkpoints``.
      keep: how many periodic checkpoints to keep.
      read_only: only read (create nothing, clean nothing up), e.g. to sample from a run.
      notify: called with a one-line message for each checkpoint skipped or set
        aside (default: a ``RuntimeWarning``).

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

    def __init__(self, directory: str | pathlib.Path, keep: int = 2, *, read_only: bool = False,
                 notify: Callable[[str], None] | None = None):
        self.root = pathlib.Path(directory).absolute() / "checkpoints"
        self.notify = notify or _warn
        self.read_only = read_only

        def options(n: int, kind: str) -> ocp.CheckpointManagerOptions:
            return ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else n, save_interval_steps=0 if read_only else 1,
                create=not read_only, read_only=read_only,
                cleanup_tmp_directories=not read_only,  # what a killed save left behind
                # The step folder is made before save() returns: a folder that cannot be written raises
                # there, rather than leaving orbax's background threads waiting (minutes) for it.
                async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
                # Several processes: the two managers' barriers apart (a best and a latest save of the
                # same step would otherwise wait on the same names, and hang).
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=kind))

        try:
            self.latest = ocp.CheckpointManager(self.root / "latest", options=options(keep, "latest"))
            self.best = ocp.CheckpointManager(self.root / "best", options=options(1, "best"))
        except OSError as e:
            raise CheckpointError(f"checkpoints: cannot use {self.root}: {first_line(e)}") from e
        self.best_val = min((self._val_loss(s) for s in self.best.all_steps()), default=float("inf"))
        self._barriers = 0  # how many of this object's own barriers (each needs a name of its own)

    @staticmethod
    def _all_agree(ok: bool) -> bool:
        """Whether ``ok`` holds in every process (one process: ``ok``)."""
        if jax.process_count() == 1:
            return ok
        from jax.experimental import multihost_utils

        return bool(np.all(multihost_utils.process_allgather(np.array(ok, np.int32))))

    def _barrier(self, what: str) -> None:
        """Every process waits here for the others (nothing with one process)."""
        self._barriers += 1
        # Not the path: hosts may mount the run's folder at different places.
        ocp.multihost.sync_global_processes(f"jaxrnn.checkpoints:{what}:{self._barriers}")

    @staticmethod
    def _args(state: Any, meta: dict) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

    def _val_loss(self, step: int) -> float:
        try:
            meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            return float(meta.get("val_loss", float("inf")))
        except Exception:  # unreadable: it does not count as the best (restore_best skips it too)
            return float("inf")

    # ------------------------------------------------------------------ writing

    def _save(self, manager: ocp.CheckpointManager, kind: str, step: int, state: Any, meta: dict) -> None:
        self._wait(manager)  # the previous save's error, if any, under its own name
        try:
            # orbax saves a step only past its newest one (else save() returns False, writing nothing). A
            # step at or past this one is left from before a resumed run went back to an older checkpoint:
            # one that did not restore, or a best that this save supersedes. Set it aside, never delete it.
            for later in sorted(s for s in manager.all_steps() if s >= step):
                target = self._set_aside(manager, kind, later)
                self.notify(f"checkpoint {kind}/{later} moved to {target} to make room for a new save of step {step}")
            if not manager.save(step, args=self._args(state, meta)):
                raise CheckpointError(f"checkpoint step {step}: orbax declined to write it to {manager.directory}")
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"checkpoint step {step} could not be written to {manager.directory}: {first_line(e)}") from e

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """A periodic checkpoint (asynchronous: the train loop goes on while it is written)."""
        self._save(self.latest, "latest", step, state, dict(meta or {}, step=step))

    def save_if_best(self, step: int, state: Any, val_loss: float, meta: dict | None = None) -> bool:
        """Keep ``state`` as the best checkpoint if ``val_loss`` is the lowest so far."""
        if not val_loss < self.best_val:
            return False
        self.best_val = val_loss
        self._save(self.best, "best", step, state, dict(meta or {}, step=step, val_loss=val_loss))
        return True

    def _set_aside(self, manager: ocp.CheckpointManager, kind: str, step: int) -> pathlib.Path:
        """Move a step's folder to ``checkpoints/corrupt/<kind>-<step>[-n]`` (never delete it); with
        several processes, process 0 moves it while the others wait."""
        source = pathlib.Path(manager.directory) / str(step)
        target = self.root / "corrupt" / f"{kind}-{step}"
        n = 1
        while target.exists():
            n += 1
            target = self.root / "corrupt" / f"{kind}-{step}-{n}"
        self._barrier(f"set aside {kind}/{step}")  # every process has named the same target
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
        self._barrier(f"set aside {kind}/{step}: moved")
        manager.reload()
        return target

    # ------------------------------------------------------------------ reading

    def _restore(self, manager: ocp.CheckpointManager, kind: str, like: Any,
                 set_aside: bool) -> tuple[Any, dict] | None:
        abstract = jax.tree_util.tree_map(_abstract, like)
        failed: list[tuple[int, str]] = []
        for step in sorted(manager.all_steps(), reverse=True):
            error = None
            try:
                with _quiet_orbax_coroutines():
                    out = manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            except Exception as e:  # damaged: truncated or missing files (orbax raises many kinds)
                error = first_line(e)
            if not self._all_agree(error is None):  # several processes: each reads its own shards
                failed.append((step, error or "it did not restore in another process"))
                continue
            # An older one restored, so ``like`` fits and the newer ones are damaged.
            for bad, reason in failed:
                message = f"skipped checkpoint {kind}/{bad}: it does not restore ({reason}); using step {step}"
                if set_aside and not self.read_only:
                    message += f"; moved to {self._set_aside(manager, kind, bad)}"
                self.notify(message)
            return out["state"], out["meta"]
        if failed:
            step, reason = failed[0]
            raise CheckpointError(f"no checkpoint in {manager.directory} restores; the newest, step {step}: {reason}")
        return None

    def restore_latest(self, like: Any, *, set_aside: bool = False) -> tuple[Any, dict] | None:
        """The newest checkpoint that restores, as ``(state, meta)`` shaped like ``like``; None if
        there is none.

        Damaged newer ones are skipped (and reported through ``notify``); with
        ``set_aside`` (a run about to resume and save again) they are moved to
        ``checkpoints/corrupt/``. Raises :class:`CheckpointError` if there are
        checkpoints but none restores (damaged, or not shaped like ``like``).
        """
        return self._restore(self.latest, "latest", like, set_aside)

    def restore_best(self, like: Any, *, set_aside: bool = False) -> tuple[Any, dict] | None:
        """The best checkpoint by validation loss, or None; as :meth:`restore_latest`."""
        return self._restore(self.best, "best", like, set_aside)

    def steps(self) -> list[int]:
        """The periodic checkpoints' steps, whether or not they restore: once :meth:`wait` has returned, the
        finished ones; before, the one being written too (orbax lists a step when its save starts)."""
        return sorted(self.latest.all_steps())

    def finished_steps(self) -> list[int]:
        """The periodic checkpoints' steps written whole, without waiting for the one being written: those on
        disk (orbax writes each into a temporary folder and renames it when done)."""
        folder = pathlib.Path(self.latest.directory)
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir()) if folder.is_dir() else []

    @staticmethod
    def _wait(manager: ocp.CheckpointManager) -> None:
        try:
            manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"a checkpoint could not be written to {manager.directory} (in the background): "
                                  f"{first_line(e)}") from e

    def wait(self) -> None:
        """Block until the checkpoints being written are complete; :class:`CheckpointError` if one failed."""
        for manager in (self.latest, self.best):
            self._wait(manager)

    def close(self) -> None:
        """:meth:`wait`, then release orbax's resources (even when a write failed)."""
        try:
            self.wait()
        finally:
            for manager in (self.latest, self.best):
                with contextlib.suppress(Exception):  # a failed write was reported by wait()
                    manager.close()


def save_tree(path: str | pathlib.Path, tree: Any) -> None:
    """Write one pytree of arrays to ``path``, a folder, synchronously.

    For small state that is saved once (a stream's, say), not a run's checkpoints:
    there is no manager and no background thread, so a failed write (a folder that
    cannot be written, a full disk) raises here, as orbax raised it.
    """
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(pathlib.Path(path).absolute(), args=ocp.args.StandardSave(tree))


def restore_tree(path: str | pathlib.Path, like: Any) -> Any:
    """Read a pytree written by :func:`save_tree`; ``like`` gives its structure, shapes and dtypes."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        return checkpointer.restore(pathlib.Path(path).absolute(), args=ocp.args.StandardRestore(abstract))

"""Where a trial sends its per-epoch reports and finds the checkpoint it was restored from.

Stage code calls :func:`report` and :func:`restored_checkpoint` only, never Ray's session
functions itself, so the same trial code runs wherever a runner puts it. By default that is a
Ray Tune trial (``ray.tune.report`` / ``ray.tune.get_checkpoint``, looked up at call time). A
runner that executes a trial some other way (one process of a multi-worker trial, a stage run
without a Tune experiment of its own) installs its own :class:`Session` with :func:`use`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator, Protocol


class Session(Protocol):
    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        """Record one result line; ``checkpoint``, a directory, becomes the trial's checkpoint
        (the runner copies it: the directory may be deleted after the call)."""

    def restored(self) -> AbstractContextManager[Path | None]:
        """The checkpoint directory this trial continues from within its attempt, or None,
        valid for the ``with`` block."""


class TuneSession:
    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        from ray import tune

        if checkpoint is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        from ray import tune

        ckpt = tune.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:  # local storage: the directory itself; remote: a fetched copy
            yield Path(d)


_current: Session = TuneSession()


def report(metrics: dict, checkpoint: Path | None = None) -> None:
    _current.report(metrics, checkpoint)


def restored_checkpoint() -> AbstractContextManager[Path | None]:
    """``with restored_checkpoint() as d``: the checkpoint directory to continue from, or None."""
    return _current.restored()


@contextmanager
def use(session: Session) -> Iterator[Session]:
    """Run the block's trial code against ``session``."""
    global _current
    before, _current = _current, session
    try:
        yield session
    finally:
        _current = before

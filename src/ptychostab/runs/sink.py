"""The base of a per-run side effect: a :class:`Sink` gets the recorder's hooks and owns the
files it names (set aside by a restart or retry). The concrete sinks (drift probe, trackers,
progress) are in :mod:`.sinks`; the hooks' order is :class:`~.recorder.RunRecorder`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptychostab.runs.recorder import RunRecorder


class Sink:
    """A per-run side effect plugged into the recorder's hooks (all no-ops here).

    Attributes
    ----------
    files : tuple of str
        Names (relative to the run folder) this sink owns: set aside by a restart or retry.
    """

    files: tuple[str, ...] = ()

    def on_start(self, run: RunRecorder) -> None:
        """The run starts a segment (lock held; ``run.checkpoint`` is the resume point or
        None; ``run.previous_manifest`` holds what earlier segments annotated)."""

    def on_ready(self, run: RunRecorder, module) -> None:
        """The module is built and, on a resume, restored from :attr:`RunRecorder.checkpoint`
        (its ``epoch`` is the number of completed epochs); training starts next."""

    def on_sync(self, run: RunRecorder, module, step: int, values: dict) -> None:
        """A sync point (every ``trainer.sync_every`` steps and at each epoch's last step):
        ``values`` are the last step's ``train_loss``, ``grad_norm_pre``, ``grad_norm_post``,
        already on the host (no extra synchronisation). Keep it cheap."""

    def on_epoch_end(self, run: RunRecorder, module, row: dict, is_best: bool) -> None:
        """An epoch ended (``row`` is its history row; its checkpoints are queued)."""

    def on_end(self, run: RunRecorder, record: dict | None) -> None:
        """The segment ends; ``record`` is what ``result.json`` holds (None if the process is
        stopping without one, e.g. a second Ctrl-C). Errors here are logged, never raised."""

    def on_restart(self, run: RunRecorder, event: dict) -> None:
        """The run restarts from its beginning (``event`` as appended to ``restarts``);
        this sink's ``files`` are already set aside. A tracker starts a new tracker run."""

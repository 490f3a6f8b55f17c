"""The per-run sinks a job plugs into its recorder, built from the config.

:func:`build_sinks` is the one place that decides which :class:`~.recorder.Sink` objects a
run gets (trackers from ``logger=``, the activation probe from ``diagnostics``, ...): a new
per-run side effect is a Sink class plus one line here, not an edit of the job. Today there
are none; the recorder's own files (manifest, history, result, checkpoints, ``run.log``,
``run.lock``) are not sinks.
"""

from __future__ import annotations

from ptychostab.runs.recorder import Sink

__all__ = ["build_sinks"]


def build_sinks(cfg) -> list[Sink]:
    """The sinks for one run of ``cfg`` (the composed config), in hook order."""
    return []

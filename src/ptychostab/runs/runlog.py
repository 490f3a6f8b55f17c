"""``run.log``: every log line of one run, appended across its segments, with or without Hydra.

A packed process trains several runs: :data:`CURRENT_RUN` (set by the pack engine around each
seed's work) routes each line to that run's file only.
"""

from __future__ import annotations

import contextvars
import logging
from pathlib import Path

#: The run whose log lines are being emitted (packing sets it around each seed's work); None:
#: every run.log of the process takes every line.
CURRENT_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("ptychostab_run",
                                                                       default=None)


class RunLog:
    """``run.log``: a file handler on the root logger while the run is open.

    Lines are appended (a resumed segment continues the file). When packing sets
    :data:`CURRENT_RUN`, a run's file takes only that run's lines.
    """

    FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

    def __init__(self, path: Path, run_id: str):
        self.path, self.run_id = Path(path), run_id
        self.handler: logging.Handler | None = None
        self._attached: list[logging.Logger] = []
        self._level: tuple[logging.Logger, int] | None = None

    def _mine(self, record: logging.LogRecord) -> bool:
        current = CURRENT_RUN.get()
        return current is None or current == self.run_id

    def open(self) -> None:
        if self.handler is not None:
            return
        handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(self.FORMAT))
        handler.addFilter(self._mine)
        # the root logger, and loggers that do not propagate to it (Lightning's own)
        self._attached = [logging.getLogger()] + [
            lg for lg in (logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric"))
            if not lg.propagate]
        for lg in self._attached:
            lg.addHandler(handler)
        pkg = logging.getLogger("ptychostab")
        if pkg.getEffectiveLevel() > logging.INFO:  # no logging configured (no Hydra)
            self._level = (pkg, pkg.level)
            pkg.setLevel(logging.INFO)
        self.handler = handler

    def close(self) -> None:
        if self.handler is None:
            return
        for lg in self._attached:
            lg.removeHandler(self.handler)
        self.handler.close()
        if self._level is not None:
            self._level[0].setLevel(self._level[1])
            self._level = None
        self.handler = None

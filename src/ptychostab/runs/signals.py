"""Preemption signals: SIGTERM and SIGUSR2 become a flag read at the next step boundary.

The handler only records the signal. The training module checks the flag at every step
boundary, the job then saves ``last.ckpt``, writes ``result.json`` with status ``preempted``
and *chains* to the handler that was installed before the job (submitit's USR2 handler
requeues the job and exits; it must not be swallowed):

- previous handler callable: called with the signal; if it returns, the job ends normally
  (``run_job`` returns the ``preempted`` record);
- previous handler default or ignore: the process exits with ``SystemExit(128 + signum)``
  (the shell's convention for "ended by signal", e.g. 143 for SIGTERM), after the records
  are written, so an in-process sweep stops instead of starting its next job.

Lightning installs its own SIGTERM handler at ``fit`` start (it would end the epoch loop with
its own exception); :meth:`PreemptionGuard.reinstall` puts ours back once training starts.
Previous handlers are restored when the guard exits.
"""

from __future__ import annotations

import logging
import signal
import threading

__all__ = ["PREEMPTION_SIGNALS", "PreemptionGuard"]

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR2", None)) if s)


class PreemptionGuard:
    """Context manager owning the preemption handlers of one job."""

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = tuple(signals)
        self.previous: dict[int, object] = {}
        self.received: int | None = None
        self.active = False

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: preemption signals are not handled")
            return self
        for s in self.signals:
            self.previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            log.warning("received %s: stopping at the next step boundary",
                        signal.Signals(signum).name)
            self.received = signum

    def pending(self) -> int | None:
        """The first signal received, or None."""
        return self.received

    def reinstall(self) -> None:
        """Put our handlers back (after Lightning replaced SIGTERM's at fit start)."""
        if self.active:
            for s in self.signals:
                signal.signal(s, self._handle)

    def restore(self) -> None:
        if self.active:
            for s, handler in self.previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            self.active = False

    def chain(self) -> None:
        """Hand the received signal to the previous handler (see module docstring)."""
        signum = self.received
        if signum is None:
            return
        self.restore()
        prev = self.previous.get(signum)
        if callable(prev):
            prev(signum, None)
            return
        raise SystemExit(128 + int(signum))

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

Which signal is chained: SLURM preemption (and submitit's ``job._interrupt()``) sends SIGTERM
and then SIGUSR2. submitit ignores SIGTERM (``bypass``) and requeues on SIGUSR2, so chaining
the first signal would lose the requeue. When SIGUSR2 has arrived by the time the job is
saved, it is the one chained; when only SIGTERM has and a callable SIGUSR2 handler was
installed before the job (submitit is present), the guard waits up to ``usr2_grace_s`` for
it before chaining SIGTERM (a plain ``scancel``, which sends no SIGUSR2).

Lightning installs its own SIGTERM handler at ``fit`` start (it would end the epoch loop with
its own exception); :meth:`PreemptionGuard.reinstall` puts ours back once training starts.
Previous handlers are restored when the guard exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

__all__ = ["PREEMPTION_SIGNALS", "PreemptionGuard"]

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR2", None)) if s)


class PreemptionGuard:
    """Context manager owning the preemption handlers of one job."""

    def __init__(self, signals=PREEMPTION_SIGNALS, usr2_grace_s: float = 3.0):
        self.signals = tuple(signals)
        self.usr2_grace_s = usr2_grace_s
        self.previous: dict[int, object] = {}
        self.received: int | None = None  # the first signal: it stops the run
        self.all_received: list[int] = []
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
        self.all_received.append(signum)
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

    def _signal_to_chain(self) -> int:
        """SIGUSR2 if it came (now or within the grace period, when submitit waits for it)."""
        usr2 = getattr(signal, "SIGUSR2", None)
        if usr2 is None or usr2 not in self.signals:
            return self.received
        if usr2 not in self.all_received and callable(self.previous.get(usr2)):
            deadline = time.monotonic() + self.usr2_grace_s
            while usr2 not in self.all_received and time.monotonic() < deadline:
                time.sleep(0.05)
        return usr2 if usr2 in self.all_received else self.received

    def chain(self) -> None:
        """Hand the received signal to the previous handler (see module docstring)."""
        if self.received is None:
            return
        signum = self._signal_to_chain()
        self.restore()
        prev = self.previous.get(signum)
        if callable(prev):
            prev(signum, None)
            return
        raise SystemExit(128 + int(signum))

"""Stop signals: SIGTERM, SIGUSR2 (preemption) and SIGINT (Ctrl-C) become a flag read at the
next step boundary.

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

SIGINT (Ctrl-C) is handled the same way (``last.ckpt`` at the next step boundary, status
``interrupted``); its previous handler is Python's ``default_int_handler``, so chaining it
raises ``KeyboardInterrupt`` once the records are written and the lock released: an
in-process sweep stops cleanly. A *second* SIGINT before the job has stopped is handed to the
previous handler at once (stop now, without saving; Lightning then exits with status 1).

Lightning installs its own SIGTERM handler at ``fit`` start (it would end the epoch loop with
its own exception); :meth:`PreemptionGuard.reinstall` puts ours back once training starts.
Previous handlers are restored when the guard exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

__all__ = ["INTERRUPT_SIGNALS", "PREEMPTION_SIGNALS", "STOP_SIGNALS", "PreemptionGuard",
           "signal_name", "status_for_signal"]

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR2", None)) if s)
INTERRUPT_SIGNALS = (signal.SIGINT,)
STOP_SIGNALS = (*PREEMPTION_SIGNALS, *INTERRUPT_SIGNALS)


def signal_name(signum: int | None) -> str:
    """``SIGTERM``; ``signal 99`` for an unknown number."""
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return f"signal {signum}"


def status_for_signal(signum: int | None) -> str:
    """``interrupted`` for SIGINT (a person), ``preempted`` for the scheduler's signals."""
    return "interrupted" if signum in INTERRUPT_SIGNALS else "preempted"


class PreemptionGuard:
    """Context manager owning the preemption handlers of one job."""

    def __init__(self, signals=STOP_SIGNALS, usr2_grace_s: float = 3.0):
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
            prev = signal.getsignal(s)
            if s in INTERRUPT_SIGNALS and prev == signal.SIG_IGN:
                continue  # Ctrl-C ignored on purpose (a background job): keep it so
            self.previous[s] = prev
            signal.signal(s, self._handle)
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, signum, frame) -> None:
        self.all_received.append(signum)
        if signum in INTERRUPT_SIGNALS and self.received is not None:
            prev = self.previous.get(signum)
            log.warning("second %s: stopping now, without saving", signal.Signals(signum).name)
            if callable(prev):
                prev(signum, frame)  # default_int_handler: KeyboardInterrupt
            raise KeyboardInterrupt
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
            for s in self.previous:
                signal.signal(s, self._handle)

    def restore(self) -> None:
        if self.active:
            for s, handler in self.previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            self.active = False

    def _signal_to_chain(self) -> int:
        """SIGUSR2 if it came (now or within the grace period, when submitit waits for it)."""
        usr2 = getattr(signal, "SIGUSR2", None)
        if usr2 is None or usr2 not in self.signals or self.received in INTERRUPT_SIGNALS:
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

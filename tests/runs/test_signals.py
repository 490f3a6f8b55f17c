"""Which preemption signal reaches the handler installed before the job (submitit's)."""

import os
import signal
import threading

import pytest

from ptychostab.runs.signals import PreemptionGuard


@pytest.fixture
def previous_handlers():
    """Stand-ins for submitit's handlers: SIGTERM bypassed, SIGUSR2 requeues."""
    seen = []
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    signal.signal(signal.SIGTERM, lambda s, f: seen.append(("bypass", s)))
    signal.signal(signal.SIGUSR2, lambda s, f: seen.append(("requeue", s)))
    yield seen
    for s, h in old.items():
        signal.signal(s, h)


def test_sigterm_then_usr2_chains_usr2(previous_handlers):
    with PreemptionGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert guard.pending() == signal.SIGTERM  # the first signal stops the run
        guard.chain()
    assert previous_handlers == [("requeue", signal.SIGUSR2)]


def test_usr2_arriving_during_the_grace_period_is_chained(previous_handlers):
    with PreemptionGuard(usr2_grace_s=5.0) as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR2)).start()
        guard.chain()
    assert previous_handlers == [("requeue", signal.SIGUSR2)]


def test_plain_sigterm_is_chained_after_the_grace_period(previous_handlers):
    with PreemptionGuard(usr2_grace_s=0.1) as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        guard.chain()
    assert previous_handlers == [("bypass", signal.SIGTERM)]


def test_default_previous_handler_exits_with_128_plus_signum():
    old = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with PreemptionGuard(usr2_grace_s=0.0) as guard:
            os.kill(os.getpid(), signal.SIGTERM)
            with pytest.raises(SystemExit) as exc:
                guard.chain()
        assert exc.value.code == 128 + signal.SIGTERM
    finally:
        signal.signal(signal.SIGTERM, old)

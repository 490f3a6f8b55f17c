"""One job end to end (:mod:`.job`), its per-run recorder (:mod:`.recorder`: every file of a
run folder, with start / epoch-end / end / restart hooks and pluggable sinks), the lock and
liveness file (:mod:`.lock`), the fault classification (:mod:`.faults`) and the records'
contract (:mod:`.records`).

``ptychostab.runs.records`` is pure Python and imported by the aggregator without torch, so this
package imports nothing heavy at import time; ``run_job`` is loaded on first use.
"""

__all__ = ["run_job"]


def __getattr__(name):
    if name == "run_job":
        from .job import run_job

        return run_job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

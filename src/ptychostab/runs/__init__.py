"""One job end to end (:mod:`.job`) and its records (:mod:`.records`).

``ptychostab.runs.records`` is pure Python and imported by the aggregator without torch, so this
package imports nothing heavy at import time; ``run_job`` is loaded on first use.
"""

__all__ = ["run_job"]


def __getattr__(name):
    if name == "run_job":
        from .job import run_job

        return run_job
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

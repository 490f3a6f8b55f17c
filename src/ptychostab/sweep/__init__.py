"""Deprecated: the old home of the launch, monitor, analysis and report code (one release).

Each former module ``ptychostab.sweep.<name>`` is a thin alias of its new home, so pickles of
jobs submitted before the upgrade (Hydra pickles ``ptychostab.sweep.callbacks.SweepPreflight``
into every submitit job) still load, and old imports keep working. New code imports the new
paths (docs/architecture.md); :data:`MOVED` is the map.
"""

MOVED = {
    "aggregate": "ptychostab.analysis.pipeline",
    "callbacks": "ptychostab.launch.preflight",
    "clipsweep": "ptychostab.analysis.clipsweep",
    "collect": "ptychostab.analysis.collect",
    "decide": "ptychostab.analysis.decide",
    "definitions": "ptychostab.report.rule_text",
    "drift": "ptychostab.analysis.activation_drift",
    "gates": "ptychostab.analysis.gates",
    "identity": "ptychostab.identity",
    "lock": "ptychostab.launch.sweep_lock",
    "plan": "ptychostab.launch.plan",
    "plots": "ptychostab.report.plots",
    "protocol": "ptychostab.analysis.protocol",
    "report": "ptychostab.report.render",
    "report_tables": "ptychostab.report.tables",
    "rule": "ptychostab.analysis.rule",
    "stats": "ptychostab.analysis.stats",
    "status": "ptychostab.monitor.status",
}

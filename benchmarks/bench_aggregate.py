"""Benchmark: aggregate 10,000 synthetic run records (50 epochs of history each), no plots.

    .venv/bin/python benchmarks/bench_aggregate.py [--arms 20] [--seeds 250] [--repeat 3]

Two sweeps (``stage_a`` at depth 4, ``stage_b`` at depth 8), each with the three role arms
plus norm-clip arms up to ``--arms``, ``--seeds`` seeds per arm: 2 x 20 x 250 = 10,000 runs by
default. About 8% of runs fail (mixed kinds), 2% are planned but never run, 1% time out,
0.1% have a truncated result.json. Records are written by the test factory
(``tests/_records.py``) with fsync disabled; generating them is not timed.
Target (issue 6): ``aggregate(plot_inputs=False)`` + ``write_outputs(plots=False)`` <= 10 s,
writing runs.csv, summary.csv, report.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from ptychostab.analysis import collect as col
from ptychostab.analysis import decide as dec
from ptychostab.analysis import pipeline as agg
from ptychostab.analysis.summary import summarize
from ptychostab.report.outputs import write_outputs
from ptychostab.report.render import render
from ptychostab.runs import records

REPO = Path(__file__).resolve().parents[1]
FAIL_KINDS = ("nonfinite", "diverged", "collapsed", "exception", "oom")


def _factory():
    spec = importlib.util.spec_from_file_location("sweep_factory",
                                                  REPO / "tests" / "_records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate(root: Path, n_arms: int, n_seeds: int, seed: int = 0) -> int:
    """Write both sweeps under ``root``; return the number of planned runs."""
    f = _factory()
    rng = np.random.default_rng(seed)
    planned = 0
    with mock.patch.object(records.os, "fsync", lambda fd: None):
        for stage, depth in (("stage_a", 4), ("stage_b", 8)):
            arms = [f.at_depth(a, depth) for a in (f.CONTROL, f.ARCH_FIX, f.OPT_FIX)]
            arms += [{**f.CONTROL, "clip": "norm", "clip_value": float(v), "depth": depth,
                      "label": f"hybrid+norm{v}"} for v in range(1, n_arms - 2)]
            plan = []
            for k, arm in enumerate(arms):
                base = 0.02 + 0.001 * k
                for s in range(n_seeds):
                    plan.append((arm, s))
                    u = rng.random()
                    if u < 0.02:
                        continue  # planned, never run
                    if u < 0.03:
                        f.write_run(root / stage, arm, s, "timeout", epochs=30)
                    elif u < 0.11:
                        kind = FAIL_KINDS[int(rng.integers(len(FAIL_KINDS)))]
                        f.write_run(root / stage, arm, s, kind,
                                    fail_epoch=int(rng.integers(1, 49)))
                    else:
                        f.write_run(root / stage, arm, s, "ok",
                                    loss=float(base * rng.lognormal(0, 0.1)))
                        if u > 0.999:
                            res = root / stage / f.arm_id_of(arm) / f"seed={s}" / records.RESULT
                            res.write_text(res.read_text()[:50])
            f.write_plan(root / stage, plan)
            planned += len(plan)
    return planned


def aggregate_and_write(sweeps: list[Path], out: Path, rule) -> agg.StudyResult:
    """The timed total: compute without plot inputs, write without plots."""
    result = agg.aggregate(sweeps, rule=rule, plot_inputs=False)
    write_outputs(result, out, plots=False)
    return result


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", type=int, default=20, help="arms per sweep (>= 3)")
    p.add_argument("--seeds", type=int, default=250, help="seeds per arm")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions of the total")
    p.add_argument("--dir", type=Path, default=None, help="reuse/keep records here")
    args = p.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_aggregate_"))
    sweeps = [root / "stage_a", root / "stage_b"]
    try:
        if not (root / "stage_a" / "plan.csv").exists():
            t_gen, n = _timed(generate, root, args.arms, args.seeds)
            print(f"generated {n} planned runs ({args.arms} arms x {args.seeds} seeds x 2 "
                  f"sweeps) in {t_gen:.1f} s (not timed)")
        rule = dec.load_rule()
        totals = []
        for i in range(args.repeat):
            t, result = _timed(aggregate_and_write, sweeps, root / "out", rule)
            totals.append(t)
            print(f"run {i + 1}: aggregate + write, no plots {t:.2f} s "
                  f"({len(result.runs)} runs, {len(result.summary)} arms, "
                  f"decision {result.decision.outcome})")
        t_col, c = _timed(col.collect, sweeps)
        runs = agg.tag_stages(c, rule)
        t_sum, (summary, roles) = _timed(summarize, runs, c.arm_columns, c.metric_names, rule)
        t_dec, _ = _timed(dec.decide, summary.to_dict("records"), rule, resolved=roles)
        t_rep, _ = _timed(render, result)
        t_hist, _ = _timed(lambda: [col.load_history(x) for x in runs["_path"]])
        print(f"breakdown: collect {t_col:.2f} s, summarize {t_sum:.2f} s, decide "
              f"{t_dec:.3f} s, report {t_rep:.2f} s")
        print(f"(plots only) reading all {len(runs)} histories: {t_hist:.2f} s")
        print(f"TOTAL aggregate + write, no plots: min {min(totals):.2f} s, median "
              f"{statistics.median(totals):.2f} s over {args.repeat} runs "
              f"(target <= 10 s; cpu count {os.cpu_count()}, load avg "
              f"{os.getloadavg()[0]:.1f})")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""``python -m ptychostab.cli.aggregate outputs/<sweep> [more sweep folders] [options]``.

Writes ``runs.csv``, ``summary.csv``, ``report.md`` and ``plots/`` into the sweep folder (or
``--out``), prints the per-arm stability table and the decision. Works on finished, partly
finished and still-running sweeps. Exit status: 0 on success (whatever the outcome), 2 on a
usage error (no sweep or no such folder, bad rule file) or when ``--require-complete``
finds unfinished runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptychostab.analysis import decide as dec
from ptychostab.analysis import pipeline as agg
from ptychostab.report.outputs import write_outputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ptychostab.cli.aggregate",
                                description="Aggregate sweep folders into a study report.")
    p.add_argument("sweeps", nargs="*", type=Path,
                   help="sweep folders (outputs/<sweep>); Stage A and Stage B may be separate")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the sweep folder; with several, "
                        "<parent>/report_<a>+<b>)")
    p.add_argument("--control", default=None,
                   help="arm label(s) or arm_id(s) of the control, comma-separated (e.g. one "
                        "per stage); overrides the rule's control role")
    p.add_argument("--rule", type=Path, default=dec.DEFAULT_RULE,
                   help="decision-rule YAML (default: conf/decision/default.yaml)")
    p.add_argument("--no-plots", action="store_true", help="skip plots/ (faster)")
    p.add_argument("--print-rule", action="store_true",
                   help="print the rule as experiments/README.md states it (from --rule) and "
                        "exit")
    p.add_argument("--require-complete", action="store_true",
                   help="refuse (exit 2, write nothing) if any planned run is unfinished")
    return p.parse_args(argv)


def _print_summary(result: agg.StudyResult) -> None:
    s = result.summary
    for _, r in s.iterrows():
        stage = f"stage {r['stage']}" if r["stage"] else "no stage"
        print(f"  [{stage}] {r['arm_label']:<28} {r['role'] or '-':<9} "
              f"ok {r['n_ok']}/{r['n_planned']}  instability {r['n_instability']}  "
              f"unsettled {r['n_unsettled']}  failure rate {dec.fmt(r['failure_rate'])}")
    d = result.decision
    print(f"decision: {d.outcome} - {d.because}")
    if d.provisional:
        print(f"  provisional ({d.provisional_basis}): {d.provisional}")
    if d.premise:
        print(f"  premise: {d.premise}: {d.premise_text}")
    for m in d.to_run:
        print(f"  to run: {m}")
    for w in result.warnings:
        print(f"  warning: {w}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_rule:
        from ptychostab.report.rule_text import readme_section

        print(readme_section(dec.load_rule(args.rule)))
        return 0
    if not args.sweeps:
        print("error: give at least one sweep folder", file=sys.stderr)
        return 2
    absent = [str(d) for d in args.sweeps if not d.is_dir()]
    if absent:
        print(f"error: not a folder: {', '.join(absent)}", file=sys.stderr)
        return 2
    try:
        rule = dec.load_rule(args.rule)
    except (OSError, ValueError) as err:
        print(f"error: decision rule {args.rule}: {err}", file=sys.stderr)
        return 2
    try:
        result = agg.aggregate(args.sweeps, rule=rule, control=args.control,
                               require_complete=args.require_complete,
                               plot_inputs=not args.no_plots)
    except agg.IncompleteSweepError as err:
        print(f"error: --require-complete: {err}; nothing written", file=sys.stderr)
        return 2
    files = write_outputs(result, args.out, plots=not args.no_plots)
    print(f"{len(result.runs)} runs in {len(result.summary)} arms")
    _print_summary(result)
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

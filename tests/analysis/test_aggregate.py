"""End to end: folders of records -> runs.csv, summary.csv, report.md, plots/, and the CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ptychostab.analysis import stats
from ptychostab.analysis.decide import DEFAULT_RULE, rule_from_dict
from ptychostab.analysis.pipeline import aggregate
from ptychostab.cli.aggregate import main
from ptychostab.report.outputs import write_outputs

REPO = Path(__file__).resolve().parents[2]
CONTROL_LOSSES = [0.020, 0.024, 0.021, 0.026, 0.022, 0.030]
ARCH_LOSSES = [0.015, 0.017, 0.016, 0.014, 0.019, 0.018, 0.013]


@pytest.fixture
def study(tmp_path, factory):
    """Stage A (3 arms) and Stage B (control, arch fix) with known numbers."""
    a, b = tmp_path / "stage_a", tmp_path / "stage_b"
    control = CONTROL_LOSSES[:3] + ["nonfinite", "diverged"] + CONTROL_LOSSES[3:] + [None]
    arms = [(factory.CONTROL, control), (factory.ARCH_FIX, ARCH_LOSSES),
            (factory.OPT_FIX, [0.021, 0.022, 0.023, 0.0215, "nonfinite"])]
    plan = []
    for arm, outs in arms:
        factory.write_arm(a, arm, outs, recon=True)
        plan += [(arm, s) for s in range(len(outs))]
    factory.write_plan(a, plan)
    deep_c, deep_a = factory.at_depth(factory.CONTROL, 8), factory.at_depth(factory.ARCH_FIX, 8)
    factory.write_arm(b, deep_c, ["nonfinite", 0.03, "diverged", 0.031, "oom"])
    factory.write_arm(b, deep_a, [0.02, 0.021, 0.022, 0.02, 0.023])
    return a, b


def _arm(summary, stage, label):
    sel = summary[(summary["stage"] == stage) & (summary["arm_label"] == label)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_summary_numbers(study):
    r = aggregate(list(study), plot_inputs=False)
    c = _arm(r.summary, "A", "hybrid")
    assert (c["n_planned"], c["n_done"], c["n_ok"], c["n_instability"]) == (9, 8, 6, 2)
    assert (c["n_nonfinite"], c["n_diverged"], c["n_missing"], c["n_unsettled"]) == (1, 1, 1, 1)
    assert c["failure_rate"] == 2 / 8
    assert (c["failure_rate_lo"], c["failure_rate_hi"]) == stats.wilson_interval(2, 8)
    x = np.array(CONTROL_LOSSES)
    assert c["best_val_loss_median"] == np.median(x)
    assert c["best_val_loss_q25"] == np.percentile(x, 25)
    assert c["best_val_loss_iqr"] == pytest.approx(np.percentile(x, 75) - np.percentile(x, 25))
    assert (c["best_val_loss_ci_lo"], c["best_val_loss_ci_hi"]) == stats.bootstrap_median_ci(x)
    assert c["amp_ssim_median"] == pytest.approx(np.median(1 - x))
    assert c["role"] == "control" and c["km_survival_final"] == pytest.approx(6 / 8)
    s = _arm(r.summary, "A", "stable_hybrid")
    assert s["role"] == "arch_fix" and s["failure_rate"] == 0 and s["n_ok"] == 7
    assert s["rel_change"] == pytest.approx(np.median(ARCH_LOSSES) / np.median(x) - 1)
    assert s["rel_change_lo"] <= s["rel_change"] <= s["rel_change_hi"]
    assert s["control_arm"] == "hybrid" and np.isnan(c["rel_change"])
    deep = _arm(r.summary, "B", "hybrid")
    # failures at epochs 10, 12, 14 (seeds 0, 2, 4), ok censored at 50: S = .8, .6, .4
    # failures at epochs 10, 12 (seeds 0, 2); the oom run (seed 4) is censored, not an event
    assert deep["failure_rate"] == 2 / 4 and deep["n_oom"] == 1 and deep["n_unsettled"] == 1
    assert deep["unsettled_runs"] == "seed=4 (oom)"
    # S = .8 after epoch 10, .6 after 12 (oom censored at 14): the median is not reached
    assert np.isnan(deep["km_median_epoch"]) and np.isnan(deep["km_median_s"])
    assert deep["km_survival_final"] == pytest.approx(0.6)
    ci = stats.order_statistic_median_ci(x)
    assert (c["best_val_loss_os_lo"], c["best_val_loss_os_hi"]) == (ci.lo, ci.hi)
    assert c["best_val_loss_os_coverage"] == pytest.approx(1 - 2 / 64)
    assert r.decision.outcome == "INCOMPLETE" and r.decision.provisional == "SILVER or PIVOT"


def test_runs_table_has_every_planned_run(study):
    r = aggregate(list(study), plot_inputs=False)
    assert len(r.runs) == 9 + 7 + 5 + 5 + 5
    missing = r.runs[r.runs["status"] == "missing"]
    assert len(missing) == 1 and missing.iloc[0]["seed"] == 8
    assert set(r.runs["stage"]) == {"A", "B"}
    assert {"arch", "clip", "clip_value", "depth", "role", "git_commit"} <= set(r.runs.columns)


def test_writes_files_and_plots(study, tmp_path):
    out = tmp_path / "report"
    r = aggregate([study[0]])  # one sweep: plots are the slow part
    files = write_outputs(r, out)
    names = sorted(p.relative_to(out).as_posix() for p in files)
    kinds = ("failure_rate", "grad_norm", "metrics", "recon", "survival", "val_loss")
    assert r.decision.outcome == "INCOMPLETE"
    assert names == sorted(["report.md", "runs.csv", "summary.csv",
                            *(f"plots/stage_a_{k}.png" for k in kinds)])
    assert all(p.stat().st_size > 1000 for p in files if p.suffix == ".png")
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 21 and "_path" not in runs.columns
    assert len(pd.read_csv(out / "summary.csv")) == 3
    assert "![plots/stage_a_recon.png](plots/stage_a_recon.png)" in (out / "report.md").read_text()


def test_plots_skip_missing_reconstructions(tmp_path, factory):
    from ptychostab.analysis.plot_inputs import load_recon
    from ptychostab.report import plots

    factory.write_arm(tmp_path / "s", factory.CONTROL, [0.02, "nonfinite"])
    run = tmp_path / "s" / factory.arm_id_of(factory.CONTROL) / "seed=0"
    (run / "recon.npz").write_text("")
    r = aggregate([tmp_path / "s"])
    assert load_recon(str(run)) is None and r.plot_inputs.recon == {}
    assert plots.plot_recon(r.summary, r.plot_inputs.recon, tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_cli_single_stage_says_what_is_missing(study, capsys):
    a, _ = study
    assert main([str(a), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "decision: INCOMPLETE" in out and "to run: Stage B: no records" in out
    assert (a / "report.md").exists() and (a / "summary.csv").exists()
    assert not (a / "plots").exists()


def test_cli_require_complete_refuses_and_writes_nothing(study, tmp_path, capsys):
    assert main([str(study[0]), "--require-complete", "--out", str(tmp_path / "o")]) == 2
    assert "1 of 21 planned runs unfinished: 1 missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main([str(study[1]), "--require-complete", "--no-plots",
                 "--out", str(tmp_path / "o")]) == 0


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    bad = tmp_path / "rule.yaml"
    bad.write_text("metric: best_val_loss\n")
    (tmp_path / "s").mkdir()
    assert main([str(tmp_path / "s"), "--rule", str(bad)]) == 2
    assert "missing key" in capsys.readouterr().err


def test_empty_sweep_folder_does_not_crash(tmp_path):
    (tmp_path / "stage_a").mkdir()
    r = aggregate([tmp_path / "stage_a"])
    write_outputs(r, plots=True)
    assert r.runs.empty and r.decision.outcome == "INCOMPLETE"
    assert "no runs found" in (tmp_path / "stage_a" / "report.md").read_text()


def test_one_folder_with_both_depths_and_control_override(tmp_path, factory):
    d = tmp_path / "depth_study"
    for depth in (4, 8):
        factory.write_arm(d, factory.at_depth(factory.CONTROL, depth),
                          ["nonfinite", 0.02, 0.02, 0.02])
        factory.write_arm(d, factory.at_depth(factory.ARCH_FIX, depth), [0.01, 0.01, 0.01])
        factory.write_arm(d, factory.at_depth(factory.OPT_FIX, depth), [0.03, 0.03, 0.03])
    point = rule_from_dict({**yaml.safe_load(DEFAULT_RULE.read_text()), "evidence": "point"})
    r = aggregate([d], plot_inputs=False, rule=point)
    assert sorted(r.summary["stage"]) == ["A", "A", "A", "B", "B", "B"]
    assert r.decision.outcome == "GOLD"  # read as the strategy's point reading: 3 seeds
    assert r.staged_by_depth == ["`depth_study` -> Stage A (depth 4)",
                                 "`depth_study` -> Stage B (depth 8)"]
    assert aggregate([d], plot_inputs=False).decision.outcome == "INCOMPLETE"  # at 95%
    r = aggregate([d], plot_inputs=False, control="nothing_like_it")
    assert r.decision.outcome == "INCOMPLETE" and r.decision.to_run[0] == (
        "Stage A: no arm for role control (label or arm_id in nothing_like_it)")
    deep_id = factory.arm_id_of(factory.at_depth(factory.CONTROL, 8))
    agc_id = factory.arm_id_of(factory.OPT_FIX)
    r = aggregate([d], plot_inputs=False, control=f"{agc_id}, {deep_id}", rule=point)
    assert r.decision.roles["A"] == {"control": "hybrid+agc0.01", "arch_fix": "stable_hybrid"}
    assert r.decision.roles["B"]["control"] == "hybrid"  # the deep control, by arm_id
    # every role arm is compared across stages: a control clipped in Stage A only is not one
    # control (issue 19)
    assert r.decision.outcome == "INCOMPLETE"
    assert any(m.startswith("control Stage A vs Stage B: clip.algorithm: \"agc\"")
               for m in r.decision.mismatches)
    assert "Stage A: role opt_fix (arch=hybrid, clip=agc): arm 'hybrid+agc0.01' already plays " \
           "control" in r.decision.to_run


def test_module_entry_point_and_no_training_imports(study, tmp_path):
    code = ("import sys; from ptychostab.cli.aggregate import main; "
            f"rc = main([{str(study[0])!r}, '--no-plots', '--out', {str(tmp_path / 'x')!r}]); "
            "bad = [m for m in ('torch', 'lightning', 'hydra', 'ptychostab.training') "
            "if m in sys.modules]; print('IMPORTED', bad); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ptychostab.cli.aggregate", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "--require-complete" in proc.stdout


def test_roles_are_resolved_once_per_aggregation(study, factory, monkeypatch):
    from ptychostab.analysis import decide, roles

    calls = []
    real = roles.resolve
    monkeypatch.setattr(roles, "resolve", lambda *a, **k: calls.append(a) or real(*a, **k))

    def again(*a, **k):
        raise AssertionError("decide() resolved the roles again")

    monkeypatch.setattr(decide, "resolve_roles", again)
    r = aggregate(list(study), plot_inputs=False)
    assert len(calls) == 1
    assert r.roles.stages["A"]["control"] == ("stage_a", factory.arm_id_of(factory.CONTROL))
    assert r.roles.control_of("B", "stage_b") == (
        "stage_b", factory.arm_id_of(factory.at_depth(factory.CONTROL, 8)))
    monkeypatch.undo()
    # the old call form (roles resolved inside decide) decides the same
    assert decide.decide(r.summary.to_dict("records"), r.rule, None, r.protocols,
                         runs=r.runs.to_dict("records")) == r.decision


def test_report_reads_no_file():
    """Figures and sections get their data from the analysis: report/ opens nothing."""
    import ast

    import ptychostab.report

    readers = {"open", "read_text", "read_bytes", "read_csv", "read_json", "load", "loadtxt",
               "load_history", "read_history", "load_recon", "load_activations", "collect"}
    found = []
    for path in Path(ptychostab.report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in readers:
                    found.append(f"{path.name}:{node.lineno} {name}()")
    assert not found, found

"""One reader of sweep folders: the status view and the aggregator see the same runs, with the
same integer seeds, whatever else lies in the folder (analysis/sweepdir.py)."""

import json

import pytest

from ptychostab.analysis import sweepdir
from ptychostab.analysis.collect import collect
from ptychostab.monitor import status as st


@pytest.fixture
def odd_sweep(tmp_path, factory):
    """Real runs beside folders that are not runs."""
    d = tmp_path / "stage_a"
    factory.write_run(d, factory.CONTROL, 0, "ok")
    factory.write_run(d, factory.CONTROL, 1, "nonfinite", fail_epoch=3)
    aid = factory.arm_id_of(factory.CONTROL)
    lock_only = d / aid / "seed=2"  # a run that took its lock and died before its manifest
    lock_only.mkdir()
    (lock_only / "run.lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere",
                                                    "token": "t", "time": 0}))
    (d / aid / "seed=07").mkdir()  # seed 7, written with a leading zero
    (d / aid / "seed=abc").mkdir()  # not an integer: not a run
    (d / aid / "seed=").mkdir()
    (d / aid / "notes").mkdir()  # no seed=: not a run
    (d / aid / "seed=9").write_text("a file, not a folder")
    factory.write_run(d, factory.ARCH_FIX, 0, "ok")
    for hidden in ("_tmp", ".hidden", ".submitit"):  # copies, scratch, submitit: never arms
        (d / hidden / "seed=0").mkdir(parents=True)
        (d / hidden / "seed=0" / "result.json").write_text("{}")
    (d / "README.txt").write_text("not an arm")
    return d


def test_status_and_aggregator_see_the_same_runs(odd_sweep, factory):
    control, arch_fix = factory.arm_id_of(factory.CONTROL), factory.arm_id_of(factory.ARCH_FIX)
    expected = {(control, 0), (control, 1), (control, 2), (control, 7), (arch_fix, 0)}
    runs = collect([odd_sweep]).runs
    by_collect = set(zip(runs["arm_id"], runs["seed"], strict=True))
    state = st.read_sweep(odd_sweep, now=1e9)
    by_status = {(r.arm_id, r.seed) for r in state.runs}
    assert by_collect == by_status == expected
    assert all(type(s) is int for _, s in by_collect | by_status)
    assert set(sweepdir.find_run_dirs(odd_sweep)) == expected


def test_a_lock_only_folder_is_a_run_in_both_views(odd_sweep, factory):
    aid = factory.arm_id_of(factory.CONTROL)
    runs = collect([odd_sweep]).runs
    row = runs[(runs["arm_id"] == aid) & (runs["seed"] == 2)].iloc[0]
    assert row["status"] == "missing"
    run = next(r for r in st.read_sweep(odd_sweep, now=1e9).runs
               if (r.arm_id, r.seed) == (aid, 2))
    assert run.status == "missing"


def test_plan_rows_use_the_same_seed_rule(tmp_path, factory):
    d = tmp_path / "s"
    factory.write_plan(d, [(factory.CONTROL, 0), (factory.CONTROL, 1)])
    text = (d / sweepdir.PLAN_CSV).read_text()
    (d / sweepdir.PLAN_CSV).write_text(text + text.splitlines()[-1].replace(",1,", ",x,") + "\n")
    rows, problem = sweepdir.read_plan(d)
    assert problem is None and [r["seed"] for r in rows] == [0, 1]
    runs = collect([d]).runs
    assert sorted(runs["seed"]) == [0, 1]
    assert sorted(r.seed for r in st.read_sweep(d, now=1e9).runs) == [0, 1]


@pytest.mark.parametrize("name,seed", [("seed=0", 0), ("seed=12", 12), ("seed=007", 7),
                                       ("seed=-1", None), ("seed=1.5", None), ("seed=", None),
                                       ("seeds=1", None), ("seed=١", None), ("x", None)])
def test_seed_of(name, seed):
    assert sweepdir.seed_of(name) == seed


@pytest.mark.parametrize("name,ok", [("hybrid_none_d4-abc", True), ("_tmp", False),
                                     (".submitit", False), ("", False)])
def test_arm_folder_names(name, ok):
    assert sweepdir.is_arm_folder_name(name) is ok

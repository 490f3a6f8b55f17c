"""``retry=[...]`` for packed members (runs/pack.py) as for single runs: a member whose final
ending is asked for is set aside and trained again from scratch; a member whose final ending
is not asked for is skipped and left untouched (one-epoch packs of two tiny seeds)."""

import shutil

import pytest
from omegaconf import OmegaConf

from ptychostab.runs import records
from ptychostab.runs.pack import Member, run_pack

SEEDS = (0, 1)


def config(seed, retry=()):
    from ptychostab.training.testing import tiny_config

    cfg = tiny_config(**{"seed": seed, "trainer.max_epochs": 1})
    return OmegaConf.merge(cfg, {"retry": list(retry)})


def members(root, retry=()):
    return [Member(config(s, retry), root / f"seed={s}", {"arch": "hybrid"}, "hybrid-abc")
            for s in SEEDS]


def result(run_dir):
    return records.read_json(run_dir / records.RESULT).data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack-retry") / "trained"
    got = run_pack(members(root), pack_id="pk")
    assert [r["status"] for r in got] == ["ok", "ok"]
    return root


def rows(run_dir):
    """History rows without the (timing) ``wall_s``."""
    return [{k: v for k, v in r.items() if k != "wall_s"}
            for r in records.read_history(run_dir / records.HISTORY).data]


def fail_by_hand(run_dir, status):
    """The member's record as if it had ended ``status`` (final)."""
    record = {**result(run_dir), "status": status, "end_time": "by hand"}
    records.atomic_write_json(run_dir / records.RESULT, record)
    return record


@pytest.mark.parametrize("kind", ["oom", "exception", "diverged"])
def test_retry_trains_a_packed_members_final_ending_again(trained, tmp_path, kind):
    root = tmp_path / "pack"
    shutil.copytree(trained, root)
    first = root / "seed=0"
    other = root / "seed=1"
    retried = fail_by_hand(first, kind)
    kept = fail_by_hand(other, "nonfinite" if kind != "nonfinite" else "collapsed")
    history = rows(first)
    other_files = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}

    got = run_pack(members(root, retry=[kind]), pack_id="pk")
    assert got[0]["status"] == "ok" and got[0]["end_time"] != "by hand"
    assert result(first) == got[0]
    # the old ending kept aside, the run trained again from its beginning (same numbers)
    assert records.read_json(first / "result.json.retry-1").data == retried
    assert (first / "last.ckpt.retry-1").exists()
    assert rows(first) == history and len(history) == 1
    event = records.read_json(first / records.MANIFEST).data["restarts"][-1]
    assert event["kind"] == "retry" and kind in event["reason"]
    assert event["set_aside"]["result.json"] == "result.json.retry-1"
    # the member whose ending was not asked for: skipped, nothing touched
    assert got[1] == kept
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == other_files


def test_without_retry_every_final_member_is_skipped(trained, tmp_path):
    root = tmp_path / "pack"
    shutil.copytree(trained, root)
    records_before = [fail_by_hand(root / f"seed={s}", "oom") for s in SEEDS]
    files = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert run_pack(members(root, retry=["exception"]), pack_id="pk") == records_before
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == files

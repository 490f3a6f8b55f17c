"""Packs (``pack > 1``): seeds of one arm trained by one job, and ``packs.json``.

:func:`group_packs`: the unfinished jobs that differ only in ``seed`` (same arm, same other
overrides) are grouped, in grid order, into packs of up to ``pack`` seeds; each pack is one job
(its first member, the leader, trains them all in one process). Final runs are never packed,
so a rerun regroups only the unfinished seeds; a pack of one seed is an ordinary job. A pack's
memory estimate is ``K x`` the arm's training-memory estimate plus the dataset's device bytes
once (:func:`~ptychostab.launch.estimate.dataset_device_gb`); a pack over
``plan.max_memory_gb`` is refused. ``packs.json`` (:func:`write_packs`) lists the packs for the
jobs and the launchers.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ptychostab.analysis.sweepdir import PACKS_JSON
from ptychostab.launch.estimate import dataset_device_gb
from ptychostab.launch.grid import TODO, round_or_none, split_seed
from ptychostab.runs import records

if TYPE_CHECKING:
    from ptychostab.launch.plan import Plan, PlannedJob

PACKS_SCHEMA = 1


@dataclass
class Pack:
    """Seeds of one arm trained by one job (the first member, the leader)."""

    pack_id: str  # stable: <arm_id>-seeds-<s1>-<s2>-... (member seeds in grid order)
    arm_id: str
    jobs: list[PlannedJob]
    memory_gb: float | None = None  # K x arm training memory + dataset device bytes once
    dataset_gb: float | None = None
    refused: str | None = None

    @property
    def leader(self) -> PlannedJob:
        return self.jobs[0]

    @property
    def size(self) -> int:
        return len(self.jobs)

    @property
    def seeds(self) -> list[int]:
        return [j.seed for j in self.jobs]


def pack_id_of(arm_id: str, seeds: Sequence[int]) -> str:
    return f"{arm_id}-seeds-" + "-".join(str(s) for s in seeds)


def group_packs(jobs: Sequence[PlannedJob], size: int) -> list[Pack]:
    """Packs of up to ``size`` unfinished jobs that differ only in ``seed`` (same arm and same
    other overrides), in grid order; final jobs are never packed; a lone seed is no pack."""
    if size <= 1:
        return []
    groups: OrderedDict[tuple, list[PlannedJob]] = OrderedDict()
    for job in jobs:
        if job.status != TODO:
            continue
        groups.setdefault((job.arm_id, split_seed(job.overrides)[0]), []).append(job)
    packs = []
    for (arm_id, _), members in groups.items():
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            if len(chunk) > 1:
                packs.append(Pack(pack_id=pack_id_of(arm_id, [j.seed for j in chunk]),
                                  arm_id=arm_id, jobs=chunk))
    return packs


def size_packs(plan: Plan) -> None:
    limit = plan.settings.get("max_memory_gb")
    for pack in plan.packs:
        arm = plan.arms[pack.arm_id]
        pack.dataset_gb = dataset_device_gb(arm.cfg)
        if arm.memory_gb is None or pack.dataset_gb is None:
            continue
        pack.memory_gb = pack.size * arm.memory_gb + pack.dataset_gb
        if limit is not None and pack.memory_gb > float(limit) and not arm.refused:
            pack.refused = (f"{pack.size} seeds x {arm.memory_gb:.2f} GB training memory + "
                            f"{pack.dataset_gb:.2f} GB dataset (once) = {pack.memory_gb:.2f} GB "
                            f"exceeds plan.max_memory_gb={float(limit):g} (lower pack, "
                            f"trainer.batch_size or the network, or raise plan.max_memory_gb)")


def packs_record(plan: Plan) -> dict:
    """What ``packs.json`` holds: the packs of this launch (run folders relative to the sweep
    folder; members in grid order, the first is the leader)."""
    def rel(path: Path) -> str:
        try:
            return path.relative_to(plan.sweep_dir).as_posix()
        except ValueError:
            return path.as_posix()

    return {"schema_version": PACKS_SCHEMA, "sweep": plan.sweep, "pack": plan.pack_size,
            "packs": [{"id": p.pack_id, "arm_id": p.arm_id, "size": p.size,
                       "leader": rel(p.leader.run_dir),
                       "memory_gb_estimate": round_or_none(p.memory_gb, 3),
                       "members": [{"run_dir": rel(j.run_dir), "seed": j.seed,
                                    "overrides": list(j.overrides)} for j in p.jobs]}
                      for p in plan.packs]}


def write_packs(plan: Plan, path: Path | None = None) -> Path | None:
    """``packs.json`` in the sweep folder (atomic) when ``pack > 1``; with ``pack = 1`` a stale
    one from an earlier launch is removed (jobs read it only when ``pack > 1``)."""
    path = path or plan.sweep_dir / PACKS_JSON
    if plan.pack_size <= 1:
        path.unlink(missing_ok=True)
        return None
    records.atomic_write_text(path, json.dumps(packs_record(plan), indent=1) + "\n")
    return path


def read_packs(sweep_dir: Path) -> dict | None:
    loaded = records.read_json(Path(sweep_dir) / PACKS_JSON)
    return loaded.data if loaded.ok and isinstance(loaded.data, dict) else None


def find_pack(sweep_dir: Path, run_dir: Path) -> tuple[dict, int] | None:
    """(the pack entry of ``packs.json``, this run's index in it) for a run folder, or None."""
    data = read_packs(sweep_dir)
    if not data:
        return None
    sweep_dir, run_dir = Path(sweep_dir).absolute(), Path(run_dir).absolute()
    for pack in data.get("packs") or []:
        for i, member in enumerate(pack.get("members") or []):
            if (sweep_dir / member["run_dir"]).absolute() == run_dir:
                return pack, i
    return None


def pack_jobs(plan: Plan) -> int:
    """Jobs a launch submits: one per pack plus one per unfinished seed in no pack."""
    packed = {j.index for p in plan.packs for j in p.jobs}
    return len(plan.packs) + sum(j.status == TODO and j.index not in packed for j in plan.jobs)


def packs_text(plan: Plan) -> str:
    todo = sum(j.status == TODO for j in plan.jobs)
    lines = [f"packs (pack={plan.pack_size}): {todo} run(s) to do in {pack_jobs(plan)} job(s), "
             f"{len(plan.packs)} pack(s) of 2+ seeds (memory: K x training memory + dataset "
             f"once)"]
    for p in plan.packs:
        mem = (f"~{p.memory_gb:.2f} GB ({p.size} x {plan.arms[p.arm_id].memory_gb:.2f} + "
               f"{p.dataset_gb:.3f} data)" if p.memory_gb is not None else "memory: no estimate")
        lines.append(f"  {p.pack_id}: {p.size} seeds ({' '.join(map(str, p.seeds))}), "
                     f"leader seed={p.leader.seed}; {mem}")
        if p.refused:
            lines.append(f"    REFUSED: {p.refused}")
    return "\n".join(lines)

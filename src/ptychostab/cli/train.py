"""``python train.py [-m] key=value ...``: one training job per (arm, seed), through Hydra.

Overrides of keys the schema lacks are refused first (:func:`check_command_line`); Hydra then
composes and type-checks the config; resolving the run folder
(``hydra.run.dir``/``hydra.sweep.subdir`` = ``${arm_id:}/seed=${seed}``) validates it, so a
bad value fails before any folder exists. For ``-m`` the sweep preflight
(ptychostab.launch.preflight) has by then composed and validated every job of the grid and
taken the sweep lock; a single run takes it shared (same callback, ``on_run_start``).

The task hands a plain, resolved copy of the config to ``ptychostab.runs.job.run_job``, which
records the run (manifest, history, result) and returns its result record.

Packed sweeps (``pack > 1``, ``-m``): the preflight wrote ``<sweep>/packs.json``. The job of a
pack's first member (its leader) composes every other member's config exactly as that member's
own job would (Hydra's ``load_sweep_config`` with the member's overrides, :func:`member_config`)
and calls ``ptychostab.runs.pack.run_pack``; a non-leader's job returns at once (``packed``),
touching nothing in its run folder beyond what Hydra itself writes. Our submitit launchers
submit only leaders; Hydra's basic launcher runs the others as these no-ops. A run in no pack
(final, or a lone unfinished seed) is an ordinary job. A failed run is
data: the task returns its status normally, so a sweep always finishes with exit status 0
(``strict=true`` re-raises after recording, for debugging).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ptychostab import config as cfgmod
from ptychostab import identity
from ptychostab.launch import packs

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> str:
    """The task body, callable without Hydra's decorator (tests call it with a HydraConfig)."""
    hc = HydraConfig.get()
    cfgmod.validate(cfg)
    run_dir = Path(hc.runtime.output_dir)
    arm_id = identity.arm_id(cfg)
    if run_dir.parent.name != arm_id:
        log.warning(f"run folder {run_dir} does not follow <arm_id>/seed=<k> ({arm_id}); "
                    f"hydra.run.dir or hydra.sweep.subdir was overridden")
    overrides = list(hc.overrides.task)
    arm = identity.arm_dict(cfg, overrides)
    if int(cfg.pack) > 1:
        if hc.mode != RunMode.MULTIRUN:
            log.info(f"pack={cfg.pack} has no effect on a single run (no -m): training alone")
        else:
            found = packs.find_pack(Path(str(hc.sweep.dir)), run_dir)
            if found is not None:
                entry, index = found
                if index > 0:
                    log.info(f"{arm_id} seed={cfg.seed}: packed into {entry['leader']} (pack "
                             f"{entry['id']}): trained by that pack's job")
                    return "packed"
                return _run_pack(cfg, entry, run_dir=run_dir, arm=arm, arm_id=arm_id,
                                 overrides=overrides)
            # not in packs.json: a final run (run_job skips it) or a lone unfinished seed
    from ptychostab.runs.job import run_job  # lazy: `--help`/`--cfg` stay fast

    result = run_job(cfgmod.to_plain(cfg), run_dir=run_dir, arm=arm, arm_id=arm_id,
                     overrides=overrides)
    status = str((result or {}).get("status", "unknown"))
    log.info(f"{arm_id} seed={cfg.seed}: {status} ({run_dir})")
    return status


def member_config(overrides: list[str]) -> tuple[DictConfig, Path]:
    """(config, run folder) of another job of this sweep, composed as that job's own process
    composes it: Hydra's ``load_sweep_config`` against this job's config (which carries the
    sweep's hydra overrides and config name), the ``hydra`` node then dropped as Hydra does
    before calling the task."""
    from hydra.core.global_hydra import GlobalHydra

    held = HydraConfig.instance().cfg
    assert held is not None
    loader = GlobalHydra.instance().config_loader()
    with_hydra = loader.load_sweep_config(held, list(overrides))
    run_dir = Path(str(with_hydra.hydra.sweep.dir), str(with_hydra.hydra.sweep.subdir)).absolute()
    job_cfg = OmegaConf.masked_copy(with_hydra, [k for k in with_hydra if k != "hydra"])
    cfgmod.validate(job_cfg)
    return job_cfg, run_dir


def _run_pack(cfg: DictConfig, entry: dict, *, run_dir: Path, arm: dict, arm_id: str,
              overrides: list[str]) -> str:
    """The leader's job: compose the other members, train them all with ``run_pack``."""
    from ptychostab.runs.pack import Member, run_pack

    sweep_dir = Path(str(HydraConfig.get().sweep.dir)).absolute()
    members = [Member(cfg=cfgmod.to_plain(cfg), run_dir=run_dir, arm=arm, arm_id=arm_id,
                      overrides=overrides)]
    for m in entry["members"][1:]:
        job_cfg, m_dir = member_config(list(m["overrides"]))
        expected = (sweep_dir / m["run_dir"]).absolute()
        if m_dir != expected:
            raise RuntimeError(f"pack {entry['id']}: member {m['overrides']} composes the run "
                               f"folder {m_dir}, packs.json says {expected}; run the sweep "
                               f"again (the preflight rewrites packs.json)")
        m_overrides = list(m["overrides"])
        members.append(Member(cfg=cfgmod.to_plain(job_cfg), run_dir=m_dir,
                              arm=identity.arm_dict(job_cfg, m_overrides),
                              arm_id=identity.arm_id(job_cfg), overrides=m_overrides))
    log.info(f"pack {entry['id']}: {len(members)} seeds of {arm_id} in this job "
             f"({', '.join(str(m.cfg.seed) for m in members)})")
    try:
        results = run_pack(members, pack_id=str(entry["id"]))
    except BaseException as err:
        _record_pack_exception(members[1:], err)  # the leader's: Hydra's on_job_end
        raise
    statuses = [str((r or {}).get("status", "unknown")) for r in results]
    for member, status in zip(members, statuses, strict=False):
        log.info(f"{member.arm_id} seed={member.cfg.seed}: {status} ({member.run_dir})")
    return f"pack {entry['id']}: " + ", ".join(statuses)


def _record_pack_exception(members: list, err: BaseException) -> None:
    """run_pack raised past its own bookkeeping: members that started and have no result get
    an ``exception`` record (as on_job_end gives the leader), so none is silently lost."""
    import traceback

    from ptychostab.launch import killed_jobs
    from ptychostab.runs import records

    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return  # a signal: each member recorded its own interruption
    for member in members:
        try:
            if (records.read_json(member.run_dir / records.RESULT).ok
                    or not (member.run_dir / records.MANIFEST).exists()):
                continue
            records.atomic_write_text(member.run_dir / records.TRACEBACK, "".join(
                traceback.format_exception(type(err), err, err.__traceback__)))
            killed_jobs.write_result(member.run_dir, member.cfg, "exception",
                                f"{type(err).__name__}: {err}", recorded_by="pack leader")
        except Exception as inner:  # never mask the pack's own error
            log.warning(f"could not record the pack's failure for {member.run_dir}: {inner}")


@hydra.main(version_base="1.3", config_path=str(cfgmod.CONF_DIR), config_name=cfgmod.CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> str:
    return run(cfg)


def check_command_line(argv: list[str]) -> None:
    """Refuse overrides of keys the schema lacks before Hydra composes (Hydra would accept
    ``+key=value`` into the typed config, and for ``key=value`` suggest that ``+`` form)."""
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:
        return  # a bad option: Hydra's own parser reports it
    try:
        cfgmod.check_overrides(list(args.overrides or []))
    except cfgmod.ConfigError as err:
        raise SystemExit(f"{err}\nNothing was launched.") from None


def main() -> None:
    check_command_line(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()

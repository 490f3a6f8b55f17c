"""``python train.py [-m] key=value ...``: one training job per (arm, seed), through Hydra.

Overrides of keys the schema lacks are refused first (:func:`check_command_line`); Hydra then
composes and type-checks the config; resolving the run folder
(``hydra.run.dir``/``hydra.sweep.subdir`` = ``${arm_id:}/seed=${seed}``) validates it, so a
bad value fails before any folder exists. For ``-m`` the sweep preflight
(ptychostab.sweep.callbacks) has by then composed and validated every job of the grid and
taken the sweep lock; a single run takes it shared (same callback, ``on_run_start``).

The task hands a plain, resolved copy of the config to ``ptychostab.runs.job.run_job``, which
records the run (manifest, history, result) and returns its result record. A failed run is
data: the task returns its status normally, so a sweep always finishes with exit status 0
(``strict=true`` re-raises after recording, for debugging).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ptychostab import config as cfgmod
from ptychostab.sweep import identity

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
    from ptychostab.runs.job import run_job  # lazy: `--help`/`--cfg` stay fast

    result = run_job(cfgmod.to_plain(cfg), run_dir=run_dir, arm=arm, arm_id=arm_id,
                     overrides=overrides)
    status = str((result or {}).get("status", "unknown"))
    log.info(f"{arm_id} seed={cfg.seed}: {status} ({run_dir})")
    return status


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

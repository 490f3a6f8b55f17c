"""The grid of a sweep as Hydra's BasicSweeper builds it, and each job's composed config.

:func:`expand` gives every job's overrides (``hydra.sweeper.params`` first, then the command
line, later keys win; Hydra's own parser and order); :func:`compose_jobs` composes each with
Hydra's ``load_sweep_config`` (what the launcher does on the node), once per distinct
non-seed override set.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

#: A planned job's state: a final ok result, another final result, or still to run.
DONE, FAILED, TODO = "done", "failed", "todo"


class PlanError(ValueError):
    """The grid cannot be composed or validated; the message lists each bad job."""


def sweeper_params(master: DictConfig) -> dict[str, str]:
    params = OmegaConf.select(master, "hydra.sweeper.params", default=None)
    if not params:
        return {}
    return {str(k): str(v) for k, v in params.items()}


def expand(params: Mapping[str, str], arguments: Sequence[str],
           config_loader: Any = None) -> list[list[str]]:
    """Every job's overrides, as BasicSweeper.sweep builds them (same parser, same order)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    texts = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    parser = OverridesParser.create(config_loader=config_loader)
    parsed = parser.parse_overrides(texts)
    batches = BasicSweeper.split_arguments(parsed, None)
    jobs = [list(job) for batch in batches for job in batch]
    if not jobs:
        empty = []
        for ov in parsed:
            if ov.is_sweep_override():
                try:
                    if not list(ov.sweep_string_iterator()):
                        empty.append(ov.input_line or ov.get_key_element())
                except Exception:
                    pass
        raise PlanError(f"the grid is empty: {', '.join(empty) or 'a swept key'} has no value, so "
                        f"the sweep has no job (e.g. seed=range(0)); give it at least one value, "
                        f"e.g. 'seed=range(10)'. Nothing was launched.")
    return jobs


def is_basic_sweeper(master: DictConfig) -> bool:
    target = str(OmegaConf.select(master, "hydra.sweeper._target_", default=""))
    return target.endswith("BasicSweeper")


def split_seed(overrides: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    rest = tuple(o for o in overrides if o.split("=", 1)[0] != "seed")
    seed = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "seed"), None)
    return rest, seed


def compose_jobs(master: DictConfig, config_loader: Any,
                  job_overrides: list[list[str]]) -> list[tuple[list[str], Any]]:
    """(overrides, job config with hydra node | exception) per job, in grid order.

    Hydra composes each distinct non-seed override set once (a composition costs ~0.2 s); the
    seeds of that set are copies with ``seed`` assigned, which is what a ``seed=<k>`` override
    does. Every job's config is then validated on its own."""
    composed: dict[tuple[str, ...], Any] = {}
    out: list[tuple[list[str], Any]] = []
    for overrides in job_overrides:
        rest, seed = split_seed(overrides)
        if rest not in composed:
            try:
                composed[rest] = config_loader.load_sweep_config(master, list(overrides))
            except Exception as err:
                composed[rest] = err
        base = composed[rest]
        if isinstance(base, Exception) or seed is None:
            out.append((list(overrides), base))
            continue
        job_cfg = copy.deepcopy(base)
        try:
            with open_dict(job_cfg):
                job_cfg.seed = seed
        except Exception as err:
            job_cfg = err
        out.append((list(overrides), job_cfg))
    return out


def jobs_text(indices: list[int], job_overrides: list[list[str]]) -> str:
    first = f"job #{indices[0]} [{' '.join(job_overrides[indices[0]])}]"
    return first if len(indices) == 1 else f"{first} and {len(indices) - 1} more like it"


def one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def round_or_none(v: float | None, nd: int) -> float | None:
    return None if v is None else round(v, nd)

"""Where the project lives, found once: the repository root, ``conf/``, ``experiments/`` and
the decision rules (``conf/decision/``).

conf/ and experiments/ sit at the repository root, next to src/ (an editable checkout is the
supported install). ``PTYCHOSTAB_ROOT`` overrides; it is exported so that Hydra's search path
(``${oc.env:PTYCHOSTAB_ROOT,.}/experiments``) resolves the same in submitit/SLURM workers.
Imports nothing of ours.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(os.environ.get("PTYCHOSTAB_ROOT") or Path(__file__).resolve().parents[2])
os.environ.setdefault("PTYCHOSTAB_ROOT", str(REPO_ROOT))
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS_DIR = REPO_ROOT / "experiments"
DECISION_DIR = CONF_DIR / "decision"
DEFAULT_RULE = DECISION_DIR / "default.yaml"

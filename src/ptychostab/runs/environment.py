"""Where and with what a job runs: git state, package versions, host, device, SLURM ids.

Everything here is best effort and never raises: a job must not fail because ``git`` is
missing or a package has no version; the field then says ``None`` (or why).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["config_digest", "device_info", "git_info", "host_info", "package_versions",
           "slurm_ids", "SLURM_KEYS"]

SLURM_KEYS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT")
_PACKAGES = {"torch": "torch", "lightning": "lightning", "hydra": "hydra-core",
             "numpy": "numpy", "ptychostab": "ptychostab", "omegaconf": "omegaconf",
             "submitit": "submitit"}


def config_digest(resolved: dict) -> str:
    """sha256 (16 hex digits) of the resolved config as canonical JSON."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_info(start: str | os.PathLike | None = None) -> dict:
    """``{"commit", "dirty"}`` of the repository holding this package (or ``start``).

    ``dirty`` counts tracked changes only (untracked outputs/ must not mark every run dirty).
    """
    cwd = Path(start) if start is not None else Path(__file__).resolve().parent
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for key, dist in _PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def host_info() -> dict:
    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "pid": os.getpid(), "executable": sys.executable}


def device_info(device) -> dict:
    """The training device as torch sees it (name, memory, capability on CUDA)."""
    import torch

    dev = torch.device(device)
    out = {"type": dev.type, "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        out.update(name=props.name, index=idx, total_memory=props.total_memory,
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        out["name"] = platform.processor() or platform.machine()
    return out


def slurm_ids() -> dict:
    return {k: os.environ.get(k) for k in SLURM_KEYS}

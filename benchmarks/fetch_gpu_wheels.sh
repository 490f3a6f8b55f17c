#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the Python wheels the GPU machine lacks, for
# benchmarks/gpu_check.sh and benchmarks/gpu_seed_control.sh to install there. Its image
# (.library/device/KINDS.md) has torch, lightning, numpy, scipy, scikit-image, matplotlib,
# pyyaml, filelock, packaging, cloudpickle, typing-extensions... but not:
#   omegaconf + antlr4-python3-runtime   (the config; gpu_check.sh's job path needs only these)
#   hydra-core                           (train.py, the plan: gpu_seed_control.sh)
#   submitit + hydra-submitit-launcher   (conf/launcher/{submitit_local,slurm}; not used by
#                                         launcher=local, fetched so that every launcher composes)
#
#   benchmarks/fetch_gpu_wheels.sh          # then name `.whl` in the device run's carry
#
# Versions are the ones installed in this checkout's .venv. Wheels for CPython 3.12 on
# manylinux x86-64 (the GPU machine's python3), per .library/device/README.md's recipe.
# Total well under a MiB of the run's 64 MiB carry limit (printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PLATFORM=(--python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)
rm -rf .whl && mkdir -p .whl
for dist in omegaconf antlr4-python3-runtime hydra-core submitit hydra-submitit-launcher; do
  spec="$dist==$(version "$dist")"
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d .whl "$spec" \
       2>/dev/null; then
    # antlr4-python3-runtime 4.9.3 (and possibly others) is published as an sdist only: build
    # its pure-Python (py3-none-any) wheel here.
    "$PY" -m pip wheel -q --no-deps -w .whl "$spec"
  fi
done
ls -l .whl
du -sh .whl

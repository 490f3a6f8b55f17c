#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the Python wheels the GPU machine lacks, for
# benchmarks/gpu_check.sh to install there (its image has torch, lightning, numpy, scipy,
# scikit-image, matplotlib, pyyaml, filelock... but not omegaconf and its antlr4 runtime;
# hydra is not needed: the check runs the job through `python -m ptychostab.runs.job`).
#
#   benchmarks/fetch_gpu_wheels.sh          # then name `.whl` in the device run's carry
#
# Versions are the ones installed in this checkout's .venv. Wheels for CPython 3.12 on
# manylinux x86-64 (the GPU machine's python3), per .library/device/README.md's recipe.
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
for dist in omegaconf antlr4-python3-runtime; do
  spec="$dist==$(version "$dist")"
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d .whl "$spec" \
       2>/dev/null; then
    # antlr4-python3-runtime 4.9.3 is published as an sdist only: build its pure-Python
    # (py3-none-any) wheel here.
    "$PY" -m pip wheel -q --no-deps -w .whl "$spec"
  fi
done
ls -l .whl
du -sh .whl

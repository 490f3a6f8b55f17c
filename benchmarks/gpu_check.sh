#!/usr/bin/env bash
# The GPU fast-path check in one call (issues 7 and 13), about 5 minutes on an H100/H200:
#
#   1. setup: installs the carried wheels (.whl/, from benchmarks/fetch_gpu_wheels.sh) into a
#      fresh temporary folder and puts src/ on PYTHONPATH (nothing is pip-installed into the
#      image); prints nvidia-smi and the torch/device versions;
#   2. tests: the gpu-marked tests of tests/training/test_fastpath.py (CUDA graphs and compile
#      give the eager losses, no host sync inside a step, NaN caught at its step, job + resume);
#   3. benchmark: train_step.py at Stage A size, d4 norm 1.0, d4 agc 0.01, d8 norm; bare / ours
#      (job path, eager) / graphs (job path, CUDA graphs); 100 timed steps x 2 rounds after a
#      warm-up round; peak memory beside the dry run's estimate;
#   4. compile (last, optional: COMPILE=0 skips it): ours with trainer.compile at d4 norm, in
#      its own time limit so that a slow or broken compile costs nothing else;
#   5. packed seeds (issue 14): train_step.py --pack 1,2,4,8 at Stage A size (d4 norm, CUDA
#      graphs on CUDA): aggregate steps/s per pack size K, then exactness: 2 seeds alone
#      (run_job) and packed (run_pack), per-epoch losses compared (bit-identical expected;
#      tolerance 1e-5 relative); ONLY=pack runs setup and this stage alone;
#   6. prints the benchmark tables LAST (the figures for benchmarks/README.md).
# The Stage A control run through train.py is a separate call: benchmarks/gpu_seed_control.sh.
#
# Device call (the `run` tool):   command: bash benchmarks/gpu_check.sh
#                                 carry: [".whl"]            timeout_s: 540
# Here on a CPU, the same stages with small sizes:   DRY=1 bash benchmarks/gpu_check.sh
#
# Environment: ONLY (pack: only the packing stage), DRY (1: DEVICE=cpu SMALL=1), DEVICE (cuda|cpu, default cuda), SMALL (1: small
# model/data everywhere), COMPILE (1|0, default 1), JOB (1: also the old 2-epoch job through
# `python -m ptychostab.runs.job`; default 0), JOB_DATA (stage_a|small), JOB_GRAPHS (1|0),
# JOB_CLIP (norm|agc|none), JOB_EPOCHS (2), BENCH_ARGS (replaces the benchmark's size/step
# arguments), OUT (results; the device tool sets it), PY (python; default .venv/bin/python if
# present, else python3).
# Stage time limits: tests 150 s (90 s a test), benchmark 150 s, compile 100 + 120 s: at most
# about 9 minutes with setup, 4-5 expected (estimates: not yet run on a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${DRY:-0}
if [ "$DRY" = 1 ]; then DEVICE=${DEVICE:-cpu}; SMALL=${SMALL:-1}; fi
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
COMPILE=${COMPILE:-1}
JOB=${JOB:-0}
OUT=${OUT:-$(mktemp -d -t gpu-check-out.XXXXXX)}
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
WORK=$(mktemp -d -t gpu-check.XXXXXX)
LOG=$OUT/gpu_check.log
export PYTHONUNBUFFERED=1
export PTYCHOSTAB_CACHE=${PTYCHOSTAB_CACHE:-$WORK/dataset-cache}
exec > >(tee -a "$LOG") 2>&1
stage() { printf '\n===== %s (%s) =====\n' "$1" "$(date -u +%H:%M:%S)"; }
T0=$(date +%s)

stage "setup"
if ! "$PY" -c "import omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" .whl/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "omegaconf is missing and no .whl/ was carried (run benchmarks/fetch_gpu_wheels.sh)"
    exit 1
  fi
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
if [ "$DEVICE" = cuda ]; then nvidia-smi || true; fi
"$PY" - <<'EOF' || exit 1
import platform, torch, lightning, omegaconf
print(f"python {platform.python_version()}  torch {torch.__version__}  "
      f"lightning {lightning.__version__}  omegaconf {omegaconf.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda {torch.version.cuda}: {p.name}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.0f} GiB")
import ptychostab.runs.job  # noqa: F401  (the job imports without hydra)
EOF

ONLY=${ONLY:-}
BENCH_RC=skipped
if [ "$ONLY" != pack ]; then
stage "tests"
TIMEOUT_FLAG=()
if "$PY" -c "import pytest_timeout" 2>/dev/null; then TIMEOUT_FLAG=(--timeout=90); fi
if [ "$DEVICE" = cuda ]; then MARK=gpu; else MARK="not gpu and not slow"; fi
# the benchmark smoke tests are left out (the benchmark itself runs next), and compile waits for
# the last, optional stage
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -rfEs --tb=short "${TIMEOUT_FLAG[@]}" \
  tests/training/test_fastpath.py -m "$MARK" -k "not benchmark_smoke and not compile" \
  --durations=8
echo "tests exit code: $?"

stage "benchmark"
if [ "$DRY" = 1 ]; then  # a 2-core CPU: N=16, width 2; the same variants and code paths
  DEFAULT_BENCH="--sizes tiny --variants 4:norm,4:agc,8:norm --steps 10 --warmup 3 --repeats 1"
  COMPILE_BENCH="--sizes tiny --variants 4:norm --steps 10 --warmup 3 --repeats 1"
elif [ "$SMALL" = 1 ]; then
  DEFAULT_BENCH="--sizes small --variants 4:norm,4:agc,8:norm --steps 20 --warmup 5 --repeats 2"
  COMPILE_BENCH="--sizes small --variants 4:norm --steps 20 --warmup 5 --repeats 1"
else
  DEFAULT_BENCH="--sizes stage_a --variants 4:norm,4:agc,8:norm --steps 100 --warmup 20 --repeats 2"
  COMPILE_BENCH="--sizes stage_a --variants 4:norm --steps 100 --warmup 20 --repeats 2"
fi
# shellcheck disable=SC2086
timeout 150 "$PY" benchmarks/train_step.py --device "$DEVICE" --json "$OUT/bench.json" \
  ${BENCH_ARGS:-$DEFAULT_BENCH} >"$WORK/bench.out" 2>"$WORK/bench.err"
BENCH_RC=$?
grep -v '^$' "$WORK/bench.err" | tail -20
cat "$WORK/bench.out"
echo "benchmark exit code: $BENCH_RC"

stage "per-run sinks (issues 12, 15): drift probe share of an epoch, step rate with a tracker"
SINK_BENCH=$(echo "${BENCH_ARGS:-$DEFAULT_BENCH}" | sed 's/--variants [^ ]*/--variants 4:norm/')
# shellcheck disable=SC2086
timeout 120 "$PY" benchmarks/train_step.py --device "$DEVICE" --json "$OUT/bench_sinks.json" \
  --impls ours_bare_sinks,ours_probe,ours_tracked $SINK_BENCH >"$WORK/sinks.out" \
  2>"$WORK/sinks.err"
SINKS_RC=$?
grep -v '^$' "$WORK/sinks.err" | tail -10
sed -n '/per-run sinks/,/^$/p' "$WORK/sinks.out"
echo "sinks benchmark exit code: $SINKS_RC (targets: probe < 1% of an epoch; tracked/bare >= 0.99)"

if [ "$JOB" = 1 ]; then
stage "2-epoch Stage A job (JOB=1)"
JOB_DATA=${JOB_DATA:-$([ "$SMALL" = 1 ] && echo small || echo stage_a)}
JOB_GRAPHS=${JOB_GRAPHS:-$([ "$DEVICE" = cuda ] && echo 1 || echo 0)}
export JOB_DATA JOB_GRAPHS DEVICE JOB_CLIP=${JOB_CLIP:-norm} JOB_EPOCHS=${JOB_EPOCHS:-2}
"$PY" - "$OUT/job.yaml" <<'EOF' || exit 1
# The real conf values (conf/data/grid_lines_n64.yaml, conf/arch/hybrid.yaml,
# conf/trainer/default.yaml, conf/clip/norm.yaml, failure defaults of config.py) written over
# the complete tiny config (ptychostab.training.testing), except: max_epochs JOB_EPOCHS (2) and
# failure.collapse_ssim off (2 epochs are not expected to reach SSIM 0.5; the value is printed).
import os, sys
from omegaconf import OmegaConf
from ptychostab.training.testing import tiny_config

small = os.environ["JOB_DATA"] == "small"
clip = os.environ["JOB_CLIP"]
o = {
    "seed": 0, "depth": 4, "sweep": "gpu_check",
    "data.name": "grid_lines_n64", "data.N": 64, "data.size": 392, "data.n_lines": 400,
    "data.nimgs_train": 2, "data.nimgs_test": 2, "data.outer_offset_train": 8,
    "data.outer_offset_test": 20, "data.nphotons": 1e9,
    "arch.name": "hybrid", "arch.hidden_channels": 32, "arch.n_modes": 12, "arch.corners": 2,
    "clip.algorithm": clip, "clip.value": {"norm": 1.0, "agc": 0.01, "none": None}[clip],
    "trainer.max_epochs": int(os.environ["JOB_EPOCHS"]), "trainer.batch_size": 16,
    "trainer.lr": 1e-3, "trainer.optimizer": "adam", "trainer.scheduler": "none",
    "trainer.loss": "mae", "trainer.accelerator": os.environ["DEVICE"], "trainer.tf32": True,
    "trainer.cuda_graphs": os.environ["JOB_GRAPHS"] == "1", "trainer.sync_every": 50,
    "failure.collapse_ssim": None, "failure.collapse_rel_std": 1e-3,
}
if small:  # a CPU-sized stand-in: N=32, one 120 px object each way, width 8
    o.update({"data.name": "gpu_check_small", "data.N": 32, "data.size": 120,
              "data.n_lines": 60, "data.nimgs_train": 1, "data.nimgs_test": 1,
              "data.outer_offset_test": 40, "arch.hidden_channels": 8, "arch.n_modes": 6})
cfg = tiny_config(**o)
OmegaConf.save(cfg, sys.argv[1])
print(f"job config: data {cfg.data.name} N={cfg.data.N} S={cfg.data.size} nimgs "
      f"{cfg.data.nimgs_train}/{cfg.data.nimgs_test}; hybrid d{cfg.depth} w{cfg.arch.hidden_channels}; "
      f"clip {clip}; {cfg.trainer.max_epochs} epochs; cuda_graphs {cfg.trainer.cuda_graphs}")
EOF
RUN=$WORK/run
timeout 120 "$PY" -m ptychostab.runs.job --config "$OUT/job.yaml" --run-dir "$RUN" \
  --arm-id gpu-check >"$WORK/job.out" 2>&1
JOB_RC=$?
grep -E "RESUME|DONE|FAILED|STOPPED|status:|Error|error" "$WORK/job.out" | tail -15
echo "job exit code: $JOB_RC"
for f in result.json history.csv manifest.json traceback.txt; do
  [ -f "$RUN/$f" ] && cp "$RUN/$f" "$OUT/job_$f"
done
"$PY" - "$RUN" <<'EOF'
import csv, json, sys
from pathlib import Path
run = Path(sys.argv[1])
try:
    r = json.loads((run / "result.json").read_text())
except OSError as err:
    sys.exit(f"no result.json: {err}")
m = json.loads((run / "manifest.json").read_text())
eff = m.get("effective") or {}
rows = list(csv.DictReader(open(run / "history.csv"))) if (run / "history.csv").exists() else []
walls = [float(x["wall_s"]) for x in rows]
steps = eff.get("steps_per_epoch")
print(f"status {r['status']}  epochs {r['epochs_completed']}  global_step {r['global_step']}  "
      f"wall {r['wall_s']:.1f} s  device {r['device']}  peak {r['peak_memory_bytes'] / 2**20:.0f} "
      f"MiB ({r['peak_memory_kind']})")
if r.get("failure"):
    print("failure:", r["failure"])
print(f"effective: steps/epoch {steps}, train {eff.get('train_samples')}, val "
      f"{eff.get('val_samples')}, cuda_graphs {eff.get('cuda_graphs')}, compile "
      f"{eff.get('compile')}, tf32 {eff.get('tf32')}, optimizer "
      f"{ {k: (eff.get('optimizer') or {}).get(k) for k in ('foreach', 'fused', 'capturable')} }")
for i, row in enumerate(rows):
    took = walls[i] - walls[i - 1] if i else None
    rate = f", {steps / took:.1f} steps/s incl. epoch end" if took and steps else ""
    print(f"epoch {row['epoch']}: train {float(row['train_loss']):.5f} val "
          f"{float(row['val_loss']):.5f}; ended at job clock {walls[i]:.1f} s"
          + (f" (epoch took {took:.2f} s{rate})" if took else
             " (includes setup, data simulation/cache, warm-up and capture)"))
met = r.get("metrics") or {}
print(f"amp_ssim {met.get('amp_ssim')}  phase_ssim {met.get('phase_ssim')}  "
      f"best_val_loss {met.get('best_val_loss')}")
EOF

fi

fi  # ONLY != pack

COMPILE_RC=skipped
if [ "$COMPILE" = 1 ] && [ "$ONLY" != pack ]; then
  stage "compile (optional, last)"
  timeout 100 "$PY" -m pytest -q -p no:cacheprovider -rfEs --tb=short "${TIMEOUT_FLAG[@]}" \
    tests/training/test_fastpath.py -m "$MARK" -k "compile"
  echo "compile tests exit code: $? (5: none selected, as on a CPU: the CPU one is 'slow')"
  # shellcheck disable=SC2086
  timeout 120 "$PY" benchmarks/train_step.py --device "$DEVICE" --json "$OUT/bench_compile.json" \
    --impls bare,compile ${COMPILE_ARGS:-$COMPILE_BENCH} >"$WORK/compile.out" 2>"$WORK/compile.err"
  COMPILE_RC=$?
  grep -v '^$' "$WORK/compile.err" | tail -10
  cat "$WORK/compile.out"
  echo "compile exit code: $COMPILE_RC (124: its time limit)"
fi

stage "packed seeds (issue 14)"
if [ "$DRY" = 1 ]; then
  PACK_BENCH="--sizes tiny --variants 4:norm --steps 20 --warmup 3 --repeats 2"
elif [ "$SMALL" = 1 ]; then
  PACK_BENCH="--sizes small --variants 4:norm --steps 40 --warmup 5 --repeats 2"
else
  PACK_BENCH="--sizes stage_a --variants 4:norm --steps 100 --warmup 20 --repeats 2"
fi
# shellcheck disable=SC2086
timeout 200 "$PY" benchmarks/train_step.py --device "$DEVICE" --json "$OUT/bench_pack.json" \
  ${PACK_ARGS:-$PACK_BENCH --pack 1,2,4,8 --pack-check 2} >"$WORK/pack.out" 2>"$WORK/pack.err"
PACK_RC=$?
grep -E "Error|error|Traceback" "$WORK/pack.err" | tail -10
echo "packing benchmark exit code: $PACK_RC (124: its time limit)"

stage "benchmark table (last)"
echo "total $(( $(date +%s) - T0 )) s on $DEVICE; benchmark exit code $BENCH_RC; compile $COMPILE_RC"
if [ "$ONLY" = pack ]; then
  echo "ONLY=pack: the step benchmark was not run"
elif grep -q '^Stage A projection' "$WORK/bench.out"; then
  sed -n '/^Stage A projection/,$p' "$WORK/bench.out"
else
  echo "benchmark incomplete (time limit or error): the variants it finished"
  grep -E '^(variant|d[0-9]|---)' "$WORK/bench.out"
fi
echo
if grep -q '^Packed seeds' "$WORK/pack.out"; then
  sed -n '/^Packed seeds/,$p' "$WORK/pack.out"
else
  echo "packing benchmark incomplete: the pack sizes it finished"
  grep -E '^pack K=' "$WORK/pack.out"
fi
rm -rf "$WORK"

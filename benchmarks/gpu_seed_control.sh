#!/usr/bin/env bash
# The seed's Stage A control (shared/seed/strategy.md section 2, 2026-01-29) re-run on a GPU
# through the job's own path, in one call of at most about 9 minutes (issue 13):
#
#   python train.py +experiment=seed_stage_a_control   (profile=reference, hybrid, norm 1.0,
#   N=64, gridsize 1, depth 4, nimgs 2/2, nphotons 1e9, MAE, seed 20260128, set_phi ON)
#
#   1. setup: the carried wheels (.whl/: hydra-core, omegaconf, antlr4, submitit,
#      hydra-submitit-launcher; benchmarks/fetch_gpu_wheels.sh) into a temporary folder;
#   2. calibration: the same command with trainer.max_epochs=2 in a throw-away sweep folder
#      (simulates and caches the Stage A data, warms up and captures; epoch 2's duration is the
#      measured epoch time, validation included);
#   3. the run: EPOCHS = min(50, the epochs that fit in what is left of BUDGET_S, less
#      EVAL_MARGIN_S for setup and the final evaluation), or EPOCHS if given. 50 epochs x 862
#      steps fit only above about 90 steps/s; fewer epochs are reported AS SUCH (trainer.
#      max_epochs is part of the arm id, so a shorter run has its own folder and label hash);
#   4. copies result.json, history.csv, manifest.json (+ traceback.txt) and the logs into $OUT
#      and prints our numbers beside the seed's (best val loss 0.0138, amp SSIM 0.925,
#      amp MAE 0.063; its phase SSIM 0.997 was without set_phi: vacuous).
#
# Device call (the `run` tool):   command: bash benchmarks/gpu_seed_control.sh
#                                 carry: [".whl"]            timeout_s: 570
# Here on a CPU (the same commands, tiny sizes, 2 + up to 3 epochs):
#                                 DRY=1 bash benchmarks/gpu_seed_control.sh
#
# Environment: DRY (1: CPU, tiny data/model), BUDGET_S (total seconds for steps 2-3, default
# 510; DRY 240), EPOCHS (fixed epoch count: skips the calibration's rate-based choice, not the
# calibration), MAX_EPOCHS (cap, default 50; DRY 3), EVAL_MARGIN_S (default 60), GRAPHS (1|0:
# trainer.cuda_graphs, default 1 on CUDA: a run-only setting, not in the arm id), EXTRA
# (more train.py overrides), OUT, PY.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${DRY:-0}
OUT=${OUT:-$(mktemp -d -t gpu-seed-out.XXXXXX)}
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
WORK=$(mktemp -d -t gpu-seed.XXXXXX)
LOG=$OUT/gpu_seed_control.log
export PYTHONUNBUFFERED=1
export PTYCHOSTAB_CACHE=${PTYCHOSTAB_CACHE:-$WORK/dataset-cache}
export PTYCHOSTAB_ROOT=$ROOT
exec > >(tee -a "$LOG") 2>&1
stage() { printf '\n===== %s (%s) =====\n' "$1" "$(date -u +%H:%M:%S)"; }
T0=$(date +%s)

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  BUDGET_S=${BUDGET_S:-240}
  MAX_EPOCHS=${MAX_EPOCHS:-3}
  GRAPHS=${GRAPHS:-0}
  # the same preset, shrunk: N=32 patches of a 96 px object, width 4, 4 modes; the collapse
  # bar off (a few CPU epochs do not reach SSIM 0.5)
  SIZE=(data.N=32 data.size=96 data.n_lines=40 data.nimgs_train=1 data.nimgs_test=1
        arch.hidden_channels=4 arch.n_modes=4 failure.collapse_ssim=0.0)
else
  DEVICE=cuda
  BUDGET_S=${BUDGET_S:-510}
  MAX_EPOCHS=${MAX_EPOCHS:-50}
  GRAPHS=${GRAPHS:-1}
  SIZE=()
fi
EVAL_MARGIN_S=${EVAL_MARGIN_S:-60}
GRAPHS_FLAG=$([ "$GRAPHS" = 1 ] && echo true || echo false)
COMMON=(+experiment=seed_stage_a_control "paths.output_root=$WORK/outputs"
        trainer.accelerator="$DEVICE" trainer.cuda_graphs="$GRAPHS_FLAG" "${SIZE[@]}")
# shellcheck disable=SC2206
EXTRA_ARGS=(${EXTRA:-})

stage "setup"
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" .whl/*.whl || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "hydra/omegaconf missing and no .whl/ was carried (run benchmarks/fetch_gpu_wheels.sh)"
    exit 1
  fi
fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || true; fi
"$PY" - <<'EOF' || exit 1
import platform, torch, lightning, hydra, omegaconf
print(f"python {platform.python_version()}  torch {torch.__version__}  lightning "
      f"{lightning.__version__}  hydra {hydra.__version__}  omegaconf {omegaconf.__version__}")
if torch.cuda.is_available():
    print("cuda", torch.version.cuda, torch.cuda.get_device_name(0))
EOF
echo "dry run of the preset:"
"$PY" -m ptychostab.cli.plan "${COMMON[@]}" "${EXTRA_ARGS[@]}" | grep -v '^wrote' || exit 1

stage "calibration: 2 epochs, same command"
timeout $(( BUDGET_S / 2 )) "$PY" train.py "${COMMON[@]}" "${EXTRA_ARGS[@]}" \
  sweep=seed_control_calibration trainer.max_epochs=2 >"$WORK/calib.out" 2>&1
CAL_RC=$?
tail -5 "$WORK/calib.out"
cp "$WORK/calib.out" "$OUT/calibration.log"
CAL_DIR=$(find "$WORK/outputs/seed_control_calibration" -name history.csv -printf '%h\n' \
  2>/dev/null | head -1)
SPENT=$(( $(date +%s) - T0 ))
PLAN=$("$PY" - "${CAL_DIR:-none}" "$BUDGET_S" "$SPENT" "$EVAL_MARGIN_S" "$MAX_EPOCHS" \
  "${EPOCHS:-}" <<'EOF'
import csv, json, sys
from pathlib import Path
run, budget, spent, margin, cap, fixed = sys.argv[1:7]
budget, spent, margin, cap = float(budget), float(spent), float(margin), int(cap)
epoch_s = steps = None
try:
    rows = list(csv.DictReader(open(Path(run) / "history.csv")))
    walls = [float(r["wall_s"]) for r in rows]
    epoch_s = walls[1] - walls[0] if len(walls) > 1 else walls[0]
    steps = (json.loads((Path(run) / "manifest.json").read_text()).get("effective") or {}
             ).get("steps_per_epoch")
except (OSError, KeyError, ValueError, IndexError):
    pass
left = budget - spent - margin
if fixed:
    epochs, why = min(int(fixed), cap), "EPOCHS given"
elif epoch_s:
    epochs, why = max(1, min(cap, int(left // epoch_s))), f"{left:.0f} s left / epoch"
else:
    epochs, why = 1, "no calibration figure"
rate = f"{steps / epoch_s:.1f}" if epoch_s and steps else "?"
print(f"{epochs} {epoch_s or 0:.2f} {rate} {why.replace(' ', '_')}")
EOF
)
read -r RUN_EPOCHS EPOCH_S RATE WHY <<<"$PLAN"
echo "calibration exit $CAL_RC; epoch ${EPOCH_S} s (~${RATE} steps/s incl. validation); " \
     "running ${RUN_EPOCHS} epoch(s) of ${MAX_EPOCHS} (${WHY//_/ })"

stage "the run: ${RUN_EPOCHS} epoch(s)"
LEFT=$(( BUDGET_S - ( $(date +%s) - T0 ) ))
[ "$LEFT" -lt 30 ] && LEFT=30
timeout "$LEFT" "$PY" train.py "${COMMON[@]}" "${EXTRA_ARGS[@]}" \
  trainer.max_epochs="$RUN_EPOCHS" >"$WORK/run.out" 2>&1
RUN_RC=$?
tail -5 "$WORK/run.out"
cp "$WORK/run.out" "$OUT/run.log"
RUN_DIR=$(find "$WORK/outputs/seed_control_rerun" -name manifest.json -printf '%h\n' \
  2>/dev/null | head -1)
echo "run exit code: $RUN_RC (124: its time limit); folder ${RUN_DIR:-none}"
for f in result.json history.csv manifest.json traceback.txt; do
  [ -n "$RUN_DIR" ] && [ -f "$RUN_DIR/$f" ] && cp "$RUN_DIR/$f" "$OUT/$f"
done

stage "summary beside the seed's recorded run"
"$PY" - "$OUT" "$RUN_EPOCHS" "$EPOCH_S" "$RATE" "$DEVICE" "$DRY" <<'EOF'
import csv, json, sys
from pathlib import Path
out, epochs, epoch_s, rate, device, dry = sys.argv[1:7]
seed = {"best_val_loss": 0.0138, "amp_ssim": 0.925, "amp_mae": 0.063, "phase_ssim": 0.997}
try:
    r = json.loads((Path(out) / "result.json").read_text())
except OSError as err:
    sys.exit(f"no result.json: {err}")
m = json.loads((Path(out) / "manifest.json").read_text())
met = r.get("metrics") or {}
cfg = m.get("config") or {}
rows = list(csv.DictReader(open(Path(out) / "history.csv"))) if (
    Path(out) / "history.csv").exists() else []
print(("CPU DRY RUN (tiny sizes): these numbers are NOT a result\n" if dry == "1" else "")
      + f"device {device}; profile {cfg.get('profile')}; arm {m.get('arm_id')}; seed "
      f"{m.get('seed')}; status {r.get('status')}; epochs {r.get('epochs_completed')} of "
      f"{epochs} run (the recorded run: 50); calibration epoch {epoch_s} s, ~{rate} steps/s; "
      f"wall {r.get('wall_s', 0):.0f} s; peak {(r.get('peak_memory_bytes') or 0) / 2**20:.0f} "
      f"MiB ({r.get('peak_memory_kind')}); params {(r.get('params') or {}).get('numel')} numel")
if r.get("failure"):
    print("failure:", r["failure"])
print(f"\n| metric | seed 2026-01-29 (50 epochs, no set_phi) | ours ({r.get('epochs_completed')}"
      f" epochs, set_phi on) |\n|---|---|---|")
fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
for key in ("best_val_loss", "final_val_loss", "amp_ssim", "amp_mae", "phase_ssim",
            "phase_mae"):
    note = " (vacuous there)" if key == "phase_ssim" else ""
    print(f"| {key} | {fmt(seed.get(key))}{note} | {fmt(met.get(key))} |")
if rows:
    print(f"\nhistory: {len(rows)} epoch(s); last: " + ", ".join(
        f"{k} {rows[-1][k]}" for k in rows[-1] if k in ("epoch", "train_loss", "val_loss",
                                                        "grad_norm_pre_median", "wall_s")))
EOF
echo "total $(( $(date +%s) - T0 )) s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
rm -rf "$WORK"

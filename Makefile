# ptychostab — `make help` lists the targets.
SHELL := /bin/bash
PY_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=# e.g. https://download.pytorch.org/whl/cu128 for a CUDA build (README "GPU clusters")

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: the pinned CPU wheel (GPU clusters: see README "CUDA install")
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## make .venv: torch==2.13.0 (CPU wheel) first, then the project with dev extras

test: install ## run the default (fast) test suite (after checking the installed versions against pyproject.toml)
	$(PY) scripts/check_deps.py
	$(PY) -m pytest -q

# --- experiments (experiments/README.md) ------------------------------------------------------
LAUNCHER ?= local# local | submitit_local | slurm
OUT ?= outputs# output root: runs land in $(OUT)/<sweep>/<arm_id>/seed=<k>/
EXP ?=# an experiment of experiments/ (its sweep folder has the same name)
ARGS ?=# extra Hydra overrides, e.g. ARGS="trainer.max_epochs=20 'seed=range(3)'"
AGG_ARGS ?=# extra aggregator flags, e.g. AGG_ARGS="--no-plots --control hybrid_norm1.0_d8"
STATUS_ARGS ?=# extra status flags, e.g. STATUS_ARGS="--watch 30" or "--json" or "--runs"

demo: install ## the README's first job: both stages at demonstration scale on CPU (~4 min), then the report
	$(PY) train.py -m +experiment=demo paths.output_root=$(OUT)/demo $(ARGS)
	$(PY) train.py -m +experiment=demo_b paths.output_root=$(OUT)/demo $(ARGS)
	$(PY) -m ptychostab.cli.aggregate $(OUT)/demo/demo_stage_a $(OUT)/demo/demo_stage_b --out $(OUT)/demo --rule conf/decision/demo.yaml $(AGG_ARGS)

plan: install ## dry run: grid, done/failed/to-do, params, memory, time; writes plan.csv (EXP=stage_a)
	@test -n "$(EXP)" || { echo "usage: make plan EXP=<experiment> [ARGS=...]"; exit 2; }
	$(PY) -m ptychostab.cli.plan +experiment=$(EXP) launcher=$(LAUNCHER) paths.output_root=$(OUT) $(ARGS)

# sweep EXPERIMENT: in the foreground, or for SLURM in the background (the submitit launcher
# blocks until every job ends): its log goes to $(OUT)/<sweep>/launcher.log. Re-running the
# same target resumes the sweep (finished runs are skipped, interrupted ones resume).
define sweep
	@if [ "$(LAUNCHER)" != slurm ]; then \
	  set -x; $(PY) train.py -m +experiment=$(1) launcher=$(LAUNCHER) paths.output_root=$(OUT) $(ARGS); \
	else \
	  log="$(OUT)/$(1)/launcher.log"; mkdir -p "$(OUT)/$(1)"; touch "$$log"; \
	  from=$$(( $$(wc -l < "$$log") + 1 )); \
	  setsid nohup $(PY) train.py -m +experiment=$(1) launcher=slurm paths.output_root=$(OUT) \
	    $(ARGS) >> "$$log" 2>&1 < /dev/null & pid=$$!; \
	  echo "launcher pid $$pid: composing and checking every job (log: $$log)"; \
	  for i in $$(seq 600); do \
	    if tail -n +$$from "$$log" | grep -qE 'Submitted [0-9]+ job|Skipping [0-9]+ run|Recognised [0-9]+ run'; then break; fi; \
	    if ! kill -0 $$pid 2>/dev/null; then tail -n +$$from "$$log" | tail -25; \
	      echo "the launcher stopped before submitting (see above)"; exit 1; fi; \
	    sleep 0.5; \
	  done; \
	  echo "the launcher runs in the background (jobs submitted): safe to log out. Follow: tail -f $$log   queue: squeue --me"; \
	  echo "resume after an interruption: make $(2) LAUNCHER=slurm (finished runs are skipped, jobs still queued or running are waited for)"; \
	  echo "stop the launcher: kill $$pid (SIGTERM: it frees the sweep lock; the jobs go on)"; \
	fi
endef

stage-a: install ## Stage A: control/arch_fix/opt_fix x 10 seeds, depth 4 (LAUNCHER=local|submitit_local|slurm)
	$(call sweep,stage_a,stage-a)

clip-sweep: install ## control sensitivity: hybrid, norm clip 1..100 x 5 seeds (LAUNCHER=...)
	$(call sweep,clip_sweep,clip-sweep)

stage-b: install ## Stage B: the arms at depth 8 x 10 seeds (LAUNCHER=...)
	$(call sweep,stage_b,stage-b)

aggregate: install ## aggregate sweep folders: runs.csv, summary.csv, report.md, plots, decision (EXP="stage_a stage_b")
	@test -n "$(EXP)" || { echo "usage: make aggregate EXP=<sweep> [EXP=\"stage_a stage_b\"]  (folders $(OUT)/<sweep>)"; exit 2; }
	$(PY) -m ptychostab.cli.aggregate $(addprefix $(OUT)/,$(EXP)) $(AGG_ARGS)

status: install ## a sweep's state, live: per arm ok/instability/other final/not final, running/queued/dead, ETA (EXP="stage_a stage_b"; STATUS_ARGS=--watch)
	@test -n "$(EXP)" || { echo "usage: make status EXP=<sweep> [EXP=\"stage_a stage_b\"] [STATUS_ARGS=\"--watch 30\"]  (folders $(OUT)/<sweep>)"; exit 2; }
	$(PY) -m ptychostab.cli.status $(addprefix $(OUT)/,$(EXP)) $(STATUS_ARGS)

# --- a local SLURM cluster (root; Debian) ---------------------------------------------------
slurm-up: ## start a single-node SLURM cluster with accounting here (root; idempotent)
	bash scripts/slurm_up.sh

slurm-down: ## stop the daemons slurm-up started (and only those)
	bash scripts/slurm_down.sh

test-slurm: install slurm-up ## the SLURM tests (pytest -m slurm) against the local cluster, chaos sweep included (~5 min)
	$(PY) -m pytest -q -m slurm

$(VENV)/.tracking: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[tracking]'
	touch $@

install-tracking: $(VENV)/.tracking ## add the optional trackers (TensorBoard, MLflow, W&B): pip install -e '.[tracking]'

test-slow: install-tracking ## the slow tests (pytest -m slow): submitit_local, concurrent sweeps, trackers, torch.compile parity
	$(PY) -m pytest -q -m slow

clean: ## remove caches and stray Lightning/Hydra folders (never outputs/ or .cache/datasets)
	rm -rf .pytest_cache .ruff_cache multirun lightning_logs
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install test demo plan stage-a clip-sweep stage-b aggregate status slurm-up slurm-down \
	test-slurm test-slow install-tracking clean

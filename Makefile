# The two commands of the README: `make demo` and `make test`. Everything installs itself first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests and the demo never reach the network: model hubs offline, W&B offline unless configured.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline
export PYTHONHASHSEED := 0

.PHONY: install test test-all demo mini-base mini-pairs bench bench-gpu lint lock clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

# The main job on the mini world: pairs from the shipped mini base + identity encoder -> a short MCDM
# fine-tune -> mask-guided edits of held-out portraits (that model and the shipped mini MCDM) -> the
# evaluation table -> report/index.html. Each step is a command a user can run on its own; a rerun
# resumes (finished shards, checkpoints and edited inputs are kept). DEMO_PAIRS / DEMO_STEPS scale it.
DEMO := outputs/demo
DEMO_PAIRS ?= 64
DEMO_STEPS ?= 120
STAMP_STAGE = echo "$(1) $$(date +%s)" >> $(DEMO)/times.txt
demo: install
	@mkdir -p $(DEMO) && rm -f $(DEMO)/times.txt
	@$(call STAMP_STAGE,held-out-portraits)
	@echo "[1/6] 8 held-out world portraits -> $(DEMO)/inputs"
	$(PY) tools/held_out_portraits.py --out $(DEMO)/inputs --count 8
	@$(call STAMP_STAGE,pairs)
	@echo "[2/6] $(DEMO_PAIRS) training pairs (stage 2, shipped mini base + identity encoder) -> $(DEMO)/pairs"
	$(PY) -m portrait_edit predict --config configs/mini/generate.yaml \
	  --trainer.callbacks.init_args.output_dir=$(DEMO)/pairs --trainer.default_root_dir=$(DEMO)/pairs_run \
	  --data.init_args.num_samples=$(DEMO_PAIRS)
	@$(call STAMP_STAGE,mcdm-fine-tune)
	@echo "[3/6] MCDM fine-tune from the mini base, $(DEMO_STEPS) steps (stage 3) -> $(DEMO)/mcdm"
	$(PY) -m portrait_edit fit --config configs/mini/mcdm.yaml --config configs/mini/demo/mcdm.yaml \
	  --trainer.max_steps=$(DEMO_STEPS)
	@$(call STAMP_STAGE,edits)
	@echo "[4/6] mask-guided edits, 8 directions (stage 4): shipped mini MCDM, then the demo's"
	for m in shipped:data/mini/mcdm finetuned:$(DEMO)/mcdm; do \
	  $(PY) -m portrait_edit predict --config configs/mini/edit.yaml --model.init_args.model=$${m#*:} \
	    --trainer.callbacks.init_args.output_dir=$(DEMO)/edits/$${m%%:*} --trainer.default_root_dir=$(DEMO)/edit_run \
	    --data.init_args.root=$(DEMO)/inputs --data.init_args.genders=$(DEMO)/inputs/genders.json || exit 1; \
	done
	@$(call STAMP_STAGE,evaluation)
	@echo "[5/6] evaluation table (stage 5) -> $(DEMO)/eval"
	$(PY) -m portrait_edit validate --config configs/mini/eval.yaml --config configs/mini/demo/eval.yaml
	@$(call STAMP_STAGE,end)
	@echo "[6/6] report"
	@$(PY) tools/demo_report.py --demo $(DEMO) --out report/index.html

# Train the mini world's base models (VAE, CLIP, direction classifier, probe, text-to-image UNet, pose
# ControlNet, the UNet's person words, the identity encoder)
# with our own fit configs and write them, with a manifest, into data/mini/. Resumable.
mini-base: install
	$(PY) tools/make_mini_base.py

# The mini MCDM's 2000 training pairs (stage 2 on the shipped mini base) -> data/mini/pairs/, not tracked:
# about 30 min on 2 CPU cores; a rerun skips finished shards.
mini-pairs: install
	$(PY) -m portrait_edit predict --config configs/mini/generate.yaml

# Every benchmark in one table: the ratios on the CPU; seconds and ms at SD 1.5 size on a GPU machine.
bench: install
	$(PY) tools/bench.py

bench-gpu: install
	$(PY) tools/bench.py --gpu

lint: install
	$(VENV)/bin/ruff check portrait_edit tests tools
	$(VENV)/bin/ruff format --check portrait_edit tests tools

# Rewrite constraints.txt from the current venv after a new set has passed `make test-all`.
lock: install
	{ echo "# The tested set: the ONE place where versions are pinned (direct and transitive)."; \
	  echo "# Applied by \`make install\` as pip constraints. Regenerate with \`make lock\` after testing a new set."; \
	  $(PY) -m pip freeze --exclude-editable | sort -f; } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info

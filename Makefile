# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The main job: installs refloss with PyTorch 2.13.0 (the CPU build) and pytorch-metric-learning, checks
# PyTorch against the golden files and writes the conformance report (reports/report.{md,json,html}).
run: $(PY)
	$(PY) -m pip install -q -e ".[torch,rich]"
	$(VENV)/bin/refloss conform torch --report reports/

# Installs the test extras and every conformance target (torch, pytorch-metric-learning, jax/optax,
# tensorflow-cpu) and runs the test suite (slow sweeps, such as every golden case on every framework,
# are behind `-m slow`).
test: $(PY)
	$(PY) -m pip install -q -e ".[test,frameworks]"
	$(PY) -m pytest -m "not slow" -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis reports

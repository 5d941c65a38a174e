# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Installs refloss (with autograd, so the proof also runs autograd's check_grads) and runs the main job.
run: $(PY)
	$(PY) -m pip install -q -e ".[autograd]"
	$(VENV)/bin/refloss check

# Installs the test extras and runs the test suite (slow sweeps are behind `-m slow`).
test: $(PY)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pytest -m "not slow" -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

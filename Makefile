# Set-up and entry points. Both targets create .venv when missing and install the package into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/default

.PHONY: run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main --config=configs/default.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup labelset_jax tests notebooks --nbmake -q --durations=20

bench: $(STAMP)
	$(PY) benchmarks/bench_losses.py

clean:
	rm -rf $(VENV) runs .pytest_cache

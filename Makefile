# Set-up and entry points. Both targets create .venv when missing and install the package into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
WORKDIR ?= runs/default

.PHONY: run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# make run installs what the main job needs; make test adds the test tools, nilearn and the PyTorch
# peers of the benchmarks' smoke tests.
$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(RUN_STAMP) $(TEST_STAMP)

run: $(RUN_STAMP)
	$(PY) -m experiments.main --config=configs/default.py --workdir=$(WORKDIR)

test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup labelset_jax tests notebooks --nbmake -q --durations=20

bench: $(TEST_STAMP)
	$(PY) benchmarks/bench_losses.py

clean:
	rm -rf $(VENV) runs .pytest_cache

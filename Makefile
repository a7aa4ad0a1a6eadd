# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
# Test processes: two keep both cores busy while one of them waits on a compile or a command it started.
TEST_WORKERS ?= 2

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m fundax.regions_figure --demo $(DEMO_DIR)/regions.png
	$(PY) -m fundax.train --finding=macular_hole --workdir=$(DEMO_DIR)/macular_hole \
	  --data_dir=$(DEMO_DIR)/data --config=experiments/configs/cpu_demo.py
	$(PY) -m fundax.evaluate --workdir=$(DEMO_DIR)/macular_hole --split=validation
	$(PY) -m fundax.evaluate --workdir=$(DEMO_DIR)/macular_hole --split=test
	$(PY) -m fundax.report $(DEMO_DIR)/macular_hole --out=$(DEMO_DIR)/report --figure3

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=20

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache

# Set-up and everyday commands. Each target creates .venv (with isodose installed in editable mode)
# when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench compare validate lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/isodose demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results.json
	$(BIN)/python benchmarks/report.py benchmarks/results.json

# isodose beside dicompyler-core (installed into .bench/ on first use); --interpolated adds minutes.
compare: $(STAMP)
	$(BIN)/python benchmarks/compare_dicompyler.py --interpolated

validate: $(STAMP)
	$(BIN)/isodose validate nelms ../shared/validation/nelms2015

lint: $(STAMP)
	$(BIN)/ruff check engine kernels tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

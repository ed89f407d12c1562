# Set-up and everyday commands. Each target creates .venv (with isodose installed in editable mode, and the
# test and docs extras) when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The package under its import name, as links (pyproject maps engine/ to isodose and kernels/ to
# isodose.kernels): what mypy and the API reference read.
TREE := build/import-tree
NELMS ?= ../shared/validation/nelms2015

.PHONY: demo test test-fast bench compare validate lint docs clean gpu-check tree

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/isodose demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The tests without those marked slow (a minute on 2 cores, against about three).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

tree:
	rm -rf $(TREE) && mkdir -p $(TREE)/isodose
	for entry in engine/*; do case "$$entry" in *__pycache__) ;; *) ln -s "$(CURDIR)/$$entry" $(TREE)/isodose/ ;; esac; done
	ln -s "$(CURDIR)/kernels" $(TREE)/isodose/kernels

lint: $(STAMP) tree
	$(BIN)/ruff check engine kernels tests benchmarks
	$(BIN)/ruff format --check engine kernels tests benchmarks
	$(BIN)/mypy

# The documentation, into site/, with warnings as errors.
docs: $(STAMP) tree
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The benchmarks; their table and scaling plot go into docs/generated (shown by the Benchmarks page).
bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/results.json
	$(BIN)/python benchmarks/report.py benchmarks/results.json --out docs/generated

# On a machine with a usable CUDA GPU, in a Python environment that already holds isodose with its gpu and
# test extras (no venv made): the gpu tests, then the benchmarks with the GPU rows beside Numba and NumPy, all
# into $(GPU_OUT) (gpu-tests.xml, results.json, and BENCHMARKS.md headed by the tests' outcome). A failing
# test or benchmark does not stop the rest.
GPU_OUT ?= benchmarks/gpu
gpu-check:
	mkdir -p $(GPU_OUT)
	-$(PYTHON) -m pytest tests -m gpu -rA --junitxml=$(GPU_OUT)/gpu-tests.xml
	-$(PYTHON) -m pytest benchmarks/test_bench_gpu.py benchmarks/test_bench_kernels.py benchmarks/test_bench_dvh.py \
		benchmarks/test_bench_uncertainty.py \
		--benchmark-enable --benchmark-only --benchmark-json=$(GPU_OUT)/results.json
	$(PYTHON) benchmarks/report.py $(GPU_OUT)/results.json --out $(GPU_OUT) --tests $(GPU_OUT)/gpu-tests.xml \
		--command "make gpu-check"

# isodose beside dicompyler-core (installed into .bench/ on first use); --interpolated adds minutes. Its tables
# go into docs/generated/DICOMPYLER.md.
compare: $(STAMP)
	$(BIN)/python benchmarks/compare_dicompyler.py --interpolated

# The Nelms 2015 validation; its tables go into docs/generated (shown by the Validation page).
validate: $(STAMP)
	$(BIN)/isodose validate nelms $(NELMS) --tables docs/generated

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache build site

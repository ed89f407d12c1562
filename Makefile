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

# On a machine with a usable CUDA GPU: the gpu tests, then the GPU benchmarks with the Numba rows beside them, all
# into $(GPU_OUT) (gpu-tests.xml, results.json, and BENCHMARKS.md headed by the tests' outcome: 3 or 4 files). It
# runs with the machine's own Python as it is ($(PYTHON): numpy, numba, CuPy, h5py, pytest, pytest-benchmark):
# isodose comes from a link tree of this checkout (no install), and packages the machine lacks (pydicom, Dask)
# from wheels in $(GPU_WHEELS) when that folder exists, installed into build/gpu-site with no network. Each step
# has a time limit, so that the whole target ends within 9 minutes; a failing step does not stop the rest.
# GPU_BENCH_K selects benchmarks (pytest -k; empty: every row, NumPy's and the scaling rows included).
GPU_OUT ?= benchmarks/gpu
GPU_WHEELS ?= .gpukit/wheels
GPU_BENCH_K ?= not numpy and not scaling
GPU_PATH = PYTHONPATH=$(CURDIR)/build/gpu-site:$(CURDIR)/$(TREE)
gpu-check: tree
	mkdir -p $(GPU_OUT) build/gpu-site
	if [ -d "$(GPU_WHEELS)" ]; then $(PYTHON) -m pip install --quiet --no-index --no-deps --upgrade \
		--target build/gpu-site $(GPU_WHEELS)/*.whl; fi
	-$(GPU_PATH) timeout --signal=INT --kill-after=15 230 $(PYTHON) -m pytest tests -m gpu -rA -p no:cacheprovider \
		--junitxml=$(GPU_OUT)/gpu-tests.xml
	-$(GPU_PATH) timeout --signal=INT --kill-after=15 260 $(PYTHON) -m pytest benchmarks/test_bench_gpu.py \
		benchmarks/test_bench_kernels.py benchmarks/test_bench_dvh.py benchmarks/test_bench_uncertainty.py \
		--benchmark-enable --benchmark-only -p no:cacheprovider -k "$(GPU_BENCH_K)" \
		--benchmark-json=$(GPU_OUT)/results.json
	$(GPU_PATH) timeout 30 $(PYTHON) benchmarks/report.py $(GPU_OUT)/results.json --out $(GPU_OUT) \
		--tests $(GPU_OUT)/gpu-tests.xml --command "make gpu-check"

# isodose beside dicompyler-core (installed into .bench/ on first use); --interpolated adds minutes. Its tables
# go into docs/generated/DICOMPYLER.md.
compare: $(STAMP)
	$(BIN)/python benchmarks/compare_dicompyler.py --interpolated

# The Nelms 2015 validation; its tables go into docs/generated (shown by the Validation page).
validate: $(STAMP)
	$(BIN)/isodose validate nelms $(NELMS) --tables docs/generated

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache build site

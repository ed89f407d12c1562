# Set-up and everyday commands. Each target creates .venv (with isodose installed in editable mode)
# when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench compare validate lint clean gpu-check

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

# On a machine with a usable CUDA GPU, in a Python environment that already holds isodose with its gpu and
# test extras (no venv made): the gpu tests, then the benchmarks with the GPU rows beside Numba and NumPy, all
# into $(GPU_OUT) (gpu-tests.xml, results.json, and BENCHMARKS.md headed by the tests' outcome). A failing
# test or benchmark does not stop the rest.
GPU_OUT ?= benchmarks/gpu
gpu-check:
	mkdir -p $(GPU_OUT)
	-$(PYTHON) -m pytest tests -m gpu -rA --junitxml=$(GPU_OUT)/gpu-tests.xml
	-$(PYTHON) -m pytest benchmarks/test_bench_gpu.py benchmarks/test_bench_kernels.py benchmarks/test_bench_dvh.py \
		--benchmark-enable --benchmark-only --benchmark-json=$(GPU_OUT)/results.json
	$(PYTHON) benchmarks/report.py $(GPU_OUT)/results.json --out $(GPU_OUT) --tests $(GPU_OUT)/gpu-tests.xml \
		--command "make gpu-check"

# isodose beside dicompyler-core (installed into .bench/ on first use); --interpolated adds minutes.
compare: $(STAMP)
	$(BIN)/python benchmarks/compare_dicompyler.py --interpolated

validate: $(STAMP)
	$(BIN)/isodose validate nelms ../shared/validation/nelms2015

lint: $(STAMP)
	$(BIN)/ruff check engine kernels tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

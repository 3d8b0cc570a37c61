# fusedrnn developer targets. The README's two commands are scripts/demo.sh and
# scripts/test.sh; these targets are shortcuts around the same scripts.
PYTHON ?= python3

.PHONY: setup test test-fast lint format demo bench gpu-check compile-check aot-all aot-triton36 clean

setup:
	bash scripts/setup.sh

test:
	bash scripts/test.sh

test-fast:  # skip the setup step and the slow tests
	$(PYTHON) -m pytest -q -m "not slow"

lint:
	ruff check .
	ruff format --check .

format:
	ruff check --fix .
	ruff format .

demo:
	bash scripts/demo.sh

bench:
	$(PYTHON) -m bench

gpu-check:
	bash bench/gpu_check.sh

compile-check:
	bash csrc/compile_check.sh

aot-all:  # the Triton AOT compile test over every case, the long compiles too (~8 min, 2 cores)
	FUSEDRNN_AOT_ALL=1 $(PYTHON) -m pytest -q tests/test_triton_aot.py

aot-triton36:  # the Triton AOT compile test with triton 3.6 (the GPU machine's version)
	bash scripts/aot_triton36.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache bench/out fusedrnn/_C*.so

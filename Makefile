# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
NPROC ?= 2
DEMO_DIR ?= runs/demo
export OMP_NUM_THREADS ?= 1

.PHONY: install demo test clean

# torch first and pinned, so pip never resolves a multi-GB CUDA build on a CPU machine.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -q -e ".[dev]"

demo: install
	PYTHON=$(PYTHON) NPROC=$(NPROC) bash examples/demo.sh $(DEMO_DIR)

test: install
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf runs .pytest_cache

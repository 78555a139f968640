# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
NPROC ?= 2
DEMO_DIR ?= runs/demo
export OMP_NUM_THREADS ?= 1

.PHONY: install demo test gpu-check clean

# torch first and pinned, so pip never resolves a multi-GB CUDA build on a CPU machine.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -q -e ".[dev]"

demo: install
	PYTHON=$(PYTHON) NPROC=$(NPROC) bash examples/demo.sh $(DEMO_DIR)

test: install
	$(PYTHON) -m pytest -q tests

# The CUDA checks (tests/gpu, the single-GPU MFU script, dry run vs measured peak): one summary file,
# under 10 minutes on one H100; without a GPU one line and exit status 1.
gpu-check:
	@$(PYTHON) tools/gpu_check.py

clean:
	rm -rf runs .pytest_cache

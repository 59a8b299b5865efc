# Set-up and everyday commands. `make test` and `make train` each create .venv when it is missing.
#
# torch: TORCH_SPEC is installed before the project, so the project's `torch>=2.3` range is already
# satisfied and pip pulls nothing more. On a machine whose pip finds a CPU wheel of this version
# (find-links, or TORCH_INDEX=https://download.pytorch.org/whl/cpu) that CPU build is taken; elsewhere
# PyPI's default Linux build, which includes CUDA. A GPU user can also pick any build, e.g.
#   make venv TORCH_SPEC="torch==2.5.1" TORCH_INDEX=https://download.pytorch.org/whl/cu124
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev
BIN := $(VENV)/bin

.PHONY: venv test lint train serve bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

train: venv
	$(BIN)/python train.py $(ARGS)

serve: venv
	$(BIN)/python serve.py $(ARGS)

bench: venv
	$(BIN)/python bench/sim_throughput.py $(ARGS)

clean:
	rm -rf $(VENV)

# Set-up and everyday commands. `make train` and `make test` each create .venv when it is missing.
#
#   make train    the project and what training needs (no test tools, no ray, no carla), then python train.py
#   make test     the same plus the test extra (pytest, ruff, the HTTP service, ray, and carla where a wheel exists)
#   make venv EXTRAS=bench,carla     any extras of pyproject.toml on top
#
# torch: scripts/install_torch.sh installs TORCH_SPEC before the project, so the project's `torch>=2.3` range is
# already satisfied and pip pulls nothing more. On Linux without an NVIDIA GPU it takes the CPU build (a local
# CPU wheel when pip has one, else the CPU wheel index TORCH_CPU_INDEX); with a GPU, PyPI's CUDA build. It prints
# which build it installed. Any build can be asked for:
#   make venv TORCH_SPEC="torch==2.5.1" TORCH_INDEX=https://download.pytorch.org/whl/cu124
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
EXTRAS ?=
BIN := $(VENV)/bin

.PHONY: venv test lint train serve bench clean

$(BIN)/.torch:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	TORCH_CPU_INDEX="$(TORCH_CPU_INDEX)" sh scripts/install_torch.sh $(BIN)/python "$(TORCH_SPEC)" "$(TORCH_INDEX)"
	touch $@

# what training needs: the main dependencies only
$(BIN)/.installed: pyproject.toml $(BIN)/.torch
	$(BIN)/python -m pip install -q -e .
	touch $@

# what the test suite needs on top (pyproject.toml's test extra)
$(BIN)/.installed-test: pyproject.toml $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

venv: $(BIN)/.installed
ifneq ($(EXTRAS),)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
endif

test: $(BIN)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed-test
	$(BIN)/ruff check .

train: $(BIN)/.installed
	$(BIN)/python train.py $(ARGS)

serve: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[serve]"
	$(BIN)/python serve.py $(ARGS)

bench: $(BIN)/.installed
	$(BIN)/python bench/sim_throughput.py $(ARGS)

clean:
	rm -rf $(VENV)

# The two commands of the README: `make demo` (the main job on the embedded default) and `make test`.
# Each sets up a local virtual environment first (.venv, once; again only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned to the version the project is tested with and installed before anything that
# depends on it: with CUDA (nvidia-smi works) the default index's wheel, built with CUDA; without it the
# same version, where TORCH_PIP_ARGS names a CPU wheel index, so pip never pulls a multi-GB CUDA build.
# Extra pip arguments for torch go in TORCH_PIP_ARGS, in both cases.
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: setup demo test test-slow test-heavy bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PIP_ARGS) $(TORCH)
	# DeepSpeed's build imports torch, so no build isolation; its ops compile on first use, not now.
	DS_BUILD_OPS=0 $(PIP) install --no-build-isolation "deepspeed>=0.16"
	$(PIP) install -e ".[test]"
	$(PY) -c "import torch, deepspeed, hydra, tokenizers; print('torch', torch.__version__, '| deepspeed', deepspeed.__version__)"
	touch $@

demo: setup
	$(PY) -m launch.pipeline --nproc 2

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m "slow and not heavy" || [ $$? -eq 5 ]

test-heavy: setup
	$(PY) -m pytest -m heavy || [ $$? -eq 5 ]

bench: setup
	$(PY) bench/data_throughput.py
	$(PY) -m data progress=false
	$(PY) bench/pretrain_throughput.py
	$(PY) bench/families.py
	$(PY) bench/mixers.py
	$(PY) bench/moe.py

clean:
	rm -rf outputs .pytest_cache

# Two commands on a fresh machine: `make train` and `make test`. Both create .venv first.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Arguments for train.py, e.g. make train ARGS="model=mlp trainer.max_epochs=5"
ARGS ?=

$(VENV)/installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: this takes the CPU build on this disk; unpinned, pip pulls a CUDA build of several GB.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/installed

train: install
	$(PYTHON) train.py model=lenet 'plugins=[grad_logger]' $(ARGS)

test: install
	$(PYTHON) -m pytest

.PHONY: install train test

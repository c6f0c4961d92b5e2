# Everything a fresh machine needs: `make demo` (main job) and `make test` (the suite, as CI runs it).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch is installed first so that nothing pulls a multi-GB CUDA build; on a GPU machine
# override it: `make install TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install test demo lint format clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

demo: install
	mkdir -p out
	$(VENV)/bin/crossgate generate "a red circle left of a blue square" --compare --out out/demo.png

lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

format: install
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache

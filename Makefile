# Everything a fresh machine needs: `make demo` (main job), `make test` (the suite), `make check`
# (what CI runs: lint, typecheck, test; .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first, on its own, so that the build chosen here is the one crossgate gets.
# pip's default torch on Linux is the multi-GB CUDA build; for the CPU build take it from PyTorch's
# CPU index: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`. On a GPU machine:
# `make install TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install browser test demo lint typecheck check format clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# tests/test_app_browser.py drives Debian's headless Chromium: installed here when missing and apt-get is
# usable (root); otherwise nothing happens and that test skips, saying why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
			>/dev/null) || echo "make: could not install chromium; the browser test will skip"; \
	else echo "make: no chromium (installing it needs root and apt-get); the browser test will skip"; fi

test: install browser
	$(PY) -m pytest

demo: install
	mkdir -p out
	$(VENV)/bin/crossgate generate "a red circle left of a blue square" --compare --out out/demo.png

lint: install
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/ruff format --check src tests scripts

# The engine modules ([tool.mypy] files in pyproject.toml).
typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

format: install
	$(VENV)/bin/ruff check --fix src tests scripts
	$(VENV)/bin/ruff format src tests scripts

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache

